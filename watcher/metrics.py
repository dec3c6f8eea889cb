"""Prometheus metrics (SPEC §7): a collector over the task table plus the daemon's own counters.

Per-task series (`cbr_watcher_task_*`) and the `cbr_watcher_tasks{status}` gauge are built on
every scrape from one snapshot of the engine's task table: no per-task label children to create
or delete, and a task's series disappear by themselves `metrics.retention` after it ended. The
snapshot is taken on the event loop (cheap: one cached tuple per task); turning it into text
runs in a worker thread (see `watcher.server`), because 10,000 tasks make ~100,000 lines.
`Metrics.render` writes those families itself, reusing each task's lines until the task
changes (`TaskRenderer`); `TaskCollector` yields the same series through prometheus_client,
so `generate_latest(metrics.registry)` is complete too, only about 30 times slower.

Everything else is directly instrumented and fed from three places: the engine's events
(`wrap_sink`), the CBR client's request observer (`observe_request`), and small methods that
the webhook deliverer, the authenticator and the state store call (`webhook_*`,
`set_queue_depth`, `set_receiver_disabled`, `register_receivers`, `set_token_expiry`,
`restore_last_success`). Counters and histograms with a small label set start at 0.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from watcher import __version__
from watcher.cbr.client import LIST, SHOW
from watcher.cbr.models import TERMINAL_STATUSES
from watcher.clock import Clock
from watcher.engine import INTERNAL_COMPONENTS, EngineStats, WatchedTask
from watcher.events import (
    TERMINAL_EVENT_FOR_STATUS,
    WATCH_EXPIRED,
    WATCH_NOT_FOUND,
    EventSink,
    TaskEvent,
)
from watcher.safetext import clean
from watcher.schedule import Reason

log = structlog.get_logger("watcher.metrics")

PREFIX = "cbr_watcher_"
EOF = b"# EOF\n"

TASK_STATUSES = ("waiting", "running", "success", "failed", "skipped", "timeout")
"""Every per-task status series exists for these; another status gets a series of its own."""
UNKNOWN = "unknown"
"""Status of a task not answered yet; operation type when CBR did not say."""
NOT_FOUND = "not_found"
EXPIRED = "expired"
"""Statuses of watches that ended without a CBR terminal status (watch.* events)."""
AGGREGATE_STATUSES = (*TASK_STATUSES, UNKNOWN, NOT_FOUND, EXPIRED)
"""`cbr_watcher_tasks{status}` always has these, at 0 when no task is in that state."""

PRECREATED_OPERATION_TYPES = ("backup", "replication", "restore")
"""Operation types whose finished counters and duration histograms start at 0."""
FINISHED_STATUSES = (*sorted(TERMINAL_STATUSES), EXPIRED)

API_OPERATIONS = (SHOW, LIST)
API_CODES = (
    "200",
    "401",
    "403",
    "404",
    "429",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "connection",
    "malformed",
    "internal",
)
"""Request outcomes pre-created at 0; other HTTP codes appear when they first happen."""

WEBHOOK_OUTCOMES = ("delivered", "dead_lettered")
WEBHOOK_RESULTS = (
    "success",
    "redirect",
    "client_error",
    "gone",
    "throttled",
    "server_error",
    "timeout",
    "connection_error",
    "other",
)
"""`result` of one webhook attempt; anything else is counted as "other"."""

HOUR = 3600.0
DURATION_BUCKETS = (
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    4 * HOUR,
    6 * HOUR,
    8 * HOUR,
    12 * HOUR,
    16 * HOUR,
    24 * HOUR,
    36 * HOUR,
    48 * HOUR,
)
"""Task durations: seconds to two days (hours-long backups, the 48 h default deadline)."""
DETECTION_DELAY_BUCKETS = (
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    HOUR,
)
API_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WEBHOOK_LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    HOUR,
    4 * HOUR,
    12 * HOUR,
    24 * HOUR,
    72 * HOUR,
)
"""Event created → acknowledged, retries included (a receiver may be down for hours)."""


class TaskTable(Protocol):
    """What the collector reads: the engine's task table (`Engine` satisfies this)."""

    @property
    def tasks(self) -> Mapping[str, WatchedTask]:
        """Every watched task by ID, ended ones included until the engine forgets them."""
        ...


