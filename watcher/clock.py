"""Injected time: the engine, the schedule and the simulator never read the system clock directly.

`RealClock` is what the daemon uses. `ScaledClock` runs time faster (the demo). The tests'
`FakeClock` lives in `watcher.testing`.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    """What the daemon needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for `seconds` of this clock's time."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """An async context manager raising TimeoutError after `seconds` of this clock's time."""
        ...


class RealClock:
    """The system clocks and asyncio's own sleep and timeout."""

    def monotonic(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    def wall(self) -> float:
        """Return `time.time()`."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(max(0.0, seconds))

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """Return `asyncio.timeout(seconds)`."""
        return asyncio.timeout(max(0.0, seconds))


class ScaledClock:
    """Real time running `speed` times faster, from the moment the clock is created.

    `origin` = (a `time.monotonic()` reading, the epoch seconds it stands for) anchors the
    scaled timeline at that instant instead. CLOCK_MONOTONIC is system-wide on Linux, so two
    processes given the same speed and origin read the same scaled time (a benchmark's engine
    and its simulator in another process).
    """

    def __init__(self, speed: float, *, origin: tuple[float, float] | None = None) -> None:
        if not math.isfinite(speed) or speed <= 0:
            raise ValueError("speed must be a positive number")
        if origin is not None and not all(math.isfinite(value) for value in origin):
            raise ValueError("origin must be two finite numbers (monotonic, wall)")
        self.speed = speed
        self._mono0, self._wall0 = origin if origin is not None else (time.monotonic(), time.time())

    @property
    def origin(self) -> tuple[float, float]:
        """(monotonic reading, epoch seconds) where this clock's scaled time starts."""
        return self._mono0, self._wall0

    def monotonic(self) -> float:
        """Scaled seconds since creation, on a monotonic base."""
        return self._mono0 + (time.monotonic() - self._mono0) * self.speed

    def wall(self) -> float:
        """Epoch seconds that advance `speed` times faster than real time."""
        return self._wall0 + (time.monotonic() - self._mono0) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds / speed` real seconds."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """A real timeout of `seconds / speed`."""
        return asyncio.timeout(max(0.0, seconds) / self.speed)
