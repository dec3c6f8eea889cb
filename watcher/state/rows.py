"""The shapes the state file holds: one frozen dataclass per kind of row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A watched task as persisted."""

    task_id: str
    labels: dict[str, str]
    source: str
    status: str | None
    progress: int | None
    raw_json: bytes | None
    """CBR's last answer as compact JSON (`OperationLog.raw_json`), kept as bytes."""
    first_seen: float
    started: float | None
    last_change: float | None
    last_progress: float | None
    ended: float | None
    end_reason: str | None

    @property
    def raw(self) -> dict[str, Any] | None:
        """`raw_json` decoded (a fresh copy each time)."""
        return None if self.raw_json is None else dict(json.loads(self.raw_json))


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event for one receiver, with the exact bytes to send (see `watcher.delivery.outbox`)."""

    event_id: str
    receiver: str
    task_id: str
    event_type: str
    body: bytes
    created: float


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """An outbox row due for an attempt."""

    row_id: int
    event_id: str
    receiver: str
    task_id: str
    event_type: str
    body: bytes
    created: float
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a receiver never accepted within `max_age` (see `Store.dead_letter_rows`)."""

    row_id: int
    event_id: str
    receiver: str
    task_id: str
    event_type: str
    created: float
    attempts: int
    last_error: str
    dead_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class LastSuccess:
    """A successful end of one operation type, for
    `cbr_watcher_last_success_timestamp_seconds` after a restart (only ever moves forward)."""

    operation_type: str
    ended: float


@dataclass(frozen=True, slots=True)
class InventoryRecord:
    """A resource the coverage inventory has seen (see `Store.save_inventory`)."""

    resource_id: str
    first_seen: float
    """Wall seconds of the inventory that first listed it: earlier starts are not judged."""
    asked: float | None = None
    """When ListBackups last answered about it (None: not yet)."""
    backed_up: bool | None = None
    newest_backup: float | None = None
    """`created_at` of its newest available backup, as that answer said."""


@dataclass(frozen=True, slots=True)
class MissedRecord:
    """One `backup.missed` announced: a resource and a scheduled start."""

    resource_id: str
    scheduled_at: float
    vault_id: str
    policy_id: str
    announced: float
