"""The per-task part of a scrape: which tasks are exported, and what each one's row says.

The engine's rows are immutable (a change replaces the row object, see `watcher.engine.task`), so
a snapshot taken on the event loop only copies references. Choosing the exported tasks and
turning them into `TaskRow`s happens later, in the render thread, reusing a task's row for as
long as its row object is the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from watcher.cbr.models import TERMINAL_STATUSES, OperationLog
from watcher.coverage.freshness import ResourceStatus
from watcher.coverage.view import CoverageView
from watcher.observe.metrics.constants import UNKNOWN
from watcher.observe.metrics.text import info_labels


class TaskView(Protocol):
    """The fields of one task-table row that the metrics read. Rows are immutable: the table
    replaces a row to change it (`watcher.engine.task.WatchedTask` is one)."""

    @property
    def task_id(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def status(self) -> str | None: ...
    @property
    def progress(self) -> int | None: ...
    @property
    def operation_log(self) -> OperationLog | None: ...
    @property
    def started_wall(self) -> float | None: ...
    @property
    def last_progress_wall(self) -> float | None: ...
    @property
    def ended_wall(self) -> float | None: ...
    @property
    def end_reason(self) -> str | None: ...
    @property
    def ended(self) -> bool: ...


class TaskTable(Protocol):
    """What the collector reads: the engine's task table (`Engine` satisfies this)."""

    @property
    def tasks(self) -> Mapping[str, TaskView]:
        """Every watched task by ID, ended ones included until the engine forgets them."""
        ...


class TaskRow(NamedTuple):
    """One task as the metrics see it at snapshot time."""

    task_id: str
    status: str
    progress_ratio: float | None
    started: float | None
    last_progress: float | None
    info: tuple[str, str, str, str, str, str] | None
    """Values of INFO_LABELS."""
    labels: tuple[tuple[str, str], ...] = ()
    """The task's own labels (task API), as (`label_<key>`, value) pairs for the info metric."""
    estimated_end: float | None = None
    """When the schedule expects the task to end (wall seconds); only while it is running."""


class TaskSnapshot(NamedTuple):
    """What one scrape exports, taken at one instant on the loop."""

    rows: list[TaskRow]
    """At most `max_task_series` tasks: unfinished ones first, then the most recently ended."""
    counts: dict[str, int]
    """Tasks by status over the whole table (not capped)."""
    resources: tuple[ResourceStatus, ...] = ()
    """The per-resource freshness rows (already capped)."""
    views: tuple[TaskView, ...] | None = None
    """The table's rows as the loop saw them, until `TaskSelector.prepare` turns them into
    `rows` and `counts` (off the loop)."""
    wall: float = 0.0
    """Wall-clock seconds when the snapshot was taken (retention is judged against it)."""
    coverage: CoverageView | None = None
    """The coverage rows (None: coverage is off)."""


def task_status_label(task: TaskView) -> str:
    """The `status` label of a task: CBR's status, "unknown" before the first answer, or
    "not_found" / "expired" for a watch that ended without a CBR terminal status."""
    reason = task.end_reason
    if reason is not None and reason not in TERMINAL_STATUSES:
        return reason
    return task.status or UNKNOWN


def estimated_end(task: TaskView) -> float | None:
    """When the schedule expects the task to end: the row's own `estimated_end`, else its
    `poll_state.estimated_end` (where `watcher.engine.task.WatchedTask` keeps it)."""
    estimate = getattr(task, "estimated_end", None)
    if estimate is None:
        estimate = getattr(getattr(task, "poll_state", None), "estimated_end", None)
    return estimate if isinstance(estimate, int | float) else None


