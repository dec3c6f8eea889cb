"""Persist, then publish: the engine's TaskRecorder backed by the state store.

For every change of a task, `StateRecorder` commits in one transaction: the task's new state,
one outbox row per (event, receiver that asked for it) as `watcher.delivery.outbox` builds them, and
the bookkeeping a restart must not lose (the last success per operation type, and each
resource's freshness). Only then does it wake the deliverer. Missed backups go the same way:
their announcements, outbox rows and how far starts were judged, in one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Sequence

from watcher.coverage import freshness
from watcher.coverage.freshness import ResourceKey, ResourceStatus
from watcher.coverage.missed import BackupMissed
from watcher.delivery.outbox import Outbox
from watcher.engine.events import TaskEvent
from watcher.engine.task import WatchedTask
from watcher.state.records import snapshot
from watcher.state.rows import LastSuccess, MissedRecord, OutboxEntry, TaskRecord
from watcher.state.sqlite import Store

UNKNOWN_OPERATION = "unknown"

Wake = Callable[[Collection[str]], None]
"""Told which receivers got new outbox rows, once they are committed (`Deliverer.wake`)."""


def last_success_of(task: TaskRecord) -> LastSuccess | None:
    """The last-success fact of a task that ended in success (the watcher's end time, per
    operation type), None for any other task."""
    if task.end_reason != "success" or task.ended is None:
        return None
    operation_type = (task.raw or {}).get("operation_type")  # decoded once, at the end
    return LastSuccess(str(operation_type or UNKNOWN_OPERATION), task.ended)


class StateRecorder:
    """The engine's TaskRecorder: task state, outbox rows and bookkeeping, one commit each."""

    def __init__(
        self, store: Store, outbox: Outbox | None = None, *, wake: Wake | None = None
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._wake = wake
        self._resources: dict[ResourceKey, ResourceStatus] | None = None
        """What the store holds in `resource_status`, loaded at the first terminal event."""
        self._resources_lock = asyncio.Lock()

    async def __call__(self, task: WatchedTask, events: Sequence[TaskEvent]) -> None:
        """Commit the task's state with its events' outbox rows and bookkeeping."""
        record = snapshot(task)
        entries = self._outbox.entries_for(events) if self._outbox is not None else []
        facts = [fact for fact in map(freshness.from_event, events) if fact is not None]
        if facts:
            await self._save_with_freshness(record, entries, facts)
        else:
            await self._store.save(record, entries, last_success=last_success_of(record))
        if entries and self._wake is not None:
            self._wake({entry.receiver for entry in entries})

    async def record_missed(
        self, missed: Sequence[BackupMissed], *, checked_until: float, now: float
    ) -> int:
        """Commit `backup.missed` events (skipping any announced before) with their outbox
        rows and how far scheduled starts were judged; returns how many were new."""
        items = [
            (
                MissedRecord(m.resource_id, m.scheduled_at, m.vault_id, m.policy_id, now),
                self._outbox.missed_entries(m, now=now) if self._outbox is not None else [],
            )
            for m in missed
        ]
        new = await self._store.record_missed(items, checked_until=checked_until)
        receivers = {entry.receiver for _, entries in items for entry in entries}
        if new and receivers and self._wake is not None:
            self._wake(receivers)
        return new

    async def forget(self, task_id: str, removed_wall: float) -> None:
        """The engine's TaskForgetter: drop the task's row and keep a tombstone (its
        undelivered events stay in the outbox)."""
        await self._store.delete_task(task_id, tombstone_at=removed_wall)

    async def _save_with_freshness(
        self, record: TaskRecord, entries: list[OutboxEntry], facts: Iterable[ResourceStatus]
    ) -> None:
        # One terminal commit at a time: each folds into what the one before it wrote.
        async with self._resources_lock:
            known = await self._known_resources()
            folded: dict[ResourceKey, ResourceStatus] = {}
            for fact in facts:
                folded[fact.key] = freshness.merge(folded.get(fact.key, known.get(fact.key)), fact)
            await self._store.save(
                record,
                entries,
                last_success=last_success_of(record),
                resources=folded.values(),
            )
            known.update(folded)  # only once committed: a failed write is derived again

    async def _known_resources(self) -> dict[ResourceKey, ResourceStatus]:
        if self._resources is None:
            self._resources = {s.key: s for s in await self._store.resource_statuses()}
        return self._resources
