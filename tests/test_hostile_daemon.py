"""`run --exit-when-done` as a user runs it, against a hostile upstream: it still exits, with the
right code, and every task's final status line is the true one."""

from __future__ import annotations

from tests.daemon_process import json_lines, run_cli
from tests.test_daemon import daemon_env, live_sim
from watcher.sim import SimTaskSpec, Simulator

__all__ = ["live_sim"]  # the fixture, re-used from test_daemon

SCRIPTS = [
    ["deep_json", "oversized", "progress:Infinity"],
    ["progress:1e999", "far_date", "surrogate"],
    ["surrogate:status", "oversized:chunked", "far_date:past"],
    ["throttle_odd:minus0000", "throttle_odd:superscript", "reset:reused", "deep_json"],
    ["progress:NaN", "progress:superscript", "malformed", "http_503"],
]
OUTCOMES = ["success", "failed", "success", "timeout", "skipped"]


async def test_exit_when_done_survives_hostile_answers(live_sim: tuple[Simulator, str]) -> None:
    """Hostile bodies, headers and resets on every task: the run ends by itself, exit 3 (not
    every task succeeded), and each task's final line has CBR's true status."""
    sim, base_url = live_sim
    ids = [
        sim.add_task(
            SimTaskSpec(id=f"h-{n}", outcome=outcome, waiting=0.2, running=0.8, faults=script)
        )
        for n, (outcome, script) in enumerate(zip(OUTCOMES, SCRIPTS, strict=True))
    ]
    code, out, err = await run_cli(
        "run",
        "--exit-when-done",
        *[arg for task_id in ids for arg in ("--task", task_id)],
        env=daemon_env(sim, base_url),
    )
    assert code == 3, err
    lines = json_lines(out)
    finals = {line["task_id"]: line["status"] for line in lines if line.get("final")}
    assert finals == dict(zip(ids, OUTCOMES, strict=True))
    assert "Traceback" not in err
    assert not [line for line in lines if line["event"] == "engine.internal_error"]
