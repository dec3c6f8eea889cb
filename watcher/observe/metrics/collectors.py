"""prometheus_client collectors that read state at scrape time instead of being fed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from watcher.engine.engine import EngineStats
from watcher.observe.metrics.resources import resource_families
from watcher.observe.metrics.task_render import task_families
from watcher.observe.metrics.task_rows import TaskSnapshot


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
    """The hand-rendered families (per task, `cbr_watcher_tasks`, per resource) as a
    prometheus_client Collector, so `generate_latest(metrics.registry)` is complete.

    Call that on the event loop: `take` snapshots the task table. The server uses
    `Metrics.render`, which writes identical series far faster.
    """

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


class StatsSource(Protocol):
    """Where `EngineCounter` finds the engine: its attached task table."""

    @property
    def table(self) -> object:
        """The attached engine, or None."""
        ...


class EngineCounter:
    """A counter family read from one of the engine's counters at scrape time, with every
    key it can have at 0 before it first happens (or before an engine is attached)."""

    def __init__(
        self,
        source: StatsSource,
        *,
        name: str,
        documentation: str,
        label: str,
        keys: Iterable[str],
        read: Callable[[EngineStats], Mapping[str, int]],
    ) -> None:
        self._source = source
        self._name, self._documentation, self._label = name, documentation, label
        self._keys = tuple(keys)
        self._read = read

    def describe(self) -> list[Metric]:
        """The family, so the registry does not collect at registration."""
        return [self._family({})]

    def collect(self) -> list[Metric]:
        """The engine's counts now."""
        stats = getattr(self._source.table, "stats", None)
        counts = dict.fromkeys(self._keys, 0)
        if isinstance(stats, EngineStats):
            counts.update(self._read(stats))
        return [self._family(counts)]

    def _family(self, counts: Mapping[str, int]) -> Metric:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for key, count in counts.items():
            family.add_metric([key], count)
        return family
