"""Tolerant models of CBR's inventory: pages of ListVaults, ListPolicies and ListBackups.

Read the way `watcher.cbr.models` reads operation logs. Unknown keys are kept (`raw` is each
object exactly as CBR sent it), a null is the same as a missing key, and a field that cannot be
read is treated as absent, not as an error: text that is not text (a number is read as its
digits), a count that is not a whole number, a flag that is neither a boolean nor
"true"/"false", a timestamp that is not one.

One entry that cannot be read at all (not an object, or without a text `id`; a backup also
needs its `resource_id`) spoils only itself: the page keeps every other entry and lists the bad
one in `malformed` with where it sat and why. A resource inside a vault is an entry of its own
(`vaults[2].resources[0]`): the vault keeps its other resources. Only a body that is not the
documented shape at all (no `vaults` / `policies` / `backups` list) is a MalformedBodyError.

Timestamps are read in every form CBR uses (`2020-02-23T01:00:32Z`,
`2019-05-23T14:35:23.584+00:00`, and the inventory examples' zoneless
`2020-02-05T10:38:34.209782`, read as UTC), and a policy's `start_time` as
`2020-01-08 09:59:49`, also UTC. What each field means is in docs/coverage.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from watcher.cbr.models import MalformedBodyError, parse_timestamp
from watcher.safetext import clean

_BIG_INT = 10**30
_Entry = TypeVar("_Entry")


@dataclass(frozen=True, slots=True)
class Malformed:
    """An entry left out of a page: where it sat (`backups[7]`) and why."""

    where: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource bound to a vault (`ResourceResp`): a server, disk or file system."""

    id: str
    name: str | None = None
    type: str | None = None
    """`OS::Nova::Server`, `OS::Cinder::Volume`, `OS::Sfs::Turbo`, ..."""
    protect_status: str | None = None
    size: int | None = None
    """Allocated size in GB."""
    backup_size: int | None = None
    backup_count: int | None = None
    auto_protect: bool | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Vault:
    """A vault (`Vault`) with the resources bound to it."""

    id: str
    name: str | None = None
    project_id: str | None = None
    provider_id: str | None = None
    enterprise_project_id: str | None = None
    object_type: str | None = None
    """`billing.object_type`: server, disk, turbo, workspace, ..."""
    protect_type: str | None = None
    """`billing.protect_type`: backup or replication."""
    status: str | None = None
    """`billing.status`: available, lock, frozen, deleting, error."""
    created_at: datetime | None = None
    resources: tuple[Resource, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AssociatedVault:
    """A vault a policy is applied to (`PolicyAssociateVault`)."""

    vault_id: str
    destination_vault_id: str | None = None
    """Where a replication policy copies to."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A backup or replication policy (`Policy`) and its schedule."""

    id: str
    name: str | None = None
    enabled: bool | None = None
    operation_type: str | None = None
    """backup or replication."""
    patterns: tuple[str, ...] = ()
    """`trigger.properties.pattern`: iCalendar RRULEs in UTC, e.g. `FREQ=DAILY;BYHOUR=14`."""
    start_time: datetime | None = None
    """`trigger.properties.start_time`: the schedule's DTSTART."""
    start_window_minutes: int | None = None
    trigger_type: str | None = None
    associated_vaults: tuple[AssociatedVault, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def vault_ids(self) -> tuple[str, ...]:
        """The IDs of the vaults the policy is applied to."""
        return tuple(item.vault_id for item in self.associated_vaults)


@dataclass(frozen=True, slots=True)
class Backup:
    """One backup (`BackupResp`) of one resource."""

    id: str
    resource_id: str
    name: str | None = None
    resource_name: str | None = None
    resource_type: str | None = None
    vault_id: str | None = None
    status: str | None = None
    """available, protecting, deleting, restoring, error, waiting_protect, ..."""
    checkpoint_id: str | None = None
    provider_id: str | None = None
    image_type: str | None = None
    enterprise_project_id: str | None = None
    policy_id: str | None = None
    """`scheduled_operation_id`: the policy that made it, if one did."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    protected_at: datetime | None = None
    expired_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class VaultPage:
    """One page of ListVaults: the vaults that could be read, `count` as CBR reported it."""

    vaults: list[Vault]
    count: int | None = None
    limit: int | None = None
    offset: int | None = None
    malformed: list[Malformed] = field(default_factory=list)
    returned: int = 0
    """Entries the page held, readable or not: what the next page's offset moves on by."""


@dataclass(slots=True)
class PolicyPage:
    """ListPolicies (it has no paging): the policies that could be read, and `count`."""

    policies: list[Policy]
    count: int | None = None
    malformed: list[Malformed] = field(default_factory=list)


@dataclass(slots=True)
class BackupPage:
    """One page of ListBackups: the backups that could be read, `count` as CBR reported it."""

    backups: list[Backup]
    count: int | None = None
    limit: int | None = None
    offset: int | None = None
    malformed: list[Malformed] = field(default_factory=list)
    returned: int = 0
    """Entries the page held, readable or not: what the next page's offset moves on by."""


class _BadEntry(ValueError):
    """An entry that cannot be read at all."""


# -- fields ---------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    """Text as sent (cleaned), an integer's digits, or None for anything else."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int) and not isinstance(value, bool) and -_BIG_INT < value < _BIG_INT:
        return str(value)
    return None


def _required(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if isinstance(value, str) and value:
        return clean(value)
    if value is None or value == "":
        raise _BadEntry(f"{key} is missing")
    raise _BadEntry(f"{key} is {type(value).__name__}, not text")


def _integer(value: object) -> int | None:
    """A whole number (also as a float or ASCII digits), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_BIG_INT < value < _BIG_INT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) <= 30:
        return int(text)
    return None


def _flag(value: object) -> bool | None:
    """A boolean, also spelled "true" or "false" (as CBR spells some), or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _time(value: object) -> datetime | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _object(value: object) -> Mapping[str, Any]:
    """A sub-object; anything else reads as an empty one."""
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# -- entries --------------------------------------------------------------------------------


def _entry(raw: object) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise _BadEntry(f"is {type(raw).__name__}, not an object")
    return raw


def read_resource(raw: object) -> Resource:
    """One `ResourceResp`; ValueError when it is not an object with an `id`."""
    item = _entry(raw)
    return Resource(
        id=_required(item, "id"),
        name=_text(item.get("name")),
        type=_text(item.get("type")),
        protect_status=_text(item.get("protect_status")),
        size=_integer(item.get("size")),
        backup_size=_integer(item.get("backup_size")),
        backup_count=_integer(item.get("backup_count")),
        auto_protect=_flag(item.get("auto_protect")),
        raw=item,
    )


def read_vault(raw: object, where: str, malformed: list[Malformed]) -> Vault:
    """One `Vault`; a resource that cannot be read goes to `malformed` (as `where.resources[i]`),
    the vault keeps the rest. ValueError when the vault itself is not an object with an `id`."""
    item = _entry(raw)
    vault_id = _required(item, "id")
    billing = _object(item.get("billing"))
    resources = _read_all(
        _list(item.get("resources")), read_resource, f"{where}.resources", malformed
    )
    return Vault(
        id=vault_id,
        name=_text(item.get("name")),
        project_id=_text(item.get("project_id")),
        provider_id=_text(item.get("provider_id")),
        enterprise_project_id=_text(item.get("enterprise_project_id")),
        object_type=_text(billing.get("object_type")),
        protect_type=_text(billing.get("protect_type")),
        status=_text(billing.get("status")),
        created_at=_time(item.get("created_at")),
        resources=tuple(resources),
        raw=item,
    )


def read_policy(raw: object) -> Policy:
    """One `Policy`; ValueError when it is not an object with an `id`. A pattern entry that
    is not text is left out; an associated vault without a `vault_id` is left out."""
    item = _entry(raw)
    trigger = _object(item.get("trigger"))
    properties = _object(trigger.get("properties"))
    patterns = tuple(
        clean(rule) for rule in _list(properties.get("pattern")) if isinstance(rule, str)
    )
    associated = []
    for entry in _list(item.get("associated_vaults")):
        vault_id = _text(_object(entry).get("vault_id"))
        if vault_id:
            destination = _text(_object(entry).get("destination_vault_id")) or None
            associated.append(AssociatedVault(vault_id, destination))
    return Policy(
        id=_required(item, "id"),
        name=_text(item.get("name")),
        enabled=_flag(item.get("enabled")),
        operation_type=_text(item.get("operation_type")),
        patterns=patterns,
        start_time=_time(properties.get("start_time")),
        start_window_minutes=_integer(properties.get("start_window_minutes")),
        trigger_type=_text(trigger.get("type")),
        associated_vaults=tuple(associated),
        raw=item,
    )


def read_backup(raw: object) -> Backup:
    """One `BackupResp`; ValueError when it is not an object with `id` and `resource_id`."""
    item = _entry(raw)
    return Backup(
        id=_required(item, "id"),
        resource_id=_required(item, "resource_id"),
        name=_text(item.get("name")),
        resource_name=_text(item.get("resource_name")),
        resource_type=_text(item.get("resource_type")),
        vault_id=_text(item.get("vault_id")),
        status=_text(item.get("status")),
        checkpoint_id=_text(item.get("checkpoint_id")),
        provider_id=_text(item.get("provider_id")),
        image_type=_text(item.get("image_type")),
        enterprise_project_id=_text(item.get("enterprise_project_id")),
        policy_id=_text(item.get("scheduled_operation_id")),
        created_at=_time(item.get("created_at")),
        updated_at=_time(item.get("updated_at")),
        protected_at=_time(item.get("protected_at")),
        expired_at=_time(item.get("expired_at")),
        raw=item,
    )


def _read_all(
    items: list[Any], read: Callable[[object], _Entry], where: str, malformed: list[Malformed]
) -> list[_Entry]:
    """Every entry `read` can read; the others go to `malformed`."""
    read_ones = (_read_one(read, raw, f"{where}[{n}]", malformed) for n, raw in enumerate(items))
    return [entry for entry in read_ones if entry is not None]


def _read_one(
    read: Callable[[object], _Entry], raw: object, where: str, malformed: list[Malformed]
) -> _Entry | None:
    try:
        return read(raw)
    except _BadEntry as error:
        malformed.append(Malformed(where, str(error)))
    except (RecursionError, OverflowError, ValueError, TypeError) as error:
        malformed.append(Malformed(where, f"unreadable ({type(error).__name__})"))
    return None


# -- pages ----------------------------------------------------------------------------------


def _listing(body: object, key: str) -> tuple[Mapping[str, Any], list[Any]]:
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise MalformedBodyError(f"body has no {key!r} list")
    return body, body[key]


def _count(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_vaults_body(body: object) -> VaultPage:
    """A ListVaults 200 body: `{"vaults": [...], "count": N, ...}`."""
    page, items = _listing(body, "vaults")
    malformed: list[Malformed] = []
    vaults = []
    for position, raw in enumerate(items):
        where = f"vaults[{position}]"
        vault = _read_one(
            partial(read_vault, where=where, malformed=malformed), raw, where, malformed
        )
        if vault is not None:
            vaults.append(vault)
    return VaultPage(
        vaults,
        _count(page, "count"),
        _count(page, "limit"),
        _count(page, "offset"),
        malformed,
        returned=len(items),
    )


def parse_policies_body(body: object) -> PolicyPage:
    """A ListPolicies 200 body: `{"policies": [...], "count": N}`."""
    page, items = _listing(body, "policies")
    malformed: list[Malformed] = []
    policies = _read_all(items, read_policy, "policies", malformed)
    return PolicyPage(policies, _count(page, "count"), malformed)


def parse_backups_body(body: object) -> BackupPage:
    """A ListBackups 200 body: `{"backups": [...], "count": N, ...}`."""
    page, items = _listing(body, "backups")
    malformed: list[Malformed] = []
    backups = _read_all(items, read_backup, "backups", malformed)
    return BackupPage(
        backups,
        _count(page, "count"),
        _count(page, "limit"),
        _count(page, "offset"),
        malformed,
        returned=len(items),
    )
