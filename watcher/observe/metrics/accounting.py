"""What a task-ending event adds to the aggregate metrics: the finished counter, the duration
and detection-delay histograms. Uses only the event (never the engine's task table)."""

from __future__ import annotations

from typing import NamedTuple

from watcher.cbr.models import TERMINAL_STATUSES
from watcher.engine.events import (
    TERMINAL_EVENT_FOR_STATUS,
    WATCH_EXPIRED,
    WATCH_NOT_FOUND,
    TaskEvent,
)
from watcher.observe.metrics.constants import EXPIRED, NOT_FOUND, UNKNOWN
from watcher.observe.metrics.instruments import Instruments
from watcher.safetext import clean


class Success(NamedTuple):
    """A task that ended in success: its operation type and when it ended (wall seconds)."""

    operation_type: str
    ended: float


def final_status(event: TaskEvent) -> str | None:
    """The `status` a watch ended with ("not_found", "expired" or CBR's terminal status), or
    None for an event that does not end a watch of a task (started, progress, test.ping)."""
    if not event.ends_watch:
        return None
    if event.type == WATCH_NOT_FOUND:
        return NOT_FOUND
    if event.type == WATCH_EXPIRED:
        return EXPIRED
    if event.status is not None and TERMINAL_EVENT_FOR_STATUS.get(event.status) == event.type:
        return event.status
    return None


def started_at(event: TaskEvent) -> float | None:
    """When the task started: CBR's started_at, else when the watcher first saw it running."""
    operation_log = event.operation_log
    if operation_log is not None and operation_log.started_at is not None:
        return operation_log.started_at.timestamp()
    return event.started_at


def account_finished(instruments: Instruments, event: TaskEvent) -> Success | None:
    """Count a watch that ended; observe its duration and detection delay. Returns the
    success, if it was one, for the last-success gauges."""
    status = final_status(event)
    if status is None:
        return None
    operation_log = event.operation_log
    op_type = clean((operation_log.operation_type if operation_log else None) or UNKNOWN)
    instruments.tasks_finished.labels(status, op_type).inc()
    if status not in TERMINAL_STATUSES:
        return None
    ended_at = (
        operation_log.ended_at.timestamp()
        if operation_log is not None and operation_log.ended_at is not None
        else None
    )
    started = started_at(event)
    end = ended_at if ended_at is not None else event.occurred_at
    if started is not None and end >= started:
        instruments.task_duration.labels(op_type).observe(end - started)
    if ended_at is not None:
        instruments.detection_delay.observe(max(0.0, event.occurred_at - ended_at))
    return Success(op_type, end) if status == "success" else None
