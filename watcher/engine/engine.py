"""The watch engine: the only writer of task state, composed of its parts.

- `TaskTable` (`table`): the rows, end reasons past retention, tombstones;
- `Scheduler` (`scheduler`): due times, concurrency, the shared request budget, the loop;
- `PollPath` (`poll`): answer → transition → commit → adopt → publish, for every look;
- `RefreshSweep` (`refresh`): every `list_interval`, the watched tasks refreshed through
  ListOpLogs pages when that costs fewer requests than one ShowOpLog each.

*When* to look comes from `watcher.engine.schedule`, *what an answer means* from
`watcher.engine.transitions`. Every change is committed with its events before anyone sees
it; readers get immutable rows through `Engine.tasks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace

import structlog

from watcher.cbr.errors import CbrError
from watcher.cbr.ids import validate_task_id
from watcher.cbr.models import OperationLog
from watcher.clock import Clock
from watcher.engine import schedule
from watcher.engine.budget import RequestBudget
from watcher.engine.events import EventSink
from watcher.engine.poll import CbrApi, PollPath, TaskRecorder, discard_records
from watcher.engine.refresh import RefreshSweep
from watcher.engine.scheduler import Scheduler, Slot
from watcher.engine.stats import INTERNAL_COMPONENTS, EngineStats
from watcher.engine.table import TaskTable
from watcher.engine.task import WatchedTask, frozen_labels
from watcher.engine.upstream import UpstreamState

log = structlog.get_logger("watcher.engine")

INVARIANT_CHECK_INTERVAL = 60.0
"""How often the loop checks that every active task has a next look (and repairs it)."""

TaskForgetter = Callable[[str, float], Awaitable[None]]
"""Forgets a task removed on purpose, remembering when (wall seconds) as its tombstone."""


async def discard_forgets(task_id: str, removed_wall: float) -> None:
    """A TaskForgetter for engines without a state store."""


__all__ = [
    "INTERNAL_COMPONENTS",
    "CbrApi",
    "Engine",
    "EngineStats",
    "StoreUnavailableError",
    "TaskForgetter",
    "TaskRecorder",
    "WatchedTask",
    "discard_forgets",
    "discard_records",
]


class StoreUnavailableError(RuntimeError):
    """A change could not be written to the state store, so it was not made."""


class Engine:
    """Watches a changing set of CBR tasks until each reaches a terminal status."""

    def __init__(
        self,
        *,
        client: CbrApi,
        clock: Clock,
        policy: schedule.Policy,
        max_concurrency: int = 32,
        max_requests_per_second: float = 20.0,
        on_event: EventSink | None = None,
        record: TaskRecorder = discard_records,
        forget: TaskForgetter = discard_forgets,
        exit_when_done: bool = False,
        retention: float = 900.0,
        shutdown_grace: float = 5.0,
        rng: random.Random | None = None,
        batch_refresh: bool = True,
    ) -> None:
        self._clock = clock
        self._forget = forget
        self.exit_when_done = exit_when_done
        """Stop the loop once every task in the table has ended."""
        self._retention = retention
        self._shutdown_grace = shutdown_grace
        self._stopping = False
        self.stats = EngineStats()
        self.upstream = UpstreamState(clock)
        self._table = TaskTable()
        self.tasks: Mapping[str, WatchedTask] = self._table.rows
        """The read model: every row of the task table, read-only (rows are immutable)."""
        self.scheduler = Scheduler(
            clock,
            budget=RequestBudget(max_requests_per_second),
            max_concurrency=max_concurrency,
            on_crash=lambda error: self._poll.internal("engine", error),
        )
        self.scheduler.lag_samples = self.stats.lag_samples
        self._poll = PollPath(
            client=client,
            clock=clock,
            policy=policy,
            table=self._table,
            scheduler=self.scheduler,
            record=record,
            stats=self.stats,
            upstream=self.upstream,
            rng=rng or random.Random(),
        )
        if on_event is not None:
            self._poll.subscribers.append(on_event)
        self._rng = rng or random.Random()
        self.refresh = RefreshSweep(
            poll=self._poll,
            table=self._table,
            scheduler=self.scheduler,
            clock=clock,
            stats=self.stats,
            rng=self._rng,
            enabled=batch_refresh,
        )
        self.last_turn = clock.monotonic()
        self._next_forget = 0.0
        self._next_invariant_check = 0.0

    # ---- read side --------------------------------------------------------------------------

    @property
    def policy(self) -> schedule.Policy:
        """The schedule's knobs."""
        return self._poll.policy

    @property
    def budget(self) -> RequestBudget:
        """The request budget every watch, listing and discovery shares."""
        return self.scheduler.budget

    @property
    def store_failing_since(self) -> float | None:
        """Monotonic time of the first failed state write in the current streak, or None."""
        return self._poll.store_failing_since

    @property
    def upstream_failing_since(self) -> float | None:
        """Monotonic time the current streak of failed requests began, or None."""
        return self.upstream.failing_since

    @property
    def auth_failing_since(self) -> float | None:
        """Monotonic time of the first 401 of the current streak, or None."""
        return self.upstream.auth_failing_since

    @property
    def last_auth_error(self) -> CbrError | None:
        """The latest 401 CBR answered."""
        return self.upstream.last_auth_error

    @property
    def auth_failed_after_reload(self) -> bool:
        """Whether a 401 came back right after reloading the credentials."""
        return self.upstream.auth_failed_after_reload

    @property
    def in_flight(self) -> int:
        """Requests (polls and listings) under way right now."""
        return self.scheduler.in_flight

    def due_at(self, task_id: str) -> float | None:
        """When `task_id` is next due (monotonic seconds); None if it is not active."""
        slot = self.scheduler.get(task_id)
        return None if slot is None else slot.due

    def backlog(self, now: float) -> int:
        """Active tasks already due at `now` with no request under way (a lag diagnostic)."""
        return sum(1 for slot in self.scheduler.slots() if slot.due <= now and not slot.in_flight)

    def active_count(self) -> int:
        """Tasks still being watched."""
        return self._table.active

    def all_done(self) -> bool:
        """Whether every task in the table has ended."""
        return self._table.active == 0

    def knows(self, task_id: str) -> bool:
        """Whether discovery must leave `task_id` alone (watched, ended or removed)."""
        return self._table.knows(task_id)

    def outcome(self, task_id: str) -> str | None:
        """How the watch of `task_id` ended (its `end_reason`), also after its row was
        dropped and when it ended in an earlier run; None while it runs or when unknown."""
        return self._table.outcome(task_id)

    async def acquire_request(self) -> None:
        """Wait until the shared request budget allows one more request (list pages,
        discovery), served before due polls. The engine's loop must be running."""
        await self.scheduler.acquire_request()

    def subscribe(self, sink: EventSink) -> Callable[[], None]:
        """Hand every committed event to `sink` too; returns the function that unsubscribes."""
        subscribers = self._poll.subscribers
        subscribers.append(sink)

        def unsubscribe() -> None:
            if sink in subscribers:
                subscribers.remove(sink)

        return unsubscribe

    # ---- the one write path -----------------------------------------------------------------

    def add(
        self, task_id: str, labels: Mapping[str, str] | None = None, *, source: str = "config"
    ) -> bool:
        """Start watching `task_id`: looked at once, or by the next refresh sweep when sweeps
        run. False if it is already in the table (its labels are then merged in) or ended
        before."""
        validate_task_id(task_id)
        row = self._table.get(task_id)
        if row is not None:
            if labels:
                self._table.replace(replace(row, labels=frozen_labels({**row.labels, **labels})))
            return False
        if self._table.has_ended(task_id):
            log.debug("task.already_ended", task_id=task_id)
            return False
        row = WatchedTask(task_id, frozen_labels(labels), source, self._clock.wall())
        self._insert(row, delay=self.refresh.first_look())
        return True

    async def put(
        self, task_id: str, labels: Mapping[str, str] | None, *, source: str = "api"
    ) -> tuple[bool, WatchedTask | None]:
        """Watch `task_id` with `labels` replacing its labels, committed before it returns.

        Returns (created, row); row is None when the task ended before. Raises
        StoreUnavailableError when the change could not be written (nothing changed then).
        """
        validate_task_id(task_id)
        row = self._table.get(task_id)
        if row is not None:
            if labels is None or dict(labels) == dict(row.labels):
                return False, row
            if not await self._poll.commit(replace(row, labels=frozen_labels(labels)), []):
                raise StoreUnavailableError("the state store is failing")
            current = self._table.get(task_id)
            if current is None:
                return False, None
            current = replace(current, labels=frozen_labels(labels))
            self._table.replace(current)
            return False, current
        if self._table.has_ended(task_id):
            return False, None
        row = WatchedTask(task_id, frozen_labels(labels), source, self._clock.wall())
        if not await self._poll.commit(row, []):
            raise StoreUnavailableError("the state store is failing")
        existing = self._table.get(task_id)
        if existing is not None:  # added by someone else while we were writing
            return False, existing
        self._insert(row, delay=self.refresh.first_look())
        return True, row

    async def discovered(self, operation_log: OperationLog, labels: Mapping[str, str]) -> bool:
        """Watch a task discovery found, starting from the answer the listing gave (a task
        that already ended gets its terminal event at once). False if it is known already,
        ended before, or was removed on purpose."""
        task_id = operation_log.id
        validate_task_id(task_id)
        if self._table.knows(task_id):
            return False
        row = WatchedTask(task_id, frozen_labels(labels), "discover", self._clock.wall())
        slot = self._insert(row, delay=None)
        generation = slot.generation
        await self._poll.answered(slot, generation, operation_log)
        self._poll.ensure_next(slot, generation)
        return True

    def restore(self, task: WatchedTask) -> bool:
        """Resume a watch saved before a restart (looked at once); False if already present."""
        validate_task_id(task.task_id)
        if self._table.get(task.task_id) is not None or task.ended:
            return False
        # Spread over one poll_interval_max, so a restart with many tasks makes no herd (the
        # first refresh sweep takes over every task whose creation time is known).
        self._insert(task, delay=self._rng.uniform(0.0, self.policy.interval_max), announce=False)
        log.info("task.resumed", task_id=task.task_id, status=task.status, progress=task.progress)
        return True

    def _insert(
        self, row: WatchedTask, *, delay: float | None = 0.0, announce: bool = True
    ) -> Slot:
        self._table.insert(row)
        slot = self.scheduler.add(row.task_id, delay=delay)
        if announce:
            log.info("task.watching", task_id=row.task_id, source=row.source)
        return slot

    def remember_ended(self, outcomes: Mapping[str, str | None]) -> None:
        """Watches that ended in an earlier run (task ID → stored end reason): `add` will not
        watch them again and `outcome` reports how they ended."""
        self._table.remember_ended(outcomes)

    def mark_removed(self, task_ids: Iterable[str]) -> None:
        """Tasks removed through the task API (in an earlier run): discovery skips them."""
        self._table.remember_removed(task_ids)

    def remove(self, task_id: str, *, tombstone: bool = True) -> bool:
        """Stop watching `task_id`; a request under way finishes but changes nothing.

        With `tombstone` (a DELETE) discovery will not bring the task back; a task-file
        edit passes False, so the ID may be listed again later.
        """
        if self._table.drop(task_id, tombstone=tombstone) is None:
            return False
        self.scheduler.drop(task_id)
        log.info("task.unwatched", task_id=task_id)
        return True

    async def delete(self, task_id: str) -> bool:
        """Stop watching `task_id` for good (the task API's DELETE), committed before it
        returns: the state file forgets it and keeps a tombstone, so neither a restart nor
        discovery brings it back. False if it is not watched. Raises StoreUnavailableError
        when that could not be written; the task is then watched as before.
        """
        row = self._table.drop(task_id, tombstone=True)
        if row is None:
            return False
        # First: an answer arriving meanwhile must not save it again.
        slot = self.scheduler.drop(task_id)
        try:
            await self._forget(task_id, self._clock.wall())
        except Exception as error:
            self._table.undo_drop(row)
            if slot is not None and not row.ended and self.scheduler.get(task_id) is None:
                self.scheduler.readd(slot)
            log.error("store.write_failed", task_id=task_id, error_type=type(error).__name__)
            raise StoreUnavailableError("the state store is failing") from error
        log.info("task.unwatched", task_id=task_id)
        return True

    def sync_source(self, source: str, task_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make the unfinished tasks of `source` equal `task_ids`; returns (added, removed)."""
        wanted = list(dict.fromkeys(task_ids))
        added = [task_id for task_id in wanted if self.add(task_id, source=source)]
        wanted_set = set(wanted)
        removed = [
            task_id
            for task_id, row in self.tasks.items()
            if row.source == source and not row.ended and task_id not in wanted_set
        ]
        for task_id in removed:
            self.remove(task_id, tombstone=False)
        return added, removed

    # ---- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop scheduling; `run` then drains requests under way and returns."""
        self._stopping = True
        self._poll.stopping = True
        self.scheduler.wake()

    async def run(self) -> None:
        """Schedule looks until `stop()` (or, with exit_when_done, until every task ended)."""
        sweeping = asyncio.create_task(self.refresh.run(), name="refresh sweep")
        # Let the first sweep take the tasks named before the start (it holds them before its
        # first page), so none of them gets a ShowOpLog of its own as well.
        self.last_turn = self._clock.monotonic()
        await asyncio.sleep(0)
        try:
            while not self._stopping:
                self.last_turn = now = self._clock.monotonic()
                try:
                    wake_at = self.scheduler.launch_due(now, self._poll.start)
                    self._forget_old()
                    self._check_invariants_now_and_then()
                except Exception as error:
                    # A bug in the scheduler itself: survive it, the next turn tries again.
                    self._poll.internal("engine", error)
                    wake_at = None
                if self.exit_when_done and self.all_done() and not self.scheduler.in_flight:
                    break
                await self.scheduler.sleep_until_woken(wake_at, now)
        finally:
            self._poll.stopping = True
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
            cancelled = await self.scheduler.drain(self._shutdown_grace)
            if cancelled:
                log.warning("engine.polls_cancelled", count=cancelled)

    def _forget_old(self) -> None:
        """Drop ended rows once their metrics retention is over (the table must not grow)."""
        now = self._clock.monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + min(60.0, max(1.0, self._retention / 10))
        self._table.forget_ended_before(self._clock.wall() - self._retention)

    def check_invariants(self) -> list[str]:
        """Broken promises of the task table, as readable sentences (empty when all hold).

        Every active task is either in flight or due with its current generation, and the
        active count matches the table.
        """
        problems = [
            f"task {slot.task_id} is active but neither in flight nor scheduled"
            for slot in self.scheduler.unscheduled()
        ]
        problems += self._table.problems()
        if len(self.scheduler) != self._table.active:
            problems.append(
                f"{len(self.scheduler)} tasks are scheduled, the table has"
                f" {self._table.active} active"
            )
        return problems

    def _check_invariants_now_and_then(self) -> None:
        now = self._clock.monotonic()
        if now < self._next_invariant_check:
            return
        self._next_invariant_check = now + INVARIANT_CHECK_INTERVAL
        problems = self.check_invariants()
        if not problems:
            return
        self.stats.internal_errors["engine"] += 1
        log.error("engine.invariant_violated", problems=problems[:5], count=len(problems))
        self._table.recount()
        for slot in self.scheduler.unscheduled():
            self.scheduler.schedule(slot, 0.0)
