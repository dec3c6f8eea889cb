"""The watch engine: one scheduler over a task table.

A min-heap of due times, a bounded number of requests in flight and one request budget
shared by every watch. *When* to poll comes from `watcher.schedule`; this module does the I/O,
turns poll results into status transitions and events, and logs state changes only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from watcher import schedule
from watcher.budget import RequestBudget
from watcher.cbr.errors import (
    AuthError,
    CbrError,
    InternalError,
    NotFoundError,
    ThrottledError,
)
from watcher.cbr.models import OperationLog
from watcher.clock import Clock
from watcher.events import (
    TASK_PROGRESS,
    TASK_STARTED,
    TERMINAL_EVENT_FOR_STATUS,
    WATCH_EXPIRED,
    WATCH_NOT_FOUND,
    EventSink,
    TaskEvent,
    discard_events,
)
from watcher.task_ids import validate_task_id

log = structlog.get_logger("watcher.engine")

HEARTBEAT = 1.0
"""The loop turns at least this often (fake or real seconds), even with nothing due."""
INVARIANT_CHECK_INTERVAL = 60.0
"""How often the loop checks that every active task has a next poll (and repairs it)."""

INTERNAL_COMPONENTS = ("poll", "store", "events", "engine")
"""Where an unexpected exception can be caught and survived (`EngineStats.internal_errors`):
a poll (client or answer handling), a state write, an event subscriber, the scheduler loop."""


TaskRecorder = Callable[["WatchedTask", Sequence[TaskEvent]], Awaitable[None]]
"""Persists a task's new state together with the events it produced (one transaction)."""


async def discard_records(task: WatchedTask, events: Sequence[TaskEvent]) -> None:
    """A TaskRecorder for engines without a state store."""


class CbrApi(Protocol):
    """The part of the CBR client the engine uses."""

    async def show_op_log(self, task_id: str) -> OperationLog:
        """Fetch one task."""
        ...

    async def reload_credentials(self) -> None:
        """Re-read credentials after a 401."""
        ...


@dataclass(slots=True)
class WatchedTask:
    """One row of the task table."""

    task_id: str
    labels: dict[str, str]
    source: str
    added_wall: float
    status: str | None = None
    progress: int | None = None
    operation_log: OperationLog | None = None
    started_wall: float | None = None
    """When the watcher first saw it running."""
    last_change_wall: float | None = None
    last_progress_wall: float | None = None
    ended_wall: float | None = None
    end_reason: str | None = None
    """The terminal CBR status, or "not_found" / "expired"."""
    poll_state: schedule.PollState = field(default_factory=schedule.PollState)
    due: float = 0.0
    generation: int = 0
    in_flight: bool = False
    """A poll of this task is under way (its `due` is then in the past)."""
    warned_statuses: set[str] = field(default_factory=set)

    @property
    def ended(self) -> bool:
        """Whether the watch is over."""
        return self.end_reason is not None


