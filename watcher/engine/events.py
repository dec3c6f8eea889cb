"""Events the engine produces when a watched task changes, and the names of every event type
(docs/webhooks.md); `backup.missed` comes from coverage (`watcher.coverage.missed`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from watcher.cbr.models import OperationLog

TASK_STARTED = "task.started"
TASK_PROGRESS = "task.progress"
TASK_SUCCEEDED = "task.succeeded"
TASK_FAILED = "task.failed"
TASK_TIMED_OUT = "task.timed_out"
TASK_SKIPPED = "task.skipped"
WATCH_NOT_FOUND = "watch.not_found"
WATCH_EXPIRED = "watch.expired"
BACKUP_MISSED = "backup.missed"
TEST_PING = "test.ping"

EVENT_TYPES = (
    TASK_STARTED,
    TASK_PROGRESS,
    TASK_SUCCEEDED,
    TASK_FAILED,
    TASK_TIMED_OUT,
    TASK_SKIPPED,
    WATCH_NOT_FOUND,
    WATCH_EXPIRED,
    BACKUP_MISSED,
    TEST_PING,
)

TERMINAL_EVENT_FOR_STATUS = {
    "success": TASK_SUCCEEDED,
    "failed": TASK_FAILED,
    "timeout": TASK_TIMED_OUT,
    "skipped": TASK_SKIPPED,
}


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something a receiver may want to hear about one task."""

    type: str
    task_id: str
    occurred_at: float
    """Wall-clock seconds when the watcher noticed it."""
    status: str | None
    previous_status: str | None
    progress: int | None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    operation_log: OperationLog | None = None
    detail: str | None = None
    """A short human explanation for watch.* events."""
    started_at: float | None = None
    """Wall-clock seconds when the watcher first saw the task running (None if never)."""

    @property
    def ends_watch(self) -> bool:
        """Whether this is the last event the task will produce."""
        return self.type not in (TASK_STARTED, TASK_PROGRESS)


EventSink = Callable[[TaskEvent], Awaitable[None]]
"""Receives every event; the engine awaits it before the task leaves the active set."""


async def discard_events(event: TaskEvent) -> None:
    """An EventSink that drops everything."""
