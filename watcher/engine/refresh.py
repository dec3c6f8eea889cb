"""The refresh sweep: every `list_interval`, the watched tasks are refreshed through
ListOpLogs pages whenever that costs fewer requests than one ShowOpLog each.

So every end — a failure mid-run included — is seen within about `list_interval`, whatever a
task's progress did, and a thousand tasks cost a page or two per sweep instead of a thousand
requests. A task the sweep refreshed keeps only a backstop look of its own, `poll_interval_max`
later, which the next sweep takes over; tasks no sweep covers (creation time unknown, the
listing refused, too few tasks to be worth a page) follow their own estimate-driven cadence.

Which tasks a sweep covers: one listing from the oldest covered task's creation time, newest
first. A very old task can make that window long; the sweep remembers the creation times of
the entries it read last time and leaves out the oldest tasks when the pages their window
adds cost more than their own looks would.

No herds: a failed, refused or partial listing hands its tasks back to their own schedules
spread over the next interval (never faster than the request budget), and a task the listing
missed is confirmed by one ShowOpLog, spread likewise. A refusal (403: the credentials may not
list) is logged once, counted, and turns the sweep off for an hour.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence

import structlog

from watcher.cbr.errors import CbrError, InternalError
from watcher.cbr.models import OperationLog
from watcher.clock import Clock
from watcher.engine import listing, schedule
from watcher.engine.poll import PollPath
from watcher.engine.scheduler import Scheduler, Slot
from watcher.engine.stats import EngineStats
from watcher.engine.table import TaskTable
from watcher.engine.task import WatchedTask

log = structlog.get_logger("watcher.engine")

REFUSED_PAUSE = 3600.0
"""After a refused listing (403) the sweep is tried again this much later."""
FAILURE_PAUSE_MAX = 300.0
"""A failing listing is retried after list_interval, doubling per failure up to this."""
SWEEP_BUDGET_SHARE = 1.0
"""One sweep's pages take at most this share of poll_interval_max worth of the budget."""
MIN_TASKS = 2
"""One page costs one request: below this many tasks a sweep saves nothing."""


