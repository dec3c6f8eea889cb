"""Per-resource backup freshness: has every resource had a recent successful task?

Pure data and rules, shared by the state recorder (which persists them) and the metrics (which
export `cbr_watcher_resource_last_success_timestamp_seconds` and
`cbr_watcher_resource_last_status`; see docs/metrics.md). Fed by every task that ends with a
CBR terminal status.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from watcher.engine.events import TaskEvent

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ResourceKey:
    """One resource and one kind of operation on it (a series of the freshness metrics)."""

    resource_id: str
    operation_type: str


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    """What is known about the newest finished task of one resource and operation type."""

    key: ResourceKey
    resource_name: str
    resource_type: str
    vault_id: str
    last_status: str
    """CBR status of the newest finished task: success, failed, timeout or skipped."""
    last_ended: float
    """Wall-clock seconds the newest finished task ended (CBR `ended_at`, else when seen)."""
    last_success_ended: float | None
    """CBR `ended_at` of the newest successful task, None if none succeeded yet."""

    @property
    def succeeded(self) -> bool:
        """Whether the newest finished task succeeded (the gauge's 1)."""
        return self.last_status == "success"


def from_event(event: TaskEvent) -> ResourceStatus | None:
    """The freshness fact a task-ending event carries; None for events that are not a CBR
    terminal status (progress, start, not found, expired, ping) or that name no resource."""
    operation_log = event.operation_log
    if operation_log is None or not operation_log.is_terminal or not event.ends_watch:
        return None
    resource = operation_log.resource
    resource_id = resource.id if resource is not None else None
    if not resource_id:
        return None
    ended = (
        operation_log.ended_at.timestamp()
        if operation_log.ended_at is not None
        else event.occurred_at
    )
    status = operation_log.status
    return ResourceStatus(
        key=ResourceKey(resource_id, operation_log.operation_type or UNKNOWN),
        resource_name=(resource.name if resource is not None else None) or "",
        resource_type=(resource.type if resource is not None else None) or "",
        vault_id=operation_log.vault_id or "",
        last_status=status,
        last_ended=ended,
        last_success_ended=ended if status == "success" else None,
    )


def merge(known: ResourceStatus | None, new: ResourceStatus) -> ResourceStatus:
    """Fold a newly finished task into what is known of its resource.

    The newest task by end time decides the status (a late report of an older task does not
    overwrite it); the last success only moves forward.
    """
    if known is None:
        return new
    newest = new if new.last_ended >= known.last_ended else known
    successes = [t for t in (known.last_success_ended, new.last_success_ended) if t is not None]
    return replace(newest, last_success_ended=max(successes) if successes else None)
