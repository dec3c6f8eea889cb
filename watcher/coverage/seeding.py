"""Seeding a resource's freshness from its newest available backup: one ListBackups request
(`resource_id`, `status=available`, `sort=created_at:desc`, `limit=1`) per newly seen resource.

After that, freshness comes from the tasks the watcher sees end. A resource whose answer said
nothing useful (no backup at all, or one without a readable `created_at`) is asked again once
a scheduled start of its policy has passed since (and at least `RESEED_AFTER` later), so
`cbr_watcher_resource_never_backed_up` does not stay 1 for a resource whose backups the
watcher does not watch; a resource no policy applies to is not asked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from watcher.cbr.inventory import BackupPage
from watcher.coverage.freshness import ResourceKey, ResourceStatus
from watcher.coverage.inventory import Problem, Protected
from watcher.state.rows import InventoryRecord

RESEED_AFTER = 6 * 3600.0
"""How long before a resource without a dated backup is asked again."""
UNSEEDED_STATUS = ""
"""`last_status` of a freshness row made from a backup, not a finished task: it exports a
last success, but no `cbr_watcher_resource_last_status`."""


class BackupsApi(Protocol):
    """The part of the CBR client seeding uses."""

    async def list_backups(
        self,
        *,
        resource_id: str | None = None,
        status: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> BackupPage:
        """One page of ListBackups."""
        ...


@dataclass(frozen=True, slots=True)
class Seed:
    """What ListBackups said about one resource's newest available backup."""

    resource_id: str
    asked: float
    """Wall-clock seconds of the answer."""
    backed_up: bool
    """Whether the resource has any available backup."""
    newest: float | None = None
    """`created_at` of the newest available backup (None: none, or unreadable)."""


def ask_again(resource: Protected, record: InventoryRecord, now: float, *, grace: float) -> bool:
    """Whether `resource` is to be asked (again) at `now`: never asked, or answered without a
    dated backup at least RESEED_AFTER ago and a scheduled start of one of its policies has
    passed its grace since (only then can a backup have appeared)."""
    asked = record.asked
    if asked is None:
        return True
    if record.newest_backup is not None or now - asked < RESEED_AFTER:
        return False
    return any(
        policy.schedule is not None
        and policy.schedule.between(
            asked - max(grace, policy.window), now - max(grace, policy.window)
        )
        for policy in resource.policies
    )


async def newest_backup(
    api: BackupsApi, resource_id: str, *, now: float
) -> tuple[Seed, list[Problem]]:
    """Ask for `resource_id`'s newest available backup; CbrError propagates."""
    page = await api.list_backups(
        resource_id=resource_id, status="available", sort="created_at:desc", limit=1
    )
    problems = [
        Problem(
            "backup",
            f"{resource_id}: {entry.reason}",
            f"backup of {resource_id!r}: {entry.where}: {entry.reason}",
        )
        for entry in page.malformed
    ]
    if page.returned <= 0:
        return Seed(resource_id, now, backed_up=False), problems
    for backup in page.backups[:1]:
        if backup.resource_id != resource_id or backup.status not in (None, "available"):
            problems.append(
                Problem(
                    "backup",
                    f"{resource_id}: another backup",
                    f"ListBackups for {resource_id!r} answered a backup of "
                    f"{backup.resource_id!r} ({backup.status})",
                )
            )
        elif backup.created_at is not None:
            return Seed(resource_id, now, True, backup.created_at.timestamp()), problems
        else:
            problems.append(
                Problem(
                    "backup",
                    f"{resource_id}: no created_at",
                    f"backup {backup.id!r} of {resource_id!r} has no readable created_at",
                )
            )
    # Something was listed for it, so it has a backup; when is unknown.
    return Seed(resource_id, now, backed_up=True), problems


def freshness_of(resource: Protected, seed: Seed) -> ResourceStatus | None:
    """The freshness row a seed gives (a last success, no last status), or None."""
    if seed.newest is None:
        return None
    return ResourceStatus(
        key=ResourceKey(resource.id, "backup"),
        resource_name=resource.name,
        resource_type=resource.type,
        vault_id=resource.vault_id,
        last_status=UNSEEDED_STATUS,
        # Never newer than a finished task: a seed only ever adds a last success.
        last_ended=float("-inf"),
        last_success_ended=seed.newest,
    )
