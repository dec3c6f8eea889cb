"""How the refresh sweep reads: a head listing and a running listing, page by page, and one
ShowOpLog only for a task neither showed; and the own looks of a task watched alone."""

from __future__ import annotations

import math
import random
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import Events, Running, World, make_engine, run_until
from watcher.engine import schedule
from watcher.engine.schedule import Decision, Policy, PollState, Reason
from watcher.sim import SimTaskSpec

pytestmark = pytest.mark.every_dialect

SWEEP_POLICY = Policy(
    interval_min=5, interval_max=15, list_interval=10, deadline=12 * 3600, not_found_grace=120
)


def shows(world: World) -> int:
    return sum(1 for r in world.sim.request_log if r.task_id is not None)


def pages(world: World) -> list[dict[str, str]]:
    """The query of every ListOpLogs page, in order."""
    return [
        dict(urllib.parse.parse_qsl(r.query))
        for r in world.sim.request_log
        if r.task_id is None and r.path.endswith("/operation-logs")
    ]


async def test_named_tasks_get_their_first_look_from_the_next_sweep(world: World) -> None:
    """Forty tasks named at once cost a page, not forty ShowOpLogs; one named later is found
    by the next sweep too."""
    ids = world.sim.add_tasks(
        [SimTaskSpec(id=f"named-{n:02d}", waiting=2, running=1800) for n in range(40)]
    )
    engine = make_engine(world, policy=SWEEP_POLICY)
    for task_id in ids:
        engine.add(task_id)
    async with Running(world, engine) as running:
        await running.until(lambda: all(engine.tasks[t].status for t in ids))
        assert shows(world) == 0
        late = world.sim.add_task(SimTaskSpec(id="named-late", waiting=2, running=1800))
        engine.add(late)
        await running.until(lambda: engine.tasks[late].status is not None, max_seconds=60)
    assert shows(world) == 0
    assert engine.stats.list_refreshed >= len(ids) + 1


async def test_a_burst_of_named_tasks_is_first_seen_through_listing_pages(
    world: World,
) -> None:
    """2,500 IDs named at once (a task file): the head listing's pages show them all, instead
    of 2,500 ShowOpLogs at the budget's pace."""
    ids = world.sim.add_tasks(
        [SimTaskSpec(id=f"burst-{n:04d}", waiting=5, running=3600) for n in range(2500)]
    )
    engine = make_engine(world, policy=SWEEP_POLICY)
    for task_id in ids:
        engine.add(task_id)
    async with Running(world, engine) as running:
        await running.until(lambda: all(engine.tasks[t].status for t in ids), max_seconds=60)
    assert shows(world) == 0
    per_page = min(1000, world.sim.dialect.limit_cap or 1000)
    assert len(pages(world)) <= 2 * math.ceil(2500 / per_page) + 2


async def test_old_running_tasks_cost_a_running_page_not_the_whole_history(
    world: World,
) -> None:
    """Three tasks started an hour before 1,500 others that came and went: each sweep reads
    the head and the running listing, not every page back to the old tasks' creation, and
    when the old tasks end — far from the head — one ShowOpLog each sees it within a sweep."""
    sim = world.sim
    old = sim.add_tasks(
        [SimTaskSpec(id=f"old-{n}", waiting=1, running=3600 + 900 + 60 * n) for n in range(3)]
    )
    world.clock.advance(1800)
    sim.add_tasks([SimTaskSpec(waiting=0, running=1) for _ in range(1500)])
    world.clock.advance(600)
    recent = sim.add_tasks(
        [SimTaskSpec(id=f"recent-{n:02d}", waiting=1, running=7200) for n in range(20)]
    )
    events = Events()
    engine = make_engine(world, policy=SWEEP_POLICY, on_event=events)
    for task_id in [*old, *recent]:
        engine.add(task_id)
    started = world.clock.monotonic()
    async with Running(world, engine) as running:
        await running.until(lambda: all(engine.tasks[t].ended for t in old))
    sweeps = (world.clock.monotonic() - started) / SWEEP_POLICY.list_interval
    listed = pages(world)
    # A page of 1,000 (or 100, capped) reaches back a few minutes; the old tasks sit behind
    # 1,500 entries. Reading back to them would cost 2+ (16+ capped) pages a sweep.
    full_history_pages = math.ceil(1523 / min(1000, sim.dialect.limit_cap or 1000))
    if sim.dialect.order == "newest":
        assert len(listed) < (1 + full_history_pages) / 2 * sweeps
    else:  # the head's first pages hold the oldest tasks: more pages, nothing missed
        assert len(listed) <= (1 + full_history_pages) * sweeps
    assert any(page.get("status") == "running" for page in listed)
    for task_id in old:
        ended = [e for e in events.events if e.task_id == task_id and e.ends_watch]
        assert [e.type for e in ended] == ["task.succeeded"]
        end_wall = sim.tasks[task_id].created_wall + 1 + 3600 + 900 + 60 * old.index(task_id)
        assert ended[0].occurred_at - end_wall <= SWEEP_POLICY.list_interval + 1


