"""The bridge between the engine's task table and the state store.

`StateRecorder` is the engine's TaskRecorder: it writes a task's new state and the outbox rows
of the events it produced in one transaction, then wakes the deliverer. `restore` resumes the
unfinished watches of a previous run and tells which tasks already ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from watcher.cbr.models import MalformedBodyError, OperationLog
from watcher.engine import Engine, WatchedTask
from watcher.events import TaskEvent
from watcher.store import OutboxEntry, Store, TaskRecord
from watcher.webhooks import Deliverer

log = structlog.get_logger("watcher.persistence")

ENDED_TASK_RETENTION = 30 * 86400.0
"""Ended tasks are kept this long, so a restart (or a task list that still names them) does
not watch them again."""


def snapshot(task: WatchedTask) -> TaskRecord:
    """The persisted form of a task-table row."""
    return TaskRecord(
        task_id=task.task_id,
        labels=dict(task.labels),
        source=task.source,
        status=task.status,
        progress=task.progress,
        raw=task.operation_log.raw if task.operation_log is not None else None,
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
    if record.raw is not None:
        try:
            operation_log = OperationLog.from_raw(record.raw)
        except MalformedBodyError:
            operation_log = None
    return WatchedTask(
        task_id=record.task_id,
        labels=dict(record.labels),
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


class StateRecorder:
    """Persist, then publish: the engine's TaskRecorder backed by the store."""

    def __init__(self, store: Store, deliverer: Deliverer | None) -> None:
        self._store = store
        self._deliverer = deliverer

    async def __call__(self, task: WatchedTask, events: Sequence[TaskEvent]) -> None:
        """Commit the task's state with one outbox row per (event, interested receiver)."""
        entries: list[OutboxEntry] = []
        if self._deliverer is not None:
            for event in events:
                entries += self._deliverer.outbox_entries(event)
        await self._store.save(snapshot(task), entries)
        if entries and self._deliverer is not None:
            self._deliverer.wake({entry.receiver for entry in entries})


@dataclass(frozen=True, slots=True)
class Restored:
    """What `restore` found."""

    resumed: list[str]
    ended: set[str]
    outcomes: dict[str, str] = field(default_factory=dict)
    """How each ended task ended (its stored `end_reason`)."""


async def restore(engine: Engine, store: Store, *, now: float) -> Restored:
    """Resume every unfinished watch; mark ended ones, with their outcomes, so nothing
    watches them again and `--exit-when-done` still counts how they ended."""
    pruned = await store.prune_ended(now - ENDED_TASK_RETENTION)
    records = await store.load_tasks()
    outcomes = {
        record.task_id: record.end_reason for record in records if record.end_reason is not None
    }
    ended = set(outcomes)
    engine.mark_ended(outcomes)
    resumed = [
        record.task_id
        for record in records
        if record.end_reason is None and engine.restore(to_watched(record))
    ]
    log.info("state.restored", resumed=len(resumed), ended=len(ended), pruned=pruned)
    return Restored(resumed=resumed, ended=ended, outcomes=outcomes)
