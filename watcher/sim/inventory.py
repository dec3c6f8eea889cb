"""The inventory beside the tasks: vaults and their resources, the policies applied to them and
the backups made, served as CBR's ListVaults, ListPolicies and ListBackups.

Bodies carry exactly the keys and JSON types of the official SDK's models (`Vault`, `Billing`,
`ResourceResp`, `Policy`, `PolicyTriggerResp`, `PolicyTriggerPropertiesResp`,
`PolicyAssociateVault`, `BackupResp`); tests/test_sdk_models.py holds them to that. Like
`watcher.sim.bodies`, nothing here uses the client's models. Our reading of what the reference
leaves open (docs/simulator.md):

- Vaults come from `[[vaults]]` or `POST /_sim/vaults`, in the order they were added, each
  holding resources of one type. `count` is every match, as in ListOpLogs.
- ListPolicies lists the pattern policies (`watcher.sim.policies`), in the order they were
  added; interval policies are a load generator and are not listed. The API has no paging
  (the SDK's request has only `operation_type` and `vault_id`), so `count` is the whole list
  and `limit`/`offset` are ignored like any unknown parameter.
- A backup exists for every backup task once it runs: `protecting` while it runs,
  `available` once it succeeded, `error` when it failed or timed out; a skipped task (or one
  a policy skip never made) leaves none. Its `id` and `checkpoint_id` are the task's
  `extra_info.backup.backup_id` and `checkpoint_id`, `created_at` is when the task started
  running, `protected_at` when it ended. `[[backups]]` adds backups made before the start.
  Nothing expires (`expired_at` null).
- Timestamps are written as the official examples write them: `2020-02-05T10:38:34.209782`,
  UTC with no zone.
- Paging as ListOpLogs: `limit` 1–1000 (default 1000), `offset` ≥ 0, the same 400 for a bad
  value. Filters are exact matches; an empty value counts as not given;
  `enterprise_project_id=all_granted_eps` matches every enterprise project.
- ListBackups: `status` may be given more than once (any of them matches); `start_time` and
  `end_time` bound `created_at`; `sort` is `key[:asc|desc],...` over `created_at`,
  `updated_at`, `name`, `status`, `protected_at`, `id`, descending when no direction is given
  and `created_at:desc` when there is no `sort`; ties go by `id`.
- ListVaults: `resource_ids` (comma-separated) matches vaults holding any of them; `policy_id`
  the vaults a listed policy is applied to.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import methodcaller
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from watcher.cbr.ids import validate_task_id
from watcher.clock import Clock
from watcher.config.durations import parse_duration
from watcher.sim import bodies
from watcher.sim.listing import ALL_GRANTED_EPS, NewestFirst, parse_list_query
from watcher.sim.policies import PolicyResource, PolicySchedule, skip_from_mapping
from watcher.sim.responses import add_from_body, json_response
from watcher.sim.tasks import NAME_PREFIX, PROVIDERS, SimTask, random_uuid, status_at, task_state

if TYPE_CHECKING:
    from watcher.sim.core import SimCore

VAULTS_PATH = "/v3/{project_id}/vaults"
POLICIES_PATH = "/v3/{project_id}/policies"
BACKUPS_PATH = "/v3/{project_id}/backups"
OBJECT_TYPES = {
    "OS::Nova::Server": "server",
    "OS::Cinder::Volume": "disk",
    "OS::Sfs::Turbo": "turbo",
    "OS::Workspace::DesktopV2": "workspace",
}
SPEC_CODES = {
    "server": "vault.backup.server.normal",
    "disk": "vault.backup.volume.normal",
    "turbo": "vault.backup.turbo.normal",
    "workspace": "vault.backup.workspace.normal",
}
BACKUP_STATUSES = ("available", "protecting", "error")
# What a backup task's status means for its backup; statuses not here leave no backup.
_BACKUP_STATUS_OF_TASK = {
    "running": "protecting",
    "success": "available",
    "failed": "error",
    "timeout": "error",
}
SORT_KEYS = ("created_at", "updated_at", "name", "status", "protected_at", "id")
MAX_SORT_LENGTH = 255
DEFAULT_RESOURCE_SIZE = 40
DEFAULT_VAULT_SIZE = 1000
MAX_VAULT_RESOURCES = 10_000
_VAULT_KEYS = frozenset(
    {"id", "name", "resource_type", "resources", "size", "enterprise_project_id"}
)
_BACKUP_KEYS = frozenset({"resource", "age", "status"})

_T = TypeVar("_T")


# -- what a scenario or the control API asks for --------------------------------------------


@dataclass(frozen=True)
class ResourceSpec:
    """A resource of a vault; an ID or name left out is made up. `size` is in GB."""

    id: str | None = None
    name: str | None = None
    size: int = DEFAULT_RESOURCE_SIZE


@dataclass(frozen=True)
class VaultSpec:
    """A vault holding `resources` of one `resource_type`; `size` is in GB."""

    id: str | None = None
    name: str | None = None
    resource_type: str = "OS::Nova::Server"
    resources: tuple[ResourceSpec, ...] = ()
    size: int = DEFAULT_VAULT_SIZE
    enterprise_project_id: str = "0"

    def __post_init__(self) -> None:
        if self.id is not None:
            validate_task_id(self.id)
        if self.resource_type not in OBJECT_TYPES:
            known = ", ".join(OBJECT_TYPES)
            raise ValueError(f"resource_type must be one of {known}, not {self.resource_type!r}")
        if len(self.resources) > MAX_VAULT_RESOURCES:
            raise ValueError(f"at most {MAX_VAULT_RESOURCES} resources per vault")

    def vault_name(self, position: int) -> str:
        """The vault's name: as given, or made from its position among the vaults."""
        return self.name or f"vault-{position + 1:04d}"

    def resource_name(self, position: int, index: int) -> str:
        """Resource `index`'s name: as given, or like `ecs-v1-0001`."""
        given = self.resources[index].name
        prefix = NAME_PREFIX.get(self.resource_type, "resource")
        return given or f"{prefix}-v{position + 1}-{index + 1:04d}"


