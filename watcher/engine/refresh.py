"""The refresh sweep: every `list_interval`, the watched tasks are refreshed through
ListOpLogs pages whenever that costs fewer requests than one ShowOpLog each.

So every end — a failure mid-run included — is seen within about `list_interval`, whatever a
task's progress did, and ten thousand tasks cost a few dozen pages per sweep instead of ten
thousand requests. A task the sweep refreshed keeps only a backstop look of its own,
`poll_interval_max` later, which the next sweep takes over; a task named while sweeps run
gets its first look from the next sweep. Tasks no sweep covers (a single task, the listing
refused) follow their own estimate-driven cadence.

Two listings, read side by side, page by page: the *head* (every status, newest first: new
tasks, waiting ones and recent ends) and *running* (`status=running`: every running task,
however old, in about one page per thousand). Before each page the sweep asks which next page
is expected to find more of the tasks it has not seen yet — from the creation times the
pages so far spanned, and what the last sweep learned — and stops once no page would find
more than a ShowOpLog each would. A task neither listing showed (it ended long after it was
created, was deleted, or never existed) is confirmed by one ShowOpLog, at once when there are
few, spread when there are many. Neither listing's order, `count` nor a short page is trusted
for correctness: they only steer which page is read next.

No herds: a failed, refused or partial listing hands its tasks back to their own schedules
spread over the next interval (never faster than the request budget). A refusal (403: the
credentials may not list) is logged once, counted, and turns the sweep off for an hour.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
MIN_GAIN = 1.0
"""A page is read only when it is expected to show more unseen tasks than this (each would
otherwise cost a ShowOpLog)."""
SHORT_PAGE_DOUBT = 0.05
"""After a short page of running tasks, read on when more than this share of the watched
tasks is still unseen: the cloud may cut pages shorter than asked."""
RUNNING = "running"


@dataclass(slots=True)
class _Side:
    """One of a sweep's two listings, and what its pages told about where the next reaches."""

    pager: listing.Pager
    running_only: bool
    reach: float | None
    """Creation time (wall) down to which the next page is expected to reach; None: no
    bound known (the whole list)."""
    floor: float | None = None
    """Creation time of the oldest entry read so far."""
    short: bool = False
    """The last page returned fewer entries than a full page: the list probably ended."""
    named_found: int = 0
    """Tasks of unknown creation time (named, never seen) the last page showed."""