@dataclass(slots=True)
class EngineStats:
    """Counters for logs, the demo summary and benchmarks."""

    polls_started: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
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
        on_event: EventSink = discard_events,
        record: TaskRecorder = discard_records,
        exit_when_done: bool = False,
        retention: float = 900.0,
        shutdown_grace: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self.policy = policy
        self._max_concurrency = max_concurrency
        self.budget = RequestBudget(max_requests_per_second)
        self._on_event = on_event
        self._record = record
        self.exit_when_done = exit_when_done
        self._retention = retention
        self._shutdown_grace = shutdown_grace
        self._rng = rng or random.Random()
        self.tasks: dict[str, WatchedTask] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: set[asyncio.Task[None]] = set()
        self.stats = EngineStats()
        self.last_turn = clock.monotonic()
        self.upstream_failing_since: float | None = None
        self._failures_while_failing = 0
        self._active = 0
        self._next_forget = 0.0
        self._next_invariant_check = 0.0
        self._ended_ids: set[str] = set()
        self.store_failing_since: float | None = None
        """Monotonic time of the first failed state write in the current streak, or None."""
        self._stored_outcomes: dict[str, str | None] = {}
        self.auth_failing_since: float | None = None
        """Monotonic time of the first 401 of the current streak; None once a poll succeeds."""
        self.last_auth_error: CbrError | None = None
        """The latest 401 CBR answered (kept after recovery, for messages)."""
        self.auth_failed_after_reload = False
        """Whether, in the current streak, a 401 came back on the retry made right after
        reloading the credentials: they are rejected, not merely stale."""

    # ---- the task table -------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests under way right now."""
        return len(self._running)

    def add(
        self, task_id: str, labels: Mapping[str, str] | None = None, *, source: str = "config"
    ) -> bool:
        """Start watching `task_id` (polled at once). False if it is already in the table."""
        validate_task_id(task_id)
        existing = self.tasks.get(task_id)
        if existing is not None:
            if labels:
                existing.labels.update(labels)
            return False
        if task_id in self._ended_ids:
            log.debug("task.already_ended", task_id=task_id)
            return False
        task = WatchedTask(
            task_id=task_id,
            labels=dict(labels or {}),
            source=source,
            added_wall=self._clock.wall(),
        )
        self.tasks[task_id] = task
        self._active += 1
        self._schedule(task, 0.0)
        log.info("task.watching", task_id=task_id, source=source)
        return True

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

    def restore(self, task: WatchedTask) -> bool:
        """Resume a watch saved before a restart (polled at once); False if already present."""
        validate_task_id(task.task_id)
        if task.task_id in self.tasks or task.ended:
            return False
        self.tasks[task.task_id] = task
        self._active += 1
        self._schedule(task, 0.0)
        log.info("task.resumed", task_id=task.task_id, status=task.status, progress=task.progress)
        return True

    def remove(self, task_id: str) -> bool:
        """Stop watching `task_id`; an in-flight poll finishes but changes nothing."""
        task = self.tasks.pop(task_id, None)
        if task is None:
            return False
        task.generation += 1
        if not task.ended:
            self._active -= 1
        log.info("task.unwatched", task_id=task_id)
        return True

    def sync_source(self, source: str, task_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make the unfinished tasks of `source` equal `task_ids`; returns (added, removed)."""
        wanted = list(dict.fromkeys(task_ids))
        added = [tid for tid in wanted if self.add(tid, source=source)]
        wanted_set = set(wanted)
        removed = [
            tid
            for tid, task in list(self.tasks.items())
            if task.source == source and not task.ended and tid not in wanted_set
        ]
        for tid in removed:
            self.remove(tid)
        return added, removed

    def active_count(self) -> int:
        """Tasks still being watched."""
        return self._active

    def all_done(self) -> bool:
        """Whether every task in the table has ended."""
        return self._active == 0

    def outcome(self, task_id: str) -> str | None:
        """How the watch of `task_id` ended (its `end_reason`), from the table or else from
        `mark_ended`; None while it runs, or when nothing is known about it."""
        task = self.tasks.get(task_id)
        if task is not None:
            return task.end_reason
        return self._stored_outcomes.get(task_id)

    def exit_code(self, task_ids: Iterable[str] | None = None) -> int:
        """SPEC §3: 0 when every task asked for ended in success, 3 otherwise.

        `task_ids` are the tasks the run was asked for (default: the table); each counts with
        its `outcome`, so one that ended in an earlier run counts too, and one that has not
        ended (or is unknown) is not a success.
        """
        wanted = self.tasks.keys() if task_ids is None else task_ids
        ok = all(self.outcome(task_id) == "success" for task_id in wanted)
        return 0 if ok else 3

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
        while self._heap:
            due, _, task_id, generation = self._heap[0]
            task = self.tasks.get(task_id)
            if task is None or task.generation != generation or task.ended:
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
            self.budget.try_acquire(now)
            self.stats.polls_started += 1
            self.stats.lag_samples.append(now - due)
            task.in_flight = True
            runner = asyncio.create_task(self._poll(task, generation), name=f"poll {task_id}")
            self._running.add(runner)
            runner.add_done_callback(self._poll_finished)
        return None

    def _poll_finished(self, runner: asyncio.Task[None]) -> None:
        self._running.discard(runner)
        self._wake.set()
        if not runner.cancelled() and runner.exception() is not None:
            # `_poll` catches everything; this only fires if that promise is ever broken.
            self._internal("engine", runner.exception())

    def _schedule(self, task: WatchedTask, delay: float) -> None:
        task.generation += 1
        task.due = self._clock.monotonic() + max(0.0, delay)
        heapq.heappush(self._heap, (task.due, next(self._seq), task.task_id, task.generation))
        self._wake.set()

    def _forget_old(self) -> None:
        """Drop ended tasks once their metrics retention is over (the table must not grow)."""
        now = self._clock.monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + min(60.0, max(1.0, self._retention / 10))
        cutoff = self._clock.wall() - self._retention
        stale = [
            tid
            for tid, task in self.tasks.items()
            if task.ended_wall is not None and task.ended_wall < cutoff
        ]
        for tid in stale:
            del self.tasks[tid]

    def check_invariants(self) -> list[str]:
        """Broken promises of the task table, as readable sentences (empty when all hold).

        Every active task is either in flight or on the heap with its current generation,
        and the active count matches the table.
        """
        scheduled = {(task_id, generation) for _, _, task_id, generation in self._heap}
        problems = [
            f"task {task.task_id} is active but neither in flight nor scheduled"
            for task in self.tasks.values()
            if not task.ended
            and not task.in_flight
            and (task.task_id, task.generation) not in scheduled
        ]
        active = sum(1 for task in self.tasks.values() if not task.ended)
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
        self._active = sum(1 for task in self.tasks.values() if not task.ended)
        for task in self.tasks.values():
            if not task.ended and not task.in_flight:
                self._schedule(task, 0.0)

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

    async def _drain(self) -> None:
        """Give in-flight polls `shutdown_grace` seconds to finish, then cancel them."""
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

    # ---- one poll ---------------------------------------------------------------------------

    async def _poll(self, task: WatchedTask, generation: int) -> None:
        """One poll of one task. Total: whatever happens, an active task gets a next poll."""
        try:
            failure: CbrError | None = None
            try:
                operation_log = await self._client.show_op_log(task.task_id)
            except CbrError as error:
                failure = error
            except Exception as error:
                failure = InternalError.wrap(error)
            if not self._current(task, generation):
                return
            if failure is None:
                self.stats.polls_ok += 1
                self._upstream_ok()
                self.auth_failing_since = None
                self.auth_failed_after_reload = False
                await self._on_log(task, operation_log)
            else:
                self.stats.polls_failed += 1
                if isinstance(failure, InternalError):
                    self.stats.internal_errors["poll"] += 1
                await self._on_failure(task, failure)
        except Exception as error:
            # A bug while handling the answer (not the answer itself): the task keeps its last
            # committed state and is polled again after the error backoff.
            if self._current(task, generation):
                if task.poll_state.error_streak == 0:
                    self._internal("poll", error)
                else:
                    self.stats.internal_errors["poll"] += 1
                self._apply(task, schedule.after_error(self.policy, task.poll_state, rng=self._rng))
        finally:
            task.in_flight = False
            if self._current(task, generation) and not task.ended and not self._stopping:
                # Every path above schedules (which bumps the generation) or ends the task;
                # this is the safety net that makes "never without a next poll" structural.
                self._internal("engine", RuntimeError(f"poll of {task.task_id} left no next poll"))
                self._apply(task, schedule.after_error(self.policy, task.poll_state, rng=self._rng))

    def _current(self, task: WatchedTask, generation: int) -> bool:
        """Whether the task is still watched and this poll is still the one that counts."""
        return self.tasks.get(task.task_id) is task and task.generation == generation

    async def _on_log(self, task: WatchedTask, operation_log: OperationLog) -> None:
        now_wall = self._clock.wall()
        draft = _draft(task)
        previous_status, previous_progress = draft.status, draft.progress
        status, progress = operation_log.status, operation_log.progress
        draft.operation_log = operation_log
        if not operation_log.is_known_status and status not in draft.warned_statuses:
            draft.warned_statuses.add(status)
            log.warning("task.unknown_status", task_id=task.task_id, status=status)

        status_changed = status != previous_status
        progress_changed = progress is not None and progress != previous_progress
        draft.status = status
        if progress is not None:
            draft.progress = progress
        if status_changed or progress_changed:
            draft.last_change_wall = now_wall
        if progress_changed:
            draft.last_progress_wall = now_wall

        events: list[TaskEvent] = []
        just_started = status == "running" and draft.started_wall is None
        if just_started:
            draft.started_wall = now_wall
            events.append(self._event(draft, TASK_STARTED, previous_status))
        # The started event already carries the progress of its poll, and 0 → unknown → 0
        # while waiting is not news.
        if (
            progress_changed
            and not just_started
            and not operation_log.is_terminal
            and (previous_progress is not None or progress)
        ):
            events.append(self._event(draft, TASK_PROGRESS, previous_status))

        decision: schedule.Decision | None = None
        if operation_log.is_terminal:
            events.append(
                self._end(draft, status, TERMINAL_EVENT_FOR_STATUS[status], previous_status)
            )
        elif schedule.expired(self.policy, started=draft.added_wall, now=now_wall):
            events.append(self._expire(draft))
        else:
            decision = schedule.after_success(
                self.policy,
                draft.poll_state,
                changed=status_changed or progress_changed,
                rng=self._rng,
                status=status,
                progress=progress,
                now=now_wall,
            )
        if (status_changed or progress_changed or events) and not await self._commit(draft, events):
            self._retry_after_store_failure(task)
            return
        self._adopt(task, draft)
        if status_changed:
            self._log_status(task, previous_status)
        await self._publish(events)
        if decision is not None:
            self._apply(task, decision)

    async def _on_failure(self, task: WatchedTask, error: CbrError) -> None:
        now = self._clock.monotonic()
        policy, state, rng = self.policy, task.poll_state, self._rng
        if isinstance(error, NotFoundError):
            decision = schedule.after_not_found(policy, state, now=now, rng=rng)
            if decision is None:
                draft = _draft(task)
                event = self._end(
                    draft, "not_found", WATCH_NOT_FOUND, draft.status, detail=str(error)
                )
                await self._finish(task, draft, event)
                return
            if state.not_found_since is None:
                log.warning(
                    "task.not_found_yet",
                    task_id=task.task_id,
                    grace_remaining_seconds=round(policy.not_found_grace, 3),
                    detail="CBR does not know this task (yet); retrying until the grace ends",
                )
        else:
            self._upstream_failed(error)
            if isinstance(error, AuthError):
                self._auth_failed(error, after_reload=state.auth_retry_spent)
                decision = schedule.after_auth_failure(policy, state, rng=rng)
                if decision.reason is schedule.Reason.AUTH_RETRY:
                    await self._client.reload_credentials()
            elif isinstance(error, ThrottledError):
                decision = schedule.after_throttled(
                    policy, state, retry_after=error.retry_after, rng=rng
                )
                if error.retry_after is not None:
                    # The quota is shared by every watch: nobody should call before it resets.
                    self.budget.pause_until(now + error.retry_after)
            else:
                decision = schedule.after_error(policy, state, rng=rng)
        if schedule.expired(policy, started=task.added_wall, now=self._clock.wall()):
            draft = _draft(task)
            await self._finish(task, draft, self._expire(draft))
            return
        self._apply(task, decision)

    async def _finish(self, task: WatchedTask, draft: WatchedTask, event: TaskEvent) -> None:
        """Commit a watch's end (not found, expired) and publish it, or retry the write."""
        if not await self._commit(draft, [event]):
            self._retry_after_store_failure(task)
            return
        self._adopt(task, draft)
        log.warning(event.type, task_id=task.task_id, status=task.status, detail=event.detail)
        await self._publish([event])

    def _apply(self, task: WatchedTask, decision: schedule.Decision) -> None:
        decision = schedule.clamp_to_deadline(
            self.policy, decision, started=task.added_wall, now=self._clock.wall()
        )
        task.poll_state = decision.state
        self.stats.poll_reasons[decision.reason.value] += 1
        log.debug(
            "poll.scheduled",
            task_id=task.task_id,
            reason=decision.reason.value,
            delay=round(decision.delay, 3),
            estimated_end=decision.state.estimated_end,
        )
        self._schedule(task, decision.delay)

    def _expire(self, task: WatchedTask) -> TaskEvent:
        detail = f"no terminal status within {self.policy.deadline:g}s"
        return self._end(task, "expired", WATCH_EXPIRED, task.status, detail=detail)

    def _end(
        self,
        task: WatchedTask,
        reason: str,
        event_type: str,
        previous_status: str | None,
        *,
        detail: str | None = None,
    ) -> TaskEvent:
        task.end_reason = reason
        task.ended_wall = self._clock.wall()
        return self._event(task, event_type, previous_status, detail=detail)

    def _event(
        self,
        task: WatchedTask,
        event_type: str,
        previous_status: str | None,
        *,
        detail: str | None = None,
    ) -> TaskEvent:
        return TaskEvent(
            type=event_type,
            task_id=task.task_id,
            occurred_at=self._clock.wall(),
            status=task.status,
            previous_status=previous_status,
            progress=task.progress,
            labels=dict(task.labels),
            operation_log=task.operation_log,
            detail=detail,
        )

    async def _commit(self, draft: WatchedTask, events: list[TaskEvent]) -> bool:
        """Durable before visible: persist the task's new state with its events.

        True when written. On failure nothing is adopted or published: the task keeps its last
        committed state, the store counts as failing (see /readyz) and the caller retries.
        """
        try:
            await self._record(draft, events)
        except Exception as error:
            self.stats.internal_errors["store"] += 1
            if self.store_failing_since is None:
                self.store_failing_since = self._clock.monotonic()
                log.error(
                    "store.write_failed",
                    task_id=draft.task_id,
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

    def _retry_after_store_failure(self, task: WatchedTask) -> None:
        """Poll again after the error backoff: the same answer is then derived and written anew."""
        self._apply(task, schedule.after_error(self.policy, task.poll_state, rng=self._rng))

    def _adopt(self, task: WatchedTask, draft: WatchedTask) -> None:
        """Make the committed draft the task's state (the one place a poll changes a row)."""
        newly_ended = draft.ended and not task.ended
        for name in _ADOPTED_FIELDS:
            setattr(task, name, getattr(draft, name))
        if newly_ended:
            self._ended_ids.add(task.task_id)
            self._active -= 1
            task.generation += 1

    async def _publish(self, events: Sequence[TaskEvent]) -> None:
        """Hand committed events to the subscriber; a failing subscriber loses nothing durable."""
        for event in events:
            try:
                await self._on_event(event)
            except Exception as error:
                self._internal("events", error)

    # ---- logging ----------------------------------------------------------------------------

    def _log_status(self, task: WatchedTask, previous_status: str | None) -> None:
        operation_log = task.operation_log
        fields: dict[str, object] = {
            "task_id": task.task_id,
            "status": task.status,
            "previous_status": previous_status,
            "progress": task.progress,
        }
        if operation_log is not None:
            fields["operation_type"] = operation_log.operation_type
            if operation_log.is_terminal:
                fields["final"] = True
                if operation_log.error is not None:
                    fields["error_code"], fields["error_message"] = operation_log.error
        level = "warning" if task.status in ("failed", "timeout") else "info"
        getattr(log, level)("task.status_changed", **fields)

    def _upstream_failed(self, error: CbrError) -> None:
        if self.upstream_failing_since is None:
            self.upstream_failing_since = self._clock.monotonic()
            self._failures_while_failing = 0
            log.warning(
                "upstream.failing",
                kind=error.kind,
                code=error.code_label,
                error_code=error.error_code,
                error=error.message,
            )
        self._failures_while_failing += 1

    def _auth_failed(self, error: AuthError, *, after_reload: bool) -> None:
        """Track the 401 streak (`auth_failing_since`, `auth_failed_after_reload`)."""
        self.last_auth_error = error
        if self.auth_failing_since is None:
            self.auth_failing_since = self._clock.monotonic()
        if after_reload:
            self.auth_failed_after_reload = True

    def _upstream_ok(self) -> None:
        if self.upstream_failing_since is not None:
            log.info(
                "upstream.recovered",
                failing_seconds=round(self._clock.monotonic() - self.upstream_failing_since, 3),
                failed_requests=self._failures_while_failing,
            )
            self.upstream_failing_since = None


_ADOPTED_FIELDS = (
    "status",
    "progress",
    "operation_log",
    "started_wall",
    "last_change_wall",
    "last_progress_wall",
    "ended_wall",
    "end_reason",
    "warned_statuses",
)
"""What a poll may change in a row; scheduling fields (due, generation, poll_state) are set
by the engine's scheduling alone."""


def _draft(task: WatchedTask) -> WatchedTask:
    """A private copy of `task` to compute its next state on, adopted only once committed."""
    return replace(task, warned_statuses=set(task.warned_statuses))
