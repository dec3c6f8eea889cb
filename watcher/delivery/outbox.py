"""The outbox seam: which receiver gets which event, in which bytes, under which ID.

Producing side only. The state recorder commits the rows built here together with the task's
state; the deliverer (`watcher.delivery.webhooks`) then reads due rows and sends their bytes as they
are, knowing nothing of events or routing.

Routing: a receiver gets an event when one of its `events` patterns names the type exactly or
is a shell-style glob matching it, except `task.progress`, which only a receiver naming it
exactly gets (`task.*` or `*` do not select it). The body is `watcher.delivery.payloads.event_body`;
the `webhook-id` is `watcher.delivery.payloads.event_id`, derived from task ID and event type, so a
restart re-sends the same ID (for `backup.missed`: from resource ID and scheduled start). What
receivers see: docs/webhooks.md.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from watcher.coverage.missed import BackupMissed
from watcher.delivery.payloads import event_body, event_id, missed_body, missed_event_id
from watcher.engine.events import BACKUP_MISSED, TASK_PROGRESS, TaskEvent
from watcher.state.rows import OutboxEntry

# Only named exactly: a glob such as "task.*" does not select it.
EXACT_ONLY_EVENT_TYPES: Final = frozenset({TASK_PROGRESS})


def event_matches(event_type: str, pattern: str) -> bool:
    """Whether `pattern` (an event type or a glob) selects `event_type`; exact-only types
    need their full name."""
    if event_type == pattern:
        return True
    return event_type not in EXACT_ONLY_EVENT_TYPES and fnmatch.fnmatchcase(event_type, pattern)


def receiver_wants(patterns: Iterable[str], event_type: str) -> bool:
    """Whether a receiver with these `events` patterns gets `event_type` (the routing rule)."""
    return any(event_matches(event_type, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class Route:
    """One receiver and the event patterns it asked for."""

    receiver: str
    events: tuple[str, ...]


class Outbox:
    """Turns committed events into outbox rows: one per (event, receiver that wants it)."""

    def __init__(self, routes: Iterable[Route], *, project_id: str) -> None:
        self.routes = tuple(routes)
        self._project_id = project_id

    def receivers_for(self, event_type: str) -> list[str]:
        """The receivers that get events of `event_type`, in configuration order."""
        return [route.receiver for route in self.routes if receiver_wants(route.events, event_type)]

    def entries(self, event: TaskEvent) -> list[OutboxEntry]:
        """The outbox rows of one event, with the exact body bytes to sign and send."""
        receivers = self.receivers_for(event.type)
        if not receivers:
            return []
        body = event_body(event, project_id=self._project_id)
        webhook_id = event_id(event)
        return [
            OutboxEntry(
                event_id=webhook_id,
                receiver=receiver,
                task_id=event.task_id,
                event_type=event.type,
                body=body,
                created=event.occurred_at,
            )
            for receiver in receivers
        ]

    def entries_for(self, events: Sequence[TaskEvent]) -> list[OutboxEntry]:
        """The outbox rows of several events, in event order."""
        return [entry for event in events for entry in self.entries(event)]

    def missed_entries(self, missed: BackupMissed, *, now: float) -> list[OutboxEntry]:
        """The outbox rows of one `backup.missed` (noticed at `now`)."""
        receivers = self.receivers_for(BACKUP_MISSED)
        if not receivers:
            return []
        body = missed_body(missed, project_id=self._project_id)
        webhook_id = missed_event_id(missed)
        return [
            OutboxEntry(
                event_id=webhook_id,
                receiver=receiver,
                task_id=missed.subject,
                event_type=BACKUP_MISSED,
                body=body,
                created=now,
            )
            for receiver in receivers
        ]