async def test_a_task_watched_alone_costs_no_more_than_a_fixed_poller(world: World) -> None:
    """One task, no sweep: no end seen later than poll_interval_max, and no more looks than
    a fixed poller at poll_interval_max (the bench shows the predicted ends seen sooner)."""
    policy = SWEEP_POLICY
    delays = []
    for n in range(4):
        task_id = world.sim.add_task(
            SimTaskSpec(id=f"alone-{n}", waiting=3, running=1200 + 137 * n, progress_exponent=1)
        )
        before = shows(world)
        events = Events()
        engine = make_engine(world, policy=policy, on_event=events)
        engine.add(task_id)
        await run_until(world, engine, engine.all_done)
        task = world.sim.tasks[task_id]
        end_wall = task.created_wall + 3 + 1200 + 137 * n
        ended = [e for e in events.events if e.ends_watch]
        delays.append(ended[0].occurred_at - end_wall)
        fixed = math.floor((end_wall - task.created_wall) / policy.interval_max) + 2
        assert shows(world) - before <= fixed
    assert max(delays) <= policy.interval_max


@settings(max_examples=300, deadline=None)
@given(
    delay=st.floats(min_value=0.0, max_value=200.0),
    ahead=st.one_of(st.none(), st.floats(min_value=-100.0, max_value=100.0)),
    aligned=st.one_of(st.none(), st.floats(min_value=-100.0, max_value=100.0)),
    reason=st.sampled_from(list(Reason)),
)
def test_own_looks_stay_on_the_grid_bar_one_at_a_predicted_end(
    delay: float, ahead: float | None, aligned: float | None, reason: Reason
) -> None:
    """Whatever the estimate wished: interval_max, or the predicted end itself once."""
    now = 10_000.0
    policy = SWEEP_POLICY
    end = None if ahead is None else now + ahead
    previous = PollState(aligned_end=None if aligned is None else now + aligned)
    wish = Decision(PollState(estimated_end=end), delay, reason)
    decision = schedule.on_grid(policy, previous, wish, now=now)
    if delay >= policy.interval_max:
        assert decision == wish
        return
    if decision.delay < policy.interval_max:
        assert end is not None
        assert math.isclose(decision.delay, max(end - now, policy.interval_min))
        assert decision.reason is Reason.NEAR_END
        assert decision.state.aligned_end == end
        assert previous.aligned_end is None or abs(previous.aligned_end - end) > 15
        # Once aligned to that end, the next wish is not brought forward again.
        again = schedule.on_grid(policy, decision.state, wish, now=now)
        assert again.delay == policy.interval_max
    else:
        assert decision.delay == policy.interval_max
        assert decision.state.aligned_end == previous.aligned_end


def test_a_wish_after_a_status_change_keeps_the_grid() -> None:
    """The estimate resets on waiting → running: the first running look is still
    interval_max away, not interval_min."""
    policy = SWEEP_POLICY
    wish = schedule.after_success(
        policy,
        PollState(),
        changed=True,
        rng=random.Random(1),
        status="running",
        progress=0,
        now=100.0,
    )
    assert wish.delay < policy.interval_max
    assert schedule.on_grid(policy, PollState(), wish, now=100.0).delay == policy.interval_max


def test_with_a_raised_maximum_progress_interval_keeps_the_progress_fresh() -> None:
    """poll_interval_max 5 min, progress_interval 2 min: own looks every 2 minutes."""
    policy = Policy(interval_min=5, interval_max=300, progress_interval=120)
    wish = Decision(PollState(), 30.0, Reason.ESTIMATE)
    assert schedule.on_grid(policy, PollState(), wish, now=0.0).delay == 120.0
