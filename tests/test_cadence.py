"""Progress-aware polling: the decisions, their precedence, the engine on the fake clock, and
the metrics that explain them."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.support import Running, World, make_engine, run_until
from watcher.engine import schedule
from watcher.engine.schedule import Decision, Policy, PollState, Reason
from watcher.observe.metrics import Metrics
from watcher.sim import SimTaskSpec

Curve = Callable[[float], int]
"""Progress (0–99) at `t` seconds into the run."""
POLICY = Policy(interval_min=5.0, interval_max=60.0, deadline=48 * 3600.0, progress_interval=120.0)


def feed(
    samples: Sequence[tuple[float, int | None]], *, status: str = "running", seed: int = 1
) -> list[Decision]:
    """after_success for each (wall time, progress) in turn, as the engine calls it."""
    rng = random.Random(seed)
    state, decisions = PollState(), []
    previous: object = "nothing seen yet"
    for now, progress in samples:
        decision = schedule.after_success(
            POLICY,
            state,
            changed=progress != previous,
            rng=rng,
            status=status,
            progress=progress,
            now=now,
        )
        decisions.append(decision)
        state, previous = decision.state, progress
    return decisions


def linear(duration: float, until: float, every: float = 120.0) -> list[tuple[float, int | None]]:
    """A task at 100·t/(0.95·duration) per cent, capped at 99, polled every `every` seconds."""
    count = math.floor(until / every)
    return [
        (n * every, min(99, math.floor(100 * n * every / (0.95 * duration))))
        for n in range(count + 1)
    ]


# ---- the decisions -----------------------------------------------------------------------


def test_far_from_the_end_polls_at_the_progress_interval() -> None:
    """A long task in mid-run: `progress` decisions, just under progress_interval."""
    decisions = feed(linear(6 * 3600.0, until=3 * 3600.0))
    last = decisions[-1]
    assert last.reason is Reason.PROGRESS
    assert 0.95 * 120 <= last.delay <= 120
    assert last.state.estimated_end is not None
    assert abs(last.state.estimated_end - 6 * 3600) < 0.05 * 6 * 3600


def test_on_the_plateau_the_estimated_end_is_polled_at_the_minimum() -> None:
    """At 99 % the interval shrinks toward the estimate: interval_min right at it."""
    samples = linear(3600.0, until=3420.0, every=20.0)
    decisions = feed(samples)
    end = decisions[-1].state.estimated_end
    assert end is not None
    at_end = feed([*samples, (end, 99)])[-1]
    assert at_end.reason is Reason.NEAR_END
    assert at_end.delay == POLICY.interval_min
    before = feed([*samples, (end - 200, 99)])[-1]
    assert before.reason in (Reason.NEAR_END, Reason.APPROACH)
    assert POLICY.interval_min < before.delay <= POLICY.interval_max


def test_once_the_window_passes_it_grows_toward_the_maximum() -> None:
    """An end that does not come: `overdue`, jittered, never above interval_max."""
    samples = linear(3600.0, until=3420.0, every=20.0)
    now = samples[-1][0]
    overdue = [(now + 600 + 30 * n, 99) for n in range(12)]
    decisions = feed([*samples, *overdue])[-12:]
    assert all(d.reason is Reason.OVERDUE for d in decisions)
    assert all(5.0 <= d.delay <= 60.0 for d in decisions)
    assert max(d.delay for d in decisions[-6:]) > 20.0


def test_a_stall_polls_within_the_maximum() -> None:
    """Progress that stops moving: `stalled`, never longer than interval_max."""
    samples = [(n * 60.0, min(n, 40)) for n in range(80)]
    decisions = feed(samples)
    assert decisions[-1].reason is Reason.STALLED
    assert all(d.delay <= 60.0 for d in decisions[45:])


def test_a_status_change_resets_the_estimate() -> None:
    """waiting → running: the waiting samples say nothing about the running rate."""
    waiting = [(n * 30.0, 0) for n in range(5)]
    decisions = feed(waiting, status="waiting")
    assert decisions[-1].state.track is not None
    assert decisions[-1].state.track.status == "waiting"
    assert decisions[-1].reason is Reason.UNCHANGED
    running = schedule.after_success(
        POLICY,
        decisions[-1].state,
        changed=True,
        rng=random.Random(1),
        status="running",
        progress=0,
        now=150.0,
    )
    assert running.state.track is not None
    assert running.state.track.status == "running"
    assert running.state.track.first.after == 120.0
    assert running.state.estimated_end is None
    assert running.reason is Reason.NO_RATE


def test_without_progress_the_previous_cadence_is_kept() -> None:
    """No progress field: interval_min after a change, jittered growth while quiet."""
    decisions = feed([(n * 10.0, None) for n in range(30)])
    assert decisions[0].reason is Reason.CHANGED
    assert decisions[0].delay == 5.0
    assert all(d.reason is Reason.UNCHANGED for d in decisions[1:])
    assert all(d.state.track is None and d.state.estimated_end is None for d in decisions)
    assert all(5.0 <= d.delay <= 60.0 for d in decisions)


def cbr_curve(duration: float, tail: float, exponent: float = 1.0) -> Curve:
    """100·x^a up to 99 %, then 99 for the last `tail` of the run (0 s = the run's start)."""

    def progress(t: float) -> int:
        share = min(1.0, max(t, 0.0) / (duration * (1 - tail)))
        return min(99, math.floor(100 * float(share**exponent)))

    return progress


def follow(
    curve: Curve,
    end: float,
    *,
    policy: Policy = POLICY,
    seed: int = 1,
) -> tuple[int, float, list[Decision]]:
    """Poll as the cadence says from the run's start (a task seen running at once) until the
    end: (polls, detection delay, every decision)."""
    rng = random.Random(seed)
    state, now, polls, decisions = PollState(), 0.0, 0, []
    previous: int | None = None
    while now < end:
        polls += 1
        progress = curve(now)
        decision = schedule.after_success(
            policy,
            state,
            changed=progress != previous,
            rng=rng,
            status="running",
            progress=progress,
            now=now,
        )
        decisions.append(decision)
        state, previous, now = decision.state, progress, now + decision.delay
    return polls + 1, now - end, decisions


def test_the_far_cadence_is_just_under_the_progress_interval() -> None:
    """Far from the end the gauge is refreshed every progress_interval, never less often and
    barely more (1 % jitter)."""
    _, _, decisions = follow(cbr_curve(8 * 3600.0, 0.05), 8 * 3600.0)
    far = [d.delay for d in decisions if d.reason is Reason.PROGRESS]
    assert len(far) > 150
    assert all(0.99 * 120 <= delay <= 120 for delay in far)


@settings(max_examples=60, deadline=None)
@given(
    duration=st.floats(min_value=300.0, max_value=12 * 3600.0),
    tail=st.floats(min_value=0.03, max_value=0.6),
    exponent=st.floats(min_value=0.6, max_value=1.8),
    seed=st.integers(0, 2**16),
)
def test_never_later_than_the_maximum_once_the_estimate_passes(
    duration: float, tail: float, exponent: float, seed: int
) -> None:
    """Whatever the tail (inside the band or far beyond it), a task that ends on its plateau
    is seen within poll_interval_max of its end."""
    curve = cbr_curve(duration, tail, exponent)
    _, delay, decisions = follow(curve, duration, seed=seed)
    assert 0 <= delay <= POLICY.interval_max
    on_plateau = [d for d in decisions if d.state.track and d.state.track.plateau]
    assert all(d.delay <= POLICY.interval_max for d in on_plateau)


# ---- precedence: Retry-After, errors, 404 grace and the deadline over the estimate -------------


def near_end_state() -> PollState:
    samples = linear(3600.0, until=3560.0, every=20.0)
    decision = feed(samples)[-1]
    assert decision.reason is Reason.NEAR_END
    return decision.state


def test_retry_after_beats_the_estimate() -> None:
    """Near the end the estimate wants a poll in seconds; Retry-After: 90 still wins."""
    state = near_end_state()
    decision = schedule.after_throttled(POLICY, state, retry_after=90.0, rng=random.Random(1))
    assert decision.reason is Reason.RETRY_AFTER
    assert decision.delay == 90.0
    assert decision.state.track == state.track  # the samples survive the 429


def test_errors_back_off_by_their_streak_not_by_the_estimate() -> None:
    """A 5xx near the end backs off like any error, and keeps the samples for later."""
    state = near_end_state()
    rng = random.Random(3)
    for streak in range(1, 6):
        decision = schedule.after_error(POLICY, state, rng=rng)
        assert decision.reason is Reason.ERROR
        assert 5.0 <= decision.delay <= min(60.0, 5.0 * 2**streak)
        state = decision.state
    assert state.track is not None
    assert state.estimated_end is not None


def test_not_found_grace_is_unchanged_by_an_estimate() -> None:
    """404s run their own grace whatever the estimate says."""
    state = near_end_state()
    decision = schedule.after_not_found(POLICY, state, now=100.0, rng=random.Random(1))
    assert decision is not None
    assert decision.reason is Reason.NOT_FOUND
    assert schedule.after_not_found(POLICY, decision.state, now=221.0, rng=random.Random(1)) is None


def test_the_deadline_beats_the_estimate() -> None:
    """A progress refresh that would sleep past the deadline is cut to it."""
    decision = feed(linear(6 * 3600.0, until=3 * 3600.0))[-1]
    assert decision.reason is Reason.PROGRESS
    policy = Policy(deadline=3600.0)
    clamped = schedule.clamp_to_deadline(policy, decision, started=0.0, now=3590.0)
    assert (clamped.delay, clamped.reason) == (10.0, Reason.DEADLINE)


samples_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3600.0, allow_nan=False),
        st.one_of(st.none(), st.integers(min_value=0, max_value=100)),
        st.sampled_from(["waiting", "running", "paused"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(samples=samples_strategy, seed=st.integers(0, 2**16), deadline=st.floats(60.0, 86_400.0))
def test_any_sample_sequence_gives_a_bounded_delay_never_past_the_deadline(
    samples: list[tuple[float, int | None, str]], seed: int, deadline: float
) -> None:
    """Whatever progress does (jumps, regressions, gaps, vanishing), every delay lies in
    [0, max(progress_interval, interval_max)] and never sleeps past the deadline."""
    policy = Policy(deadline=deadline)
    rng = random.Random(seed)
    state, now, previous = PollState(), 0.0, None
    bound = max(policy.progress_interval, policy.interval_max)
    for gap, progress, status in samples:
        now += gap
        decision = schedule.after_success(
            policy,
            state,
            changed=(progress, status) != previous,
            rng=rng,
            status=status,
            progress=progress,
            now=now,
        )
        decision = schedule.clamp_to_deadline(policy, decision, started=0.0, now=now)
        assert 0.0 <= decision.delay <= bound
        assert now + decision.delay <= max(now, deadline) + 1e-6
        assert decision.state.estimated_end is None or math.isfinite(decision.state.estimated_end)
        state, previous = decision.state, (progress, status)


# ---- the engine on the fake clock --------------------------------------------------------------


async def test_a_long_task_costs_about_one_poll_per_progress_interval(world: World) -> None:
    """4 h of steady progress, one task alone (no sweep pays): about one look per
    min(progress_interval, poll_interval_max) — the hard cap wins over progress_interval —
    plus a bounded number near the end, and the end seen within poll_interval_max."""
    running = 4 * 3600.0
    task_id = world.sim.add_task(
        SimTaskSpec(id="long", waiting=30, running=running, progress_exponent=1.0)
    )
    engine = make_engine(world)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    task = engine.tasks[task_id]
    assert task.end_reason == "success"
    requests = world.sim.request_count(task_id)
    far = running / min(engine.policy.progress_interval, engine.policy.interval_max)
    reasons = engine.stats.poll_reasons
    assert 0.9 * far <= reasons["progress"] <= 1.1 * far
    near = reasons["near_end"] + reasons["approach"] + reasons["overdue"]
    assert near <= 60
    assert requests <= far * 1.1 + 90
    end = world.sim.tasks[task_id].end_wall
    assert end is not None
    assert task.ended_wall is not None
    assert 0 <= task.ended_wall - end <= 60.0
    assert sum(reasons.values()) == requests - 1  # the final poll schedules nothing


async def test_retry_after_is_honoured_up_to_poll_interval_max(world: World) -> None:
    """A 429 with Retry-After: 90 on the plateau, with poll_interval_max 60: no request for
    60 s (not 90: no header stops the watching longer than a look may wait), one warning that
    says so, and the end still seen."""
    task_id = world.sim.add_task(
        SimTaskSpec(id="thr-end", waiting=5, running=1800, progress_exponent=1.0)
    )
    engine = make_engine(world)
    assert engine.policy.interval_max == 60
    engine.add(task_id)
    with capture_logs() as logs:
        async with Running(world, engine) as running:
            await running.until(lambda: (engine.tasks[task_id].progress or 0) >= 99)
            world.sim.faults.script(task_id, ["throttle:90"])
            await running.until(engine.all_done)
    requests = [r for r in world.sim.request_log if r.task_id == task_id]
    throttled = next(n for n, r in enumerate(requests) if r.status == 429)
    gap = requests[throttled + 1].monotonic - requests[throttled].monotonic
    assert 60 <= gap < 90  # the clamp, not the header (a loaded machine may add a little)
    assert engine.tasks[task_id].end_reason == "success"
    assert engine.stats.poll_reasons["retry_after"] == 1
    clamped = [e for e in logs if e["event"] == "upstream.retry_after_clamped"]
    assert [(e["retry_after_seconds"], e["clamped_to_seconds"]) for e in clamped] == [(90.0, 60)]


async def test_metrics_explain_the_cadence(world: World) -> None:
    """polls_total{reason} starts at 0 for every reason and follows the engine; the estimated
    end is exported while the task runs and is gone once it ended."""
    metrics = Metrics(clock=world.clock, process_metrics=False)
    before = _samples(metrics.render()[0])
    for reason in Reason:
        assert before[("cbr_watcher_polls_total", (("reason", reason.value),))] == 0
    task_id = world.sim.add_task(
        SimTaskSpec(id="est", waiting=5, running=3600, progress_exponent=1.0)
    )
    engine = make_engine(world)
    metrics.attach(engine)
    engine.add(task_id)
    name = "cbr_watcher_task_estimated_end_timestamp_seconds"
    key = (name, (("task_id", task_id),))
    async with Running(world, engine) as running:
        await running.until(lambda: (engine.tasks[task_id].progress or 0) >= 30)
        fast = _samples(metrics.render()[0])
        assert fast[key] == engine.tasks[task_id].poll_state.estimated_end
        assert abs(fast[key] - world.sim.tasks[task_id].end_wall) < 300  # type: ignore[operator]
        progress_polls = fast[("cbr_watcher_polls_total", (("reason", "progress"),))]
        assert progress_polls == engine.stats.poll_reasons["progress"] > 0
        await running.until(engine.all_done)
    after = _samples(metrics.render()[0])
    assert key not in after


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
