"""The generic way to the same /metrics, as the baseline of `metrics_bench.py`.

The daemon writes the per-task and per-resource families itself (see
`watcher.observe.metrics.task_render` and `.resources`) because prometheus_client's encoder
needs about a second for the ~110,000 lines of 10,000 tasks. `baseline_registry` builds those
families as prometheus_client metric families instead, next to the fed metrics, so that
`generate_latest` encodes the whole exposition the generic way and the benchmark can time it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric

from watcher.coverage.freshness import ResourceStatus
from watcher.observe.metrics import (
    AGGREGATE_STATUSES,
    INFO_LABELS,
    RESOURCE_LABELS,
    TASK_STATUSES,
    Metrics,
    TaskSnapshot,
)
from watcher.observe.metrics.resources import LAST_STATUS, LAST_SUCCESS, label_values
from watcher.observe.metrics.task_render import (
    ESTIMATED_END,
    INFO,
    LAST_PROGRESS,
    PROGRESS,
    STARTED,
    STATUS,
    TASKS,
)
from watcher.observe.metrics.task_rows import TaskSelector
from watcher.safetext import clean


def task_families(snapshot: TaskSnapshot) -> list[Metric]:
    """The per-task families and `cbr_watcher_tasks` of a prepared snapshot."""
    tasks = GaugeMetricFamily(TASKS.name, TASKS.help, labels=["status"])
    counts = dict.fromkeys(AGGREGATE_STATUSES, 0)
    counts.update(snapshot.counts)
    for status, count in counts.items():
        tasks.add_metric([status], count)
    progress = GaugeMetricFamily(PROGRESS.name, PROGRESS.help, labels=["task_id"])
    status_family = GaugeMetricFamily(STATUS.name, STATUS.help, labels=["task_id", "status"])
    info = InfoMetricFamily(INFO.name, INFO.help, labels=["task_id"])
    started = GaugeMetricFamily(STARTED.name, STARTED.help, labels=["task_id"])
    last = GaugeMetricFamily(LAST_PROGRESS.name, LAST_PROGRESS.help, labels=["task_id"])
    estimated_end = GaugeMetricFamily(ESTIMATED_END.name, ESTIMATED_END.help, labels=["task_id"])
    for row in snapshot.rows:
        if row.progress_ratio is not None:
            progress.add_metric([row.task_id], row.progress_ratio)
        extra = () if row.status in TASK_STATUSES else (clean(row.status),)
        for status in (*TASK_STATUSES, *extra):
            status_family.add_metric([row.task_id, status], 1 if status == clean(row.status) else 0)
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


def resource_families(rows: tuple[ResourceStatus, ...]) -> list[Metric]:
    """The two per-resource freshness families."""
    labels = list(RESOURCE_LABELS)
    last_success = GaugeMetricFamily(LAST_SUCCESS.name, LAST_SUCCESS.help, labels=labels)
    last_status = GaugeMetricFamily(LAST_STATUS.name, LAST_STATUS.help, labels=labels)
    for row in rows:
        values = [clean(value) for value in label_values(row)]
        if row.last_success_ended is not None:
            last_success.add_metric(values, row.last_success_ended)
        last_status.add_metric(values, 1 if row.succeeded else 0)
    return [last_success, last_status]


class Forward:
    """Exposes one registry's metrics through another."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        """Nothing: the source registry already checks its own names."""
        return []

    def collect(self) -> Iterable[Metric]:
        """What the source registry collects."""
        return self._source.collect()


class SnapshotCollector:
    """The per-task and per-resource families of a snapshot taken at each collection."""

    def __init__(self, take: Callable[[], TaskSnapshot]) -> None:
        self._take = take

    def describe(self) -> list[Metric]:
        """Family names only, so the registry does not collect at registration."""
        return self._families(TaskSnapshot([], {}))

    def collect(self) -> list[Metric]:
        """The families for a snapshot taken now."""
        return self._families(self._take())

    @staticmethod
    def _families(snapshot: TaskSnapshot) -> list[Metric]:
        return [*task_families(snapshot), *resource_families(snapshot.resources)]


def baseline_registry(metrics: Metrics) -> CollectorRegistry:
    """Every series `metrics.render` writes, for prometheus_client's `generate_latest`.

    Collect it on the event loop: it snapshots the task table. The tasks are chosen like the
    daemon chooses them (retention, the cap), by a selector of its own that also keeps each
    task's row until the task changes.
    """
    selector = TaskSelector(
        retention=metrics.retention, max_series=metrics.max_task_series, on_dropped=lambda _: None
    )
    registry = CollectorRegistry()
    # The fed metrics' registry is private to Metrics: only this comparison reads it directly.
    registry.register(Forward(metrics._base))
    registry.register(SnapshotCollector(lambda: selector.prepare(metrics.snapshot())))
    return registry
