"""The per-task families and `cbr_watcher_tasks{status}` as exposition text.

`TaskRenderer` writes them by hand: prometheus_client's generic encoder needs about a second
for the ~110,000 lines of 10,000 tasks, and these families are all gauges (plus one info),
whose sample lines are the same in both text formats.
"""

from __future__ import annotations

import threading

from watcher.observe.metrics.constants import AGGREGATE_STATUSES, PREFIX, TASK_STATUSES
from watcher.observe.metrics.task_rows import TaskRow, TaskSnapshot
from watcher.observe.metrics.text import Family, escape, header

TASKS = Family(
    PREFIX + "tasks",
    "Watched tasks by current status (unknown: not answered yet; not_found/expired: the watch "
    "gave up).",
)
PROGRESS = Family(PREFIX + "task_progress_ratio", "Progress of the task as CBR reports it, 0 to 1.")
STATUS = Family(
    PREFIX + "task_status",
    "1 for the task's current status, 0 for the others (one series per status).",
)
INFO = Family(PREFIX + "task", "What the task works on, as CBR describes it; always 1.")
STARTED = Family(
    PREFIX + "task_started_timestamp_seconds",
    "When the task started (CBR's started_at, else when the watcher first saw it running), "
    "in seconds since the epoch.",
)
LAST_PROGRESS = Family(
    PREFIX + "task_last_progress_timestamp_seconds",
    "When the task's progress last changed (or when it started, if later), in seconds since "
    "the epoch.",
)
ESTIMATED_END = Family(
    PREFIX + "task_estimated_end_timestamp_seconds",
    "When the watcher expects the running task to end, from its progress so far, in seconds "
    "since the epoch (absent while there is no estimate).",
)
_PER_TASK = (
    (PROGRESS, "gauge"),
    (STATUS, "gauge"),
    (INFO, "info"),
    (STARTED, "gauge"),
    (LAST_PROGRESS, "gauge"),
    (ESTIMATED_END, "gauge"),
)

_RowLines = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
"""One task's lines in each per-task family, in `_PER_TASK` order."""


def _render_row(row: TaskRow) -> _RowLines:
    task_id = row.task_id
    ident = f'{{task_id="{task_id}"}} '
    progress = (
        b""
        if row.progress_ratio is None
        else f"{PROGRESS.name}{ident}{row.progress_ratio!r}\n".encode()
    )
    current = row.status
    status_lines = [
        f'{STATUS.name}{{task_id="{task_id}",status="{status}"}} {1 if status == current else 0}\n'
        for status in TASK_STATUSES
    ]
    if current not in TASK_STATUSES:
        status_lines.append(f'{STATUS.name}{{task_id="{task_id}",status="{escape(current)}"}} 1\n')
    info = b""
    if row.info is not None:
        op_type, vault_id, vault_name, resource_id, resource_name, resource_type = map(
            escape, row.info
        )
        own = "".join(f',{name}="{escape(value)}"' for name, value in row.labels)
        info = (
            f'{INFO.name}_info{{task_id="{task_id}",operation_type="{op_type}",'
            f'vault_id="{vault_id}",vault_name="{vault_name}",resource_id="{resource_id}",'
            f'resource_name="{resource_name}",resource_type="{resource_type}"{own}}} 1\n'
        ).encode()
    started = b"" if row.started is None else f"{STARTED.name}{ident}{row.started!r}\n".encode()
    last = (
        b""
        if row.last_progress is None
        else f"{LAST_PROGRESS.name}{ident}{row.last_progress!r}\n".encode()
    )
    estimated_end = (
        b""
        if row.estimated_end is None
        else f"{ESTIMATED_END.name}{ident}{row.estimated_end!r}\n".encode()
    )
    return progress, "".join(status_lines).encode(), info, started, last, estimated_end


class TaskRenderer:
    """Writes the task families for a prepared `TaskSnapshot`, keeping each task's lines
    until its row changes: a scrape then mostly joins cached bytes. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[TaskRow, _RowLines]] = {}

    def render(self, snapshot: TaskSnapshot, *, openmetrics: bool) -> bytes:
        """The families as exposition text (no `# EOF`)."""
        with self._lock:
            old = self._cache
            new: dict[str, tuple[TaskRow, _RowLines]] = {}
            chunks = []
            for row in snapshot.rows:
                hit = old.get(row.task_id)
                if hit is None or (hit[0] is not row and hit[0] != row):
                    hit = (row, _render_row(row))
                new[row.task_id] = hit
                chunks.append(hit[1])
            self._cache = new
        counts = {**dict.fromkeys(AGGREGATE_STATUSES, 0), **snapshot.counts}
        out = [header(TASKS, "gauge", openmetrics=openmetrics)]
        out.extend(
            f'{TASKS.name}{{status="{escape(status)}"}} {count}\n'.encode()
            for status, count in counts.items()
        )
        for index, (family, kind) in enumerate(_PER_TASK):
            out.append(header(family, kind, openmetrics=openmetrics))
            out.extend(chunk[index] for chunk in chunks)
        return b"".join(out)
