"""The watch engine: one scheduler over a task table, and the only writer of task state.

A min-heap of due times, a bounded number of requests in flight and one request budget shared
by every watch (list pages and discovery included, through `acquire_request`). *When* to poll
comes from `watcher.engine.schedule`, *what an answer means* from
`watcher.engine.transitions`; how one
request is made and its answer committed is `watcher.engine.core`. Every change is committed
with its events before anyone sees it; readers get immutable rows through `Engine.tasks`.
When many tasks are due the engine refreshes them with ListOpLogs pages instead of one
ShowOpLog each (`watcher.engine.listing`), whichever costs fewer requests.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import structlog

from watcher.cbr.errors import CbrError
from watcher.cbr.ids import validate_task_id
from watcher.cbr.models import OperationLog
from watcher.engine.core import (
    INTERNAL_COMPONENTS,
    CbrApi,
    EngineStats,
    Slot,
    TaskForgetter,
    TaskRecorder,
    discard_forgets,
    discard_records,
)
from watcher.engine.events import EventSink
from watcher.engine.refresh import BatchingEngine
from watcher.engine.task import WatchedTask, frozen_labels

log = structlog.get_logger("watcher.engine")

HEARTBEAT = 1.0
"""The loop turns at least this often (fake or real seconds), even with nothing due."""
INVARIANT_CHECK_INTERVAL = 60.0
"""How often the loop checks that every active task has a next poll (and repairs it)."""

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


class Engine(BatchingEngine):
    """Watches a changing set of CBR tasks until each reaches a terminal status."""

    # ---- upstream trouble, for health and exit codes ----------------------------------------

    @property
    def upstream_failing_since(self) -> float | None:
        """Monotonic time the current streak of failed requests began, or None."""
        return self.upstream.failing_since

    @upstream_failing_since.setter
    def upstream_failing_since(self, value: float | None) -> None:
        self.upstream.failing_since = value

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

    # ---- the task table: the one write path ---------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests (polls and listings) under way right now."""
        return len(self._running)

    def add(
        self, task_id: str, labels: Mapping[str, str] | None = None, *, source: str = "config"
    ) -> bool:
        """Start watching `task_id` (polled at once). False if it is already in the table
        (its labels are then merged in) or ended in an earlier run."""
        validate_task_id(task_id)
        slot = self._slots.get(task_id)
        if slot is not None:
            if labels:
                self._set_row(
                    slot, replace(slot.row, labels=frozen_labels({**slot.row.labels, **labels}))
                )
            return False
        if task_id in self._ended_ids:
            log.debug("task.already_ended", task_id=task_id)
            return False
        self._insert(task_id, labels, source)
        return True

    async def put(
        self, task_id: str, labels: Mapping[str, str] | None, *, source: str = "api"
    ) -> tuple[bool, WatchedTask | None]:
        """Watch `task_id` with `labels` replacing its labels, committed before it returns.

        Returns (created, row); row is None when the task ended in an earlier run. Raises
        StoreUnavailableError when the change could not be written (nothing changed then).
        """
        validate_task_id(task_id)
        slot = self._slots.get(task_id)
        if slot is not None:
            if labels is None or dict(labels) == dict(slot.row.labels):
                return False, slot.row
            row = replace(slot.row, labels=frozen_labels(labels))
            if not await self._commit(row, []):
                raise StoreUnavailableError("the state store is failing")
            if self._slots.get(task_id) is slot:
                self._set_row(slot, replace(slot.row, labels=row.labels))
            return False, slot.row
        if task_id in self._ended_ids:
            return False, None
        row = WatchedTask(task_id, frozen_labels(labels), source, self._clock.wall())
        if not await self._commit(row, []):
            raise StoreUnavailableError("the state store is failing")
        existing = self._slots.get(task_id)
        if existing is not None:  # added by someone else while we were writing
            return False, existing.row
        return True, self._insert(task_id, labels, source, row=row).row

    async def discovered(self, operation_log: OperationLog, labels: Mapping[str, str]) -> bool:
        """Watch a task discovery found, starting from the answer the listing gave (a task
        that already ended gets its terminal event at once). False if it is known already,
        ended before, or was removed through the task API."""
        task_id = operation_log.id
        validate_task_id(task_id)
        if task_id in self._slots or task_id in self._ended_ids or task_id in self._removed_ids:
            return False
        slot = self._insert(task_id, labels, "discover", schedule_now=False)
        await self._poll_answered(slot, slot.generation, operation_log)
        return True

    def _insert(
        self,
        task_id: str,
        labels: Mapping[str, str] | None,
        source: str,
        *,
        row: WatchedTask | None = None,
        schedule_now: bool = True,
    ) -> Slot:
        row = row or WatchedTask(task_id, frozen_labels(labels), source, self._clock.wall())
        slot = Slot(row)
        self._slots[task_id] = slot
        self._rows[task_id] = row
        self._active += 1
        if schedule_now:
            self._schedule(slot, 0.0)
        log.info("task.watching", task_id=task_id, source=source)
        return slot

    def mark_ended(self, outcomes: Mapping[str, str | None] | Iterable[str]) -> None:
        """Tasks known to have ended (in an earlier run): `add` will not watch them again.

        Given a mapping of task ID → outcome (the stored `end_reason`), `exit_code` and
        `outcome` count those outcomes for tasks that are not in the table.
        """
        if isinstance(outcomes, Mapping):
            self._stored_outcomes.update(outcomes)
            self._ended_ids.update(outcomes.keys())
        else:
            ids = list(outcomes)
            self._ended_ids.update(ids)
            for task_id in ids:
                self._stored_outcomes.setdefault(task_id, None)

    def mark_removed(self, task_ids: Iterable[str]) -> None:
        """Tasks removed through the task API (in an earlier run): discovery skips them."""
        self._removed_ids.update(task_ids)

    def knows(self, task_id: str) -> bool:
        """Whether discovery must leave `task_id` alone (watched, ended or removed)."""
        return task_id in self._slots or task_id in self._ended_ids or task_id in self._removed_ids

    def restore(self, task: WatchedTask) -> bool:
        """Resume a watch saved before a restart (polled at once); False if already present."""
        validate_task_id(task.task_id)
        if task.task_id in self._slots or task.ended:
            return False
        slot = Slot(task)
        self._slots[task.task_id] = slot
        self._rows[task.task_id] = task
        self._active += 1
        self._schedule(slot, 0.0)
        log.info("task.resumed", task_id=task.task_id, status=task.status, progress=task.progress)
        return True

    def remove(self, task_id: str, *, tombstone: bool = True) -> bool:
        """Stop watching `task_id`; an in-flight poll finishes but changes nothing.

        With `tombstone` (a DELETE) discovery will not bring the task back; a task-file
        edit passes False, so the ID may be listed again later.
        """
        slot = self._slots.pop(task_id, None)
        if slot is None:
            return False
        del self._rows[task_id]
        slot.generation += 1
        if tombstone:
            self._removed_ids.add(task_id)
        if not slot.row.ended:
            self._active -= 1
        log.info("task.unwatched", task_id=task_id)
        return True

    async def delete(self, task_id: str) -> bool:
        """Stop watching `task_id` for good (the task API's DELETE), committed before it
        returns: the state file forgets it and keeps a tombstone, so neither a restart nor
        discovery brings it back. False if it is not watched. Raises StoreUnavailableError
        when that could not be written; the task is then watched as before.
        """
        slot = self._slots.get(task_id)
        if slot is None:
            return False
        self.remove(task_id)  # first: an answer arriving meanwhile must not save it again
        try:
            await self._forget(task_id, self._clock.wall())
        except Exception as error:
            self._removed_ids.discard(task_id)
            if task_id not in self._slots:
                self._slots[task_id] = slot
                self._rows[task_id] = slot.row
                if not slot.row.ended:
                    self._active += 1
                    self._schedule(slot, 0.0)
            log.error("store.write_failed", task_id=task_id, error_type=type(error).__name__)
            raise StoreUnavailableError("the state store is failing") from error
        return True

    def sync_source(self, source: str, task_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make the unfinished tasks of `source` equal `task_ids`; returns (added, removed)."""
        wanted = list(dict.fromkeys(task_ids))
        added = [tid for tid in wanted if self.add(tid, source=source)]
        wanted_set = set(wanted)
        removed = [
            tid
            for tid, row in self._rows.items()
            if row.source == source and not row.ended and tid not in wanted_set
        ]
        for tid in removed:
            self.remove(tid, tombstone=False)
        return added, removed

    def due_at(self, task_id: str) -> float | None:
        """When `task_id` is next due (monotonic seconds); None if it is not watched."""
        slot = self._slots.get(task_id)
        return None if slot is None else slot.due

    def backlog(self, now: float) -> int:
        """Unfinished tasks already due at `now` with no poll under way (a lag diagnostic)."""
        return sum(
            1
            for slot in self._slots.values()
            if slot.due <= now and not slot.in_flight and not slot.row.ended
        )

    def active_count(self) -> int:
        """Tasks still being watched."""
        return self._active

    def all_done(self) -> bool:
        """Whether every task in the table has ended."""
        return self._active == 0

    def outcome(self, task_id: str) -> str | None:
        """How the watch of `task_id` ended (its `end_reason`), from the table or else from
        `mark_ended`; None while it runs, or when nothing is known about it."""
        row = self._rows.get(task_id)
        if row is not None:
            return row.end_reason
        return self._stored_outcomes.get(task_id)

    def exit_code(self, task_ids: Iterable[str] | None = None) -> int:
        """SPEC §3: 0 when every task asked for ended in success, 3 otherwise.

        `task_ids` are the tasks the run was asked for (default: the table); each counts with
        its `outcome`, so one that ended in an earlier run counts too, and one that has not
        ended (or is unknown) is not a success.
        """
        wanted = self._rows.keys() if task_ids is None else task_ids
        ok = all(self.outcome(task_id) == "success" for task_id in wanted)
        return 0 if ok else 3

    def subscribe(self, sink: EventSink) -> Callable[[], None]:
        """Hand every committed event to `sink` too; returns the function that unsubscribes."""
        self._subscribers.append(sink)

        def unsubscribe() -> None:
            if sink in self._subscribers:
                self._subscribers.remove(sink)

        return unsubscribe

    # ---- the loop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop scheduling; `run` then drains in-flight requests and returns."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Schedule polls until `stop()` (or, with exit_when_done, until every task ended)."""
        try:
            while not self._stopping:
                self.last_turn = self._clock.monotonic()
                self._wake.clear()
                try:
                    wake_at = self._launch_due(self.last_turn)
                    self._forget_old()
                    self._check_invariants_now_and_then()
                except Exception as error:
                    # A bug in the scheduler itself: survive it, the next turn tries again.
                    self._internal("engine", error)
                    wake_at = None
                if self.exit_when_done and self.all_done() and not self._running:
                    break
                delay = HEARTBEAT if wake_at is None else min(HEARTBEAT, wake_at - self.last_turn)
                if delay > 0:
                    try:
                        async with self._clock.timeout(delay):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)
        finally:
            await self._drain()

    def _launch_due(self, now: float) -> float | None:
        """Start the due polls that concurrency and budget allow; return when to look again."""
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
            if slot is None or slot.generation != generation or slot.row.ended:
                heapq.heappop(self._heap)
                continue
            if len(self._running) >= self._max_concurrency:
                return None  # a finishing poll sets the wake event
            if due > now:
                return due
            allowed = self.budget.next_allowed(now)
            if allowed > now:
                return allowed
            heapq.heappop(self._heap)
            self.stats.lag_samples.append(now - due)
            if self._start_batch(slot, now):
                continue
            self.budget.try_acquire(now)
            self.stats.polls_started += 1
            slot.in_flight = True
            slot.confirm = False
            self._spawn(self._poll(slot, generation), f"poll {task_id}")
        return None

    def _forget_old(self) -> None:
        """Drop ended tasks once their metrics retention is over (the table must not grow)."""
        now = self._clock.monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + min(60.0, max(1.0, self._retention / 10))
        cutoff = self._clock.wall() - self._retention
        stale = [
            tid
            for tid, row in self._rows.items()
            if row.ended_wall is not None and row.ended_wall < cutoff
        ]
        for tid in stale:
            del self._rows[tid]
            del self._slots[tid]

    def check_invariants(self) -> list[str]:
        """Broken promises of the task table, as readable sentences (empty when all hold).

        Every active task is either in flight or on the heap with its current generation,
        and the active count matches the table.
        """
        scheduled = {(task_id, generation) for _, _, task_id, generation in self._heap}
        problems = [
            f"task {tid} is active but neither in flight nor scheduled"
            for tid, slot in self._slots.items()
            if not slot.row.ended and not slot.in_flight and (tid, slot.generation) not in scheduled
        ]
        active = sum(1 for slot in self._slots.values() if not slot.row.ended)
        if active != self._active:
            problems.append(f"active count is {self._active}, the table holds {active}")
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
        self._active = sum(1 for slot in self._slots.values() if not slot.row.ended)
        for slot in self._slots.values():
            if not slot.row.ended and not slot.in_flight:
                self._schedule(slot, 0.0)

    async def _drain(self) -> None:
        """Give in-flight requests `shutdown_grace` seconds to finish, then cancel them."""
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
        if not self._running:
            return
        pending = set(self._running)
        try:
            async with self._clock.timeout(self._shutdown_grace):
                await asyncio.gather(*pending, return_exceptions=True)
        except TimeoutError:
            for runner in pending:
                runner.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("engine.polls_cancelled", count=len(pending))
