"""Webhook bodies (see docs/webhooks.md): stable event IDs and the exact JSON bytes that get signed
and sent."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from watcher.cbr.models import OperationLog
from watcher.coverage.missed import BackupMissed
from watcher.engine.events import (
    BACKUP_MISSED,
    TASK_PROGRESS,
    TASK_STARTED,
    TERMINAL_EVENT_FOR_STATUS,
    TEST_PING,
    WATCH_NOT_FOUND,
    TaskEvent,
)
from watcher.safetext import json_bytes


def rfc3339(timestamp: float | datetime | None) -> str | None:
    """UTC RFC 3339 with milliseconds and a Z, or None."""
    if timestamp is None:
        return None
    moment = (
        timestamp if isinstance(timestamp, datetime) else datetime.fromtimestamp(timestamp, tz=UTC)
    )
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(event: TaskEvent) -> str:
    """The `webhook-id`: derived from task ID and event type, so a restart re-sends the same ID.

    Progress events add the progress value, since one task has many of them.
    """
    key = f"{event.task_id}\n{event.type}"
    if event.type == TASK_PROGRESS:
        key += f"\n{event.progress}"
    return "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32]


_TERMINAL_EVENTS = frozenset(TERMINAL_EVENT_FOR_STATUS.values())


def event_time(event: TaskEvent) -> float | datetime:
    """The body's `timestamp`: when it happened by CBR's clock (`started_at` for task.started,
    `ended_at` for a terminal event), so replicas that noticed it at different moments write the
    same bytes under one `webhook-id`; when the watcher noticed it for progress and watch.*
    events, and whenever CBR gave no such time."""
    log = event.operation_log
    if log is not None:
        if event.type == TASK_STARTED and log.started_at is not None:
            return log.started_at
        if event.type in _TERMINAL_EVENTS and log.ended_at is not None:
            return log.ended_at
    return event.occurred_at


def event_data(event: TaskEvent, *, project_id: str) -> dict[str, Any]:
    """The `data` object of a task or watch event."""
    log: OperationLog | None = event.operation_log
    resource = log.resource if log is not None else None
    started = log.started_at if log is not None else None
    ended = log.ended_at if log is not None else None
    error: dict[str, str] | None = None
    if log is not None and log.error is not None:
        code, message = log.error
        error = {"code": code, "message": message}
    if event.type == WATCH_NOT_FOUND:
        error = {"code": "BackupService.6500", "message": event.detail or "not found"}
    return {
        "task_id": event.task_id,
        "status": event.status,
        "previous_status": event.previous_status,
        "progress": event.progress,
        "operation_type": log.operation_type if log else None,
        "project_id": (log.project_id if log and log.project_id else project_id),
        "vault_id": log.vault_id if log else None,
        "vault_name": log.vault_name if log else None,
        "resource": {
            "id": resource.id if resource else None,
            "name": resource.name if resource else None,
            "type": resource.type if resource else None,
        },
        "started_at": rfc3339(started),
        "ended_at": rfc3339(ended),
        "duration_seconds": (
            round((ended - started).total_seconds(), 3) if started and ended else None
        ),
        "error": error,
        "labels": dict(event.labels),
        "operation_log": log.raw if log is not None else None,
    }


def event_body(event: TaskEvent, *, project_id: str) -> bytes:
    """The exact request body for `event`."""
    return _encode(
        {
            "type": event.type,
            "timestamp": rfc3339(event_time(event)),
            "data": event_data(event, project_id=project_id),
        }
    )


def missed_event_id(missed: BackupMissed) -> str:
    """The `webhook-id` of a `backup.missed`: derived from resource ID and scheduled start, so
    a restart or another replica announces it under the same ID."""
    key = f"{missed.resource_id}\n{BACKUP_MISSED}\n{rfc3339(missed.scheduled_at)}"
    return "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def missed_body(missed: BackupMissed, *, project_id: str) -> bytes:
    """The exact request body of a `backup.missed`."""
    return _encode(
        {
            "type": BACKUP_MISSED,
            "timestamp": rfc3339(missed.missed_at),
            "data": {
                "project_id": project_id,
                "resource": {
                    "id": missed.resource_id,
                    "name": missed.resource_name or None,
                    "type": missed.resource_type or None,
                },
                "vault_id": missed.vault_id,
                "vault_name": missed.vault_name or None,
                "policy_id": missed.policy_id,
                "policy_name": missed.policy_name or None,
                "scheduled_at": rfc3339(missed.scheduled_at),
            },
        }
    )


def ping(now: float, *, receiver: str) -> tuple[str, bytes]:
    """A `test.ping` event: a fresh ID and its body."""
    body = _encode(
        {
            "type": TEST_PING,
            "timestamp": rfc3339(now),
            "data": {"receiver": receiver, "message": "cbr-watcher webhook test"},
        }
    )
    return f"evt_{uuid.uuid4().hex}", body


def _encode(payload: dict[str, Any]) -> bytes:
    # Lone surrogates in what CBR sent travel as their JSON escape (see watcher.safetext).
    return json_bytes(payload)
