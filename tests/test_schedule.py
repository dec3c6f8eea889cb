"""The polling cadence: pure decisions, checked without any clock."""

from __future__ import annotations

import random

import pytest

from watcher.backoff import full_jitter
from watcher.engine import schedule
from watcher.engine.schedule import Policy, PollState, Reason

POLICY = Policy(interval_min=5.0, interval_max=60.0, deadline=3600.0, not_found_grace=120.0)


def quiet_delays(count: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    state, delays = PollState(), []
    for _ in range(count):
        decision = schedule.after_success(POLICY, state, changed=False, rng=rng)
        state = decision.state
        delays.append(decision.delay)
    return delays


def test_first_quiet_poll_waits_exactly_the_minimum() -> None:
    """After the first look, the next poll comes poll_interval_min later."""
    assert quiet_delays(1) == [5.0]


def test_quiet_polls_grow_toward_the_maximum_and_never_pass_it() -> None:
    """While nothing changes the delay spreads out, bounded by [min, max]."""
    delays = quiet_delays(200)
    assert all(5.0 <= d <= 60.0 for d in delays)
    assert max(delays[20:]) > 40.0
    assert sum(delays[100:]) / 100 > sum(delays[1:4]) / 3


def test_jitter_spreads_tasks_apart() -> None:
    """Different random streams give different delays once the cap has grown."""
    assert len({quiet_delays(6, seed)[-1] for seed in range(20)}) > 10


def test_a_change_resets_to_the_minimum() -> None:
    """Without progress samples (no status/now given, or a task without progress), movement
    brings the cadence back to poll_interval_min. Tasks with progress: tests/test_cadence.py."""
    rng = random.Random(3)
    state = PollState(quiet_polls=9, error_streak=2)
    decision = schedule.after_success(POLICY, state, changed=True, rng=rng)
    assert decision.delay == 5.0
    assert decision.reason is Reason.CHANGED
    assert decision.state == PollState()


@pytest.mark.parametrize("retry_after", [30.0, 90.0, 600.0])
def test_retry_after_is_a_floor(retry_after: float) -> None:
    """A 429 with Retry-After never polls sooner than the header says."""
    rng = random.Random(5)
    for streak in range(8):
        state = PollState(error_streak=streak)
        decision = schedule.after_throttled(POLICY, state, retry_after=retry_after, rng=rng)
        assert decision.delay >= retry_after


def test_throttled_without_retry_after_backs_off() -> None:
    """Without a header the delay grows with the streak, within [min, max]."""
    rng = random.Random(5)
    state, delays = PollState(), []
    for _ in range(10):
        decision = schedule.after_throttled(POLICY, state, retry_after=None, rng=rng)
        state = decision.state
        delays.append(decision.delay)
    assert all(5.0 <= d <= 60.0 for d in delays)
    assert state.error_streak == 10


def test_errors_back_off_with_a_growing_cap() -> None:
    """Transient errors: the cap doubles per failure, the delay is jittered under it."""
    rng = random.Random(7)
    state = PollState()
    caps = []
    for _ in range(6):
        decision = schedule.after_error(POLICY, state, rng=rng)
        state = decision.state
        caps.append(min(60.0, 5.0 * 2**state.error_streak))
        assert 5.0 <= decision.delay <= caps[-1]


def test_auth_failure_retries_once_at_once_then_backs_off() -> None:
    """401 → immediate retry after a reload; a second 401 → backoff."""
    rng = random.Random(1)
    first = schedule.after_auth_failure(POLICY, PollState(), rng=rng)
    assert (first.delay, first.reason) == (0.0, Reason.AUTH_RETRY)
    second = schedule.after_auth_failure(POLICY, first.state, rng=rng)
    assert second.reason is Reason.ERROR
    assert second.delay >= 5.0


def test_not_found_grace_runs_out() -> None:
    """404s are retried until not_found_grace has passed since the first one."""
    rng = random.Random(1)
    decision = schedule.after_not_found(POLICY, PollState(), now=100.0, rng=rng)
    assert decision is not None
    assert decision.state.not_found_since == 100.0
    later = schedule.after_not_found(POLICY, decision.state, now=210.0, rng=rng)
    assert later is not None
    assert later.delay <= 10.0  # the last look lands exactly at the end of the grace
    assert schedule.after_not_found(POLICY, later.state, now=220.0, rng=rng) is None


def test_a_success_clears_the_not_found_clock() -> None:
    """A task that appears after some 404s starts a fresh grace if it vanishes again."""
    rng = random.Random(1)
    state = PollState(not_found_since=10.0, error_streak=3)
    decision = schedule.after_success(POLICY, state, changed=True, rng=rng)
    assert decision.state.not_found_since is None


def test_never_sleeps_past_the_deadline() -> None:
    """The last poll is made at the deadline, not after it."""
    decision = schedule.Decision(PollState(), 60.0, Reason.UNCHANGED)
    clamped = schedule.clamp_to_deadline(POLICY, decision, started=0.0, now=3590.0)
    assert clamped.delay == 10.0
    assert clamped.reason is Reason.DEADLINE
    assert schedule.expired(POLICY, started=0.0, now=3600.0)
    assert not schedule.expired(POLICY, started=0.0, now=3599.0)


def test_transient_errors_do_not_restart_the_not_found_grace() -> None:
    """404, 5xx, 429, 404 …: the grace runs from the first 404; only a success resets it."""
    rng = random.Random(2)
    state = schedule.after_not_found(POLICY, PollState(), now=0.0, rng=rng)
    assert state is not None
    state = schedule.after_error(POLICY, state.state, rng=rng)
    state = schedule.after_throttled(POLICY, state.state, retry_after=None, rng=rng)
    assert state.state.not_found_since == 0.0
    assert schedule.after_not_found(POLICY, state.state, now=125.0, rng=rng) is None


@pytest.mark.parametrize("streak", [0, 1, 3, 7, 80])
def test_every_backoff_is_the_one_full_jitter_rule(streak: int) -> None:
    """Errors, 429s, 404s and quiet polls draw exactly what `watcher.backoff.full_jitter`
    draws for the same attempt and random stream: one rule, floored at poll_interval_min."""

    def expected(attempt: int) -> float:
        return full_jitter(
            attempt, base=5.0, cap=60.0, rng=random.Random(streak), floor=POLICY.interval_min
        )

    state = PollState(error_streak=streak, quiet_polls=streak)
    rng = random.Random
    assert schedule.after_error(POLICY, state, rng=rng(streak)).delay == expected(streak + 1)
    throttled = schedule.after_throttled(POLICY, state, retry_after=None, rng=rng(streak))
    assert throttled.delay == expected(streak + 1)
    not_found = schedule.after_not_found(POLICY, state, now=0.0, rng=rng(streak))
    assert not_found is not None
    assert not_found.delay == expected(streak + 1)
    quiet = schedule.after_success(POLICY, state, changed=False, rng=rng(streak))
    assert quiet.delay == expected(streak)
