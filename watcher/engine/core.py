"""The engine's inner half: one poll or one listing, and how its answer is committed.

`watcher.engine.engine.Engine` adds the public task-table API and the scheduling loop on top. Every
path here is total: whatever a request or a subscriber does, an active task ends up with a
next poll, and a change is visible (row adopted, events published) only once it is written.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

import structlog

from watcher.cbr.errors import AuthError, CbrError, InternalError, NotFoundError, ThrottledError
from watcher.cbr.models import OperationLog
from watcher.clock import Clock
from watcher.engine import schedule, transitions
from watcher.engine.budget import RequestBudget
from watcher.engine.events import WATCH_NOT_FOUND, EventSink, TaskEvent
from watcher.engine.task import WatchedTask
from watcher.engine.upstream import UpstreamState

log = structlog.get_logger("watcher.engine")

INTERNAL_COMPONENTS = ("poll", "store", "events", "engine")
"""Where an unexpected exception can be caught and survived (`EngineStats.internal_errors`):
a poll (client or answer handling), a state write, an event subscriber, the scheduler loop."""

TaskRecorder = Callable[[WatchedTask, Sequence[TaskEvent]], Awaitable[None]]
"""Persists a task's new row together with the events it produced (one transaction)."""


async def discard_records(task: WatchedTask, events: Sequence[TaskEvent]) -> None:
    """A TaskRecorder for engines without a state store."""


TaskForgetter = Callable[[str, float], Awaitable[None]]
"""Forgets a task removed on purpose, remembering when (wall seconds) as its tombstone."""


async def discard_forgets(task_id: str, removed_wall: float) -> None:
    """A TaskForgetter for engines without a state store."""


class CbrApi(Protocol):
    """The part of the CBR client the engine uses (list_op_logs, when present, for batches)."""

    async def show_op_log(self, task_id: str) -> OperationLog:
        """Fetch one task."""
        ...

    async def reload_credentials(self) -> None:
        """Re-read credentials after a 401."""
        ...


@dataclass(slots=True)
class Slot:
    """The engine's private side of a row: where it is in the schedule."""

    row: WatchedTask
    due: float = 0.0
    generation: int = 0
    in_flight: bool = False
    """A poll or a listing for this task is under way."""
    confirm: bool = False
    """A listing missed it: its next poll is a ShowOpLog."""
    warned_statuses: frozenset[str] = frozenset()


@dataclass(slots=True)
class EngineStats:
    """Counters for logs, metrics, the demo summary and benchmarks."""

    polls_started: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    list_pages: int = 0
    """ListOpLogs page requests started to refresh watched tasks (not discovery's)."""
    list_refreshed: int = 0
    """Task answers taken from those pages instead of a ShowOpLog each."""
    lag_samples: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    """Scheduling lag of recent polls: due time → request started, in seconds."""
    internal_errors: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(INTERNAL_COMPONENTS, 0))
    )
    """Unexpected exceptions survived, by component (see INTERNAL_COMPONENTS)."""
    poll_reasons: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(map(str, schedule.Reason), 0))
    )
    """Scheduled polls by why they wait as long as they do (`schedule.Reason` values)."""


_POLL_FIELDS = (
    "status",
    "progress",
    "operation_log",
    "started_wall",
    "last_change_wall",
    "last_progress_wall",
    "ended_wall",
    "end_reason",
)
"""What a poll may change in a row; labels (task API) and poll_state (scheduling) are not."""


