"""The poll path: one answer (or error) for one task → transition → commit → adopt → publish.

Every path is total: whatever a request, the store or a subscriber does, an active task ends
up with a next look, and a change becomes visible (row adopted, events published) only once
it is written. ShowOpLog polls start here; answers from listings (refresh, discovery) enter
through `answered`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from watcher.cbr.errors import AuthError, CbrError, InternalError, NotFoundError, ThrottledError
from watcher.cbr.models import OperationLog
from watcher.clock import Clock
from watcher.engine import schedule, transitions
from watcher.engine.events import WATCH_NOT_FOUND, EventSink, TaskEvent
from watcher.engine.listing import ListApi
from watcher.engine.scheduler import Scheduler, Slot
from watcher.engine.stats import EngineStats
from watcher.engine.table import TaskTable
from watcher.engine.task import WatchedTask
from watcher.engine.upstream import UpstreamState

log = structlog.get_logger("watcher.engine")

TaskRecorder = Callable[[WatchedTask, Sequence[TaskEvent]], Awaitable[None]]
"""Persists a task's new row together with the events it produced (one transaction)."""


async def discard_records(task: WatchedTask, events: Sequence[TaskEvent]) -> None:
    """A TaskRecorder for engines without a state store."""


class CbrApi(ListApi, Protocol):
    """The part of the CBR client the engine uses: ShowOpLog, ListOpLogs and a credential reload."""

    async def show_op_log(self, task_id: str) -> OperationLog:
        """Fetch one task (ShowOpLog)."""
        ...

    async def reload_credentials(self) -> None:
        """Re-read credentials after a 401."""
        ...


BUDGET_HEADROOM = 1.25
"""Own looks are spaced so they use at most 1 / BUDGET_HEADROOM of the request budget."""

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
"""What an answer may change in a row; labels (task API) and poll_state (scheduling) are not."""