@dataclass(frozen=True)
class BackupSpec:
    """A backup of `resource` (ID or name) made `age` seconds before it is added."""

    resource: str
    age: float = 0.0
    status: str = "available"

    def __post_init__(self) -> None:
        if not self.resource:
            raise ValueError("resource: expected a resource's ID or name")
        if not math.isfinite(self.age) or self.age < 0:
            raise ValueError("age must not be negative")
        if self.status not in BACKUP_STATUSES:
            raise ValueError(f"status must be one of {', '.join(BACKUP_STATUSES)}")


def vault_from_mapping(data: object, where: str = "vault") -> VaultSpec:
    """A VaultSpec from a table; `resources` is a count or a list of {id, name, size}."""
    values = _table(data, where, _VAULT_KEYS)
    try:
        for key in ("id", "name", "resource_type", "enterprise_project_id"):
            if key in values:
                values[key] = _text(values[key], f"{where}.{key}")
        if "size" in values:
            values["size"] = _count(values["size"], f"{where}.size", low=1)
        if "resources" in values:
            values["resources"] = _resources(values["resources"], f"{where}.resources")
        return VaultSpec(**values)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def backup_from_mapping(data: object, where: str = "backup") -> BackupSpec:
    """A BackupSpec from a table; `age` is a duration such as "26h"."""
    values = _table(data, where, _BACKUP_KEYS)
    try:
        if "resource" in values:
            values["resource"] = _text(values["resource"], f"{where}.resource")
        if "status" in values:
            values["status"] = _text(values["status"], f"{where}.status")
        if "age" in values:
            try:
                values["age"] = parse_duration(values["age"])
            except ValueError as error:
                raise ValueError(f"{where}.age: {error}") from None
        if "resource" not in values:
            raise ValueError(f"{where}.resource: required")
        return BackupSpec(**values)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def _table(data: object, where: str, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table")
    for key in data:
        if key not in known:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    return {key: value for key, value in data.items() if value is not None}


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string")
    return value


def _count(value: object, where: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: expected an integer of at least {low}")
    return value


def _resources(value: object, where: str) -> tuple[ResourceSpec, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        count = _count(value, where, low=0)
        if count > MAX_VAULT_RESOURCES:
            raise ValueError(f"{where}: at most {MAX_VAULT_RESOURCES} resources per vault")
        return tuple(ResourceSpec() for _ in range(count))
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a number or a list of tables {{id, name, size}}")
    specs = []
    for position, item in enumerate(value):
        here = f"{where}[{position}]"
        values = _table(item, here, frozenset({"id", "name", "size"}))
        if "id" in values:
            values["id"] = validate_task_id(_text(values["id"], f"{here}.id"))
        if "name" in values:
            values["name"] = _text(values["name"], f"{here}.name")
        if "size" in values:
            values["size"] = _count(values["size"], f"{here}.size", low=1)
        specs.append(ResourceSpec(**values))
    return tuple(specs)


# -- the state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimResource:
    """A resource in a vault, as made."""

    id: str
    name: str
    type: str
    size: int
    vault_id: str
    vault_name: str
    enterprise_project_id: str


@dataclass(frozen=True)
class SimVault:
    """A vault as made: every random choice drawn once and kept."""

    id: str
    name: str
    resource_type: str
    resources: tuple[SimResource, ...]
    size: int
    enterprise_project_id: str
    created_wall: float
    user_id: str

    @property
    def object_type(self) -> str:
        """`billing.object_type`: server, disk, turbo or workspace."""
        return OBJECT_TYPES[self.resource_type]


@dataclass(frozen=True)
class SimBackup:
    """One backup as ListBackups shows it, made by a task or by a scenario."""

    id: str
    name: str
    resource_id: str
    resource_name: str
    resource_type: str
    resource_size: int
    vault_id: str
    provider_id: str
    enterprise_project_id: str
    status: str
    created: float
    updated: float
    protected: float | None
    checkpoint_id: str
    policy_id: str | None = None
    incremental: bool = False

    def sort_value(self, key: str) -> tuple[bool, float | str]:
        """This backup's value for a `sort` key (a backup not yet protected sorts first)."""
        value: float | str | None = {
            "created_at": self.created,
            "updated_at": self.updated,
            "protected_at": self.protected,
            "name": self.name,
            "status": self.status,
            "id": self.id,
        }[key]
        return (value is not None, value if value is not None else 0.0)


class BackupTasks:
    """The backup tasks among the simulator's tasks, all and by resource ID, newest first.

    Built again only when tasks were added: a coverage check asks ListBackups about one
    resource after another, and a fleet holds tens of thousands of tasks.
    """

    def __init__(self, listing: NewestFirst) -> None:
        self.size = len(listing)
        self.all = [task for task in listing.tasks if task.spec.operation_type == "backup"]
        self.by_resource: dict[str, list[SimTask]] = {}
        for task in self.all:
            self.by_resource.setdefault(task.resource_id, []).append(task)


class Inventory:
    """The vaults and the backups made before the start; the rest is derived from the
    simulator's tasks and policies when asked."""

    def __init__(self, clock: Clock, seed: int) -> None:
        self._clock = clock
        self._seed = seed
        self._vaults: list[SimVault] = []
        self._vault_refs: dict[str, SimVault] = {}
        self._resource_refs: dict[str, SimResource] = {}
        self._backup_tasks: BackupTasks | None = None
        self.backups: list[SimBackup] = []

    def backup_tasks(self, listing: NewestFirst) -> BackupTasks:
        """The backup tasks of `listing` (every task, in ListOpLogs order), kept until more
        tasks are added; tasks are never removed, so the count tells."""
        if self._backup_tasks is None or self._backup_tasks.size != len(listing):
            self._backup_tasks = BackupTasks(listing)
        return self._backup_tasks

    @property
    def vaults(self) -> Sequence[SimVault]:
        """Every vault, in the order added."""
        return tuple(self._vaults)

    def vault(self, ref: str) -> SimVault:
        """The vault with this ID or name (KeyError otherwise)."""
        return self._vault_refs[ref]

    def resource(self, ref: str) -> SimResource:
        """The resource with this ID or name, in any vault (KeyError otherwise)."""
        return self._resource_refs[ref]

    def add_vaults(self, specs: Iterable[VaultSpec]) -> list[str]:
        """Make vaults now (on the simulator's clock); nothing is added if an ID or name is
        already taken. Returns their IDs."""
        made: list[SimVault] = []
        refs: dict[str, SimVault] = {}
        resources: dict[str, SimResource] = {}
        for spec in specs:
            vault = self._make(spec, len(self._vaults) + len(made))
            for ref in {vault.id, vault.name}:
                if ref in self._vault_refs or ref in refs:
                    raise ValueError(f"a vault {ref!r} already exists")
                refs[ref] = vault
            for resource in vault.resources:
                for ref in {resource.id, resource.name}:
                    if ref in self._resource_refs or ref in resources:
                        raise ValueError(f"a resource {ref!r} already exists")
                    resources[ref] = resource
            made.append(vault)
        self._vaults.extend(made)
        self._vault_refs.update(refs)
        self._resource_refs.update(resources)
        return [vault.id for vault in made]

    def _make(self, spec: VaultSpec, position: int) -> SimVault:
        rng = random.Random(f"cbr-sim-vault-{self._seed}-{position}")
        vault_id = spec.id or random_uuid(rng)
        name = spec.vault_name(position)
        resources = tuple(
            SimResource(
                id=item.id or random_uuid(rng),
                name=spec.resource_name(position, index),
                type=spec.resource_type,
                size=item.size,
                vault_id=vault_id,
                vault_name=name,
                enterprise_project_id=spec.enterprise_project_id,
            )
            for index, item in enumerate(spec.resources)
        )
        return SimVault(
            id=vault_id,
            name=name,
            resource_type=spec.resource_type,
            resources=resources,
            size=spec.size,
            enterprise_project_id=spec.enterprise_project_id,
            created_wall=self._clock.wall(),
            user_id=f"{rng.getrandbits(128):032x}",
        )

    def members(self, refs: Sequence[str]) -> list[PolicyResource]:
        """Every resource of the vaults named (IDs or names), for a policy's run."""
        out: list[PolicyResource] = []
        for ref in refs:
            vault = self._vault_refs.get(ref)
            if vault is None:
                raise ValueError(f"no vault {ref!r}")
            out.extend(
                PolicyResource(
                    item.id,
                    item.name,
                    item.type,
                    (vault.id, vault.name),
                    vault.enterprise_project_id,
                )
                for item in vault.resources
            )
        return out

    def add_backups(self, specs: Iterable[BackupSpec]) -> list[str]:
        """Backups of vault resources, each made `age` before now; all or nothing."""
        now = self._clock.wall()
        made: list[SimBackup] = []
        for spec in specs:
            resource = self._resource_refs.get(spec.resource)
            if resource is None:
                raise ValueError(f"no resource {spec.resource!r} in any vault")
            rng = random.Random(f"cbr-sim-backup-{self._seed}-{len(self.backups) + len(made)}")
            backup_id = random_uuid(rng)
            created = now - spec.age
            done = spec.status == "available"
            made.append(
                SimBackup(
                    id=backup_id,
                    name=f"autobk_{backup_id[:4]}",
                    resource_id=resource.id,
                    resource_name=resource.name,
                    resource_type=resource.type,
                    resource_size=resource.size,
                    vault_id=resource.vault_id,
                    provider_id=PROVIDERS[resource.type],
                    enterprise_project_id=resource.enterprise_project_id,
                    status=spec.status,
                    created=created,
                    updated=created,
                    protected=created if done else None,
                    checkpoint_id=random_uuid(rng),
                    incremental=False,
                )
            )
        self.backups.extend(made)
        return [backup.id for backup in made]


def backup_status(task: SimTask, now: float) -> str | None:
    """The status of the backup a backup task has made by `now` (None: no backup)."""
    if not task.visible(now):
        return None
    return _BACKUP_STATUS_OF_TASK.get(status_at(task, now))


def task_backup(task: SimTask, now: float, sizes: Mapping[str, int]) -> SimBackup | None:
    """The backup a backup task has made by `now`, if any."""
    status = backup_status(task, now) if task.spec.operation_type == "backup" else None
    if status is None:
        return None
    state = task_state(task, now)
    return SimBackup(
        id=task.backup_id,
        # The name ShowOpLog gives this backup in `extra_info.backup.backup_name`.
        name=f"manualbk_{task.backup_id[:4]}",
        resource_id=task.resource_id,
        resource_name=task.resource_name,
        resource_type=task.spec.resource_type,
        resource_size=sizes.get(task.resource_id, DEFAULT_RESOURCE_SIZE),
        vault_id=task.vault_id,
        provider_id=task.provider_id,
        enterprise_project_id=task.spec.enterprise_project_id,
        status=status,
        created=state.started,
        updated=state.updated,
        protected=state.ended if status == "available" else None,
        checkpoint_id=task.checkpoint_id,
        policy_id=task.spec.policy_id,
        incremental=bool(task.index % 3),  # as ShowOpLog's `extra_info.backup.incremental`
    )


def all_backups(sim: SimCore, now: float, resource_id: str | None = None) -> list[SimBackup]:
    """Every backup at `now` (of one resource, when given): the scenario's and every backup
    task's."""
    sizes = resource_sizes(sim)
    tasks = sim.inventory.backup_tasks(sim.listing())
    candidates = tasks.all if resource_id is None else tasks.by_resource.get(resource_id, [])
    made = (task_backup(task, now, sizes) for task in candidates)
    return [
        *(item for item in sim.inventory.backups if resource_id in (None, item.resource_id)),
        *(backup for backup in made if backup is not None),
    ]


def resource_sizes(sim: SimCore) -> dict[str, int]:
    """Each vault resource's size (GB) by its ID."""
    return {item.id: item.size for vault in sim.inventory.vaults for item in vault.resources}


def listed_policies(sim: SimCore) -> list[PolicySchedule]:
    """The policies ListPolicies shows: those with a pattern."""
    return [policy for policy in sim.policies if policy.spec.pattern]


# -- bodies ---------------------------------------------------------------------------------


def timestamp(epoch: float) -> str:
    """`2020-02-05T10:38:34.209782`: UTC without a zone, as the inventory's examples."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def vault_body(
    vault: SimVault, project_id: str, counts: Mapping[str, int], sizes: Mapping[str, int]
) -> dict[str, Any]:
    """One `Vault`; `counts` and `sizes` are each resource's available backups and their size."""
    resources = [resource_body(item, counts, sizes) for item in vault.resources]
    used_gb = sum(item["backup_size"] for item in resources)
    return {
        "billing": {
            "allocated": sum(item.size for item in vault.resources),
            "charging_mode": "post_paid",
            "cloud_type": "public",
            "consistent_level": "crash_consistent",
            "object_type": vault.object_type,
            "protect_type": "backup",
            "size": vault.size,
            "spec_code": SPEC_CODES[vault.object_type],
            "status": "available",
            "storage_unit": "",
            "used": used_gb * 1024,
            "frozen_scene": None,
            "is_multi_az": False,
        },
        "description": "",
        "id": vault.id,
        "name": vault.name,
        "project_id": project_id,
        "provider_id": PROVIDERS[vault.resource_type],
        "resources": resources,
        "tags": [],
        "enterprise_project_id": vault.enterprise_project_id,
        "auto_bind": False,
        "bind_rules": {"tags": []},
        "user_id": vault.user_id,
        "created_at": timestamp(vault.created_wall),
        "auto_expand": False,
        "smn_notify": True,
        "threshold": 80,
        "locked": False,
    }


def resource_body(
    resource: SimResource, counts: Mapping[str, int], sizes: Mapping[str, int]
) -> dict[str, Any]:
    """One `ResourceResp`."""
    body: dict[str, Any] = {
        "id": resource.id,
        "name": resource.name,
        "type": resource.type,
        "protect_status": "available",
        "size": resource.size,
        "backup_size": sizes.get(resource.id, 0),
        "backup_count": counts.get(resource.id, 0),
        "auto_protect": False,
    }
    if resource.type == "OS::Nova::Server":
        body["extra_info"] = {"exclude_volumes": []}
    return body


def policy_body(policy: PolicySchedule, sim: SimCore) -> dict[str, Any]:
    """One `Policy`."""
    spec = policy.spec
    rng = random.Random(f"cbr-sim-policy-trigger-{sim.seed}-{policy.id}")
    trigger_id = random_uuid(rng)
    vault_ids = [sim.inventory.vault(ref).id for ref in spec.vaults]
    definition: dict[str, Any] = {
        "max_backups": -1,
        "retention_duration_days": -1,
        "timezone": "UTC+00:00",
    }
    associated: list[dict[str, str]] = [{"vault_id": vault_id} for vault_id in vault_ids]
    if spec.operation_type == "replication":
        definition["destination_region"] = "ap-southeast-3"
        definition["destination_project_id"] = f"{rng.getrandbits(128):032x}"
        for item in associated:
            item["destination_vault_id"] = random_uuid(rng)
    start = datetime.fromtimestamp(policy.start_wall, UTC)
    return {
        "enabled": spec.enabled,
        "id": policy.id,
        "name": spec.name or policy.id,
        "operation_definition": definition,
        "operation_type": spec.operation_type,
        "trigger": {
            "id": trigger_id,
            "name": "default",
            "properties": {
                "pattern": list(spec.pattern),
                "start_time": start.strftime("%Y-%m-%d %H:%M:%S"),
                "start_window_minutes": math.ceil(spec.spread / 60),
            },
            "type": "time",
        },
        "associated_vaults": associated,
        "policy_type": "custom_policy",
    }


def backup_body(backup: SimBackup, project_id: str) -> dict[str, Any]:
    """One `BackupResp`."""
    server = backup.resource_type == "OS::Nova::Server"
    return {
        "checkpoint_id": backup.checkpoint_id,
        "created_at": timestamp(backup.created),
        "description": "",
        "expired_at": None,
        "extend_info": {
            "auto_trigger": backup.policy_id is not None,
            "bootable": server,
            "contain_system_disk": server,
            "encrypted": False,
            "support_lld": False,
            "supported_restore_mode": "backup",
            "system_disk": False,
        },
        "id": backup.id,
        "image_type": "backup",
        "name": backup.name,
        "project_id": project_id,
        "protected_at": None if backup.protected is None else timestamp(backup.protected),
        "resource_id": backup.resource_id,
        "resource_name": backup.resource_name,
        "resource_size": backup.resource_size,
        "resource_type": backup.resource_type,
        "scheduled_operation_id": backup.policy_id,
        "status": backup.status,
        "updated_at": timestamp(backup.updated),
        "vault_id": backup.vault_id,
        "replication_records": [],
        "enterprise_project_id": backup.enterprise_project_id,
        "provider_id": backup.provider_id,
        "children": [],
        "incremental": backup.incremental,
    }


# -- queries --------------------------------------------------------------------------------


def _given(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    return value or None


def _project_matches(query: Mapping[str, str], enterprise_project_id: str) -> bool:
    wanted = _given(query, "enterprise_project_id")
    return wanted in (None, ALL_GRANTED_EPS, enterprise_project_id)


def page_of(items: list[_T], query: Mapping[str, str]) -> tuple[int, int, list[_T]]:
    """(limit, offset, the page of `items`) as ListOpLogs validates and applies them."""
    paging = parse_list_query({key: query[key] for key in ("limit", "offset") if key in query})
    return paging.limit, paging.offset, items[paging.offset : paging.offset + paging.limit]


def select_vaults(sim: SimCore, query: Mapping[str, str]) -> list[SimVault]:
    """The vaults matching ListVaults' filters, in the order they were added."""
    policy_id = _given(query, "policy_id")
    applied: set[str] | None = None
    if policy_id is not None:
        applied = {
            sim.inventory.vault(ref).id
            for policy in listed_policies(sim)
            if policy.id == policy_id
            for ref in policy.spec.vaults
        }
    wanted_resources = {item for item in (query.get("resource_ids") or "").split(",") if item}
    checks: list[Callable[[SimVault], bool]] = [
        lambda vault: _project_matches(query, vault.enterprise_project_id),
        lambda vault: _given(query, "id") in (None, vault.id),
        lambda vault: _given(query, "name") in (None, vault.name),
        lambda vault: _given(query, "object_type") in (None, vault.object_type),
        lambda vault: _given(query, "cloud_type") in (None, "public"),
        lambda vault: _given(query, "protect_type") in (None, "backup"),
        lambda vault: _given(query, "status") in (None, "available"),
        lambda vault: applied is None or vault.id in applied,
        lambda vault: (
            not wanted_resources or any(item.id in wanted_resources for item in vault.resources)
        ),
    ]
    return [vault for vault in sim.inventory.vaults if all(check(vault) for check in checks)]


def select_policies(sim: SimCore, query: Mapping[str, str]) -> list[PolicySchedule]:
    """The policies matching ListPolicies' `operation_type` and `vault_id`."""
    operation_type = _given(query, "operation_type")
    vault_id = _given(query, "vault_id")
    return [
        policy
        for policy in listed_policies(sim)
        if operation_type in (None, policy.spec.operation_type)
        and (
            vault_id is None
            or any(sim.inventory.vault(ref).id == vault_id for ref in policy.spec.vaults)
        )
    ]


def parse_sort(raw: str | None) -> list[tuple[str, bool]]:
    """ListBackups' `sort` as (key, descending) pairs; ValueError in CBR's words."""
    if not raw:
        return [("created_at", True)]
    pairs = []
    for part in raw.split(","):
        key, _, direction = part.partition(":")
        if (
            len(raw) > MAX_SORT_LENGTH
            or key not in SORT_KEYS
            or direction not in ("", "asc", "desc")
        ):
            keys = ", ".join(SORT_KEYS)
            raise ValueError(
                f"Invalid parameter sort: expected key[:asc|desc],... with keys {keys}, "
                f"got {raw[:MAX_SORT_LENGTH]!r}."
            )
        pairs.append((key, direction != "asc"))
    return pairs


def select_backups(
    sim: SimCore, query: Mapping[str, str], statuses: Sequence[str], now: float
) -> list[SimBackup]:
    """The backups matching ListBackups' filters, in `sort` order."""
    order = parse_sort(query.get("sort"))
    window = parse_list_query(
        {key: query[key] for key in ("start_time", "end_time") if key in query}
    )
    wanted = {status for status in statuses if status}
    names = ("resource_id", "vault_id", "resource_type", "resource_name", "name", "checkpoint_id")
    fields = {name: value for name in names if (value := _given(query, name)) is not None}
    image_type = _given(query, "image_type")
    out = []
    for backup in all_backups(sim, now, _given(query, "resource_id")):
        if wanted and backup.status not in wanted:
            continue
        if any(getattr(backup, name) != value for name, value in fields.items()):
            continue
        if image_type not in (None, "backup"):
            continue
        if not _project_matches(query, backup.enterprise_project_id):
            continue
        if (window.start is not None and backup.created < window.start) or (
            window.end is not None and backup.created > window.end
        ):
            continue
        out.append(backup)
    out.sort(key=lambda backup: backup.id)
    for key, descending in reversed(order):
        out.sort(key=methodcaller("sort_value", key), reverse=descending)
    return out


def backup_stats(sim: SimCore, now: float) -> tuple[Counter[str], Counter[str]]:
    """Per resource ID: how many available backups it has at `now`, and their size (GB)."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    resource_size = resource_sizes(sim)
    for backup in sim.inventory.backups:
        if backup.status == "available":
            counts[backup.resource_id] += 1
            sizes[backup.resource_id] += backup.resource_size
    for task in sim.inventory.backup_tasks(sim.listing()).all:
        if backup_status(task, now) == "available":
            counts[task.resource_id] += 1
            sizes[task.resource_id] += resource_size.get(task.resource_id, DEFAULT_RESOURCE_SIZE)
    return counts, sizes


# -- HTTP -----------------------------------------------------------------------------------


def add_routes(app: web.Application, sim: SimCore) -> None:
    """ListVaults, ListPolicies and ListBackups, and their /_sim/ control routes, on `app`
    (whose middleware authenticates and fault-injects them like every CBR route)."""
    api = _InventoryApi(sim)
    app.router.add_get(VAULTS_PATH, api.list_vaults)
    app.router.add_get(POLICIES_PATH, api.list_policies)
    app.router.add_get(BACKUPS_PATH, api.list_backups)
    app.router.add_post("/_sim/vaults", api.add_vaults)
    app.router.add_post("/_sim/backups", api.add_backups)
    app.router.add_post("/_sim/policies/{policy_id}/skips", api.add_skip)


class _InventoryApi:
    """The three inventory APIs, and /_sim/ routes that add vaults, backups and skips."""

    def __init__(self, sim: SimCore) -> None:
        self.sim = sim

    async def list_vaults(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/{project_id}/vaults → {"vaults": [...], "count", "limit", "offset"}."""
        sim = self.sim
        found = select_vaults(sim, request.query)
        try:
            limit, offset, page = page_of(found, request.query)
        except ValueError as error:
            return json_response(400, bodies.bad_parameter(str(error)))
        counts, sizes = backup_stats(sim, sim.clock.wall())
        vaults = [vault_body(vault, sim.project_id, counts, sizes) for vault in page]
        return json_response(
            200, {"vaults": vaults, "count": len(found), "limit": limit, "offset": offset}
        )

    async def list_policies(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/{project_id}/policies → {"policies": [...], "count"}; no paging."""
        policies = select_policies(self.sim, request.query)
        return json_response(
            200,
            {
                "policies": [policy_body(item, self.sim) for item in policies],
                "count": len(policies),
            },
        )

    async def list_backups(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/{project_id}/backups → {"backups": [...], "count", "limit", "offset"}."""
        sim = self.sim
        try:
            found = select_backups(
                sim, request.query, request.query.getall("status", []), sim.clock.wall()
            )
            limit, offset, page = page_of(found, request.query)
        except ValueError as error:
            return json_response(400, bodies.bad_parameter(str(error)))
        backups = [backup_body(backup, sim.project_id) for backup in page]
        return json_response(
            200, {"backups": backups, "count": len(found), "limit": limit, "offset": offset}
        )

    async def add_vaults(self, request: web.Request) -> web.StreamResponse:
        """POST /_sim/vaults: one vault or a list (scenario `[[vaults]]` keys) → 201 ids."""
        return await add_from_body(
            request, vault_from_mapping, self.sim.inventory.add_vaults, "vault", "vaults"
        )

    async def add_backups(self, request: web.Request) -> web.StreamResponse:
        """POST /_sim/backups: one backup or a list (scenario `[[backups]]` keys) → 201 ids."""
        return await add_from_body(
            request, backup_from_mapping, self.sim.inventory.add_backups, "backup", "backups"
        )

    async def add_skip(self, request: web.Request) -> web.StreamResponse:
        """POST /_sim/policies/{id}/skips {"resource": ..., "run" | "at"}: make nothing for
        that resource at that run (default: the next run not yet started) → 201."""
        sim = self.sim
        sim.materialize()
        policy_id = request.match_info["policy_id"]
        policy = next((item for item in sim.policies if item.id == policy_id), None)
        if policy is None:
            return json_response(404, {"error": f"no policy {policy_id!r}"})
        try:
            body = await request.json()
        except ValueError:
            return json_response(400, {"error": "body is not valid JSON"})
        try:
            run = policy.add_skip(skip_from_mapping(body))
        except ValueError as error:
            return json_response(400, {"error": str(error)})
        at = policy.run_time(run)
        return json_response(
            201,
            {
                "policy_id": policy.id,
                "resource": body["resource"],
                "run": run,
                "at": None if math.isinf(at) else timestamp(at),
            },
        )