class EngineCore:
    """State and request handling shared by the engine's table API and loop."""

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
        self._client = client
        self._clock = clock
        self.policy = policy
        self._max_concurrency = max_concurrency
        self.budget = RequestBudget(max_requests_per_second)
        self._subscribers: list[EventSink] = [on_event] if on_event is not None else []
        self._record = record
        self._forget = forget
        self.exit_when_done = exit_when_done
        self._retention = retention
        self._shutdown_grace = shutdown_grace
        self._rng = rng or random.Random()
        self._slots: dict[str, Slot] = {}
        self._rows: dict[str, WatchedTask] = {}
        self.tasks: Mapping[str, WatchedTask] = MappingProxyType(self._rows)
        """The read model: every row of the task table, read-only (rows are immutable)."""
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: set[asyncio.Future[None]] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.stats = EngineStats()
        self.upstream = UpstreamState(clock)
        self._active = 0
        self._ended_ids: set[str] = set()
        self.store_failing_since: float | None = None
        """Monotonic time of the first failed state write in the current streak, or None."""
        self._batching = batch_refresh and hasattr(client, "list_op_logs")
        self._batch_running = False
        self._batch_paused_until = 0.0
        self._next_batch_at = 0.0
        self._batch_not_worth_until = 0.0
        self._list_counts: dict[tuple[tuple[str, str], ...], int | None] = {}
        self.last_turn = clock.monotonic()
        self._next_forget = 0.0
        self._next_invariant_check = 0.0
        self._removed_ids: set[str] = set()
        self._stored_outcomes: dict[str, str | None] = {}

    async def acquire_request(self) -> None:
        """Wait until the shared request budget allows one more request (list pages,
        discovery): the same budget as every poll, served before due polls so a listing is
        never starved. The engine's loop must be running."""
        if not self._waiters and self.budget.try_acquire(self._clock.monotonic()):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    # ---- bookkeeping ------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        runner = asyncio.ensure_future(work)
        runner.set_name(name)
        self._running.add(runner)
        runner.add_done_callback(self._runner_finished)

    def _runner_finished(self, runner: asyncio.Future[None]) -> None:
        self._running.discard(runner)
        self._wake.set()
        if not runner.cancelled() and runner.exception() is not None:
            # Polls and listings catch everything; this only fires if that promise breaks.
            self._internal("engine", runner.exception())

    def _schedule(self, slot: Slot, delay: float) -> None:
        slot.generation += 1
        slot.in_flight = False
        slot.due = self._clock.monotonic() + max(0.0, delay)
        heapq.heappush(self._heap, (slot.due, next(self._seq), slot.row.task_id, slot.generation))
        self._wake.set()

    def _set_row(self, slot: Slot, row: WatchedTask) -> None:
        slot.row = row
        self._rows[row.task_id] = row

    def _current(self, slot: Slot, generation: int) -> bool:
        """Whether the task is still watched and this request is still the one that counts."""
        return self._slots.get(slot.row.task_id) is slot and slot.generation == generation

    def _internal(self, component: str, error: BaseException | None) -> None:
        """Count and log an unexpected exception that the engine survived."""
        self.stats.internal_errors[component] += 1
        log.error(
            "engine.internal_error",
            component=component,
            error_type=type(error).__name__,
            error=str(error)[:200],
        )
        log.debug("engine.internal_error_detail", component=component, exc_info=error)

    def _ensure_next(self, slot: Slot, generation: int) -> None:
        """After a request: every path schedules (which bumps the generation) or ends the
        task; this is the safety net that makes "never without a next poll" structural."""
        if not self._current(slot, generation):
            return
        slot.in_flight = False
        if not slot.row.ended and not self._stopping:
            self._internal("engine", RuntimeError(f"{slot.row.task_id} was left without a poll"))
            self._apply(slot, schedule.after_error(self.policy, slot.row.poll_state, rng=self._rng))

    # ---- one poll ---------------------------------------------------------------------------

    async def _poll(self, slot: Slot, generation: int) -> None:
        """One ShowOpLog of one task. Total: an active task always gets a next poll."""
        try:
            try:
                operation_log = await self._client.show_op_log(slot.row.task_id)
            except CbrError as error:
                await self._poll_failed(slot, generation, error)
                return
            except Exception as error:
                await self._poll_failed(slot, generation, InternalError.wrap(error))
                return
            await self._poll_answered(slot, generation, operation_log)
        finally:
            self._ensure_next(slot, generation)

    async def _poll_answered(self, slot: Slot, generation: int, answer: OperationLog) -> None:
        if not self._current(slot, generation):
            return
        self.stats.polls_ok += 1
        self.upstream.ok()
        try:
            await self._on_log(slot, answer)
        except Exception as error:
            # A bug while handling the answer (not the answer itself): the task keeps its last
            # committed row and is polled again after the error backoff.
            self._handling_failed(slot, generation, error)

    async def _poll_failed(self, slot: Slot, generation: int, error: CbrError) -> None:
        if not self._current(slot, generation):
            return
        self.stats.polls_failed += 1
        if isinstance(error, InternalError):
            self.stats.internal_errors["poll"] += 1
        try:
            await self._on_failure(slot, error)
        except Exception as bug:
            self._handling_failed(slot, generation, bug)

    def _handling_failed(self, slot: Slot, generation: int, error: Exception) -> None:
        if not self._current(slot, generation):
            return
        if slot.row.poll_state.error_streak == 0:
            self._internal("poll", error)
        else:
            self.stats.internal_errors["poll"] += 1
        self._apply(slot, schedule.after_error(self.policy, slot.row.poll_state, rng=self._rng))

    async def _on_log(self, slot: Slot, operation_log: OperationLog) -> None:
        task_id, status = slot.row.task_id, operation_log.status
        if not operation_log.is_known_status and status not in slot.warned_statuses:
            slot.warned_statuses = slot.warned_statuses | {status}
            log.warning("task.unknown_status", task_id=task_id, status=status)
        answered = transitions.on_answer(
            slot.row, operation_log, policy=self.policy, now_wall=self._clock.wall(), rng=self._rng
        )
        if answered.changed and not await self._commit(answered.row, answered.events):
            self._retry_after_store_failure(slot)
            return
        if self._slots.get(task_id) is not slot:
            return  # removed while the write was under way
        self._adopt(slot, answered.row)
        if answered.status_changed:
            self._log_status(slot.row, answered.previous_status)
        await self._publish(answered.events)
        if answered.decision is not None:
            self._apply(slot, answered.decision)

    async def _on_failure(self, slot: Slot, error: CbrError) -> None:
        now = self._clock.monotonic()
        policy, state, rng = self.policy, slot.row.poll_state, self._rng
        if isinstance(error, NotFoundError):
            decision = schedule.after_not_found(policy, state, now=now, rng=rng)
            if decision is None:
                row, event = transitions.end(
                    slot.row,
                    "not_found",
                    WATCH_NOT_FOUND,
                    slot.row.status,
                    now_wall=self._clock.wall(),
                    detail=str(error),
                )
                await self._finish(slot, row, event)
                return
            if state.not_found_since is None:
                log.warning(
                    "task.not_found_yet",
                    task_id=slot.row.task_id,
                    grace_remaining_seconds=round(policy.not_found_grace, 3),
                    detail="CBR does not know this task (yet); retrying until the grace ends",
                )
        else:
            decision = await self._after_request_failed(error, state)
        if schedule.expired(policy, started=slot.row.added_wall, now=self._clock.wall()):
            row, event = transitions.expire(slot.row, policy, now_wall=self._clock.wall())
            await self._finish(slot, row, event)
            return
        self._apply(slot, decision)

    async def _after_request_failed(
        self, error: CbrError, state: schedule.PollState
    ) -> schedule.Decision:
        """What any failed request (not a 404) means for the upstream and for the next try."""
        policy, rng = self.policy, self._rng
        self.upstream.failed(error)
        if isinstance(error, AuthError):
            self.upstream.auth_failed(error, after_reload=state.auth_retry_spent)
            decision = schedule.after_auth_failure(policy, state, rng=rng)
            if decision.reason is schedule.Reason.AUTH_RETRY:
                await self._client.reload_credentials()
            return decision
        if isinstance(error, ThrottledError):
            if error.retry_after is not None:
                # The quota is shared by every watch: nobody should call before it resets.
                self.budget.pause_until(self._clock.monotonic() + error.retry_after)
            return schedule.after_throttled(policy, state, retry_after=error.retry_after, rng=rng)
        return schedule.after_error(policy, state, rng=rng)

    async def _finish(self, slot: Slot, row: WatchedTask, event: TaskEvent) -> None:
        """Commit a watch's end (not found, expired) and publish it, or retry the write."""
        if not await self._commit(row, [event]):
            self._retry_after_store_failure(slot)
            return
        if self._slots.get(row.task_id) is not slot:
            return
        self._adopt(slot, row)
        log.warning(event.type, task_id=row.task_id, status=row.status, detail=event.detail)
        await self._publish([event])

    # ---- commit, adopt, publish --------------------------------------------------------------

    async def _commit(self, row: WatchedTask, events: list[TaskEvent]) -> bool:
        """Durable before visible: persist the task's new row with its events.

        True when written. On failure nothing is adopted or published: the task keeps its last
        committed row, the store counts as failing (see /readyz) and the caller retries.
        """
        try:
            await self._record(row, events)
        except Exception as error:
            self.stats.internal_errors["store"] += 1
            if self.store_failing_since is None:
                self.store_failing_since = self._clock.monotonic()
                log.error(
                    "store.write_failed",
                    task_id=row.task_id,
                    error_type=type(error).__name__,
                    error=str(error)[:200],
                    detail="the task keeps its last saved state; the change is retried",
                )
            return False
        if self.store_failing_since is not None:
            log.info(
                "store.recovered",
                failing_seconds=round(self._clock.monotonic() - self.store_failing_since, 3),
            )
            self.store_failing_since = None
        return True

    def _retry_after_store_failure(self, slot: Slot) -> None:
        """Poll again after the error backoff: the same answer is then derived and written anew."""
        self._apply(slot, schedule.after_error(self.policy, slot.row.poll_state, rng=self._rng))

    def _adopt(self, slot: Slot, row: WatchedTask) -> None:
        """Make a committed row the task's row (poll fields only: labels may have changed)."""
        newly_ended = row.ended and not slot.row.ended
        self._set_row(
            slot, replace(slot.row, **{name: getattr(row, name) for name in _POLL_FIELDS})
        )
        if newly_ended:
            self._ended_ids.add(row.task_id)
            self._active -= 1
            slot.generation += 1
            slot.in_flight = False

    def _apply(self, slot: Slot, decision: schedule.Decision) -> None:
        decision = schedule.clamp_to_deadline(
            self.policy, decision, started=slot.row.added_wall, now=self._clock.wall()
        )
        self._set_row(slot, replace(slot.row, poll_state=decision.state))
        self.stats.poll_reasons[decision.reason.value] += 1
        log.debug(
            "poll.scheduled",
            task_id=slot.row.task_id,
            reason=decision.reason.value,
            delay=round(decision.delay, 3),
            estimated_end=decision.state.estimated_end,
        )
        self._schedule(slot, decision.delay)

    async def _publish(self, events: Sequence[TaskEvent]) -> None:
        """Hand committed events to every subscriber; a failing one loses nothing durable."""
        for event in events:
            for sink in tuple(self._subscribers):
                try:
                    await sink(event)
                except Exception as error:
                    self._internal("events", error)

    def _log_status(self, row: WatchedTask, previous_status: str | None) -> None:
        operation_log = row.operation_log
        fields: dict[str, object] = {
            "task_id": row.task_id,
            "status": row.status,
            "previous_status": previous_status,
            "progress": row.progress,
        }
        if operation_log is not None:
            fields["operation_type"] = operation_log.operation_type
            if operation_log.is_terminal:
                fields["final"] = True
                if operation_log.error is not None:
                    fields["error_code"], fields["error_message"] = operation_log.error
        level = "warning" if row.status in ("failed", "timeout") else "info"
        getattr(log, level)("task.status_changed", **fields)