class PollPath:
    """Turns answers and errors into committed rows, published events and next looks."""

    def __init__(
        self,
        *,
        client: CbrApi,
        clock: Clock,
        policy: schedule.Policy,
        table: TaskTable,
        scheduler: Scheduler,
        record: TaskRecorder,
        stats: EngineStats,
        upstream: UpstreamState,
        rng: random.Random,
    ) -> None:
        self.client = client
        self._clock = clock
        self.policy = policy
        self._table = table
        self._scheduler = scheduler
        self._record = record
        self._stats = stats
        self.upstream = upstream
        self._rng = rng
        self.subscribers: list[EventSink] = []
        self.swept_look: Callable[[WatchedTask], float | None] = lambda row: None
        """The delay of the own look of a task a refresh sweep will cover (None: not covered):
        its own cadence then only backs the sweep up."""
        self.swept = 0
        """Tasks the last refresh sweep refreshed: they need no looks of their own."""
        self.stopping = False
        self.store_failing_since: float | None = None
        """Monotonic time of the first failed state write in the current streak, or None."""
        self._retry_after_clamp_logged = False

    # ---- one poll ---------------------------------------------------------------------------

    def start(self, slot: Slot, generation: int) -> None:
        """Start a ShowOpLog of a due task (the scheduler's `start` callback)."""
        self._stats.polls_started += 1
        self._scheduler.spawn(self.poll(slot, generation), f"poll {slot.task_id}")

    async def poll(self, slot: Slot, generation: int) -> None:
        """One ShowOpLog of one task. Total: an active task always gets a next look."""
        try:
            try:
                operation_log = await self.client.show_op_log(slot.task_id)
            except CbrError as error:
                await self.failed(slot, generation, error)
                return
            except Exception as error:
                await self.failed(slot, generation, InternalError.wrap(error))
                return
            await self.answered(slot, generation, operation_log)
        finally:
            self.ensure_next(slot, generation)

    async def answered(
        self,
        slot: Slot,
        generation: int,
        answer: OperationLog,
        *,
        next_look: float | None = None,
    ) -> None:
        """Take `answer` as the task's current state. `next_look` (seconds) replaces the
        schedule's delay, for answers from a refresh listing that comes round again."""
        if not self._scheduler.current(slot, generation):
            return
        self._stats.polls_ok += 1
        self.upstream.ok()
        try:
            await self._on_answer(slot, answer, next_look)
        except Exception as error:
            # A bug while handling the answer (not the answer itself): the task keeps its last
            # committed row and is looked at again after the error backoff.
            self._handling_failed(slot, generation, error)

    async def failed(self, slot: Slot, generation: int, error: CbrError) -> None:
        """A ShowOpLog of the task failed with `error`."""
        if not self._scheduler.current(slot, generation):
            return
        self._stats.polls_failed += 1
        if isinstance(error, InternalError):
            self._stats.internal_errors["poll"] += 1
        try:
            await self._on_failure(slot, error)
        except Exception as bug:
            self._handling_failed(slot, generation, bug)

    def ensure_next(self, slot: Slot, generation: int) -> None:
        """After a request: every path schedules (which bumps the generation) or ends the
        task; this safety net makes "never without a next look" structural."""
        if not self._scheduler.current(slot, generation):
            return
        slot.in_flight = False
        row = self._table.get(slot.task_id)
        if row is not None and not row.ended and not self.stopping:
            self.internal("engine", RuntimeError(f"{slot.task_id} was left without a poll"))
            self.apply(slot, schedule.after_error(self.policy, row.poll_state, rng=self._rng))

    def _handling_failed(self, slot: Slot, generation: int, error: Exception) -> None:
        if not self._scheduler.current(slot, generation):
            return
        row = self._row(slot)
        if row.poll_state.error_streak == 0:
            self.internal("poll", error)
        else:
            self._stats.internal_errors["poll"] += 1
        self.apply(slot, schedule.after_error(self.policy, row.poll_state, rng=self._rng))

    def _row(self, slot: Slot) -> WatchedTask:
        row = self._table.get(slot.task_id)
        if row is None:
            raise LookupError(f"{slot.task_id} has a slot but no row")
        return row

    async def _on_answer(self, slot: Slot, answer: OperationLog, next_look: float | None) -> None:
        row = self._row(slot)
        status = answer.status
        if not answer.is_known_status and status not in slot.warned_statuses:
            slot.warned_statuses = slot.warned_statuses | {status}
            log.warning("task.unknown_status", task_id=slot.task_id, status=status)
        result = transitions.on_answer(
            row, answer, policy=self.policy, now_wall=self._clock.wall(), rng=self._rng
        )
        if result.changed and not await self.commit(result.row, result.events):
            self._retry_after_store_failure(slot)
            return
        if self._scheduler.get(slot.task_id) is not slot:
            return  # removed while the write was under way
        self._adopt(slot, result.row)
        if result.status_changed:
            self._log_status(result.row, result.previous_status)
        await self.publish(result.events)
        if result.decision is not None:
            decision = result.decision
            if next_look is None:
                next_look = self.swept_look(result.row)
            if next_look is not None:
                decision = schedule.Decision(decision.state, next_look, schedule.Reason.SWEEP)
            self.apply(slot, decision)

    async def _on_failure(self, slot: Slot, error: CbrError) -> None:
        row = self._row(slot)
        now = self._clock.monotonic()
        policy, state, rng = self.policy, row.poll_state, self._rng
        if isinstance(error, NotFoundError):
            decision = schedule.after_not_found(policy, state, now=now, rng=rng)
            if decision is None:
                ended, event = transitions.end(
                    row,
                    "not_found",
                    WATCH_NOT_FOUND,
                    row.status,
                    now_wall=self._clock.wall(),
                    detail=str(error),
                )
                await self._finish(slot, ended, event)
                return
            if state.not_found_since is None:
                log.warning(
                    "task.not_found_yet",
                    task_id=slot.task_id,
                    grace_remaining_seconds=round(policy.not_found_grace, 3),
                    detail="CBR does not know this task (yet); retrying until the grace ends",
                )
        else:
            decision = await self.request_failed(error, state)
        if schedule.expired(policy, started=row.added_wall, now=self._clock.wall()):
            ended, event = transitions.expire(row, policy, now_wall=self._clock.wall())
            await self._finish(slot, ended, event)
            return
        self.apply(slot, decision)

    async def request_failed(self, error: CbrError, state: schedule.PollState) -> schedule.Decision:
        """What any failed request (not a 404) means for the upstream and for the next try."""
        policy, rng = self.policy, self._rng
        self.upstream.failed(error)
        if isinstance(error, AuthError):
            self.upstream.auth_failed(error, after_reload=state.auth_retry_spent)
            decision = schedule.after_auth_failure(policy, state, rng=rng)
            if decision.reason is schedule.Reason.AUTH_RETRY:
                await self.client.reload_credentials()
            return decision
        if isinstance(error, ThrottledError):
            retry_after = self._clamped_retry_after(error.retry_after)
            if retry_after is not None:
                # The quota is shared by every watch: nobody should call before it resets.
                self._scheduler.budget.pause_until(self._clock.monotonic() + retry_after)
            return schedule.after_throttled(policy, state, retry_after=retry_after, rng=rng)
        return schedule.after_error(policy, state, rng=rng)

    def _clamped_retry_after(self, retry_after: float | None) -> float | None:
        """Retry-After, but never longer than poll_interval_max: no header stops the watching
        for longer than a look is allowed to wait."""
        cap = self.policy.interval_max
        if retry_after is None or retry_after <= cap:
            return retry_after
        if not self._retry_after_clamp_logged:
            self._retry_after_clamp_logged = True
            log.warning(
                "upstream.retry_after_clamped",
                retry_after_seconds=round(retry_after, 3),
                clamped_to_seconds=cap,
                detail="a Retry-After longer than watch.poll_interval_max is cut to it",
            )
        return cap

    async def _finish(self, slot: Slot, row: WatchedTask, event: TaskEvent) -> None:
        """Commit a watch's end (not found, expired) and publish it, or retry the write."""
        if not await self.commit(row, [event]):
            self._retry_after_store_failure(slot)
            return
        if self._scheduler.get(row.task_id) is not slot:
            return
        self._adopt(slot, row)
        log.warning(event.type, task_id=row.task_id, status=row.status, detail=event.detail)
        await self.publish([event])

    # ---- commit, adopt, publish ---------------------------------------------------------------

    async def commit(self, row: WatchedTask, events: Sequence[TaskEvent]) -> bool:
        """Durable before visible: persist the task's new row with its events.

        True when written. On failure nothing is adopted or published: the task keeps its last
        committed row, the store counts as failing (see /readyz) and the caller retries.
        """
        try:
            await self._record(row, events)
        except Exception as error:
            self._stats.internal_errors["store"] += 1
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
        """Look again after the error backoff: the same answer is then derived and written."""
        row = self._row(slot)
        self.apply(slot, schedule.after_error(self.policy, row.poll_state, rng=self._rng))

    def _adopt(self, slot: Slot, committed: WatchedTask) -> None:
        """Make a committed row the task's row (answer fields only: labels may have changed)."""
        current = self._row(slot)
        row = replace(current, **{name: getattr(committed, name) for name in _POLL_FIELDS})
        if self._table.replace(row):
            self._scheduler.drop(slot.task_id)

    def apply(self, slot: Slot, decision: schedule.Decision, *, spread: bool = False) -> None:
        """Remember the decision's poll state and schedule the task's next look (`spread`:
        the caller already spread its delay over what the budget can serve)."""
        row = self._row(slot)
        # A spread delay already made room for the budget, which may need longer than
        # poll_interval_max to serve every task once; only the deadline bounds it.
        bound = schedule.clamp_to_deadline if spread else schedule.bounded
        decision = bound(self.policy, decision, started=row.added_wall, now=self._clock.wall())
        floor = self.budget_floor()
        if (
            not spread
            and decision.delay < floor
            and decision.reason is not schedule.Reason.AUTH_RETRY
        ):
            # The budget cannot serve every active task sooner than this: asking for more only
            # builds a queue at the budget's door. Spread over [floor, 2 × floor], so even
            # tasks that all asked at once come back at most at 80 % of the budget.
            delay = floor * (1.0 + self._rng.random())
            decision = schedule.Decision(decision.state, delay, decision.reason)
        self._table.replace(replace(row, poll_state=decision.state))
        self._stats.poll_reasons[decision.reason.value] += 1
        log.debug(
            "poll.scheduled",
            task_id=slot.task_id,
            reason=decision.reason.value,
            delay=round(decision.delay, 3),
            estimated_end=decision.state.estimated_end,
        )
        self._scheduler.schedule(slot, decision.delay)

    def budget_floor(self) -> float:
        """The shortest wait the request budget can serve for every task that needs looks of
        its own (those the last sweep did not refresh), with a fifth of it left over for
        listings, discovery and bursts."""
        own = max(len(self._scheduler) - self.swept, 0)
        return BUDGET_HEADROOM * own / self._scheduler.budget.sustained_rate

    async def publish(self, events: Sequence[TaskEvent]) -> None:
        """Hand committed events to every subscriber; a failing one loses nothing durable."""
        for event in events:
            for sink in tuple(self.subscribers):
                try:
                    await sink(event)
                except Exception as error:
                    self.internal("events", error)

    def internal(self, component: str, error: BaseException | None) -> None:
        """Count and log an unexpected exception that the engine survived."""
        self._stats.internal_errors[component] += 1
        log.error(
            "engine.internal_error",
            component=component,
            error_type=type(error).__name__,
            error=str(error)[:200],
        )
        log.debug("engine.internal_error_detail", component=component, exc_info=error)

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
