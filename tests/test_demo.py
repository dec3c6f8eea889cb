"""`cbr-watcher demo` runs to the end by itself and tells what happened."""

from __future__ import annotations

import io

from watcher.demo import MISTYPED_TASK_ID, run_demo


async def test_demo_shows_every_outcome_and_a_summary() -> None:
    """At high speed the demo finishes, with every terminal event and the summary table."""
    out = io.StringIO()
    assert await run_demo(speed=200.0, out=out) == 0
    text = out.getvalue()
    for event in ("task.started", "task.succeeded", "task.failed", "task.timed_out",
                  "task.skipped", "watch.not_found"):
        assert event in text
    summary = text.split("\nSummary\n", 1)[1]
    assert "unfinished" not in summary
    assert MISTYPED_TASK_ID in summary
    assert "BackupService.5009" in text  # the failed task's CBR error is shown
    # Every finished task's webhooks reached the local receiver with valid signatures.
    assert "20 events, 20 with a valid Standard Webhooks signature" in text