INFO_LABELS = (
    "operation_type",
    "vault_id",
    "vault_name",
    "resource_id",
    "resource_name",
    "resource_type",
)


class _Forward:
    """Exposes one registry's metrics through another."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        """Nothing: the source registry already checks its own names."""
        return []

    def collect(self) -> Iterable[Metric]:
        """What the source registry collects."""
        return self._source.collect()


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
    """The part of the task table one scrape exports, taken at one instant on the loop."""

    rows: list[TaskRow]
    """At most `max_task_series` tasks: unfinished ones first, then the most recently ended."""
    counts: dict[str, int]
    """Tasks by status over the whole table (not capped)."""


def task_status_label(task: WatchedTask) -> str:
    """The `status` label of a task: CBR's status, "unknown" before the first answer, or
    "not_found" / "expired" for a watch that ended without a CBR terminal status."""
    reason = task.end_reason
    if reason is not None and reason not in TERMINAL_STATUSES:
        return reason
    return task.status or UNKNOWN


def _task_row(task: WatchedTask) -> TaskRow:
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
        task.poll_state.estimated_end if running else None,
    )


_LABEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def info_labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A task's labels as info-metric labels, kube-state-metrics style: "app" → `label_app`;
    characters Prometheus does not allow in label names become "_"."""
    if not labels:
        return ()
    named = {"label_" + _LABEL_NAME_UNSAFE.sub("_", key): value for key, value in labels.items()}
    return tuple(sorted(named.items()))


def _same_key(old: object, new: tuple[object, ...]) -> bool:
    """Row-cache keys match: the same operation log object (identity) and equal fields."""
    assert isinstance(old, tuple)
    return old[0] is new[0] and old[1:] == new[1:]


def _escape(value: str) -> str:
    """A label value as both text formats want it (lone surrogates become U+FFFD)."""
    value = clean(value)
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


class _Family(NamedTuple):
    name: str
    help: str


_TASKS = _Family(
    PREFIX + "tasks",
    "Watched tasks by current status (unknown: not answered yet; not_found/expired: the watch "
    "gave up).",
)
_PROGRESS = _Family(
    PREFIX + "task_progress_ratio", "Progress of the task as CBR reports it, 0 to 1."
)
_STATUS = _Family(
    PREFIX + "task_status",
    "1 for the task's current status, 0 for the others (one series per status).",
)
_INFO = _Family(PREFIX + "task", "What the task works on, as CBR describes it; always 1.")
_STARTED = _Family(
    PREFIX + "task_started_timestamp_seconds",
    "When the task started (CBR's started_at, else when the watcher first saw it running), "
    "in seconds since the epoch.",
)
_LAST_PROGRESS = _Family(
    PREFIX + "task_last_progress_timestamp_seconds",
    "When the task's progress last changed (or when it started, if later), in seconds since "
    "the epoch.",
)
_ESTIMATED_END = _Family(
    PREFIX + "task_estimated_end_timestamp_seconds",
    "When the watcher expects the running task to end, from its progress so far, in seconds "
    "since the epoch (absent while there is no estimate).",
)

_RowLines = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
"""One task's lines in each per-task family (see `_render_row`)."""


def _header(family: _Family, kind: str, *, openmetrics: bool) -> bytes:
    name = family.name
    if kind == "info" and not openmetrics:
        name, kind = name + "_info", "gauge"
    return f"# HELP {name} {family.help}\n# TYPE {name} {kind}\n".encode()