class _Unseen:
    """The tasks a sweep has not seen yet, by creation time, for each listing (the head
    lists every task, the running listing those last seen running): how many a page that
    spans some creation times is expected to show costs a bisection, not a scan."""

    def __init__(self, rows: Mapping[str, WatchedTask], held: Mapping[str, object]) -> None:
        self._held = held
        self.total = len(rows)
        known = sorted(
            (created, task_id)
            for task_id, row in rows.items()
            if (created := row.created_wall) is not None
        )
        running = [(c, t) for c, t in known if rows[t].status == RUNNING]
        self._created = {False: [c for c, _ in known], True: [c for c, _ in running]}
        self._ids = {False: [t for _, t in known], True: [t for _, t in running]}
        named = [t for t, row in rows.items() if row.created_wall is None]
        self._named = {False: named, True: [t for t in named if rows[t].status == RUNNING]}

    def created_between(self, running_only: bool, low: float | None, high: float | None) -> int:
        """Unseen tasks created in [low, high] (None: unbounded)."""
        created, ids = self._created[running_only], self._ids[running_only]
        start = 0 if low is None else bisect.bisect_left(created, low)
        stop = len(created) if high is None else bisect.bisect_right(created, high)
        held = self._held
        return sum(1 for task_id in ids[start:stop] if task_id in held)

    def running_between(self, low: float | None, high: float | None) -> int:
        """Tasks last seen running, created in [low, high], seen by this sweep or not."""
        created = self._created[True]
        start = 0 if low is None else bisect.bisect_left(created, low)
        stop = len(created) if high is None else bisect.bisect_right(created, high)
        return stop - start

    def named(self, running_only: bool) -> int:
        """Unseen tasks whose creation time is not known (named, never seen)."""
        held = self._held
        return sum(1 for task_id in self._named[running_only] if task_id in held)

    def eligible(self, running_only: bool) -> int:
        """Every unseen task the listing may show."""
        if not running_only:
            return len(self._held)
        return self.created_between(True, None, None) + self.named(True)


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
        self._next_at: float | None = None
        """Monotonic time the next sweep starts (None before the first)."""
        self._first_reach: dict[bool, float | None] = {False: None, True: None}
        """The oldest creation time on the first page of each listing (head: False, running:
        True) last time; None: it held the whole list. New tasks push that page's reach only
        forward, so this errs on the side of reading a page."""
        self._full_page = listing.LIST_LIMIT
        """Entries a full page holds: what we ask for, or less once the cloud showed it cuts
        pages shorter (a short page followed by more entries)."""
        poll.swept_look = self.own_look

    @property
    def interval(self) -> float:
        """Seconds between two sweeps (`watch.list_interval`)."""
        return self._poll.policy.list_interval

    def _active(self) -> bool:
        return self.enabled and self._clock.monotonic() >= self._off_until

    def own_look(self, row: WatchedTask) -> float | None:
        """After a look of its own at `row`: poll_interval_max when the next sweep will cover
        the task (it comes sooner), else None (its own cadence decides). A sweep pays from
        two tasks on; a task left out of one still gets its look within poll_interval_max."""
        if not self._active() or len(self._scheduler) < MIN_TASKS:
            return None
        return self._poll.policy.interval_max

    def first_look(self) -> float:
        """The delay of a newly named task's first look: at once, unless sweeps run and the
        next one will look (then shortly after it, as a backstop the sweep takes over)."""
        if not self._active() or len(self._scheduler) + 1 < MIN_TASKS:
            return 0.0
        now = self._clock.monotonic()
        next_at = now if self._next_at is None else max(self._next_at, now)
        return next_at - now + self._poll.policy.interval_min

    async def run(self) -> None:
        """Sweep every `interval` until cancelled; never raises."""
        next_at = self._clock.monotonic()
        while True:
            self._next_at = next_at
            delay = next_at - self._clock.monotonic()
            if delay > 0:
                await self._clock.sleep(delay)
            started = self._clock.monotonic()
            self._next_at = started + self.interval
            try:
                await self.sweep()
            except Exception as error:  # a bug here must not end the sweeps
                self._poll.internal("engine", error)
            next_at = max(started + self.interval, self._clock.monotonic())

    def _wanted(self) -> list[tuple[Slot, WatchedTask]]:
        """The tasks a sweep looks for: every active one not under way or due a confirmation."""
        wanted: list[tuple[Slot, WatchedTask]] = []
        for slot in self._scheduler.slots():
            if slot.in_flight or slot.confirm:
                continue
            row = self._table.get(slot.task_id)
            if row is not None and not row.ended:
                wanted.append((slot, row))
        return wanted

    async def sweep(self) -> None:
        """One sweep: refresh every watched task, or do nothing when that would not pay."""
        if not self._active():
            return
        wanted = self._wanted()
        if len(wanted) < MIN_TASKS:
            self._poll.swept = 0
            return
        rows = {slot.task_id: row for slot, row in wanted}
        held = {slot.task_id: (slot, self._scheduler.hold(slot)) for slot, _ in wanted}
        backstop = self._poll.policy.interval_max
        sides = self._sides(rows)
        unseen = _Unseen(rows, held)
        unreadable = 0

        async def take(page: list[OperationLog]) -> None:
            # Each answer is used as soon as its page arrives: a task on the first page is not
            # held while the rest of the sweep is read.
            for answer in page:
                entry = held.pop(answer.id, None)
                if entry is not None:
                    self._stats.list_refreshed += 1
                    await self._poll.answered(*entry, answer, next_look=backstop)
                    self._poll.ensure_next(*entry)

        pages_left = self._max_pages()
        try:
            try:
                while held:
                    side = self._next_side(sides, unseen)
                    if side is None:
                        break
                    if pages_left <= 0:
                        # More to read than the budget allows one sweep: the rest look for
                        # themselves, spread out, and no missing task is concluded.
                        self._poll.swept = len(wanted) - len(held)
                        self._hand_back(list(held.values()), confirm=False)
                        return
                    before = side.pager.result.pages
                    logs = await side.pager.next_page()
                    pages_left -= side.pager.result.pages - before
                    self._learn(side, logs)
                    side.named_found = sum(
                        1 for a in logs if a.id in held and rows[a.id].created_wall is None
                    )
                    log.debug(
                        "refresh.page",
                        listing="running" if side.running_only else "head",
                        returned=side.pager.last_returned,
                        short=side.short,
                        unseen=len(held) - sum(answer.id in held for answer in logs),
                    )
                    await take(logs)
            except Exception as error:
                self._poll.swept = len(wanted) - len(held)
                await self._failed(error, list(held.values()))
                return
            self._poll.swept = len(wanted) - len(held)
            unreadable = sum(side.pager.result.malformed for side in sides)
            self._succeeded(sides, unreadable)
            # Ended long after it was created, deleted, skipped by a shifting list, never
            # there, or an unreadable entry: one ShowOpLog each.
            self._hand_back(list(held.values()), confirm=True)
        finally:
            for slot, generation in held.values():
                self._poll.ensure_next(slot, generation)

    def _sides(self, rows: Mapping[str, WatchedTask]) -> list[_Side]:
        """The head listing and the running listing of one sweep."""
        every = list(rows.values())
        narrow = listing.narrowing(every)
        running = [row for row in every if row.status == RUNNING]

        def side(query: dict[str, str], running_only: bool) -> _Side:
            pager = listing.Pager(
                self._poll.client,
                listing.Listing(query=query),
                acquire=self._acquire_page,
                limit=listing.LIST_LIMIT,
                under_way=self._scheduler.requests_under_way,
            )
            return _Side(pager, running_only, reach=self._first_reach[running_only])

        return [
            side({**narrow, **listing.since(every)}, running_only=False),
            side({**narrow, **listing.since(running), "status": RUNNING}, running_only=True),
        ]

    def _next_side(self, sides: Sequence[_Side], unseen: _Unseen) -> _Side | None:
        """The listing whose next page is expected to find the most unseen tasks; None when
        no page would find more than one (a ShowOpLog each is then no dearer)."""
        best, best_gain = None, MIN_GAIN
        for side in sides:
            gain = self._gain(side, unseen)
            if gain > best_gain:
                best, best_gain = side, gain
        return best

    def _gain(self, side: _Side, unseen: _Unseen) -> float:
        """How many unseen tasks the next page of `side` is expected to show."""
        if side.pager.ended:
            return 0.0
        if side.short:
            # The list probably ended; read on only when many are missing (pages cut shorter
            # than asked, the first time a cloud does it).
            candidates = unseen.eligible(side.running_only)
            if candidates > max(MIN_GAIN, SHORT_PAGE_DOUBT * unseen.total):
                return float(candidates)
            return 0.0
        if side.running_only:
            # Every running task is on some page of this listing, and the first pages may only
            # repeat what the head showed: the pages still to read are worth what they find on
            # average, not what the next one alone would.
            wanted = unseen.created_between(True, None, side.floor) + unseen.named(True)
            left = unseen.running_between(None, side.floor)
            return wanted / max(1, math.ceil(left / self._full_page))
        # Newer than what was read yet not on those pages: not in this listing at all.
        in_reach = unseen.created_between(side.running_only, side.reach, side.floor)
        # Never seen: most likely just created, so on the head's first page; a burst of them
        # spans pages, the next expected to hold as many as the last one did.
        named = unseen.named(False)
        if side.pager.result.pages == 0:
            return float(in_reach + named)
        return float(in_reach + min(named, side.named_found))

    def _learn(self, side: _Side, logs: Sequence[OperationLog]) -> None:
        """After a page of `side`: where the next page should reach, and page sizes."""
        pager = side.pager
        returned = pager.last_returned
        if pager.ended:
            side.short = True
            return
        if side.short and returned:
            # A page after a short one held more: the cloud serves pages shorter than asked.
            self._full_page = min(self._full_page, max(side.pager.result.largest_page, 1))
        elif returned > self._full_page:
            self._full_page = returned  # (a list that grew between pages misled us before)
        side.short = returned < self._full_page
        created = [c.timestamp() for log in logs if (c := log.created_at) is not None]
        if not created:
            return
        top = self._clock.wall() if side.floor is None else side.floor
        side.floor = min(min(created), top)
        if side.pager.result.pages == 1:
            self._first_reach[side.running_only] = None if side.short else side.floor
        side.reach = side.floor - max(top - side.floor, 1.0)

    def _max_pages(self) -> int:
        """The pages one sweep may read: what the budget serves in one poll_interval_max (a
        page refreshes up to a thousand tasks; answers are used page by page, so only the
        tasks on the last pages wait that long)."""
        rate = self._scheduler.budget.sustained_rate
        return max(1, math.floor(SWEEP_BUDGET_SHARE * rate * self._poll.policy.interval_max))

    async def _acquire_page(self) -> None:
        await self._scheduler.acquire_request()
        self._stats.list_pages += 1

    def _succeeded(self, sides: Sequence[_Side], unreadable: int) -> None:
        self._poll.upstream.ok()
        if self._failures or self._refused:
            log.info("refresh.list_recovered", failures=self._failures)
        self._failures, self._refused = 0, False
        if unreadable:
            self._stats.list_malformed["refresh"] += unreadable
            log.warning(
                "refresh.entries_unreadable",
                entries=unreadable,
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
        if confirm and len(held) <= self._scheduler.budget.sustained_rate:
            # A few tasks no listing showed (most of them ended): confirmed at once, which the
            # budget serves within a second.
            window = 0.0
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
