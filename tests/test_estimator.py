"""The end estimator on synthetic progress curves: pure functions, no clock, no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from watcher.engine import estimator
from watcher.engine.estimator import PLATEAU, RECENT, Estimate, Track

Curve = Callable[[float], int]
"""Progress (0–100) at `t` seconds into the run."""


def run_for(curve: Curve, until: float, every: float = 60.0) -> Track:
    """Feed `observe` a poll every `every` seconds from 0 to `until` (inclusive)."""
    track: Track | None = None
    t = 0.0
    while t <= until + 1e-9:
        track = estimator.observe(track, status="running", progress=curve(t), now=t)
        t += every
    assert track is not None
    return track


def cbr_like(duration: float, exponent: float = 1.0, tail: float = 0.05) -> Curve:
    """The shape CBR reports: 100·x^a up to 99 %, then 99 for the last `tail` of the run."""

    def progress(t: float) -> int:
        share = min(1.0, t / (duration * (1 - tail)))
        return min(99, math.floor(100 * float(share**exponent)))

    return progress


def estimate_at(track: Track, now: float) -> Estimate:
    found = estimator.estimate(track, now)
    assert found is not None
    return found


def test_linear_curve_puts_the_end_after_the_plateau() -> None:
    """A steady 1 %/min task: the estimate lands on the real end, within its uncertainty."""
    duration = 6000.0
    track = run_for(cbr_like(duration), until=3000)
    found = estimate_at(track, 3000)
    assert not found.on_plateau
    assert found.rate == pytest.approx(100 / (duration * 0.95), rel=0.05)
    assert abs(found.end - duration) <= found.uncertainty
    # Far from the end: the window is a few per cent of the run, not the whole run.
    assert found.uncertainty < 0.06 * duration


def test_uncertainty_shrinks_as_samples_agree() -> None:
    """Early, the two rates disagree (integer steps on a short baseline); later they agree."""
    curve = cbr_like(6000.0)
    early = estimate_at(run_for(curve, until=240, every=120), 240)
    late = estimate_at(run_for(curve, until=3000, every=120), 3000)
    assert late.uncertainty < early.uncertainty
    assert abs(late.end - 6000) <= late.uncertainty


@pytest.mark.parametrize("exponent", [0.6, 1.0, 1.8])
def test_on_the_plateau_the_end_is_a_tail_after_its_start(exponent: float) -> None:
    """At 99 %, the end is the plateau start plus a tail proportional to the run so far."""
    duration = 7200.0
    curve = cbr_like(duration, exponent)
    track = run_for(curve, until=duration * 0.97, every=20)
    found = estimate_at(track, duration * 0.97)
    assert found.on_plateau
    assert track.plateau is not None
    assert track.plateau.progress == PLATEAU
    assert found.plateau_at < duration * 0.97
    assert abs(found.end - duration) <= found.uncertainty


def test_s_curve_slowing_toward_the_end_gets_a_later_estimate() -> None:
    """A curve that slows down spends longer between 99 and 100: the estimate accounts for it."""
    duration = 4000.0

    def s_curve(t: float) -> int:
        x = min(1.0, t / (duration * 0.95))
        low, high = 1 / (1 + math.exp(3)), 1 / (1 + math.exp(-3))
        value = (1 / (1 + math.exp(-6 * (x - 0.5))) - low) / (high - low)
        return min(99, math.floor(100 * value))

    track = run_for(s_curve, until=duration * 0.99, every=30)
    slow = estimate_at(track, duration * 0.99)
    fast = estimate_at(run_for(cbr_like(duration), until=duration * 0.99, every=30), 3960)
    assert slow.on_plateau
    assert fast.on_plateau
    assert slow.end - slow.plateau_at > fast.end - fast.plateau_at
    assert abs(slow.end - duration) <= slow.uncertainty + 0.03 * duration


def test_stall_is_detected_and_the_estimate_moves_out() -> None:
    """Progress that stops where the rate says it should move: stalled, the end recedes."""

    def stalling(t: float) -> int:
        return math.floor(min(t, 1200.0) / 30)  # 2 %/min, then frozen at 40 %

    track = run_for(stalling, until=1200, every=60)
    moving = estimate_at(track, 1200)
    assert not moving.stalled
    track = run_for(stalling, until=1800, every=60)
    stalled = estimate_at(track, 1800)
    assert stalled.stalled
    assert stalled.end > moving.end + 500


def test_sitting_at_zero_gives_no_estimate_until_it_leaps() -> None:
    """No rate from a task that has not moved; the first leap gives one."""

    def leap(t: float) -> int:
        return 0 if t < 900 else 40 + math.floor((t - 900) / 30)

    assert estimator.estimate(run_for(leap, until=840), 840) is None
    found = estimate_at(run_for(leap, until=1020), 1020)
    assert found.rate is not None
    assert found.rate > 0
    assert found.end > 1020


def test_a_jump_raises_the_rate_but_the_early_plateau_bound_stays_early() -> None:
    """A jump mid-run: the faster rate decides the earliest plausible plateau, never later."""

    def jumping(t: float) -> int:
        return min(99, math.floor(t / 60) + (30 if t >= 1800 else 0))

    track = run_for(jumping, until=1920, every=60)
    found = estimate_at(track, 1920)
    assert found.plateau_early <= found.plateau_at
    assert found.plateau_early >= 1920


def test_regress_starts_a_new_track() -> None:
    """Progress going backwards (a retried step) forgets the old rate."""
    track = run_for(lambda t: math.floor(t / 10), until=600)
    assert track.last.progress == 60
    regressed = estimator.observe(track, status="running", progress=20, now=660)
    assert regressed is not None
    assert regressed.first == estimator.Sample(660, 600, 20)
    assert regressed.changes == ()
    assert estimator.estimate(regressed, 660) is None


def test_a_new_status_starts_a_new_track_bounded_by_the_last_look() -> None:
    """waiting → running: the run started between the last waiting look and the first running."""
    track = estimator.observe(None, status="waiting", progress=0, now=0)
    track = estimator.observe(track, status="waiting", progress=0, now=50)
    track = estimator.observe(track, status="running", progress=0, now=80)
    assert track is not None
    assert track.status == "running"
    assert track.first == estimator.Sample(80, 50, 0)


def test_no_progress_means_no_track() -> None:
    """A task that reports no progress has nothing to estimate."""
    assert estimator.observe(None, status="running", progress=None, now=0) is None
    track = estimator.observe(None, status="running", progress=5, now=0)
    assert estimator.observe(track, status="running", progress=None, now=10) is None


def test_the_track_stays_bounded() -> None:
    """Hours of samples keep the first look, the plateau and the last few changes only."""
    track = run_for(cbr_like(36_000.0), until=35_000, every=30)
    assert len(track.changes) == RECENT
    assert track.first.progress == 0
    assert track.plateau is not None
    assert track.last_look == pytest.approx(34_980)


def test_minimum_uncertainty_is_honoured() -> None:
    """A very short task still gets a window of at least the requested width."""
    track = run_for(lambda t: min(99, math.floor(t * 2)), until=60, every=5)
    found = estimator.estimate(track, 60, min_uncertainty=5.0)
    assert found is not None
    assert found.uncertainty >= 5.0


# ---- the tail: a band, learned from the tasks that ended ----------------------------------