def _render_row(row: TaskRow) -> _RowLines:
    """The lines of one task in each per-task family: progress, status, info, started, last,
    estimated end."""
    task_id = row.task_id
    ident = f'{{task_id="{task_id}"}} '
    progress = (
        b""
        if row.progress_ratio is None
        else f"{_PROGRESS.name}{ident}{row.progress_ratio!r}\n".encode()
    )
    current = row.status
    status_lines = [
        f'{_STATUS.name}{{task_id="{task_id}",status="{status}"}} {1 if status == current else 0}\n'
        for status in TASK_STATUSES
    ]
    if current not in TASK_STATUSES:
        status_lines.append(
            f'{_STATUS.name}{{task_id="{task_id}",status="{_escape(current)}"}} 1\n'
        )
    info = b""
    if row.info is not None:
        op_type, vault_id, vault_name, resource_id, resource_name, resource_type = map(
            _escape, row.info
        )
        own = "".join(f',{name}="{_escape(value)}"' for name, value in row.labels)
        info = (
            f'{_INFO.name}_info{{task_id="{task_id}",operation_type="{op_type}",'
            f'vault_id="{vault_id}",vault_name="{vault_name}",resource_id="{resource_id}",'
            f'resource_name="{resource_name}",resource_type="{resource_type}"{own}}} 1\n'
        ).encode()
    started = b"" if row.started is None else f"{_STARTED.name}{ident}{row.started!r}\n".encode()
    last = (
        b""
        if row.last_progress is None
        else f"{_LAST_PROGRESS.name}{ident}{row.last_progress!r}\n".encode()
    )
    estimated_end = (
        b""
        if row.estimated_end is None
        else f"{_ESTIMATED_END.name}{ident}{row.estimated_end!r}\n".encode()
    )
    return progress, "".join(status_lines).encode(), info, started, last, estimated_end


class TaskRenderer:
    """Writes the per-task families and `cbr_watcher_tasks{status}` for a `TaskSnapshot`.

    prometheus_client's generic encoder needs about a second for the ~110,000 lines of 10,000
    tasks. These families are all gauges (plus one info), whose sample lines are the same in
    both text formats, so they are written directly, and each task's lines are kept until its
    row changes: a scrape then mostly joins cached bytes. Thread-safe.
    """

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
                if hit is None or hit[0] != row:
                    hit = (row, _render_row(row))
                new[row.task_id] = hit
                chunks.append(hit[1])
            self._cache = new
        counts = dict.fromkeys(AGGREGATE_STATUSES, 0)
        counts.update(snapshot.counts)
        out = [_header(_TASKS, "gauge", openmetrics=openmetrics)]
        out.extend(
            f'{_TASKS.name}{{status="{_escape(status)}"}} {count}\n'.encode()
            for status, count in counts.items()
        )
        for index, (family, kind) in enumerate(
            (
                (_PROGRESS, "gauge"),
                (_STATUS, "gauge"),
                (_INFO, "info"),
                (_STARTED, "gauge"),
                (_LAST_PROGRESS, "gauge"),
                (_ESTIMATED_END, "gauge"),
            )
        ):
            out.append(_header(family, kind, openmetrics=openmetrics))
            out.extend(chunk[index] for chunk in chunks)
        return b"".join(out)


