"""`run --exit-when-done`, honest: the exit code covers every task asked for, across runs.

Subprocess tests run the simulator on real time with sub-second tasks; the credential timeout
runs `run_daemon` in-process on a FakeClock, so ten minutes of 401s take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.daemon_process import DaemonProcess, fast_daemon_env, json_lines, run_cli
from tests.support import start_daemon
from watcher.clock import RealClock
from watcher.config import load_settings
from watcher.sim import SimTaskSpec, Simulator
from watcher.testing import FakeClock, drive_until

WITHIN = 60.0
TOKEN = "run-0utcome-token"


def daemon_env(sim: Simulator, base_url: str, **extra: str) -> dict[str, str]:
    """Environment for a daemon pointed at `sim`, with fast polling and JSON logs."""
    return fast_daemon_env(base_url, sim.project_id, TOKEN, **extra)


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time, for a daemon in another process."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=9)
    async with sim.running() as base_url:
        yield sim, base_url


def outcomes(out: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The run.task_outcome lines (task → outcome) and the run.outcome line of a run's log."""
    lines = json_lines(out)
    per_task = {
        line["task_id"]: line["outcome"] for line in lines if line["event"] == "run.task_outcome"
    }
    [overall] = [line for line in lines if line["event"] == "run.outcome"]
    return per_task, overall


def tasks_args(*ids: str) -> list[str]:
    """`--task ID` for each ID."""
    return [arg for task_id in ids for arg in ("--task", task_id)]


