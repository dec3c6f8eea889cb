"""Missed backups: which scheduled starts passed without a backup task of their resource.

A start `s` of a policy is judged once its grace has passed: at `s + grace`, where grace is
`coverage.schedule_grace`, or the policy's own start window when CBR may start that late. It
was missed when no backup task of the resource was created from CREATED_BEFORE before `s`
until then. Only starts after the resource was first seen in the inventory are judged (one
bound later is not blamed for earlier starts), and each (resource, start) is judged once:
what was announced is kept in the state file.

Which tasks were created is learned from the engine (every backup task it watches, named or
discovered), and, for the starts that still look missed, from one ListOpLogs listing of the
backup tasks created since the earliest of them: the engine alone would call every start
missed when discovery is off. Pure rules; `watcher.coverage.coverage` runs them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from watcher.cbr.models import OperationLog
from watcher.coverage.inventory import PlannedPolicy, Protected

CREATED_BEFORE = 300.0
"""A backup task created this long before its scheduled start still counts for it."""
MAX_CATCH_UP = 86_400.0
"""After a restart, starts whose grace ended at most this long ago are still judged."""


@dataclass(frozen=True, slots=True)
class BackupMissed:
    """A `backup.missed` event: a scheduled start of a resource passed without a backup."""

    resource_id: str
    resource_name: str
    resource_type: str
    vault_id: str
    vault_name: str
    policy_id: str
    policy_name: str
    scheduled_at: float
    missed_at: float
    """`scheduled_at` plus the grace: when it became missed (the body's `timestamp`, the
    same on every replica)."""

    @property
    def subject(self) -> str:
        """What the outbox keeps its events in order by (never a task ID: it has a ':')."""
        return f"resource:{self.resource_id}"


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One scheduled start of one resource whose grace has ended."""

    resource: Protected
    policy: PlannedPolicy
    scheduled_at: float
    deadline: float
    """`scheduled_at` plus the grace: from then on, no task means missed."""

    @property
    def key(self) -> tuple[str, float]:
        """(resource ID, scheduled start): announced at most once."""
        return (self.resource.id, self.scheduled_at)

    def event(self) -> BackupMissed:
        """The `backup.missed` event of this occurrence."""
        resource, policy = self.resource, self.policy
        return BackupMissed(
            resource_id=resource.id,
            resource_name=resource.name,
            resource_type=resource.type,
            vault_id=resource.vault_id,
            vault_name=resource.vault_name,
            policy_id=policy.id,
            policy_name=policy.name,
            scheduled_at=self.scheduled_at,
            missed_at=self.deadline,
        )


def grace_of(policy: PlannedPolicy, grace: float) -> float:
    """How long after a start of `policy` a backup task may still be created."""
    return max(grace, policy.window)


def due(
    resources: Iterable[Protected],
    *,
    since: float,
    until: float,
    grace: float,
    first_seen: Mapping[str, float],
) -> list[Occurrence]:
    """The starts whose grace ended in (since, until], oldest first; one per (resource, start)."""
    by_policy: dict[str, list[Protected]] = {}
    policies: dict[str, PlannedPolicy] = {}
    for resource in resources:
        for policy in resource.policies:
            if policy.schedule is not None:
                by_policy.setdefault(policy.id, []).append(resource)
                policies[policy.id] = policy
    found: dict[tuple[str, float], Occurrence] = {}
    for policy_id, members in by_policy.items():
        policy = policies[policy_id]
        assert policy.schedule is not None
        wait = grace_of(policy, grace)
        for start in policy.schedule.between(since - wait, until - wait):
            for resource in members:
                if start < first_seen.get(resource.id, until):
                    continue
                occurrence = Occurrence(resource, policy, start, start + wait)
                found.setdefault(occurrence.key, occurrence)
    return sorted(found.values(), key=lambda o: (o.deadline, o.resource.id))


def next_deadline(resources: Iterable[Protected], *, after: float, grace: float) -> float | None:
    """The earliest `s + grace` later than `after` among the resources' policies."""
    policies = {p.id: p for r in resources for p in r.policies if p.schedule is not None}
    deadlines = []
    for policy in policies.values():
        assert policy.schedule is not None
        wait = grace_of(policy, grace)
        start = policy.schedule.next_after(after - wait)
        if start is not None:
            deadlines.append(start + wait)
    return min(deadlines, default=None)


def backup_created(operation_log: OperationLog | None) -> tuple[str, float] | None:
    """(resource ID, created_at) of a backup task; None for anything else."""
    if operation_log is None or operation_log.operation_type != "backup":
        return None
    resource = operation_log.resource
    created = operation_log.created_at
    if resource is None or not resource.id or created is None:
        return None
    return resource.id, created.timestamp()


class Sightings:
    """When backup tasks of each resource were created, as far as the watcher learned."""

    def __init__(self) -> None:
        self._times: dict[str, list[float]] = {}

    def add(self, resource_id: str, created: float) -> None:
        """One backup task of `resource_id` created at `created` (repeats are harmless)."""
        times = self._times.setdefault(resource_id, [])
        at = bisect.bisect_left(times, created)
        if at == len(times) or times[at] != created:
            times.insert(at, created)

    def add_log(self, operation_log: OperationLog | None) -> None:
        """The task in `operation_log`, if it is a backup task of a resource."""
        seen = backup_created(operation_log)
        if seen is not None:
            self.add(*seen)

    def seen(self, occurrence: Occurrence) -> bool:
        """Whether a backup task of the occurrence's resource was created in its window."""
        times = self._times.get(occurrence.resource.id, [])
        at = bisect.bisect_left(times, occurrence.scheduled_at - CREATED_BEFORE)
        return at < len(times) and times[at] <= occurrence.deadline

    def forget_before(self, moment: float) -> None:
        """Drop what no occurrence still to be judged can need."""
        for resource_id in list(self._times):
            times = self._times[resource_id]
            del times[: bisect.bisect_left(times, moment)]
            if not times:
                del self._times[resource_id]

    def __len__(self) -> int:
        return sum(map(len, self._times.values()))