def task_row(task: TaskView) -> TaskRow:
    """What the per-task families export for `task`."""
    operation_log = task.operation_log
    started: float | None = task.started_wall
    info = None
    if operation_log is not None:
        if operation_log.started_at is not None:
            started = operation_log.started_at.timestamp()
        resource = operation_log.resource
        info = (
            operation_log.operation_type or "",
            operation_log.vault_id or "",
            operation_log.vault_name or "",
            resource.id or "",
            resource.name or "",
            resource.type or "",
        )
    last_progress = task.last_progress_wall
    if started is not None and (last_progress is None or started > last_progress):
        last_progress = started
    progress = None if task.progress is None else task.progress / 100.0
    running = task.status == "running" and not task.ended
    return TaskRow(
        task.task_id,
        task_status_label(task),
        progress,
        started,
        last_progress,
        info,
        info_labels(task.labels) if info is not None else (),
        estimated_end(task) if running else None,
    )


class TaskSelector:
    """Chooses the exported tasks (retention, the series cap) and keeps their rows.

    `on_dropped(n)` hears of tasks newly left out by the cap, each task once while it stays
    left out. Thread-safe: one scrape at a time goes through it.
    """

    def __init__(
        self,
        *,
        retention: float,
        max_series: int,
        on_dropped: Callable[[int], None],
    ) -> None:
        self.retention = retention
        self.max_series = max_series
        self._on_dropped = on_dropped
        self._lock = threading.Lock()
        self._dropped_ids: set[str] = set()
        self._by_view: dict[str, tuple[TaskView, str, TaskRow | None]] = {}

    def capture(
        self,
        table: TaskTable | None,
        wall: float,
        resources: tuple[ResourceStatus, ...],
        coverage: CoverageView | None = None,
    ) -> TaskSnapshot:
        """The snapshot of `table` now (references only); call it on the event loop."""
        if table is None:
            return TaskSnapshot([], {}, resources, wall=wall, coverage=coverage)
        return TaskSnapshot([], {}, resources, tuple(table.tasks.values()), wall, coverage)

    def prepare(self, snapshot: TaskSnapshot) -> TaskSnapshot:
        """`snapshot` with its rows and counts filled in; safe in a worker thread."""
        views = snapshot.views
        if views is None:
            return snapshot
        with self._lock:
            rows, counts = self._select(views, snapshot.wall)
        return snapshot._replace(rows=rows, counts=counts, views=None)

    def _select(
        self, views: tuple[TaskView, ...], wall: float
    ) -> tuple[list[TaskRow], dict[str, int]]:
        cutoff = wall - self.retention
        counts: dict[str, int] = {}
        old = self._by_view
        new: dict[str, tuple[TaskView, str, TaskRow | None]] = {}
        active: list[TaskView] = []
        ended: list[TaskView] = []
        for view in views:
            ended_wall = view.ended_wall
            if ended_wall is None:
                active.append(view)
            elif ended_wall >= cutoff:
                ended.append(view)
            else:
                continue
            task_id = view.task_id
            hit = old.get(task_id)
            if hit is None or hit[0] is not view:
                hit = (view, task_status_label(view), None)
            new[task_id] = hit
            status = hit[1]
            counts[status] = counts.get(status, 0) + 1
        rows = []
        for view in self._cap(active, ended):
            cached = new[view.task_id]
            row = cached[2]
            if row is None:
                row = task_row(view)
                new[view.task_id] = (view, cached[1], row)
            rows.append(row)
        self._by_view = new
        return rows, counts

    def _cap(self, active: list[TaskView], ended: list[TaskView]) -> list[TaskView]:
        """Unfinished tasks first, then the most recently ended, `max_series` in all."""
        cap = self.max_series
        if len(active) + len(ended) <= cap:
            self._dropped_ids.clear()
            return active + ended
        ended.sort(key=lambda task: task.ended_wall or 0.0, reverse=True)
        ordered = active + ended
        dropped = {task.task_id for task in ordered[cap:]}
        new = dropped - self._dropped_ids
        if new:
            self._on_dropped(len(new))
        # Remember only tasks still left out, so the set stays bounded by the table.
        self._dropped_ids = dropped
        return ordered[:cap]
