"""Test support shipped for the tests and the benchmarks, never used by the daemon itself.

`FakeClock` only moves when a test (or `drive_until`) advances it, so an hour-long backup is
tested in milliseconds without a single real sleep deciding an assertion.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from types import TracebackType


class FakeClock:
    """A clock that moves only when told to.

    Sleepers and timeouts register a deadline; `advance` / `advance_to_next` fire them in
    deadline order, setting the clock to each deadline as it fires.
    """

    def __init__(self, *, start_wall: float = 1_767_225_600.0, start_monotonic: float = 1000.0):
        self._mono = start_monotonic
        self._wall_offset = start_wall - start_monotonic
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        """Current fake monotonic time."""
        return self._mono

    def wall(self) -> float:
        """Current fake epoch time; moves in lockstep with `monotonic`."""
        return self._mono + self._wall_offset

    def call_at(self, deadline: float, callback: Callable[[], None]) -> _Timer:
        """Run `callback` when the clock reaches `deadline` (monotonic seconds)."""
        timer = _Timer(deadline, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by `seconds`."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_at(self._mono + seconds, wake)
        try:
            await future
        finally:
            timer.cancelled = True

    def timeout(self, seconds: float) -> _FakeTimeoutContext:
        """Raise TimeoutError in the body once the clock passes now + `seconds`."""
        return _FakeTimeoutContext(self, seconds)

    def next_deadline(self) -> float | None:
        """The earliest pending timer, or None when nothing waits on this clock."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].deadline if self._timers else None

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing every timer that falls due on the way."""
        self.advance_to(self._mono + seconds)

    def advance_to(self, target: float) -> None:
        """Move time forward to `target`, firing timers in order."""
        while self._timers and self._timers[0].deadline <= target:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._mono = max(self._mono, timer.deadline)
            timer.callback()
        self._mono = max(self._mono, target)

    def advance_to_next(self) -> bool:
        """Jump to the next timer and fire it; False when no timer is pending."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self.advance_to(deadline)
        return True


class _Timer:
    """One pending FakeClock callback; ordered by deadline, then creation."""

    __slots__ = ("callback", "cancelled", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: _Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class _FakeTimeoutContext:
    """`asyncio.timeout` driven by a FakeClock: on the fake deadline, expire the real one now."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._inner = asyncio.timeout(None)
        self._timer: _Timer | None = None

    async def __aenter__(self) -> _FakeTimeoutContext:
        await self._inner.__aenter__()
        loop = asyncio.get_running_loop()

        def expire() -> None:
            self._inner.reschedule(loop.time())

        self._timer = self._clock.call_at(self._clock.monotonic() + self._seconds, expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._timer is not None:
            self._timer.cancelled = True
        await self._inner.__aexit__(exc_type, exc, tb)
        return None


async def drive_until(
    clock: FakeClock,
    done: Callable[[], bool],
    *,
    busy: Callable[[], bool] = lambda: False,
    max_seconds: float = 86_400 * 3,
    settle_real: float = 0.05,
) -> None:
    """Run the event loop, jumping the fake clock whenever the system under test is idle.

    `busy()` says real I/O is under way (for example requests in flight to a simulator on a
    real socket); the clock waits for it, but never more than `settle_real` real seconds, so a
    request that hangs on purpose is eventually released by its fake-clock timeout.
    Raises TimeoutError if `done()` is not true within `max_seconds` of fake time.
    """
    limit = clock.monotonic() + max_seconds
    loop = asyncio.get_running_loop()
    while not done():
        for _ in range(8):
            await asyncio.sleep(0)
        if done():
            return
        if busy():
            started = loop.time()
            # Polling a predicate is the point here: the I/O belongs to code under test.
            while busy() and loop.time() - started < settle_real:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            if not busy():
                continue
        if clock.monotonic() > limit:
            raise TimeoutError(f"condition not met within {max_seconds} fake seconds")
        if not clock.advance_to_next():
            await asyncio.sleep(0.001)
