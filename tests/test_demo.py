"""`cbr-watcher demo` runs to the end by itself and tells what happened."""

from __future__ import annotations

import io
import re

import pytest

from watcher.cli.commands.demo import MISTYPED_TASK_ID, run_demo
from watcher.cli.main import main


async def test_demo_shows_every_outcome_and_a_summary() -> None:
    """At high speed the demo finishes, with every terminal event and the summary table."""
    out = io.StringIO()
    assert await run_demo(speed=200.0, out=out) == 0
    text = out.getvalue()
    for event in (
        "task.started",
        "task.succeeded",
        "task.failed",
        "task.timed_out",
        "task.skipped",
        "watch.not_found",
    ):
        assert event in text
    summary = text.split("\nSummary\n", 1)[1]
    assert "unfinished" not in summary
    assert MISTYPED_TASK_ID in summary
    assert "BackupService.5009" in text  # the failed task's CBR error is shown
    # Every webhook reached the local receiver with a valid signature: at least the final
    # event of each of the 11 named and 3 discovered tasks (task.started too, when seen
    # running), and one backup.missed.
    match = re.search(r"got (\d+) events, (\d+) with a valid Standard Webhooks signature", text)
    assert match is not None
    received, verified = int(match[1]), int(match[2])
    assert received == verified >= 13
    # The nightly policy's two runs, and app-01's scheduled backup, were found by discovery,
    # though nobody named them.
    found = re.search(r"Discovery found (\d+) task\(s\) nobody named", text)
    assert found is not None
    assert int(found[1]) == 3
    discovered_rows = [
        line for line in summary.splitlines() if "backup" in line and "task.succeeded" in line
    ]
    assert len(discovered_rows) >= 6  # three named backups that succeed, and the three found
    # Coverage: the server no policy protects was never backed up; app-02's skipped run was
    # reported as backup.missed, and its webhook arrived.
    coverage = re.search(
        r"Coverage: 3 protected resources in 2 vaults, \d+ inventories; never backed up: "
        r"legacy-01; missed backups: app-02 \(scheduled \d\d:\d\d\) \(backup.missed, "
        r"1 webhook\(s\) received\)",
        text,
    )
    assert coverage is not None, text


async def test_the_demos_failed_backup_is_noticed_within_list_interval() -> None:
    """At the demo's own speed (20×), backup-ecs-0003 fails mid-run at 57 % — an end no
    estimate foresees — and the refresh sweep sees it within `list_interval` (10 s, plus 2
    simulated seconds for a loaded machine: 100 ms of real time)."""
    out = io.StringIO()
    assert await run_demo(out=out) == 0
    summary = out.getvalue().split("\nSummary\n", 1)[1]
    row = next(line for line in summary.splitlines() if "backup-ecs-0003" in line)
    assert "task.failed" in row
    delay = re.search(r"\d\d:\d\d\s+\d\d:\d\d\s+(\d+)s", row)
    assert delay is not None, row
    assert int(delay[1]) <= 10 + 2


@pytest.mark.parametrize("speed", ["0", "-1", "nan", "inf", "-inf", "1e400", "1001", "fast"])
def test_demo_refuses_a_speed_that_cannot_work(
    speed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error (exit 2) that says what is expected, not a traceback."""
    with pytest.raises(SystemExit) as caught:
        main(["demo", f"--speed={speed}"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "usage: cbr-watcher demo" in err
    assert "argument --speed: expected a number greater than 0 and at most 1000" in err
    assert "Traceback" not in err
