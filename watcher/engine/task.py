"""One row of the engine's task table, as everything outside the engine sees it.

Rows are immutable: the engine replaces a row when it commits a change, so a reader (metrics,
the task API, systemd status, health, `wait`) holds a consistent row for as long as it likes
and a snapshot of the table is a copy of references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from watcher.cbr.models import OperationLog
from watcher.engine.schedule import PollState

NO_LABELS: Mapping[str, str] = MappingProxyType({})


def frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy of `labels` for a row."""
    return MappingProxyType(dict(labels)) if labels else NO_LABELS


@dataclass(frozen=True, slots=True)
class WatchedTask:
    """What is known about one watched task (read-only; the engine replaces rows)."""

    task_id: str
    labels: Mapping[str, str]
    source: str
    """Who asked for it: config, file, api, wait, discover."""
    added_wall: float
    status: str | None = None
    progress: int | None = None
    operation_log: OperationLog | None = None
    """The last answer CBR gave."""
    started_wall: float | None = None
    """When the watcher first saw it running."""
    last_change_wall: float | None = None
    last_progress_wall: float | None = None
    ended_wall: float | None = None
    end_reason: str | None = None
    """The terminal CBR status, or "not_found" / "expired"."""
    poll_state: PollState = field(default_factory=PollState)
    """What the schedule remembers between polls (`poll_state.estimated_end` for dashboards)."""

    @property
    def ended(self) -> bool:
        """Whether the watch is over."""
        return self.end_reason is not None

    @property
    def created_wall(self) -> float | None:
        """CBR's `created_at` of the task, once an answer carried one."""
        operation_log = self.operation_log
        if operation_log is None or operation_log.created_at is None:
            return None
        return operation_log.created_at.timestamp()
