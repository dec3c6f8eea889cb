"""What an answer, an error or a deadline does to one task: pure functions of a row.

The engine computes a task's next row here, commits it with its events, and only then makes it
visible (durable before visible). Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from watcher.cbr.models import OperationLog
from watcher.engine import schedule
from watcher.engine.events import (
    TASK_PROGRESS,
    TASK_STARTED,
    TERMINAL_EVENT_FOR_STATUS,
    WATCH_EXPIRED,
    TaskEvent,
)
from watcher.engine.task import WatchedTask


@dataclass(frozen=True, slots=True)
class Answered:
    """The outcome of one answer from CBR for one task."""

    row: WatchedTask
    """The task's next row (commit it before adopting it)."""
    events: list[TaskEvent] = field(default_factory=list)
    decision: schedule.Decision | None = None
    """When to poll next; None when the watch ended."""
    previous_status: str | None = None
    status_changed: bool = False
    changed: bool = False
    """Status or progress moved (the row must be written)."""


def event(
    row: WatchedTask,
    event_type: str,
    previous_status: str | None,
    *,
    now_wall: float,
    detail: str | None = None,
) -> TaskEvent:
    """The event `event_type` about `row` as it is now."""
    return TaskEvent(
        type=event_type,
        task_id=row.task_id,
        occurred_at=now_wall,
        status=row.status,
        previous_status=previous_status,
        progress=row.progress,
        labels=row.labels,
        operation_log=row.operation_log,
        detail=detail,
        started_at=row.started_wall,
    )


def end(
    row: WatchedTask,
    reason: str,
    event_type: str,
    previous_status: str | None,
    *,
    now_wall: float,
    detail: str | None = None,
) -> tuple[WatchedTask, TaskEvent]:
    """The watch of `row` is over (`reason`: a terminal status, not_found or expired)."""
    ended = replace(row, end_reason=reason, ended_wall=now_wall)
    return ended, event(ended, event_type, previous_status, now_wall=now_wall, detail=detail)


def expire(
    row: WatchedTask, policy: schedule.Policy, *, now_wall: float
) -> tuple[WatchedTask, TaskEvent]:
    """The deadline passed without a terminal status."""
    detail = f"no terminal status within {policy.deadline:g}s"
    return end(row, "expired", WATCH_EXPIRED, row.status, now_wall=now_wall, detail=detail)


def on_answer(
    row: WatchedTask,
    operation_log: OperationLog,
    *,
    policy: schedule.Policy,
    now_wall: float,
    rng: random.Random,
) -> Answered:
    """A successful poll (ShowOpLog or a list page) answered `operation_log` for `row`."""
    previous_status, previous_progress = row.status, row.progress
    status, progress = operation_log.status, operation_log.progress
    status_changed = status != previous_status
    progress_changed = progress is not None and progress != previous_progress
    changes: dict[str, object] = {"operation_log": operation_log, "status": status}
    if progress is not None:
        changes["progress"] = progress
    if status_changed or progress_changed:
        changes["last_change_wall"] = now_wall
    if progress_changed:
        changes["last_progress_wall"] = now_wall
    just_started = status == "running" and row.started_wall is None
    if just_started:
        changes["started_wall"] = now_wall
    draft = replace(row, **changes)  # type: ignore[arg-type]

    events: list[TaskEvent] = []
    if just_started:
        events.append(event(draft, TASK_STARTED, previous_status, now_wall=now_wall))
    # The started event already carries the progress of its poll, and 0 → unknown → 0
    # while waiting is not news.
    if (
        progress_changed
        and not just_started
        and not operation_log.is_terminal
        and (previous_progress is not None or progress)
    ):
        events.append(event(draft, TASK_PROGRESS, previous_status, now_wall=now_wall))

    decision: schedule.Decision | None = None
    if operation_log.is_terminal:
        draft, ended = end(
            draft, status, TERMINAL_EVENT_FOR_STATUS[status], previous_status, now_wall=now_wall
        )
        events.append(ended)
    elif schedule.expired(policy, started=draft.added_wall, now=now_wall):
        draft, expired_event = expire(draft, policy, now_wall=now_wall)
        events.append(expired_event)
    else:
        wish = schedule.after_success(
            policy,
            draft.poll_state,
            changed=status_changed or progress_changed,
            rng=rng,
            status=status,
            progress=progress,
            now=now_wall,
        )
        decision = schedule.on_grid(policy, draft.poll_state, wish, now=now_wall)
    return Answered(
        row=draft,
        events=events,
        decision=decision,
        previous_status=previous_status,
        status_changed=status_changed,
        changed=status_changed or progress_changed or bool(events),
    )
