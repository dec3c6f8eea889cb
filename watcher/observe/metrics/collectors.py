"""prometheus_client collectors that read state at scrape time instead of being fed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from watcher.engine.engine import EngineStats


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
