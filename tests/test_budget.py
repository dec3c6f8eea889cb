"""The shared request budget: never more than `rate` starts in any one-second window."""

from __future__ import annotations

import itertools
import random

import pytest

from watcher.engine.budget import RequestBudget


def starts_under_pressure(
    rate: float, seconds: float, seed: int, gaps: tuple[float, ...] = (0.0, 0.0, 0.001, 0.01, 0.2)
) -> list[float]:
    """Try to start a request at random instants as often as the budget allows."""
    rng = random.Random(seed)
    budget = RequestBudget(rate)
    now, starts = 0.0, []
    while now < seconds:
        if budget.try_acquire(now):
            starts.append(now)
        else:
            now = budget.next_allowed(now)
            continue
        now += rng.choice(gaps)
    return starts


@pytest.mark.parametrize(("rate", "seed"), [(20, 1), (5, 2), (1, 3), (0.5, 4), (200, 5)])
def test_no_sliding_window_exceeds_the_rate(rate: float, seed: int) -> None:
    """Every window (t-1, t] holds at most `rate` starts, wherever it is placed."""
    starts = starts_under_pressure(rate, 30.0, seed)
    limit = max(1, int(rate))
    left = 0
    for right, t in enumerate(starts):
        while starts[left] <= t - 1.0:
            left += 1
        assert right - left + 1 <= limit


def test_budget_is_used_fully_when_demand_is_high() -> None:
    """Under constant demand the budget is spent, not wasted: about `rate` per second."""
    starts = starts_under_pressure(20, 10.0, 9, gaps=(0.0, 0.001))
    assert 190 <= len(starts) <= 220


def test_sub_one_rates_space_requests_out() -> None:
    """A rate of 0.5/s means one request every two seconds."""
    starts = starts_under_pressure(0.5, 10.0, 1)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 2.0 - 1e-9 for gap in gaps)


def test_pause_holds_every_request_until_it_ends() -> None:
    """After a Retry-After pause nothing may start before the pause is over."""
    budget = RequestBudget(10)
    budget.pause_until(5.0)
    assert not budget.try_acquire(1.0)
    assert budget.next_allowed(1.0) == 5.0
    assert budget.try_acquire(5.0)
