"""The task table: every watched task's row, and what is remembered once a row is gone.

Rows are immutable `WatchedTask`s stored once, here; the engine replaces a row to change it,
and only after the change is committed. Besides the rows the table remembers how every watch
ended (also after the row was dropped at the end of its retention, so a run's outcome and
`add` still know it) and which tasks were removed on purpose (tombstones: discovery must not
bring them back). It does no I/O and knows nothing of scheduling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from watcher.engine.task import WatchedTask


class TaskTable:
    """Rows by task ID, end reasons past retention, tombstones, and the active count."""

    def __init__(self) -> None:
        self._rows: dict[str, WatchedTask] = {}
        self.rows: Mapping[str, WatchedTask] = MappingProxyType(self._rows)
        """Read-only view of every row (rows are immutable)."""
        self._end_reasons: dict[str, str | None] = {}
        self._removed: set[str] = set()
        self._active = 0

    def get(self, task_id: str) -> WatchedTask | None:
        """The row of `task_id`, or None."""
        return self._rows.get(task_id)

    def insert(self, row: WatchedTask) -> None:
        """Add a row for a task not in the table."""
        if row.task_id in self._rows:
            raise KeyError(f"{row.task_id} is already in the table")
        self._rows[row.task_id] = row
        if row.ended:
            self._end_reasons[row.task_id] = row.end_reason
        else:
            self._active += 1

    def replace(self, row: WatchedTask) -> bool:
        """Make `row` the row of its task (which must be in the table); True when this
        change ends the watch."""
        previous = self._rows[row.task_id]
        self._rows[row.task_id] = row
        if row.ended and not previous.ended:
            self._active -= 1
            self._end_reasons[row.task_id] = row.end_reason
            return True
        return False

    def drop(self, task_id: str, *, tombstone: bool) -> WatchedTask | None:
        """Remove the row of `task_id` (a tombstone keeps discovery from bringing it back)."""
        row = self._rows.pop(task_id, None)
        if row is None:
            return None
        if tombstone:
            self._removed.add(task_id)
        if not row.ended:
            self._active -= 1
        return row

    def undo_drop(self, row: WatchedTask) -> None:
        """Put back a row dropped by a removal that could not be committed."""
        self._removed.discard(row.task_id)
        if row.task_id not in self._rows:
            self.insert(row)

    def forget_ended_before(self, cutoff_wall: float) -> int:
        """Drop the rows of watches that ended before `cutoff_wall` (their end reasons stay);
        returns how many."""
        stale = [
            task_id
            for task_id, row in self._rows.items()
            if row.ended_wall is not None and row.ended_wall < cutoff_wall
        ]
        for task_id in stale:
            del self._rows[task_id]
        return len(stale)

    def remember_ended(self, outcomes: Mapping[str, str | None]) -> None:
        """Watches that ended in an earlier run, with their end reasons."""
        self._end_reasons.update(outcomes)

    def remember_removed(self, task_ids: Iterable[str]) -> None:
        """Tasks removed on purpose in an earlier run."""
        self._removed.update(task_ids)

    def has_ended(self, task_id: str) -> bool:
        """Whether the watch of `task_id` ended, in this run or an earlier one."""
        return task_id in self._end_reasons

    def was_removed(self, task_id: str) -> bool:
        """Whether `task_id` was removed on purpose (and not watched since)."""
        return task_id in self._removed

    def knows(self, task_id: str) -> bool:
        """Whether the task is watched, ended or removed."""
        return task_id in self._rows or task_id in self._end_reasons or task_id in self._removed

    def outcome(self, task_id: str) -> str | None:
        """How the watch of `task_id` ended; None while it runs or when nothing is known."""
        row = self._rows.get(task_id)
        if row is not None:
            return row.end_reason
        return self._end_reasons.get(task_id)

    @property
    def active(self) -> int:
        """Rows whose watch has not ended."""
        return self._active

    def problems(self) -> list[str]:
        """Broken promises of the table itself (empty when all hold)."""
        active = sum(1 for row in self._rows.values() if not row.ended)
        if active != self._active:
            return [f"active count is {self._active}, the table holds {active}"]
        return []

    def recount(self) -> None:
        """Repair the active count after `problems` reported it wrong."""
        self._active = sum(1 for row in self._rows.values() if not row.ended)
