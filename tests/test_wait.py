"""`cbr-watcher wait` as people and CI jobs run it: a real subprocess against the simulator.

The simulator runs in the test process on real time with tasks of a second or so; the
assertions are on exit codes and output, never on how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator

import pytest

from tests.daemon_process import clean_env, reap, run_cli, spawn, spawned
from tests.support import fake_clock_now
from watcher.cli.commands.wait_output import (
    PlainView,
    Summary,
    TaskLine,
    human_duration,
    printable,
    summary_lines,
)
from watcher.clock import RealClock
from watcher.delivery.payloads import event_data
from watcher.engine.events import TASK_FAILED, TaskEvent
from watcher.sim import SimTaskSpec, Simulator
from watcher.sim.dialects import preset

TOKEN = "wait-t0ken-value"
WITHIN = 60.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
DATA_KEYS = set(
    event_data(
        TaskEvent(
            type=TASK_FAILED,
            task_id="x",
            occurred_at=0,
            status=None,
            previous_status=None,
            progress=None,
        ),
        project_id="p",
    )
)


@pytest.fixture(params=["default", "examples", "worst-case"])
async def live_sim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time, for a waiter in another process, once per dialect (the
    official examples' zoneless times and nulls; every list quirk at once)."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=4, dialect=preset(request.param))
    async with sim.running() as base_url:
        yield sim, base_url


def wait_env(sim: Simulator, base_url: str, **extra: str) -> dict[str, str]:
    """Environment for `wait` pointed at `sim`, with fast polling."""
    settings = {
        "CBR_WATCHER_CBR__ENDPOINT": base_url,
        "CBR_WATCHER_CBR__PROJECT_ID": sim.project_id,
        "CBR_WATCHER_AUTH__TOKEN": TOKEN,
        "CBR_WATCHER_WATCH__POLL_INTERVAL_MIN": "0.1s",
        "CBR_WATCHER_WATCH__POLL_INTERVAL_MAX": "0.3s",
        "CBR_WATCHER_WATCH__NOT_FOUND_GRACE": "1s",
    }
    return clean_env(**{**settings, **extra})


def without_controls(text: str) -> bool:
    """Whether `text` holds no control character except the line feed."""
    return CONTROL.search(text) is None


async def test_every_task_succeeds_exits_0_with_plain_lines() -> None:
    """Off a TTY: status and progress lines, a summary line per task, exit 0.

    The simulator runs on a fake clock that moves only once `wait` has looked at each phase,
    so a slow start (a loaded machine) cannot make it miss the running phase.
    """
    clock = fake_clock_now()
    sim = Simulator(clock, tokens=[TOKEN], seed=4)
    async with sim.running() as base_url:
        ids = [sim.add_task(SimTaskSpec(id=f"ok-{n}", waiting=30, running=120)) for n in range(2)]

        def looks(task_id: str) -> int:
            # A ShowOpLog of the task, or a listing (which refreshes every task it shows).
            lists = sum(1 for entry in sim.request_log if entry.task_id is None)
            return sim.request_count(task_id) + lists

        async def looked_again() -> None:
            counts = {task_id: looks(task_id) for task_id in ids}
            async with asyncio.timeout(WITHIN):
                while any(looks(t) <= counts[t] for t in ids):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the simulator has no event to wait on

        async with spawned(
            sys.executable,
            "-m",
            "watcher",
            "wait",
            *ids,
            env=wait_env(sim, base_url),
        ) as proc:
            await looked_again()  # seen waiting
            for step in (60, 30, 60):  # running, further along, ended
                clock.advance(step)
                await looked_again()
            out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), WITHIN)
    out, err = out_bytes.decode(), err_bytes.decode()
    assert proc.returncode == 0, err
    assert without_controls(out)
    lines = out.splitlines()
    for task_id in ids:
        assert any(f"{task_id} backup: running" in line for line in lines), out
        assert any(f"{task_id} backup: success 100%" in line for line in lines), out
        [summary] = [line for line in lines if line.startswith(f"{task_id} ") and "ended " in line]
        assert "success" in summary
        assert "took " in summary
    assert lines[-1] == "wait: 2 success (exit 0)"
    assert TOKEN not in out + err


async def test_a_failure_or_an_unknown_task_exits_3(live_sim: tuple[Simulator, str]) -> None:
    """failed and not-found → exit 3; the summary has CBR's error code and message, and a
    hostile message cannot put control characters on the terminal."""
    sim, base_url = live_sim
    good = sim.add_task(SimTaskSpec(id="fine", waiting=0.1, running=0.5))
    bad = sim.add_task(
        SimTaskSpec(
            id="broken",
            outcome="failed",
            waiting=0.1,
            running=0.5,
            error_code="BackupService.5009",
            error_message="disk busy\x1b[2J\r\nfake: success",
        )
    )
    code, out, err = await run_cli(
        "wait", good, bad, "never-existed", env=wait_env(sim, base_url), within=WITHIN
    )
    assert code == 3, err
    assert without_controls(out)
    summary = {line.split()[0]: line for line in out.splitlines()[-4:-1]}
    assert "success" in summary[good]
    assert "failed" in summary[bad]
    assert "BackupService.5009: disk busy\\x1b[2J\\x0d\\x0afake: success" in summary[bad]
    assert "not_found" in summary["never-existed"]
    assert "BackupService.6500" in summary["never-existed"]
    assert out.splitlines()[-1] == "wait: 1 success, 1 failed, 1 not_found (exit 3)"


async def test_timeout_exits_124_naming_the_pending_tasks(
    live_sim: tuple[Simulator, str],
) -> None:
    """--timeout runs out: exit 124, and the summary says which tasks were still pending."""
    sim, base_url = live_sim
    quick = sim.add_task(SimTaskSpec(id="quick", waiting=0.1, running=0.3))
    slow = sim.add_task(SimTaskSpec(id="slow", waiting=0.1, running=3600))
    code, out, err = await run_cli(
        "wait", quick, slow, "--timeout", "3s", env=wait_env(sim, base_url), within=WITHIN
    )
    assert code == 124, err
    summary = {line.split()[0]: line for line in out.splitlines()[-3:-1]}
    assert "success" in summary[quick]
    assert "still pending (running at " in summary[slow]
    assert "--timeout 3s ran out (exit 124)" in out.splitlines()[-1]


async def test_rejected_credentials_exit_1_after_one_reload(
    live_sim: tuple[Simulator, str],
) -> None:
    """A bad token: exit 1 at once (not at the deadline or the timeout), one clear line."""
    sim, base_url = live_sim
    task_id = sim.add_task(SimTaskSpec(id="locked", waiting=0.1, running=3600))
    env = wait_env(sim, base_url, CBR_WATCHER_AUTH__TOKEN="not-the-token")
    code, out, err = await run_cli("wait", task_id, "--timeout", "1h", env=env, within=30)
    assert code == 1, out + err
    assert (
        "cbr-watcher: auth.method=token: CBR rejected the credentials (APIGW.0301) after a reload"
        in err.splitlines()
    )
    assert "not-the-token" not in out + err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "the following arguments are required: ID"),
        (["bad/id"], "invalid task ID 'bad/id'"),
        (["fine", "--timeout", "soon"], "--timeout"),
        (["fine", "--timeout", "0s"], "greater than 0"),
        (["fine", "--no-such-flag"], "unrecognized arguments"),
    ],
)
async def test_usage_errors_exit_2(args: list[str], expected: str) -> None:
    """Bad arguments: exit 2 with argparse's usage message."""
    code, out, err = await run_cli("wait", *args, env=clean_env())
    assert code == 2
    assert out == ""
    assert expected in err