class RefreshSweep:
    """Refreshes watched tasks through ListOpLogs pages every `list_interval`."""

    def __init__(
        self,
        *,
        poll: PollPath,
        table: TaskTable,
        scheduler: Scheduler,
        clock: Clock,
        stats: EngineStats,
        rng: random.Random,
        enabled: bool = True,
    ) -> None:
        self._poll = poll
        self._table = table
        self._scheduler = scheduler
        self._clock = clock
        self._stats = stats
        self._rng = rng
        self.enabled = enabled
        self._off_until = 0.0
        self._failures = 0
        self._refused = False
        self._seen_created: list[float] = []
        """Creation times (ascending) of the entries the last sweep read."""
        self._page_size = listing.LIST_LIMIT
        """Entries per page the cloud really served last time (never above what we ask)."""
        poll.swept_look = self.own_look

    @property
    def interval(self) -> float:
        """Seconds between two sweeps (`watch.list_interval`)."""
        return self._poll.policy.list_interval

    def own_look(self, row: WatchedTask) -> float | None:
        """After a look of its own at `row`: poll_interval_max when the next sweep will cover
        the task (it comes sooner), else None (its own cadence decides). A sweep pays from
        two tasks on; a task left out of one still gets its look within poll_interval_max."""
        if (
            not self.enabled
            or row.created_wall is None
            or len(self._scheduler) < MIN_TASKS
            or self._clock.monotonic() < self._off_until
        ):
            return None
        return self._poll.policy.interval_max

    async def run(self) -> None:
        """Sweep every `interval` until cancelled; never raises."""
        next_at = self._clock.monotonic()
        while True:
            delay = next_at - self._clock.monotonic()
            if delay > 0:
                await self._clock.sleep(delay)
            started = self._clock.monotonic()
            try:
                await self.sweep()
            except Exception as error:  # a bug here must not end the sweeps
                self._poll.internal("engine", error)
            next_at = max(started + self.interval, self._clock.monotonic())

    def _choose(self) -> list[tuple[Slot, WatchedTask]]:
        """The tasks this sweep covers (empty when a sweep would not save requests)."""
        candidates: list[tuple[Slot, WatchedTask]] = []
        for slot in self._scheduler.slots():
            if slot.in_flight or slot.confirm:
                continue
            row = self._table.get(slot.task_id)
            if row is not None and row.created_wall is not None and not row.ended:
                candidates.append((slot, row))
        if not candidates:
            return []
        # Newest first: covering the k newest costs the pages of their window, and every
        # older task its own looks (list_interval / poll_interval_max per sweep each).
        candidates.sort(key=lambda pair: pair[1].created_wall or 0.0, reverse=True)
        own_look = self.interval / self._poll.policy.interval_max
        best_k, best_cost = 0, len(candidates) * own_look
        max_pages = self._max_pages()
        for k in range(1, len(candidates) + 1):
            oldest = candidates[k - 1][1].created_wall or 0.0
            pages = self._pages_for(oldest, k)
            if pages > max_pages:
                break  # older tasks would hold a sweep longer than the budget allows
            cost = pages + (len(candidates) - k) * own_look
            if cost < best_cost:
                best_k, best_cost = k, cost
        return candidates[:best_k]

    def _pages_for(self, oldest: float, covered: int) -> int:
        """Pages a listing from `oldest` is expected to take, from what the last one read."""
        seen = len(self._seen_created) - bisect.bisect_left(self._seen_created, math.floor(oldest))
        return max(1, math.ceil(max(seen, covered) / max(self._page_size, 1)))

    async def sweep(self) -> None:
        """One sweep: refresh the covered tasks, or do nothing when that would not pay."""
        if not self.enabled or self._clock.monotonic() < self._off_until:
            return
        chosen = self._choose()
        if not chosen:
            self._poll.swept = 0
            return
        plan = listing.plan([row for _, row in chosen])
        if plan is None:
            return
        held = {slot.task_id: (slot, self._scheduler.hold(slot)) for slot, _ in chosen}
        backstop = self._poll.policy.interval_max

        async def take(page: list[OperationLog]) -> None:
            # Each answer is used as soon as its page arrives: a task on the first page is not
            # held while the rest of the listing is read.
            for answer in page:
                entry = held.pop(answer.id, None)
                if entry is not None:
                    self._stats.list_refreshed += 1
                    await self._poll.answered(*entry, answer, next_look=backstop)
                    self._poll.ensure_next(*entry)

        try:
            try:
                result = await listing.list_all(
                    self._poll.client,
                    plan,
                    wanted=list(held),
                    acquire=self._acquire_page,
                    under_way=self._scheduler.requests_under_way,
                    on_page=take,
                    max_pages=self._max_pages(),
                )
            except listing.IncompleteListingError:
                # The list was longer than the sweep may read: what was read is used, the rest
                # look for themselves, and the next sweep knows the list is longer.
                self._poll.swept = len(chosen) - len(held)
                self._hand_back(list(held.values()), confirm=False)
                return
            except Exception as error:
                self._poll.swept = len(chosen) - len(held)
                await self._failed(error, list(held.values()))
                return
            self._poll.swept = len(chosen) - len(held)
            self._succeeded(result, covered_since=min(row.created_wall or 0.0 for _, row in chosen))
            # Ended and deleted, skipped by a shifting list, or an unreadable entry: one
            # ShowOpLog each, spread out.
            self._hand_back(list(held.values()), confirm=True)
        finally:
            for slot, generation in held.values():
                self._poll.ensure_next(slot, generation)

    def _max_pages(self) -> int:
        """The pages one sweep may read: what the budget serves in one poll_interval_max (a
        page refreshes up to a thousand tasks; answers are used page by page, so only the
        tasks on the last pages wait that long)."""
        rate = self._scheduler.budget.sustained_rate
        return max(1, math.floor(SWEEP_BUDGET_SHARE * rate * self._poll.policy.interval_max))

    async def _acquire_page(self) -> None:
        await self._scheduler.acquire_request()
        self._stats.list_pages += 1

    def _succeeded(self, result: listing.ListResult, *, covered_since: float) -> None:
        self._poll.upstream.ok()
        if self._failures or self._refused:
            log.info("refresh.list_recovered", failures=self._failures)
        self._failures, self._refused = 0, False
        # What this listing read, plus what earlier ones read further back: a listing that
        # stopped early says nothing about how crowded the older part of the list is.
        window = math.floor(covered_since)
        older = self._seen_created[: bisect.bisect_left(self._seen_created, window)]
        self._seen_created = older + sorted(
            created
            for answer in result.found.values()
            if answer.created_at is not None
            and (created := answer.created_at.timestamp()) >= window
        )
        if result.largest_page:
            self._page_size = min(result.largest_page, listing.LIST_LIMIT)
        if result.malformed:
            self._stats.list_malformed["refresh"] += result.malformed
            log.warning(
                "refresh.entries_unreadable",
                entries=result.malformed,
                detail="each spoils only its own entry; those tasks are confirmed one by one",
            )

    async def _failed(self, error: Exception, held: Sequence[tuple[Slot, int]]) -> None:
        failure = error if isinstance(error, CbrError) else InternalError.wrap(error)
        now = self._clock.monotonic()
        if failure.http_status == 403:
            self._stats.list_refused["refresh"] += 1
            self._off_until = now + REFUSED_PAUSE
            if not self._refused:
                self._refused = True
                per_minute = round(60 * len(held) / self._poll.policy.interval_max)
                log.warning(
                    "refresh.list_refused",
                    tasks=len(held),
                    error_code=failure.error_code,
                    detail=(
                        "the credentials may not list operation logs (ListOpLogs 403): each"
                        f" task is refreshed with its own ShowOpLog (about {per_minute} requests"
                        " a minute now, instead of a few pages per list_interval); listing is"
                        f" tried again every {REFUSED_PAUSE / 60:g} minutes"
                    ),
                )
        else:
            self._failures += 1
            pause = min(self.interval * 2 ** (self._failures - 1), FAILURE_PAUSE_MAX)
            self._off_until = now + pause
            if self._failures == 1:
                log.warning(
                    "refresh.list_failed",
                    tasks=len(held),
                    error_type=type(error).__name__,
                    error=str(error)[:200],
                    detail="tasks fall back to their own looks, spread out; listing is retried",
                )
            await self._poll.request_failed(failure, schedule.PollState())
        self._hand_back(held, confirm=False)

    def _hand_back(self, held: Sequence[tuple[Slot, int]], *, confirm: bool) -> None:
        """Give tasks their own look again, spread over the next interval — and never
        faster than the request budget, so a listing that fails for ten thousand tasks
        makes no herd."""
        if not held:
            return
        policy = self._poll.policy
        window = max(
            policy.interval_max - self.interval, policy.interval_min, self._poll.budget_floor()
        )
        for slot, generation in held:
            if not self._scheduler.current(slot, generation):
                continue
            row = self._table.get(slot.task_id)
            if row is None or row.ended:
                continue
            slot.confirm = confirm
            delay = self._rng.uniform(0.0, window)
            self._poll.apply(
                slot,
                schedule.Decision(row.poll_state, delay, schedule.Reason.HANDED_BACK),
                spread=True,
            )
