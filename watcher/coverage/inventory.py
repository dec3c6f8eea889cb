"""Reading the inventory: the vaults with the resources bound to them, and the enabled backup
policies applied to those vaults, in as few requests as the listing rules allow.

One inventory costs the ListVaults pages (until an empty page, offset by entries returned),
one ListPolicies (it has no paging), and one ListVaults by `id` for each vault that an earlier
inventory (or `coverage.vault_ids`) had and this listing did not: a vault deleted between two
pages shifts the later ones, so one that still exists may be skipped; it is looked up rather
than dropped. Whatever cannot be read or used is a `Problem` (logged once, counted by the
caller); it spoils only itself, never the inventory. What a user sees: docs/coverage.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from watcher.cbr.inventory import Malformed, Policy, PolicyPage, Vault, VaultPage
from watcher.cbr.paging import pages
from watcher.coverage.schedule import Schedule, UnsupportedScheduleError

VAULT_PAGE_LIMIT = 100
"""Vaults per ListVaults page: each carries its resources, so pages of 1000 vaults could
exceed the body size the client accepts."""
MAX_VAULT_LOOKUPS = 50
"""Vaults missing from a listing that are looked up one by one; past that, taken as gone."""
MAX_WINDOW = 86_400.0
"""The longest start window believed: a day (CBR's runs are at most a day apart anyway)."""
PROBLEM_KINDS = ("vault", "resource", "policy", "schedule", "backup")
"""What a problem is about (the `kind` label of `cbr_watcher_inventory_entries_skipped_total`)."""


class InventoryApi(Protocol):
    """The part of the CBR client the inventory reads."""

    async def list_vaults(
        self, *, limit: int | None = None, offset: int | None = None, vault_id: str | None = None
    ) -> VaultPage:
        """One page of ListVaults."""
        ...

    async def list_policies(self, *, operation_type: str | None = None) -> PolicyPage:
        """ListPolicies, whole."""
        ...


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the inventory that was left out: `key` names it for logging it once."""

    kind: str
    key: str
    detail: str


@dataclass(frozen=True, slots=True)
class PlannedPolicy:
    """An enabled backup policy, with its schedule when its pattern could be read."""

    id: str
    name: str
    schedule: Schedule | None
    window: float = 0.0
    """`start_window_minutes` in seconds: how late CBR may start a scheduled backup."""


@dataclass(frozen=True, slots=True)
class Protected:
    """A resource bound to an inventoried vault, with the backup policies that apply to it."""

    id: str
    name: str
    type: str
    vault_id: str
    vault_name: str
    policies: tuple[PlannedPolicy, ...] = ()

    @property
    def policy_id(self) -> str:
        """The applying policy's ID (the lowest, if several do); "" when none does."""
        return self.policies[0].id if self.policies else ""


@dataclass(slots=True)
class Inventory:
    """One complete inventory."""

    resources: dict[str, Protected] = field(default_factory=dict)
    """Every protected resource by ID, in listing order."""
    vault_ids: frozenset[str] = frozenset()
    policies: tuple[PlannedPolicy, ...] = ()
    """The enabled backup policies applied to an inventoried vault."""
    problems: list[Problem] = field(default_factory=list)
    requests: int = 0


async def read_inventory(
    api: InventoryApi,
    *,
    acquire: Callable[[], Awaitable[None]],
    vault_ids: Sequence[str] = (),
    known_vaults: Collection[str] = (),
) -> Inventory:
    """Read vaults and policies; errors propagate (the caller keeps its last inventory).

    `vault_ids` limits the inventory to those vaults (empty: every vault); `known_vaults` are
    the vaults of the last inventory, looked up when this listing misses them.
    """
    inventory = Inventory()
    problems = inventory.problems

    async def vault_page(offset: int) -> VaultPage:
        inventory.requests += 1
        return await api.list_vaults(limit=VAULT_PAGE_LIMIT, offset=offset)

    vaults: dict[str, Vault] = {}
    async for page in pages(vault_page, acquire=acquire):
        problems.extend(_malformed(page.malformed))
        for vault in page.vaults:
            vaults[vault.id] = vault  # a vault listed twice (pages shifted): the later answer
    wanted = set(vault_ids)
    expected = wanted or set(known_vaults)
    for vault_id in sorted(expected - vaults.keys())[:MAX_VAULT_LOOKUPS]:
        await acquire()
        inventory.requests += 1
        page = await api.list_vaults(vault_id=vault_id)
        problems.extend(_malformed(page.malformed))
        vaults.update((vault.id, vault) for vault in page.vaults if vault.id == vault_id)
    if wanted:
        for vault_id in sorted(wanted - vaults.keys()):
            problems.append(Problem("vault", vault_id, f"vault {vault_id!r} does not exist"))
        vaults = {vault_id: vault for vault_id, vault in vaults.items() if vault_id in wanted}
    inventory.vault_ids = frozenset(vaults)

    await acquire()
    inventory.requests += 1
    listed = await api.list_policies(operation_type="backup")
    problems.extend(_malformed(listed.malformed, "policy"))
    by_vault = _policies_by_vault(listed.policies, inventory.vault_ids, problems)
    inventory.policies = tuple(
        sorted({p.id: p for ps in by_vault.values() for p in ps}.values(), key=lambda p: p.id)
    )
    for vault in vaults.values():
        _add_resources(inventory, vault, by_vault.get(vault.id, ()))
    return inventory


def _add_resources(inventory: Inventory, vault: Vault, policies: Sequence[PlannedPolicy]) -> None:
    if not isinstance(vault.raw.get("resources"), list):
        inventory.problems.append(
            Problem("vault", f"{vault.id}/resources", f"vault {vault.id!r} has no resources list")
        )
    for resource in vault.resources:
        held = inventory.resources.get(resource.id)
        if held is not None:
            inventory.problems.append(
                Problem(
                    "resource",
                    f"{resource.id}@{vault.id}",
                    f"resource {resource.id!r} is bound to vault {held.vault_id!r} and to "
                    f"{vault.id!r}; counted in the first only",
                )
            )
            continue
        inventory.resources[resource.id] = Protected(
            id=resource.id,
            name=resource.name or "",
            type=resource.type or "",
            vault_id=vault.id,
            vault_name=vault.name or "",
            policies=tuple(policies),
        )


def _policies_by_vault(
    policies: Iterable[Policy], vault_ids: Collection[str], problems: list[Problem]
) -> dict[str, list[PlannedPolicy]]:
    """The enabled backup policies of each inventoried vault, by policy ID."""
    by_vault: dict[str, list[PlannedPolicy]] = {}
    for policy in sorted(policies, key=lambda item: item.id):
        if policy.operation_type not in (None, "backup"):
            continue  # asked for backup policies only; a replication policy backs up nothing
        applied = [vault_id for vault_id in policy.vault_ids if vault_id in vault_ids]
        if not applied:
            continue
        if policy.enabled is None:
            problems.append(
                Problem("policy", policy.id, f"policy {policy.id!r}: enabled is unreadable")
            )
            continue
        if not policy.enabled:
            continue
        planned = _planned(policy, problems)
        for vault_id in dict.fromkeys(applied):
            by_vault.setdefault(vault_id, []).append(planned)
    return by_vault


def _planned(policy: Policy, problems: list[Problem]) -> PlannedPolicy:
    schedule = None
    try:
        schedule = Schedule(policy.patterns, policy.start_time)
    except UnsupportedScheduleError as error:
        problems.append(Problem("schedule", policy.id, f"policy {policy.id!r}: {error}"))
    window = min(max(0, policy.start_window_minutes or 0) * 60.0, MAX_WINDOW)
    return PlannedPolicy(policy.id, policy.name or policy.id, schedule, window)


def _malformed(entries: Iterable[Malformed], kind: str | None = None) -> list[Problem]:
    out = []
    for entry in entries:
        found = kind or ("resource" if ".resources[" in entry.where else "vault")
        out.append(
            Problem(found, f"{entry.where}: {entry.reason}", f"{entry.where}: {entry.reason}")
        )
    return out