async def test_bad_configuration_exits_78() -> None:
    """A missing project ID is a configuration error: exit 78, one line, no traceback."""
    env = clean_env(CBR_WATCHER_CBR__ENDPOINT="http://127.0.0.1:9", CBR_WATCHER_AUTH__TOKEN="x")
    code, out, err = await run_cli("wait", "some-task", env=env)
    assert code == 78
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "cbr.project_id" in err
    assert "Traceback" not in err


async def test_ctrl_c_stops_cleanly_with_130(live_sim: tuple[Simulator, str]) -> None:
    """SIGINT while waiting: a clean stop, the summary, exit 130."""
    sim, base_url = live_sim
    task_id = sim.add_task(SimTaskSpec(id="long-one", waiting=0.1, running=3600))
    async with spawned(
        sys.executable, "-m", "watcher", "wait", task_id, env=wait_env(sim, base_url)
    ) as proc:
        assert proc.stdout is not None
        seen = b""
        while b"long-one backup: running" not in seen:
            line = await asyncio.wait_for(proc.stdout.readline(), WITHIN)
            assert line, "wait exited early"
            seen += line
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), WITHIN)
    assert proc.returncode == 130, err.decode()
    lines = rest.decode().splitlines()
    assert "still pending (running at" in lines[-2]
    assert lines[-1] == "wait: 1 pending; interrupted (exit 130)"


