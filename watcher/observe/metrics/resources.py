"""Per-resource backup freshness (see docs/metrics.md): what the newest finished task of each
resource and operation type said, kept for the daemon's life (and restored from the state
database).

`ResourceBook` folds finished tasks in with `watcher.coverage.freshness.merge`, so the rules (newest
task by end time decides the status; the last success only moves forward) live in one place.
It is changed on the event loop; a scrape takes its rows as one immutable tuple, and
`ResourceRenderer` turns that into text in the render thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from watcher.coverage.freshness import ResourceKey, ResourceStatus, merge
from watcher.observe.metrics.constants import PREFIX, RESOURCE_LABELS
from watcher.observe.metrics.text import Family, escape, header

LAST_SUCCESS = Family(
    PREFIX + "resource_last_success_timestamp_seconds",
    "CBR's ended_at of the newest successful task of this resource and operation type, in "
    "seconds since the epoch (absent until one succeeded; restored at start-up).",
)
LAST_STATUS = Family(
    PREFIX + "resource_last_status",
    "1 when the newest finished task of this resource and operation type succeeded, 0 when it "
    "ended failed, timeout or skipped.",
)

DROPPED_MEMORY = 100_000
"""How many left-out resources are remembered so each is counted once; past that, a left-out
resource is counted again each time one of its tasks ends (memory stays bounded)."""


class ResourceBook:
    """The freshness row of every resource seen, at most `max_series` of them.

    A resource that would exceed the cap is left out (the ones already exported keep
    updating, so no series flaps) and reported to `on_dropped`, once per resource.
    """

    def __init__(self, *, max_series: int, on_dropped: Callable[[int], None]) -> None:
        self.max_series = max_series
        self._on_dropped = on_dropped
        self._rows: dict[ResourceKey, ResourceStatus] = {}
        self._dropped: set[ResourceKey] = set()
        self._frozen: tuple[ResourceStatus, ...] | None = ()

    def record(self, status: ResourceStatus) -> None:
        """Fold one finished task in."""
        key = status.key
        known = self._rows.get(key)
        if known is None and len(self._rows) >= self.max_series:
            if key not in self._dropped:
                if len(self._dropped) < DROPPED_MEMORY:
                    self._dropped.add(key)
                self._on_dropped(1)
            return
        merged = merge(known, status)
        if merged != known:
            self._rows[key] = merged
            self._frozen = None

    def retain(self, keep: Callable[[ResourceStatus], bool]) -> list[str]:
        """Drop every row `keep` refuses (a resource unbound from its vault); returns the IDs
        of the resources that lost rows."""
        gone = [key for key, row in self._rows.items() if not keep(row)]
        for key in gone:
            del self._rows[key]
            self._dropped.discard(key)
        if gone:
            self._frozen = None
        return sorted({key.resource_id for key in gone})

    def restore(self, rows: Iterable[ResourceStatus]) -> None:
        """Fold rows from the state database in; over the cap, the most recently ended win."""
        for row in sorted(rows, key=lambda row: row.last_ended, reverse=True):
            self.record(row)

    def rows(self) -> tuple[ResourceStatus, ...]:
        """Every exported row, as one tuple that is rebuilt only after a change."""
        if self._frozen is None:
            self._frozen = tuple(self._rows.values())
        return self._frozen


def label_values(row: ResourceStatus) -> tuple[str, str, str, str, str]:
    """The values of RESOURCE_LABELS for `row`, in that order (not escaped)."""
    return (
        row.key.resource_id,
        row.resource_name,
        row.resource_type,
        row.vault_id,
        row.key.operation_type,
    )


def _label_text(row: ResourceStatus) -> str:
    pairs = ",".join(
        f'{name}="{escape(value)}"'
        for name, value in zip(RESOURCE_LABELS, label_values(row), strict=True)
    )
    return "{" + pairs + "}"


class ResourceRenderer:
    """Writes the two freshness families; the sample lines are kept until the rows change.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: tuple[ResourceStatus, ...] | None = None
        self._lines: tuple[bytes, bytes] = (b"", b"")

    def render(self, rows: tuple[ResourceStatus, ...], *, openmetrics: bool) -> bytes:
        """The families as exposition text."""
        with self._lock:
            if rows is not self._rows:
                self._lines = self._sample_lines(rows)
                self._rows = rows
            last_success, last_status = self._lines
        return b"".join(
            (
                header(LAST_SUCCESS, "gauge", openmetrics=openmetrics),
                last_success,
                header(LAST_STATUS, "gauge", openmetrics=openmetrics),
                last_status,
            )
        )

    @staticmethod
    def _sample_lines(rows: tuple[ResourceStatus, ...]) -> tuple[bytes, bytes]:
        success_lines = []
        status_lines = []
        for row in rows:
            labels = _label_text(row)
            if row.last_success_ended is not None:
                success_lines.append(f"{LAST_SUCCESS.name}{labels} {row.last_success_ended!r}\n")
            if row.last_status:  # a row seeded from a backup has no finished task yet
                status_lines.append(f"{LAST_STATUS.name}{labels} {1 if row.succeeded else 0}\n")
        return "".join(success_lines).encode(), "".join(status_lines).encode()
