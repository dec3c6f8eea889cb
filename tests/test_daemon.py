"""`cbr-watcher run` and `check-config` as users run them: real subprocesses, real signals.

The simulator runs in the test process on real time with sub-second tasks; assertions are on
exit codes and log lines, never on how long something took.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import fast_daemon_env, json_lines, run_cli, spawned
from watcher.clock import RealClock
from watcher.sim import SimTaskSpec, Simulator

TOKEN = "s3cr3t-token-value"


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time, for a daemon in another process."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=3)
    async with sim.running() as base_url:
        yield sim, base_url


def daemon_env(sim: Simulator, base_url: str, **extra: str) -> dict[str, str]:
    """Environment for a daemon pointed at `sim`, with fast polling."""
    return fast_daemon_env(
        base_url, sim.project_id, TOKEN, CBR_WATCHER_SERVER__API_LISTEN="127.0.0.1:0", **extra
    )


async def test_exit_when_done_all_succeeded_exits_0(live_sim: tuple[Simulator, str]) -> None:
    """Every task succeeds → exit 0, one final status line per task, JSON on stdout."""
    sim, base_url = live_sim
    ids = [sim.add_task(SimTaskSpec(id=f"ok-{n}", waiting=0.2, running=0.6)) for n in range(3)]
    code, out, err = await run_cli(
        "run",
        "--exit-when-done",
        *[a for i in ids for a in ("--task", i)],
        env=daemon_env(sim, base_url),
    )
    assert code == 0, err
    lines = json_lines(out)
    assert all({"timestamp", "level", "event"} <= set(line) for line in lines)
    finals = {line["task_id"]: line["status"] for line in lines if line.get("final")}
    assert finals == dict.fromkeys(ids, "success")
    assert TOKEN not in out + err


async def test_exit_when_done_with_a_failure_exits_3(live_sim: tuple[Simulator, str]) -> None:
    """One failed task and one unknown ID → exit 3."""
    sim, base_url = live_sim
    good = sim.add_task(SimTaskSpec(id="fine", waiting=0.1, running=0.3))
    bad = sim.add_task(SimTaskSpec(id="broken", outcome="failed", waiting=0.1, running=0.3))
    code, out, _ = await run_cli(
        "run",
        "--exit-when-done",
        "--task",
        good,
        "--task",
        bad,
        "--task",
        "never-existed",
        env=daemon_env(sim, base_url),
    )
    assert code == 3
    events = {(line["event"], line.get("task_id")) for line in json_lines(out)}
    assert ("watch.not_found", "never-existed") in events


async def test_sigterm_stops_cleanly_with_exit_0(live_sim: tuple[Simulator, str]) -> None:
    """SIGTERM while watching a long task: graceful stop, exit 0, a stop line in the log."""
    sim, base_url = live_sim
    task_id = sim.add_task(SimTaskSpec(id="long", waiting=0.1, running=3600))
    async with spawned(
        sys.executable, "-m", "watcher", "run", "--task", task_id, env=daemon_env(sim, base_url)
    ) as proc:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "daemon exited early"
            if json.loads(line).get("status") == "running":
                break
        proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    events = [line["event"] for line in json_lines(rest.decode())]
    assert events[0] == "daemon.stopping"
    assert events[-1] == "daemon.stopped"


async def test_sighup_rereads_the_task_file(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """A task appended to watch.task_file is watched after SIGHUP."""
    sim, base_url = live_sim
    first = sim.add_task(SimTaskSpec(id="first", waiting=0.1, running=3600))
    second = sim.add_task(SimTaskSpec(id="second", waiting=0.1, running=3600))
    task_file = tmp_path / "tasks.txt"
    task_file.write_text(f"# watched tasks\n{first}\n")
    env = daemon_env(sim, base_url, CBR_WATCHER_WATCH__TASK_FILE=str(task_file))
    async with spawned(sys.executable, "-m", "watcher", "run", env=env) as proc:
        assert proc.stdout is not None
        try:
            seen: list[dict[str, Any]] = []

            async def wait_for(event: str, task_id: str) -> None:
                assert proc.stdout is not None
                while not any(e["event"] == event and e.get("task_id") == task_id for e in seen):
                    line = await asyncio.wait_for(proc.stdout.readline(), 30)
                    assert line, "daemon exited early"
                    seen.append(json.loads(line))

            await wait_for("task.status_changed", first)
            task_file.write_text(f"{first}\n{second}  # added later\n")
            proc.send_signal(signal.SIGHUP)
            await wait_for("task.status_changed", second)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "env_extra", "expected"),
    [
        (["--task", "bad/id"], {}, "watch.tasks[0] = 'bad/id'"),
        ([], {"CBR_WATCHER_WATCH__POLL_INTERVAL_MIN": "soon"}, "watch.poll_interval_min"),
        ([], {"CBR_WATCHER_CBR__PROJECT_ID": ""}, "cbr.project_id"),
        ([], {"CBR_WATCHER_LOG__LEVEL": "chatty"}, "log.level"),
    ],
)
async def test_bad_configuration_exits_78_with_one_line(
    args: list[str], env_extra: dict[str, str], expected: str
) -> None:
    """Exit 78 (EX_CONFIG), one line on stderr naming the key, no traceback."""
    sim = Simulator(RealClock())
    env = daemon_env(sim, "http://127.0.0.1:9", **env_extra)
    code, out, err = await run_cli("run", *args, env=env)
    assert code == 78
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert expected in err
    assert "Traceback" not in err


async def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    """--config naming a file that does not exist is a configuration error."""
    sim = Simulator(RealClock())
    code, _, err = await run_cli(
        "check-config",
        "--config",
        str(tmp_path / "nope.toml"),
        env=daemon_env(sim, "http://127.0.0.1:9"),
    )
    assert code == 78
    assert "nope.toml" in err


async def test_check_config_redacts_the_token() -> None:
    """check-config shows the effective settings, never the token."""
    sim = Simulator(RealClock())
    code, out, err = await run_cli("check-config", env=daemon_env(sim, "http://127.0.0.1:9"))
    assert code == 0, err
    assert "[watch]" in out
    assert "poll_interval_min" in out
    assert TOKEN not in out
    assert "**********" in out


async def test_usage_error_exits_2() -> None:
    """An unknown flag is a usage error."""
    code, _, err = await run_cli("run", "--no-such-flag", env=dict(os.environ))
    assert code == 2
    assert "usage" in err