async def test_json_prints_one_data_object_per_task(live_sim: tuple[Simulator, str]) -> None:
    """--json: stdout is one webhook-shaped `data` object per task, as each ends."""
    sim, base_url = live_sim
    good = sim.add_task(SimTaskSpec(id="j-ok", waiting=0.1, running=0.5, labels={"a": "b"}))
    bad = sim.add_task(SimTaskSpec(id="j-bad", outcome="failed", waiting=0.1, running=0.5))
    code, out, err = await run_cli(
        "wait", "--json", good, bad, env=wait_env(sim, base_url), within=WITHIN
    )
    assert code == 3, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert len(objects) == 2
    by_id = {obj["task_id"]: obj for obj in objects}
    assert set(by_id) == {good, bad}
    for obj in objects:
        assert set(obj) == DATA_KEYS
        assert obj["project_id"] == sim.project_id
        assert obj["operation_log"]["id"] == obj["task_id"]
    assert by_id[good]["status"] == "success"
    assert by_id[good]["error"] is None
    assert by_id[bad]["status"] == "failed"
    assert by_id[bad]["error"]["code"]
    assert "wait: 1 success, 1 failed (exit 3)" in err


async def run_in_pty(*args: str, env: dict[str, str], within: float = WITHIN) -> tuple[int, str]:
    """Run `python -m watcher ARGS` on a pseudo-terminal of 120 columns; (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    loop = asyncio.get_running_loop()
    output = bytearray()
    eof = asyncio.Event()

    def readable() -> None:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every copy of the slave side is closed
            chunk = b""
        if chunk:
            output.extend(chunk)
        else:
            loop.remove_reader(master)
            eof.set()

    try:
        proc = await spawn(
            sys.executable,
            "-m",
            "watcher",
            *args,
            env={**env, "TERM": "xterm-256color"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
    finally:
        os.close(slave)
    loop.add_reader(master, readable)
    try:
        await asyncio.wait_for(eof.wait(), within)
        code = await asyncio.wait_for(proc.wait(), within)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(master)
        await reap(proc, grace=5)
        os.close(master)
    return code, output.decode(errors="replace")


async def test_tty_draws_bars_that_end_in_the_final_state(
    live_sim: tuple[Simulator, str],
) -> None:
    """On a terminal: live bars (cursor movement and colour), ending in each final state."""
    sim, base_url = live_sim
    good = sim.add_task(SimTaskSpec(id="tty-ok", waiting=0.2, running=2.0))
    bad = sim.add_task(SimTaskSpec(id="tty-bad", outcome="failed", waiting=0.2, running=1.0))
    code, output = await run_in_pty("wait", good, bad, env=wait_env(sim, base_url))
    assert code == 3, output
    assert "\x1b[" in output  # drawn, not printed
    assert "\x1b[2K" in output  # lines redrawn in place
    frames = ANSI.sub("", output).replace("\r\n", "\n")
    summary_start = frames.rindex(f"{good}  ")
    bars, summary = frames[:summary_start], frames[summary_start:]
    drawn = re.split(r"[\r\n]", bars)
    last_bar = {
        task_id: [line for line in drawn if line.startswith(task_id)][-1] for task_id in (good, bad)
    }
    assert "success" in last_bar[good]
    assert "100%" in last_bar[good]
    assert "elapsed" in last_bar[good]
    assert "failed" in last_bar[bad]
    assert "\x1b[32msuccess" in output  # green
    assert "\x1b[31mfailed" in output  # red
    assert "wait: 1 success, 1 failed (exit 3)" in summary


def test_plain_view_prints_status_changes_and_tenths_only() -> None:
    """One line per status change and per 10 % of progress, whatever the poll rate."""
    out = io.StringIO()
    view = PlainView(out, now=lambda: 0.0)
    for status, progress in [
        ("waiting", 0),
        ("waiting", 0),
        ("running", 3),
        ("running", 9),
        ("running", 10),
        ("running", 14),
        ("running", 37),
        ("running", 30),
        ("running", 41),
    ]:
        view.update(TaskLine("t1", "backup", status, progress))
    shown = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert shown == [
        "t1 backup: waiting 0%",
        "t1 backup: running 3%",
        "t1 backup: running 10%",
        "t1 backup: running 37%",
        "t1 backup: running 41%",
    ]


def test_summary_lines_and_helpers() -> None:
    """Summary text: outcome, ended_at, duration, error; helpers for durations and escapes."""
    done = TaskLine(
        "a",
        outcome="failed",
        ended_at="2026-01-01T00:00:00.000Z",
        duration=250.0,
        error=("E.1", "boom\x07"),
    )
    pending = TaskLine("bb", status="running", progress=40)
    rows = summary_lines(Summary([done, pending], "timeout", 600.0, 124))
    assert rows[0][0] == "a   failed     ended 2026-01-01T00:00:00.000Z  took 4m10s  E.1: boom\\x07"
    assert rows[1][0] == "bb  pending    still pending (running at 40%)"
    assert rows[2][0] == "wait: 1 failed, 1 pending; --timeout 10m ran out (exit 124)"
    assert human_duration(9.6) == "10s"
    assert human_duration(7500) == "2h05m"
    assert human_duration(None) == "-"
    assert printable("ok\u202etxt\n") == "ok\\u202etxt\\x0a"
