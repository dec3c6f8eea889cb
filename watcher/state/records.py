"""The engine's task-table row (`WatchedTask`) ↔ its persisted form (`TaskRecord`)."""

from __future__ import annotations

from watcher.cbr.models import MalformedBodyError, OperationLog
from watcher.engine.task import WatchedTask, frozen_labels
from watcher.state.rows import TaskRecord


def snapshot(task: WatchedTask) -> TaskRecord:
    """The persisted form of a task-table row."""
    return TaskRecord(
        task_id=task.task_id,
        labels=dict(task.labels),
        source=task.source,
        status=task.status,
        progress=task.progress,
        raw_json=task.operation_log.raw_json if task.operation_log is not None else None,
        first_seen=task.added_wall,
        started=task.started_wall,
        last_change=task.last_change_wall,
        last_progress=task.last_progress_wall,
        ended=task.ended_wall,
        end_reason=task.end_reason,
    )


def to_watched(record: TaskRecord) -> WatchedTask:
    """A task-table row rebuilt from the store (the last CBR body is parsed again)."""
    operation_log: OperationLog | None = None
    if record.raw_json is not None:
        try:
            operation_log = OperationLog.from_json(record.raw_json)
        except MalformedBodyError:
            operation_log = None
    return WatchedTask(
        task_id=record.task_id,
        labels=frozen_labels(record.labels),
        source=record.source,
        added_wall=record.first_seen,
        status=record.status,
        progress=record.progress,
        operation_log=operation_log,
        started_wall=record.started,
        last_change_wall=record.last_change,
        last_progress_wall=record.last_progress,
        ended_wall=record.ended,
        end_reason=record.end_reason,
    )