async def test_second_run_counts_the_failure_of_the_first(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """A retried job that failed before must not exit 0: stored outcomes count."""
    sim, base_url = live_sim
    good = sim.add_task(SimTaskSpec(id="first-ok", waiting=0.1, running=0.4))
    bad = sim.add_task(SimTaskSpec(id="first-bad", outcome="failed", waiting=0.1, running=0.4))
    env = daemon_env(sim, base_url, CBR_WATCHER_STATE__PATH=str(tmp_path / "state.db"))
    args = ["run", "--exit-when-done", *tasks_args(good, bad)]

    code, out, err = await run_cli(*args, env=env, within=WITHIN)
    assert code == 3, err
    per_task, overall = outcomes(out)
    assert per_task == {good: "success", bad: "failed"}
    assert overall["exit_code"] == 3
    assert (overall["success"], overall["failed"], overall["tasks"]) == (1, 1, 2)

    code, out, err = await run_cli(*args, env=env, within=WITHIN)
    assert code == 3, err
    per_task, overall = outcomes(out)
    assert per_task == {good: "success", bad: "failed"}
    ended_at = {
        line["task_id"]: line["ended_at"]
        for line in json_lines(out)
        if line["event"] == "run.task_outcome"
    }
    assert all(value and value.endswith("Z") for value in ended_at.values())
    assert not any(line["event"] == "task.watching" for line in json_lines(out))

    # Asked only for the task that succeeded, the same state file answers 0.
    code, out, err = await run_cli("run", "--exit-when-done", "--task", good, env=env)
    assert code == 0, err
    assert outcomes(out)[0] == {good: "success"}


async def test_without_task_flags_config_tasks_that_ended_earlier_count(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """watch.tasks naming a task that failed in an earlier run: exit 3 again."""
    sim, base_url = live_sim
    bad = sim.add_task(SimTaskSpec(id="cfg-bad", outcome="timeout", waiting=0.1, running=0.3))
    env = daemon_env(
        sim,
        base_url,
        CBR_WATCHER_STATE__PATH=str(tmp_path / "state.db"),
        CBR_WATCHER_WATCH__TASKS=f'["{bad}"]',
    )
    for _ in range(2):
        code, out, err = await run_cli("run", "--exit-when-done", env=env, within=WITHIN)
        assert code == 3, err
        assert outcomes(out)[0] == {bad: "timeout"}


async def test_task_flag_waits_only_for_the_named_tasks(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """A restored long task is watched but does not hold the exit or its code."""
    sim, base_url = live_sim
    long = sim.add_task(SimTaskSpec(id="restored-long", waiting=0.1, running=3600))
    quick = sim.add_task(SimTaskSpec(id="named-quick", waiting=0.1, running=0.4))
    env = daemon_env(sim, base_url, CBR_WATCHER_STATE__PATH=str(tmp_path / "state.db"))

    async with DaemonProcess(env, "--task", long) as daemon:
        await daemon.wait_for(
            lambda: daemon.logged("task.status_changed", task_id=long, status="running"),
            "the long task running",
        )
        await daemon.stop()

    code, out, err = await run_cli(
        "run", "--exit-when-done", "--task", quick, env=env, within=WITHIN
    )
    assert code == 0, err
    lines = json_lines(out)
    assert any(line["event"] == "task.resumed" and line["task_id"] == long for line in lines)
    per_task, overall = outcomes(out)
    assert per_task == {quick: "success"}
    assert overall["tasks"] == 1


def fake_settings(base_url: str, sim: Simulator, **watch: Any) -> Any:
    """Settings for an in-process daemon on the FakeClock world."""
    return load_settings(
        overrides={
            "cbr": {"endpoint": base_url, "project_id": sim.project_id},
            "auth": {"method": "token", "token": "rejected-token"},
            "watch": {"poll_interval_min": "5s", "poll_interval_max": "60s", **watch},
            "state": {"path": ":memory:"},
            "server": {"listen": "127.0.0.1:0", "api_listen": ""},
        },
        environ={},
        secrets_dirs=[],
    )


async def run_on_fake_clock(
    clock: FakeClock, settings: Any, *, until_seconds: float | None = None
) -> tuple[int | None, float, list[MutableMapping[str, Any]]]:
    """Run the daemon on `clock`; (exit code or None if still running after `until_seconds`
    of fake time, fake seconds elapsed, captured log lines)."""
    with structlog.testing.capture_logs() as logs:
        daemon, handle = await start_daemon(settings, clock=clock)
        try:
            began = clock.monotonic()
            limit = until_seconds if until_seconds is not None else 86_400.0 * 3
            expect_timeout = pytest.raises(TimeoutError) if until_seconds is not None else None
            with expect_timeout or contextlib.nullcontext():
                await drive_until(
                    clock,
                    daemon.done,
                    busy=lambda: handle.engine.in_flight > 0,
                    max_seconds=limit,
                )
            elapsed = clock.monotonic() - began
            if daemon.done():
                return daemon.result(), elapsed, logs
            handle.engine.stop()
            await drive_until(clock, daemon.done, busy=lambda: handle.engine.in_flight > 0)
            assert daemon.result() == 0
            return None, elapsed, logs
        finally:
            if not daemon.done():
                handle.engine.stop()
                await asyncio.wait_for(daemon, 30)


async def test_rejected_credentials_end_an_exit_when_done_run_with_1() -> None:
    """401 after 401: exit 1 once watch.auth_failure_timeout has passed, not at the deadline."""
    clock = FakeClock()
    sim = Simulator(clock, tokens=["the-real-token"], seed=1)
    task_id = sim.add_task(SimTaskSpec(id="locked-out", waiting=10, running=3600))
    async with sim.running() as base_url:
        settings = fake_settings(
            base_url, sim, tasks=[task_id], exit_when_done=True, auth_failure_timeout="10m"
        )
        code, elapsed, logs = await run_on_fake_clock(clock, settings)
    assert code == 1
    assert 600 <= elapsed < 700
    [failed] = [line for line in logs if line["event"] == "run.auth_failed"]
    assert failed["auth_method"] == "token"
    assert failed["error_code"] == "APIGW.0301"
    [overall] = [line for line in logs if line["event"] == "run.outcome"]
    assert overall["exit_code"] == 1
    assert overall["unfinished"] == 1
    assert not any("rejected-token" in str(line) for line in logs)


async def test_a_plain_daemon_keeps_retrying_rejected_credentials() -> None:
    """Without exit_when_done the timeout does not apply: still running after twice its span."""
    clock = FakeClock()
    sim = Simulator(clock, tokens=["the-real-token"], seed=1)
    task_id = sim.add_task(SimTaskSpec(id="locked-out", waiting=10, running=3600))
    async with sim.running() as base_url:
        settings = fake_settings(base_url, sim, tasks=[task_id], auth_failure_timeout="10m")
        code, elapsed, logs = await run_on_fake_clock(clock, settings, until_seconds=1200)
    assert code is None
    assert elapsed >= 1200
    assert not any(line["event"] == "run.auth_failed" for line in logs)


async def test_recovered_credentials_reset_the_timeout() -> None:
    """The timeout counts one streak: a success in between starts it again."""
    clock = FakeClock()
    sim = Simulator(clock, tokens=["rejected-token"], seed=1)
    task_id = sim.add_task(SimTaskSpec(id="mostly-fine", waiting=10, running=1800))
    async with sim.running() as base_url:
        settings = fake_settings(
            base_url, sim, tasks=[task_id], exit_when_done=True, auth_failure_timeout="10m"
        )

        async def revoke_for_a_while() -> None:
            # 401s for 8 of every 10 minutes: never the full timeout in one streak.
            while True:
                sim.set_tokens(["something-else"])
                await clock.sleep(480)
                sim.set_tokens(["rejected-token"])
                await clock.sleep(120)

        flapping = asyncio.create_task(revoke_for_a_while())
        try:
            code, elapsed, logs = await run_on_fake_clock(clock, settings)
        finally:
            flapping.cancel()
    assert code == 0
    assert elapsed >= 1800
    assert not any(line["event"] == "run.auth_failed" for line in logs)


async def test_outcomes_outlive_the_table_retention() -> None:
    """A task that failed long before the last one ended still makes the exit code 3."""
    clock = FakeClock()
    sim = Simulator(clock, tokens=["rejected-token"], seed=1)
    early = sim.add_task(SimTaskSpec(id="early-fail", outcome="failed", waiting=5, running=30))
    late = sim.add_task(SimTaskSpec(id="late-ok", waiting=5, running=3 * 3600))
    async with sim.running() as base_url:
        settings = load_settings(
            overrides={
                "cbr": {"endpoint": base_url, "project_id": sim.project_id},
                "auth": {"method": "token", "token": "rejected-token"},
                "watch": {"tasks": [early, late], "exit_when_done": True},
                "metrics": {"retention": "1m"},
                "state": {"path": ":memory:"},
                "server": {"listen": "127.0.0.1:0", "api_listen": ""},
            },
            environ={},
            secrets_dirs=[],
        )
        code, _, logs = await run_on_fake_clock(clock, settings)
    assert code == 3
    per_task = {
        line["task_id"]: line["outcome"] for line in logs if line["event"] == "run.task_outcome"
    }
    assert per_task == {early: "failed", late: "success"}
