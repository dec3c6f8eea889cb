"""What the coverage metrics export, as one immutable snapshot (see docs/metrics.md).

Built on the event loop when the inventory, a seed or a count changes, or when a policy's next
start has passed; a scrape takes it as it is and renders it in the render thread. Capped like
the task series: at most `max_series` resources, those already exported first, so no series
flaps when the cap is reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from watcher.coverage.inventory import Inventory
from watcher.state.rows import InventoryRecord

DROPPED_MEMORY = 100_000
"""How many left-out resources are remembered so each is counted once."""


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One protected resource as the metrics see it."""

    resource_id: str
    resource_name: str
    resource_type: str
    vault_id: str
    vault_name: str
    policy_id: str
    backed_up: bool | None
    """Whether ListBackups listed an available backup of it (None: not asked yet)."""
    next_backups: tuple[tuple[str, float], ...]
    """(policy ID, its next scheduled start) for each applying policy with a readable schedule."""
    missed: int


@dataclass(frozen=True, slots=True)
class CoverageView:
    """Every exported protected resource, and when the last inventory completed."""

    rows: tuple[CoverageRow, ...] = ()
    inventory_completed: float | None = None
    """Wall-clock seconds; None before the first complete inventory."""
    valid_until: float = math.inf
    """When the earliest next start passes and the view must be built again."""


class ViewBuilder:
    """Builds views, keeping the series cap's memory of which resources are exported."""

    def __init__(self, *, max_series: int, on_dropped: Callable[[int], None]) -> None:
        self.max_series = max_series
        self._on_dropped = on_dropped
        self._exported: set[str] = set()
        self._dropped: set[str] = set()

    def exported(self, resource_id: str) -> bool:
        """Whether `resource_id` had series in the last view built."""
        return resource_id in self._exported

    def build(
        self,
        inventory: Inventory | None,
        *,
        records: Mapping[str, InventoryRecord],
        counts: Mapping[tuple[str, str], int],
        completed: float | None,
        now: float,
    ) -> CoverageView:
        """The view of `inventory` at `now`."""
        if inventory is None:
            return CoverageView(inventory_completed=completed)
        next_start: dict[str, float | None] = {}
        for policy in inventory.policies:
            schedule = policy.schedule
            next_start[policy.id] = None if schedule is None else schedule.next_after(now)
        chosen = self._cap(list(inventory.resources))
        rows = []
        for resource_id in chosen:
            resource = inventory.resources[resource_id]
            record = records.get(resource_id)
            nexts = tuple(
                (policy.id, start)
                for policy in resource.policies
                if (start := next_start.get(policy.id)) is not None
            )
            rows.append(
                CoverageRow(
                    resource_id=resource.id,
                    resource_name=resource.name,
                    resource_type=resource.type,
                    vault_id=resource.vault_id,
                    vault_name=resource.vault_name,
                    policy_id=resource.policy_id,
                    backed_up=None if record is None else record.backed_up,
                    next_backups=nexts,
                    missed=counts.get((resource.id, resource.vault_id), 0),
                )
            )
        valid = min((s for s in next_start.values() if s is not None), default=math.inf)
        return CoverageView(tuple(rows), completed, valid)

    def _cap(self, resource_ids: list[str]) -> list[str]:
        if len(resource_ids) <= self.max_series:
            self._exported = set(resource_ids)
            self._dropped.clear()
            return resource_ids
        kept = [r for r in resource_ids if r in self._exported]
        room = self.max_series - len(kept)
        if room < 0:
            kept = kept[: self.max_series]
            room = 0
        fresh = [r for r in resource_ids if r not in self._exported]
        chosen_set = set(kept) | set(fresh[:room])
        chosen = [r for r in resource_ids if r in chosen_set]
        newly = [r for r in resource_ids if r not in chosen_set and r not in self._dropped]
        if newly:
            if len(self._dropped) < DROPPED_MEMORY:
                self._dropped.update(newly[: DROPPED_MEMORY - len(self._dropped)])
            self._on_dropped(len(newly))
        self._exported = chosen_set
        return chosen