class TaskCollector:
    """The same families as `TaskRenderer`, as a prometheus_client Collector.

    `Metrics.registry` includes it, so `generate_latest(metrics.registry)` is complete; call
    that on the event loop (it snapshots the table). The server uses `Metrics.render`, which
    writes identical series far faster; the tests check the two agree.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        """Family names only, so the registry does not collect at registration."""
        return self._families(TaskSnapshot([], {}))

    def collect(self) -> list[Metric]:
        """The families for a snapshot taken now."""
        return self._families(self._metrics.snapshot())

    @staticmethod
    def _families(snapshot: TaskSnapshot) -> list[Metric]:
        tasks = GaugeMetricFamily(_TASKS.name, _TASKS.help, labels=["status"])
        counts = dict.fromkeys(AGGREGATE_STATUSES, 0)
        counts.update(snapshot.counts)
        for status, count in counts.items():
            tasks.add_metric([status], count)
        progress = GaugeMetricFamily(_PROGRESS.name, _PROGRESS.help, labels=["task_id"])
        status_family = GaugeMetricFamily(_STATUS.name, _STATUS.help, labels=["task_id", "status"])
        info = InfoMetricFamily(_INFO.name, _INFO.help, labels=["task_id"])
        started = GaugeMetricFamily(_STARTED.name, _STARTED.help, labels=["task_id"])
        last = GaugeMetricFamily(_LAST_PROGRESS.name, _LAST_PROGRESS.help, labels=["task_id"])
        estimated_end = GaugeMetricFamily(
            _ESTIMATED_END.name, _ESTIMATED_END.help, labels=["task_id"]
        )
        for row in snapshot.rows:
            if row.progress_ratio is not None:
                progress.add_metric([row.task_id], row.progress_ratio)
            extra = () if row.status in TASK_STATUSES else (clean(row.status),)
            for status in (*TASK_STATUSES, *extra):
                status_family.add_metric(
                    [row.task_id, status], 1 if status == clean(row.status) else 0
                )
            if row.info is not None:
                values = dict(zip(INFO_LABELS, map(clean, row.info), strict=True))
                own = {name: clean(value) for name, value in row.labels}
                info.add_metric([row.task_id], {**values, **own})
            if row.started is not None:
                started.add_metric([row.task_id], row.started)
            if row.last_progress is not None:
                last.add_metric([row.task_id], row.last_progress)
            if row.estimated_end is not None:
                estimated_end.add_metric([row.task_id], row.estimated_end)
        return [tasks, progress, status_family, info, started, last, estimated_end]


class _EngineCounter:
    """A counter family read from one of the engine's counters at scrape time, with every
    key it can have at 0 before it first happens (or before an engine is attached)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        name: str,
        documentation: str,
        label: str,
        keys: Iterable[str],
        read: Callable[[EngineStats], Mapping[str, int]],
    ) -> None:
        self._metrics = metrics
        self._name, self._documentation, self._label = name, documentation, label
        self._keys = tuple(keys)
        self._read = read

    def describe(self) -> list[Metric]:
        """The family, so the registry does not collect at registration."""
        return [self._family({})]

    def collect(self) -> list[Metric]:
        """The engine's counts now."""
        stats = getattr(self._metrics.table, "stats", None)
        counts = dict.fromkeys(self._keys, 0)
        if isinstance(stats, EngineStats):
            counts.update(self._read(stats))
        return [self._family(counts)]

    def _family(self, counts: Mapping[str, int]) -> Metric:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for key, count in counts.items():
            family.add_metric([key], count)
        return family


