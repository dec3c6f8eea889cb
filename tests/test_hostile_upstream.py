"""The engine against a hostile simulator, on real sockets and one fake clock.

Every hostile body, odd header and dropped connection the simulator can produce hits some
requests; every task must still reach its true terminal status, the request budget must hold
on the wire (one attempt per poll: aiohttp re-sends nothing), and an absurd Retry-After must
not stop polling for longer than the cap.
"""

from __future__ import annotations

import asyncio
import collections

import pytest
from structlog.testing import capture_logs

import watcher.net.client
from tests.support import World, make_engine
from watcher.engine.budget import SEND_JITTER_ALLOWANCE
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.net.client import RETRY_AFTER_CAP
from watcher.sim import FaultProfile, SimTaskSpec
from watcher.sim.faults import HOSTILE_FAULTS
from watcher.testing import drive_until

OUTCOMES = ("success", "failed", "skipped", "timeout")
LONG_POLICY = Policy(interval_min=5, interval_max=60, deadline=72 * 3600, not_found_grace=120)


async def run_to_exit(world: World, engine: Engine) -> None:
    """Run an `exit_when_done` engine on the fake clock until it returns by itself."""
    runner = asyncio.create_task(engine.run())
    await drive_until(
        world.clock, runner.done, busy=lambda: engine.in_flight > 0, max_seconds=80 * 3600
    )
    await runner


def max_in_window(times: list[float], window: float) -> int:
    """The most requests that arrived within any `window` seconds."""
    ordered = sorted(times)
    most, left = 0, 0
    for right, moment in enumerate(ordered):
        while ordered[left] <= moment - window:
            left += 1
        most = max(most, right - left + 1)
    return most


async def test_every_scripted_hostile_answer_still_ends_in_the_true_status(world: World) -> None:
    """One task per hostile fault (plus one with all of them), each outcome: all end right."""
    scripts = [[name, name] for name in (*HOSTILE_FAULTS, "reset:reused")]
    scripts.append([*HOSTILE_FAULTS, "reset:reused", "reset", "hang", "malformed"])
    expected = {}
    for n, faults in enumerate(scripts):
        outcome = OUTCOMES[n % len(OUTCOMES)]
        task_id = world.sim.add_task(
            SimTaskSpec(
                id=f"hostile-{n:02d}", outcome=outcome, waiting=5, running=120, faults=faults
            )
        )
        expected[task_id] = outcome
    # Scripted faults are served to ShowOpLog: this test is about that path alone.
    engine = make_engine(
        world, exit_when_done=True, policy=LONG_POLICY, retention=1e9, batch_refresh=False
    )
    for task_id in expected:
        engine.add(task_id)
    await run_to_exit(world, engine)
    assert {t: engine.tasks[t].end_reason for t in expected} == expected
    # A hostile body that still carries the true status may end a task early; the rest
    # of its script is then never needed. Every kind was served at least once.
    served = {entry.fault for entry in world.sim.request_log}
    assert {*HOSTILE_FAULTS, "reset:reused"} <= served
    assert engine.stats.polls_failed > 0
    assert len(world.sim.request_log) == engine.stats.polls_started


@pytest.mark.parametrize("sweep", [False, True], ids=["one-by-one", "sweep"])
async def test_random_hostile_profile_keeps_the_budget_on_the_wire(
    world: World, sweep: bool
) -> None:
    """Hostile bodies and resets at random: every task ends, one wire request per poll or
    page, and no second on the wire carries more than max_requests_per_second."""
    world.sim.faults.profile = FaultProfile(
        hostile_rate=0.25, reused_reset_rate=0.15, reset_rate=0.1, error_rate=0.05
    )
    expected = {}
    for n in range(30):
        outcome = OUTCOMES[n % len(OUTCOMES)]
        task_id = world.sim.add_task(
            SimTaskSpec(id=f"noisy-{n:02d}", outcome=outcome, waiting=n % 7, running=60 + n)
        )
        expected[task_id] = outcome
    rate = 5
    engine = make_engine(
        world,
        exit_when_done=True,
        policy=LONG_POLICY,
        max_requests_per_second=rate,
        retention=1e9,
        batch_refresh=sweep,
    )
    for task_id in expected:
        engine.add(task_id)
    await run_to_exit(world, engine)
    assert {t: engine.tasks[t].end_reason for t in expected} == expected
    log = world.sim.request_log
    faults = collections.Counter(entry.fault for entry in log if entry.fault)
    assert faults["reset"] > 0
    assert faults["reset:reused"] > 0
    assert sum(faults[name] for name in HOSTILE_FAULTS) > 0
    # aiohttp re-sends nothing: each attempt on the wire is a poll or a page the budget
    # allowed.
    assert (engine.stats.list_pages > 0) == sweep
    assert len(log) == engine.stats.polls_started + engine.stats.list_pages
    times = [entry.monotonic for entry in log]
    assert max_in_window(times, 1.0) <= rate
    assert max_in_window(times, 1.0 + SEND_JITTER_ALLOWANCE) <= rate
    if not sweep:  # one by one, 30 tasks keep the budget busy: it is used, not just respected
        assert max_in_window(times, 1.0) == rate


async def test_an_absurd_retry_after_is_clamped_to_the_cap(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retry-After: 99999999999 is read as the reader's cap (an hour, warned once), and the
    engine waits no longer than poll_interval_max: not three thousand years, not an hour."""
    monkeypatch.setattr(watcher.net.client, "_clamp_warned", False)
    task_id = world.sim.add_task(
        SimTaskSpec(
            id="huge-ra", waiting=5, running=600, faults=["throttle_odd:huge", "throttle_odd:huge"]
        )
    )
    engine = make_engine(world, exit_when_done=True)
    engine.add(task_id)
    with capture_logs() as logs:
        await run_to_exit(world, engine)
    assert engine.tasks[task_id].end_reason == "success"
    times = [r.monotonic for r in world.sim.request_log if r.task_id == task_id]
    assert engine.policy.interval_max < RETRY_AFTER_CAP
    for gap in (times[1] - times[0], times[2] - times[1]):
        assert engine.policy.interval_max <= gap < 2 * engine.policy.interval_max
    warnings = [e for e in logs if e["event"] == "http.retry_after_clamped"]
    assert [w["retry_after"] for w in warnings] == ["99999999999"]


@pytest.mark.parametrize(
    ("variant", "floor"),
    [
        ("minus0000", 0.0),
        ("rfc850", 60.0),
        ("asctime", 60.0),
        ("superscript", 0.0),
        ("garbage", 0.0),
    ],
)
async def test_odd_retry_after_forms_are_honoured_or_ignored(
    world: World, variant: str, floor: float
) -> None:
    """Dates in every HTTP form set a floor; unreadable values fall back to the backoff."""
    task_id = world.sim.add_task(
        SimTaskSpec(id=f"ra-{variant}", waiting=5, running=120, faults=[f"throttle_odd:{variant}"])
    )
    engine = make_engine(world, exit_when_done=True)
    engine.add(task_id)
    await run_to_exit(world, engine)
    assert engine.tasks[task_id].end_reason == "success"
    times = [r.monotonic for r in world.sim.request_log if r.task_id == task_id]
    assert floor <= times[1] - times[0] <= max(floor, 60) + 1
