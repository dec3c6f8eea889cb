"""ScaledClock anchored at an origin: two clocks, even in two processes, share one timeline."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from watcher.clock import ScaledClock

SPEED = 40.0
WALL0 = 1_767_225_600.0


def _bracket(origin_mono: float, start: float, end: float) -> tuple[float, float]:
    """The scaled wall times a reading taken between real `start` and `end` may show."""
    return WALL0 + (start - origin_mono) * SPEED, WALL0 + (end - origin_mono) * SPEED


def test_anchored_clock_counts_scaled_time_from_its_origin() -> None:
    origin_mono = time.monotonic() - 5.0  # the shared timeline began 5 real seconds ago
    before = time.monotonic()
    clock = ScaledClock(SPEED, origin=(origin_mono, WALL0))
    wall, mono = clock.wall(), clock.monotonic()
    after = time.monotonic()

    low, high = _bracket(origin_mono, before, after)
    assert low <= wall <= high
    assert low - WALL0 + origin_mono <= mono <= high - WALL0 + origin_mono
    assert wall - WALL0 >= 5.0 * SPEED  # not restarted at creation
    assert clock.origin == (origin_mono, WALL0)


def test_two_clocks_with_one_origin_read_the_same_time() -> None:
    origin = (time.monotonic(), WALL0)
    first = ScaledClock(SPEED, origin=origin)
    second = ScaledClock(SPEED, origin=origin)
    before = time.monotonic()
    a = first.wall()
    b = second.wall()
    after = time.monotonic()
    low, high = _bracket(origin[0], before, after)
    assert low <= a <= b <= high


def test_a_second_process_with_the_same_origin_shares_the_timeline() -> None:
    origin_mono = time.monotonic()
    code = (
        "import sys; from watcher.clock import ScaledClock; "
        f"print(ScaledClock({SPEED!r}, origin=({origin_mono!r}, {WALL0!r})).wall())"
    )
    before = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    after = time.monotonic()
    low, high = _bracket(origin_mono, before, after)
    assert low <= float(done.stdout) <= high


def test_unanchored_clock_starts_at_the_present() -> None:
    before = time.time()
    clock = ScaledClock(SPEED)
    mono_reading, wall_reading = clock.origin
    assert before - 1.0 <= wall_reading <= time.time() + 1.0
    assert mono_reading <= time.monotonic()


@pytest.mark.parametrize(
    ("speed", "origin"),
    [
        (0.0, None),
        (-1.0, None),
        (math.nan, None),
        (10.0, (math.nan, WALL0)),
        (10.0, (1.0, math.inf)),
    ],
)
def test_bad_speed_or_origin_is_refused(speed: float, origin: tuple[float, float] | None) -> None:
    with pytest.raises(ValueError, match=r"speed|origin"):
        ScaledClock(speed, origin=origin)
