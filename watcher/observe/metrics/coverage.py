"""The coverage families (see docs/metrics.md), written by hand from one `CoverageView` and the
freshness rows of the same scrape.

`cbr_watcher_resource_never_backed_up` joins the two: 1 when ListBackups listed no available
backup of the resource and no successful backup task of it has been seen since (a finished
task moves the freshness row on, and the resource with it). The sample lines are kept until
the view or the freshness rows change. Thread-safe.
"""

from __future__ import annotations

import threading

from watcher.coverage.freshness import ResourceStatus
from watcher.coverage.view import CoverageView
from watcher.observe.metrics.constants import PREFIX
from watcher.observe.metrics.text import Family, escape, header

PROTECTED = Family(
    PREFIX + "resource_protected",
    "1 for every resource bound to an inventoried vault; policy_id is the enabled backup "
    "policy that applies to it, empty when none does.",
)
NEVER_BACKED_UP = Family(
    PREFIX + "resource_never_backed_up",
    "1 when a protected resource has no available backup and no successful backup task was "
    "seen since; 0 when it has one (absent until ListBackups was asked).",
)
NEXT_BACKUP = Family(
    PREFIX + "resource_next_backup_timestamp_seconds",
    "The next scheduled start of the policy's backups of this resource (its RRULE patterns, "
    "UTC), in seconds since the epoch.",
)
MISSED = Family(
    PREFIX + "resource_missed_backups",
    "Scheduled backups of this resource that did not start within coverage.schedule_grace "
    "(backup.missed); kept across restarts.",
)
INVENTORY_LAST_SUCCESS = Family(
    PREFIX + "inventory_last_success_timestamp_seconds",
    "When the last complete inventory (vaults, resources, policies) finished, in seconds since "
    "the epoch.",
)


class CoverageRenderer:
    """Writes the coverage families."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[CoverageView | None, tuple[ResourceStatus, ...] | None] = (None, None)
        self._lines: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")

    def render(
        self,
        view: CoverageView | None,
        resources: tuple[ResourceStatus, ...],
        *,
        openmetrics: bool,
    ) -> bytes:
        """The families as exposition text (nothing without a view: coverage is off)."""
        if view is None:
            return b""
        with self._lock:
            if self._key[0] is not view or self._key[1] is not resources:
                self._lines = _sample_lines(view, resources)
                self._key = (view, resources)
            protected, never, nxt, missed = self._lines
        parts = [
            header(PROTECTED, "gauge", openmetrics=openmetrics),
            protected,
            header(NEVER_BACKED_UP, "gauge", openmetrics=openmetrics),
            never,
            header(NEXT_BACKUP, "gauge", openmetrics=openmetrics),
            nxt,
        ]
        missed_header = MISSED if openmetrics else MISSED._replace(name=MISSED.name + "_total")
        parts += [header(missed_header, "counter", openmetrics=openmetrics), missed]
        parts.append(header(INVENTORY_LAST_SUCCESS, "gauge", openmetrics=openmetrics))
        if view.inventory_completed is not None:
            parts.append(f"{INVENTORY_LAST_SUCCESS.name} {view.inventory_completed!r}\n".encode())
        return b"".join(parts)


def _sample_lines(
    view: CoverageView, resources: tuple[ResourceStatus, ...]
) -> tuple[bytes, bytes, bytes, bytes]:
    succeeded = {
        row.key.resource_id
        for row in resources
        if row.key.operation_type == "backup" and row.last_success_ended is not None
    }
    protected, never, nxt, missed = [], [], [], []
    for row in view.rows:
        rid, vid = escape(row.resource_id), escape(row.vault_id)
        protected.append(
            f'{PROTECTED.name}{{resource_id="{rid}",resource_name="{escape(row.resource_name)}",'
            f'resource_type="{escape(row.resource_type)}",vault_id="{vid}",'
            f'vault_name="{escape(row.vault_name)}",policy_id="{escape(row.policy_id)}"}} 1\n'
        )
        pair = f'{{resource_id="{rid}",vault_id="{vid}"}}'
        if row.backed_up is not None:
            value = 0 if row.backed_up or row.resource_id in succeeded else 1
            never.append(f"{NEVER_BACKED_UP.name}{pair} {value}\n")
        for policy_id, start in row.next_backups:
            nxt.append(
                f'{NEXT_BACKUP.name}{{resource_id="{rid}",vault_id="{vid}",'
                f'policy_id="{escape(policy_id)}"}} {start!r}\n'
            )
        missed.append(f"{MISSED.name}_total{pair} {float(row.missed)!r}\n")
    return (
        "".join(protected).encode(),
        "".join(never).encode(),
        "".join(nxt).encode(),
        "".join(missed).encode(),
    )