class Metrics:
    """Every cbr-watcher metric, in a registry of its own (one per daemon, so tests can build
    several). `attach` the engine before the first scrape."""

    def __init__(
        self,
        *,
        clock: Clock,
        retention: float = 900.0,
        max_task_series: int = 10_000,
        version: str = __version__,
        process_metrics: bool = True,
    ) -> None:
        self._clock = clock
        self.retention = retention
        self.max_task_series = max_task_series
        self._table: TaskTable | None = None
        self._dropped_ids: set[str] = set()
        self._last_success: dict[str, float] = {}
        self.registry = CollectorRegistry()
        """Every metric; `render` is the fast way to expose it."""
        registry = CollectorRegistry()
        self._base = registry
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

        self.build_info = Info(
            PREFIX + "build", "The running cbr-watcher version; always 1.", registry=registry
        )
        self.build_info.info({"version": version})

        self.tasks_finished = Counter(
            PREFIX + "tasks_finished",
            "Watches ended, by final status (CBR's, or not_found/expired when the watcher gave "
            "up) and operation type.",
            ["status", "operation_type"],
            registry=registry,
        )
        self.task_duration = Histogram(
            PREFIX + "task_duration_seconds",
            "How long finished tasks ran: CBR's started_at to ended_at, else what the watcher saw.",
            ["operation_type"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.detection_delay = Histogram(
            PREFIX + "detection_delay_seconds",
            "Seconds from CBR's ended_at to the watcher noticing the terminal status.",
            buckets=DETECTION_DELAY_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "When a task of this operation type last ended in success, in seconds since the "
            "epoch (restored from the state database at start-up).",
            ["operation_type"],
            registry=registry,
        )
        self.api_requests = Counter(
            PREFIX + "api_requests",
            "Requests to the CBR API by operation and outcome (HTTP status, or timeout, "
            "connection, malformed, tls, credentials).",
            ["operation", "code"],
            registry=registry,
        )
        self.api_request_duration = Histogram(
            PREFIX + "api_request_duration_seconds",
            "Duration of requests to the CBR API.",
            ["operation"],
            buckets=API_DURATION_BUCKETS,
            registry=registry,
        )
        self.api_throttled = Counter(
            PREFIX + "api_throttled",
            "Requests the CBR API answered with 429 (throttled).",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            PREFIX + "webhook_deliveries",
            "Events that left the webhook outbox, by receiver and outcome (delivered, "
            "dead_lettered).",
            ["receiver", "outcome"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            PREFIX + "webhook_attempts",
            "Webhook HTTP attempts by receiver and result (success, redirect, client_error, "
            "gone, throttled, server_error, timeout, connection_error, other).",
            ["receiver", "result"],
            registry=registry,
        )
        self.webhook_latency = Histogram(
            PREFIX + "webhook_delivery_latency_seconds",
            "Seconds from an event's creation to its delivery, retries included.",
            ["receiver"],
            buckets=WEBHOOK_LATENCY_BUCKETS,
            registry=registry,
        )
        self.webhook_queue_depth = Gauge(
            PREFIX + "webhook_queue_depth",
            "Events waiting in the outbox for this receiver.",
            ["receiver"],
            registry=registry,
        )
        self.webhook_receiver_disabled = Gauge(
            PREFIX + "webhook_receiver_disabled",
            "1 when the receiver answered 410 Gone and is disabled until restart.",
            ["receiver"],
            registry=registry,
        )
        self.token_expiry = Gauge(
            PREFIX + "auth_token_expiry_timestamp_seconds",
            "When the current IAM token expires, in seconds since the epoch; 0 when unknown "
            "(a static token).",
            registry=registry,
        )
        self.task_series_dropped = Counter(
            PREFIX + "task_series_dropped",
            "Tasks left out of the per-task series because metrics.max_task_series was reached "
            "(each task counted once).",
            registry=registry,
        )
        self.registry.register(_Forward(self._base))
        self.registry.register(TaskCollector(self))
        self._base.register(
            _EngineCounter(
                self,
                name=PREFIX + "internal_errors",
                documentation="Unexpected exceptions cbr-watcher survived, by component (poll, "
                "store, events, engine): each one was logged and its work retried.",
                label="component",
                keys=INTERNAL_COMPONENTS,
                read=lambda stats: stats.internal_errors,
            )
        )
        self._base.register(
            _EngineCounter(
                self,
                name=PREFIX + "polls",
                documentation="Polls scheduled, by the reason for their delay (progress, "
                "estimate, approach, near_end, overdue, stalled, changed, unchanged, error, "
                "throttled, retry_after, auth_retry, not_found, deadline, first).",
                label="reason",
                keys=map(str, Reason),
                read=lambda stats: stats.poll_reasons,
            )
        )
        self._renderer = TaskRenderer()
        self._rows: dict[str, tuple[object, TaskRow]] = {}
        self._precreate()

    def _precreate(self) -> None:
        for op_type in PRECREATED_OPERATION_TYPES:
            for status in FINISHED_STATUSES:
                self.tasks_finished.labels(status, op_type)
            self.task_duration.labels(op_type)
        self.tasks_finished.labels(NOT_FOUND, UNKNOWN)
        for operation in API_OPERATIONS:
            for code in API_CODES:
                self.api_requests.labels(operation, code)
            self.api_request_duration.labels(operation)

    # ---- the task table ----------------------------------------------------------------------

    def attach(self, table: TaskTable) -> None:
        """Read per-task series from `table` (the engine) from now on."""
        self._table = table

    @property
    def table(self) -> TaskTable | None:
        """The attached engine, if any."""
        return self._table

    def snapshot(self) -> TaskSnapshot:
        """Copy what one scrape exports out of the task table. Call it on the event loop:
        that is where the table changes, so the copy is consistent."""
        table = self._table
        if table is None:
            return TaskSnapshot([], {})
        cutoff = self._clock.wall() - self.retention
        counts: dict[str, int] = {}
        active: list[WatchedTask] = []
        ended: list[WatchedTask] = []
        for task in table.tasks.values():
            ended_wall = task.ended_wall
            if ended_wall is None:
                active.append(task)
            elif ended_wall >= cutoff:
                ended.append(task)
            else:
                continue  # retention is over; the engine forgets it soon
            status = task_status_label(task)
            counts[status] = counts.get(status, 0) + 1
        cap = self.max_task_series
        if len(active) + len(ended) > cap:
            ended.sort(key=lambda task: task.ended_wall or 0.0, reverse=True)
            exported = (active + ended)[:cap]
            dropped = {task.task_id for task in (active + ended)[cap:]}
            new = dropped - self._dropped_ids
            if new:
                self.task_series_dropped.inc(len(new))
            # Remember only tasks still left out, so the set stays bounded by the table.
            self._dropped_ids = dropped
        else:
            exported = active + ended
            self._dropped_ids.clear()
        return TaskSnapshot(self._task_rows(exported), counts)

    def _task_rows(self, tasks: list[WatchedTask]) -> list[TaskRow]:
        # A task's row only changes when the engine touches it: reuse the last one otherwise.
        old = self._rows
        new: dict[str, tuple[object, TaskRow]] = {}
        rows = []
        for task in tasks:
            key = (
                task.operation_log,
                task.status,
                task.progress,
                task.end_reason,
                task.started_wall,
                task.last_progress_wall,
                tuple(task.labels.items()),
                task.poll_state.estimated_end,
            )
            hit = old.get(task.task_id)
            if hit is None or not _same_key(hit[0], key):
                hit = (key, _task_row(task))
            new[task.task_id] = hit
            rows.append(hit[1])
        self._rows = new
        return rows

    def render(self, accept: str = "", snapshot: TaskSnapshot | None = None) -> tuple[bytes, str]:
        """(body, content type) for an `Accept` header: OpenMetrics when asked, else text 0.0.4.

        With `snapshot` this is safe in a worker thread; without, call it on the loop.
        """
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        if snapshot is None:
            snapshot = self.snapshot()
        tasks = self._renderer.render(snapshot, openmetrics=openmetrics)
        rest = encoder(self._base)
        if openmetrics:
            rest = rest.removesuffix(EOF)
            return b"".join((rest, tasks, EOF)), content_type
        return rest + tasks, content_type

    # ---- engine events ------------------------------------------------------------------------

    def wrap_sink(self, sink: EventSink) -> EventSink:
        """An EventSink that records `event` in the metrics, then passes it on to `sink`."""

        async def record_then(event: TaskEvent) -> None:
            self.record_event(event)
            await sink(event)

        return record_then

    def record_event(self, event: TaskEvent) -> None:
        """Count a watch that ended; observe its duration and detection delay."""
        if not event.ends_watch:
            return
        if event.type == WATCH_NOT_FOUND:
            status = NOT_FOUND
        elif event.type == WATCH_EXPIRED:
            status = EXPIRED
        elif event.status is not None and TERMINAL_EVENT_FOR_STATUS.get(event.status) == event.type:
            status = event.status
        else:
            return  # test.ping and anything else that is not about a task ending
        operation_log = event.operation_log
        op_type = clean((operation_log.operation_type if operation_log else None) or UNKNOWN)
        self.tasks_finished.labels(status, op_type).inc()
        if status not in TERMINAL_STATUSES:
            return
        ended_at = (
            operation_log.ended_at.timestamp()
            if operation_log is not None and operation_log.ended_at is not None
            else None
        )
        started = self._started(event)
        end = ended_at if ended_at is not None else event.occurred_at
        if started is not None and end >= started:
            self.task_duration.labels(op_type).observe(end - started)
        if ended_at is not None:
            self.detection_delay.observe(max(0.0, event.occurred_at - ended_at))
        if status == "success":
            self.restore_last_success(op_type, end)

    def _started(self, event: TaskEvent) -> float | None:
        operation_log = event.operation_log
        if operation_log is not None and operation_log.started_at is not None:
            return operation_log.started_at.timestamp()
        task = self._table.tasks.get(event.task_id) if self._table is not None else None
        return task.started_wall if task is not None else None

    def restore_last_success(self, operation_type: str, timestamp: float) -> None:
        """Seed `cbr_watcher_last_success_timestamp_seconds` (e.g. from the state database at
        start-up); it only ever moves forward."""
        operation_type = clean(operation_type)
        if timestamp > self._last_success.get(operation_type, float("-inf")):
            self._last_success[operation_type] = timestamp
            self.last_success.labels(operation_type).set(timestamp)

    # ---- CBR client -------------------------------------------------------------------------

    def observe_request(self, operation: str, code: str, duration: float) -> None:
        """A `watcher.cbr.client.RequestObserver`: count and time one CBR request."""
        self.api_requests.labels(operation, code).inc()
        self.api_request_duration.labels(operation).observe(max(0.0, duration))
        if code == "429":
            self.api_throttled.inc()

    # ---- webhook deliverer (a `watcher.webhooks.DeliveryObserver`) ----------------------------

    def register_receivers(self, names: Iterable[str]) -> None:
        """Create every webhook series of these receivers at 0."""
        for name in names:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhook_deliveries.labels(name, outcome)
            for result in WEBHOOK_RESULTS:
                self.webhook_attempts.labels(name, result)
            self.webhook_latency.labels(name)
            self.webhook_queue_depth.labels(name).set(0)
            self.webhook_receiver_disabled.labels(name).set(0)

    def webhook_attempt(self, receiver: str, result: str) -> None:
        """One HTTP attempt to `receiver` finished with `result` (see WEBHOOK_RESULTS)."""
        if result not in WEBHOOK_RESULTS:
            result = "other"
        self.webhook_attempts.labels(receiver, result).inc()

    def webhook_delivered(self, receiver: str, outcome: str, latency: float) -> None:
        """An event left the outbox: outcome "delivered" (latency observed) or "dead_lettered"."""
        self.webhook_deliveries.labels(receiver, outcome).inc()
        if outcome == "delivered":
            self.webhook_latency.labels(receiver).observe(max(0.0, latency))

    def set_queue_depth(self, receiver: str, depth: int) -> None:
        """Events waiting in the outbox for `receiver`."""
        self.webhook_queue_depth.labels(receiver).set(depth)

    def set_receiver_disabled(self, receiver: str, disabled: bool) -> None:
        """Whether `receiver` was disabled (410 Gone)."""
        self.webhook_receiver_disabled.labels(receiver).set(1 if disabled else 0)

    # ---- authentication ---------------------------------------------------------------------

    def set_token_expiry(self, timestamp: float | None) -> None:
        """When the current IAM token expires (epoch seconds); None when unknown."""
        self.token_expiry.set(timestamp or 0.0)
