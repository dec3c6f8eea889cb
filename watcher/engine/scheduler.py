"""The one scheduler: a min-heap of due times, a bound on requests in flight, one request
budget shared by every watch, and the loop that turns them into requests.

It knows task IDs and due times, not what a request does: the engine hands it a `start`
callback for due tasks. Other request makers (refresh listings, discovery) wait their turn
with `acquire_request`, and are served before due polls so a listing is never starved.
Every request runs as a tracked asyncio task, drained (then cancelled) when the loop stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from watcher.clock import Clock
from watcher.engine.budget import RequestBudget

HEARTBEAT = 1.0
"""The loop turns at least this often (fake or real seconds), even with nothing due."""


@dataclass(slots=True)
class Slot:
    """Where one active task is in the schedule."""

    task_id: str
    due: float = 0.0
    generation: int = 0
    """Bumped whenever the task is rescheduled, held or dropped: a request or a heap entry of
    an older generation no longer counts."""
    in_flight: bool = False
    """A poll or a listing for this task is under way."""
    confirm: bool = False
    """A listing missed it: its next look is a ShowOpLog."""
    warned_statuses: frozenset[str] = frozenset()
    """Unknown CBR statuses already logged for this task."""


StartRequest = Callable[[Slot, int], None]
"""Starts the request for a due task (`slot`, `generation`); the scheduler marks it in flight."""


class Scheduler:
    """Due times, concurrency and the request budget of every watch."""

    def __init__(
        self,
        clock: Clock,
        *,
        budget: RequestBudget,
        max_concurrency: int,
        on_crash: Callable[[BaseException], None],
    ) -> None:
        self._clock = clock
        self.budget = budget
        self._max_concurrency = max_concurrency
        self._on_crash = on_crash
        self._slots: dict[str, Slot] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Future[None]] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._outside = 0
        self.lag_samples: deque[float] | None = None
        """Where `launch_due` records each due poll's lag, when set."""

    # ---- slots ------------------------------------------------------------------------------

    def add(self, task_id: str, *, delay: float | None = 0.0) -> Slot:
        """A slot for a newly active task, due after `delay` (None: not scheduled yet)."""
        slot = Slot(task_id)
        self._slots[task_id] = slot
        if delay is not None:
            self.schedule(slot, delay)
        return slot

    def get(self, task_id: str) -> Slot | None:
        """The slot of an active task, or None."""
        return self._slots.get(task_id)

    def drop(self, task_id: str) -> Slot | None:
        """Forget a task that ended or was removed; its requests under way no longer count."""
        slot = self._slots.pop(task_id, None)
        if slot is not None:
            slot.generation += 1
            slot.in_flight = False
        return slot

    def readd(self, slot: Slot) -> None:
        """Put back a slot dropped by a removal that could not be committed; due at once."""
        self._slots[slot.task_id] = slot
        self.schedule(slot, 0.0)

    def slots(self) -> Iterator[Slot]:
        """Every active task's slot."""
        return iter(self._slots.values())

    def __len__(self) -> int:
        return len(self._slots)

    def schedule(self, slot: Slot, delay: float) -> None:
        """Make `slot` due `delay` seconds from now (superseding any earlier due time)."""
        slot.generation += 1
        slot.in_flight = False
        slot.due = self._clock.monotonic() + max(0.0, delay)
        heapq.heappush(self._heap, (slot.due, next(self._seq), slot.task_id, slot.generation))
        self._wake.set()

    def hold(self, slot: Slot) -> int:
        """Take `slot` off the heap for a request made elsewhere (a listing); returns the
        generation that request must present."""
        slot.generation += 1
        slot.in_flight = True
        return slot.generation

    def current(self, slot: Slot, generation: int) -> bool:
        """Whether the task is still active and a request of `generation` still counts."""
        return self._slots.get(slot.task_id) is slot and slot.generation == generation

    # ---- requests ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests (polls and listings) under way right now."""
        return len(self._running) + self._outside

    @contextlib.contextmanager
    def requests_under_way(self) -> Iterator[None]:
        """Count requests made outside the spawned ones (a sweep's pages) as in flight."""
        self._outside += 1
        try:
            yield
        finally:
            self._outside -= 1

    def spawn(self, work: Awaitable[None], name: str) -> None:
        """Run one request (or listing) as a tracked task."""
        runner = asyncio.ensure_future(work)
        runner.set_name(name)
        self._running.add(runner)
        runner.add_done_callback(self._finished)

    def _finished(self, runner: asyncio.Future[None]) -> None:
        self._running.discard(runner)
        self._wake.set()
        if not runner.cancelled() and runner.exception() is not None:
            # Requests catch everything; this only fires if that promise breaks.
            self._on_crash(runner.exception())  # type: ignore[arg-type]

    async def acquire_request(self) -> None:
        """Wait until the shared budget allows one more request. The loop must be running."""
        if not self._waiters and self.budget.try_acquire(self._clock.monotonic()):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    def launch_due(self, now: float, start: StartRequest) -> float | None:
        """Serve waiting request makers, then start the due requests that concurrency and
        budget allow; returns when to look again (None: at the next wake-up)."""
        while self._waiters:
            allowed = self.budget.next_allowed(now)
            if allowed > now:
                return allowed
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.budget.try_acquire(now)
                waiter.set_result(None)
        while self._heap:
            due, _, task_id, generation = self._heap[0]
            slot = self._slots.get(task_id)
            if slot is None or slot.generation != generation:
                heapq.heappop(self._heap)
                continue
            if len(self._running) >= self._max_concurrency:
                return None  # a finishing request sets the wake event
            if due > now:
                return due
            allowed = self.budget.next_allowed(now)
            if allowed > now:
                return allowed
            heapq.heappop(self._heap)
            if self.lag_samples is not None:
                self.lag_samples.append(now - due)
            self.budget.try_acquire(now)
            slot.in_flight = True
            slot.confirm = False
            start(slot, generation)
        return None

    async def sleep_until_woken(self, wake_at: float | None, now: float) -> None:
        """Sleep until `wake_at`, a wake-up (new work, a finished request) or the heartbeat."""
        delay = HEARTBEAT if wake_at is None else min(HEARTBEAT, wake_at - now)
        self._wake.clear()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        try:
            async with self._clock.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    def wake(self) -> None:
        """Make the loop turn now."""
        self._wake.set()

    def unscheduled(self) -> list[Slot]:
        """Active tasks neither in flight nor on the heap with their current generation."""
        scheduled = {(task_id, generation) for _, _, task_id, generation in self._heap}
        return [
            slot
            for slot in self._slots.values()
            if not slot.in_flight and (slot.task_id, slot.generation) not in scheduled
        ]

    def clear_heap(self) -> None:
        """Forget every due time (tests use it to break the invariant on purpose)."""
        self._heap.clear()

    async def drain(self, grace: float) -> int:
        """Give requests under way `grace` seconds, then cancel them; returns how many were
        cancelled."""
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
        if not self._running:
            return 0
        pending = set(self._running)
        try:
            async with self._clock.timeout(grace):
                await asyncio.gather(*pending, return_exceptions=True)
        except TimeoutError:
            for runner in pending:
                runner.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return len(pending)
        return 0
