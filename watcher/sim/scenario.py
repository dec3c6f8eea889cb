"""Scenario files: a seed, credentials, a fault profile, a dialect, tasks and backup policies,
in TOML.

```toml
seed = 7
project_id = "04f1829c788037ac2fb8c01eb2b04b95"   # optional
tokens = ["sim-token"]                            # optional
token_lifetime = "24h"                            # optional, IAM tokens issued to users
[[users]]                                         # optional, for POST /v3/auth/tokens
domain = "acme"
user = "watcher"
password = "…"
[[access_keys]]                                   # optional, for AK/SK signatures
access_key = "AKSIM…"
secret_key = "…"
security_token = ""                               # set: a temporary key
[faults]                                          # optional, FaultProfile fields
error_rate = 0.05
hostile_rate = 0.0                                # opt-in: hostile bodies and headers
reused_reset_rate = 0.0                           # opt-in: drop requests on reused connections
[dialect]                                         # optional: where the API reference is silent
preset = "default"                                # start from a preset (see dialects.PRESETS)
count = "total"                                   # ListOpLogs count: "total" | "page"
limit_cap = 100                                   # at most this many entries per page
timestamps = "task"                               # "task" | "Z" | "+00:00" | "zoneless"
null_policy = false                               # "policy_id": null when a task has none
null_vault_for = ["restore", "vault_delete"]      # vault_id/vault_name null for these types
retry_after = "fault"                             # 429 Retry-After: "fault" | "never" | "always"
order = "newest"                                  # ListOpLogs order: "newest" | "oldest" first
list_forbidden = false                            # ListOpLogs answers 403 APIGW.0302
[[tasks]]
id = "backup-ecs-0001"                            # optional
operation_type = "backup"
outcome = "success"
waiting = "10s"
running = "4m"
faults = ["http_503", "throttle:2"]
enterprise_project_id = "0"                       # optional, "0" = the default project
[[vaults]]                                        # optional: the inventory (ListVaults)
id = "vault-web"                                  # optional (default: a seeded UUID)
name = "vault-web"                                # optional (default: vault-0001, ...)
resource_type = "OS::Nova::Server"                # the type of all its resources
size = 1000                                       # GB; also enterprise_project_id
resources = 3                                     # generated (ecs-v1-0001, ...), or a list:
                                                  # [{id = "…", name = "ecs-web-1", size = 40}]
[[policies]]                                      # optional: scheduled backups
id = "policy-daily"                               # optional (default: a seeded UUID)
pattern = ["FREQ=DAILY;BYHOUR=14;BYMINUTE=0"]     # CBR's schedule (RRULEs, UTC), or `every`
vaults = ["vault-web"]                            # with pattern: the vaults (IDs or names)
name = "daily"                                    #   it backs up; listed by ListPolicies
enabled = true                                    # false: listed, never runs
skip = [{resource = "ecs-v1-0002", run = 1}]      # make nothing for it at that run (or
                                                  # at = "2026-01-02T14:00:00Z"): a missed backup
resources = 50                                    # instead of pattern: resources it backs up
every = "24h"                                     # (1-100000), one task each per period,
first = "0s"                                      # first run this long after start
spread = "10m"                                    # a run's starts spread over this (<= every)
runs = 7                                          # optional: stop after this many runs
operation_type = "backup"                         # also vault_id, vault_name, resource_type,
                                                  # provider_id, enterprise_project_id, style
fail_share = 0.05                                 # share of tasks that end failed,
skip_share = 0.02                                 # ... skipped,
timeout_share = 0.0                               # ... timeout; the rest succeed
duration = "20m"                                  # median running time (default 10m) ...
duration_sigma = 0.25                             # ... log-normal sigma (0 = exact)
waiting = "10s"                                   # time waiting before running (fixed)
[[backups]]                                       # optional: backups made before the start
resource = "ecs-web-1"                            # a vault resource's ID or name
age = "26h"                                       # made this long before the start
status = "available"                              # or protecting, error
```

A policy starts when the simulator is built and runs at start + first, + every, ... Each run
creates one task per resource at the run's time plus a random offset within `spread`; the task
appears (ShowOpLog, ListOpLogs, /_sim/tasks) once the simulator's clock reaches that time, with
a fresh ID, `policy_id` set, and the resource's ID and name, which are the same in every run
(names like `ecs-p1-0001`: prefix, policy position, resource number). Everything is drawn
from the seed, so a scenario replays exactly. Policies can also be started at run time with
`POST /_sim/policies` and are listed by `GET /_sim/policies`.

A policy with a `pattern` instead runs at its RRULEs' times (see `watcher.sim.policies`) and
backs up every resource of its vaults; it appears in ListPolicies, and its successful backup
tasks as `available` backups in ListBackups. Vaults, backups and skips can be added at run time
with `POST /_sim/vaults`, `POST /_sim/backups` and `POST /_sim/policies/{id}/skips`
(`watcher.sim.inventory`).

Scripted `faults` are consumed one per ShowOpLog request of the task: `http_500`, `http_502`,
`http_503`, `http_504`, `throttle`, `throttle:N`, `malformed`, `malformed:shape`, `hang`,
`reset`, `unauthorized`, `not_found`. Hostile ones (none by default) test the watcher's
defences, each against one request: `reset:reused` (dropped on a reused keep-alive connection),
`deep_json` (100,000 levels), `oversized` / `oversized:chunked` (a body over 9 MiB),
`progress:Infinity|-Infinity|NaN|1e999|huge|superscript` (raw JSON progress),
`far_date` / `far_date:past` (timestamps beyond UTC's range), `surrogate` /
`surrogate:status` (lone UTF-16 surrogates in text fields) and
`throttle_odd:minus0000|superscript|huge|garbage|rfc850|asctime` (429 with an odd
`Retry-After`). See `watcher.sim.faults.Fault` for exactly what each sends.

`[dialect]` picks an answer to each question the official API reference leaves open; every
key is optional, and without the table the simulator speaks `Dialect()`. See
`watcher.sim.dialects` for what each key changes on the wire. `PUT /_sim/dialect` changes it
at run time.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from watcher.cbr.ids import TASK_ID_PATTERN
from watcher.clock import Clock
from watcher.sim.auth import (
    DEFAULT_TOKEN_LIFETIME,
    AccessKey,
    User,
    access_keys_from,
    token_lifetime_from,
    users_from,
)
from watcher.sim.dialects import DEFAULT_DIALECT, Dialect, dialect_from_mapping
from watcher.sim.faults import FaultProfile
from watcher.sim.inventory import BackupSpec, VaultSpec, backup_from_mapping, vault_from_mapping
from watcher.sim.policies import PolicySpec
from watcher.sim.simulator import DEFAULT_PROJECT_ID, DEFAULT_TOKENS, Simulator
from watcher.sim.specs import policy_from_mapping, profile_from_mapping, spec_from_mapping
from watcher.sim.tasks import SimTaskSpec

T = TypeVar("T")

SCENARIO_KEYS = frozenset(
    {
        "seed",
        "project_id",
        "tokens",
        "faults",
        "tasks",
        "policies",
        "users",
        "access_keys",
        "token_lifetime",
        "dialect",
        "vaults",
        "backups",
    }
)


@dataclass
class Scenario:
    """Everything needed to build a Simulator and fill it with tasks."""

    seed: int = 0
    project_id: str = DEFAULT_PROJECT_ID
    tokens: tuple[str, ...] = DEFAULT_TOKENS
    faults: FaultProfile | None = None
    tasks: list[SimTaskSpec] = field(default_factory=list)
    policies: list[PolicySpec] = field(default_factory=list)
    vaults: list[VaultSpec] = field(default_factory=list)
    backups: list[BackupSpec] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    access_keys: list[AccessKey] = field(default_factory=list)
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME
    dialect: Dialect = DEFAULT_DIALECT

    def build(self, clock: Clock) -> Simulator:
        """A Simulator on `clock` holding this scenario's tasks, vaults and backups, all made
        now, and its policies, started now."""
        sim = Simulator(
            clock,
            project_id=self.project_id,
            tokens=self.tokens,
            faults=self.faults,
            seed=self.seed,
            users=self.users,
            access_keys=self.access_keys,
            token_lifetime=self.token_lifetime,
            dialect=self.dialect,
        )
        sim.add_tasks(self.tasks)
        sim.inventory.add_vaults(self.vaults)
        sim.add_policies(self.policies)
        sim.inventory.add_backups(self.backups)
        return sim


def parse_scenario(data: Mapping[str, Any]) -> Scenario:
    """A Scenario from parsed TOML; ValueError naming the bad key otherwise."""
    for key in data:
        if key not in SCENARIO_KEYS:
            raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(SCENARIO_KEYS))})")
    scenario = Scenario()
    if "seed" in data:
        seed = data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("seed: expected an integer")
        scenario.seed = seed
    if "project_id" in data:
        project_id = data["project_id"]
        if not isinstance(project_id, str) or not TASK_ID_PATTERN.fullmatch(project_id):
            raise ValueError("project_id: expected letters, digits, '_' or '-'")
        scenario.project_id = project_id
    _parse_credentials(data, scenario)
    if "faults" in data:
        scenario.faults = profile_from_mapping(data["faults"], "faults")
    if "dialect" in data:
        scenario.dialect = dialect_from_mapping(data["dialect"], "dialect")
    tasks = data.get("tasks", [])
    if not isinstance(tasks, list):
        raise ValueError("tasks: expected an array of tables ([[tasks]])")
    scenario.tasks = [spec_from_mapping(item, f"tasks[{n}]") for n, item in enumerate(tasks)]
    seen: set[str] = set()
    for n, spec in enumerate(scenario.tasks):
        if spec.id is not None and spec.id in seen:
            raise ValueError(f"tasks[{n}].id: duplicate task ID {spec.id!r}")
        seen.add(spec.id or "")
    scenario.vaults = _parse_tables(data, "vaults", vault_from_mapping)
    scenario.policies = _parse_policies(data.get("policies", []))
    scenario.backups = _parse_tables(data, "backups", backup_from_mapping)
    _check_references(scenario)
    return scenario


def _parse_tables(data: Mapping[str, Any], key: str, parse: Callable[[object, str], T]) -> list[T]:
    """An array of tables (`[[vaults]]`, `[[backups]]`), each parsed by `parse`."""
    tables = data.get(key, [])
    if not isinstance(tables, list):
        raise ValueError(f"{key}: expected an array of tables ([[{key}]])")
    return [parse(item, f"{key}[{n}]") for n, item in enumerate(tables)]


def _check_references(scenario: Scenario) -> None:
    """Every vault and resource a policy, skip or backup names is one the scenario makes."""
    vaults: dict[str, set[str]] = {}
    for position, vault in enumerate(scenario.vaults):
        names = {
            *(item.id for item in vault.resources if item.id is not None),
            *(vault.resource_name(position, index) for index in range(len(vault.resources))),
        }
        for ref in (vault.id, vault.vault_name(position)):
            if ref is not None:
                vaults.setdefault(ref, set()).update(names)
    resources = set().union(*vaults.values())
    for n, policy in enumerate(scenario.policies):
        for ref in policy.vaults:
            if ref not in vaults:
                raise ValueError(f"policies[{n}].vaults: no vault {ref!r} in this scenario")
        members = set().union(*(vaults[ref] for ref in policy.vaults))
        for skip in policy.skip if policy.pattern else ():
            if skip.resource not in members:
                raise ValueError(
                    f"policies[{n}].skip: no resource {skip.resource!r} in the policy's vaults"
                )
    for n, backup in enumerate(scenario.backups):
        if backup.resource not in resources:
            raise ValueError(f"backups[{n}].resource: no resource {backup.resource!r} in a vault")


def _parse_policies(policies: object) -> list[PolicySpec]:
    """`[[policies]]` into PolicySpecs, with no policy ID given twice."""
    if not isinstance(policies, list):
        raise ValueError("policies: expected an array of tables ([[policies]])")
    specs = [policy_from_mapping(item, f"policies[{n}]") for n, item in enumerate(policies)]
    given = [spec.id for spec in specs]
    for n, policy_id in enumerate(given):
        if policy_id is not None and policy_id in given[:n]:
            raise ValueError(f"policies[{n}].id: duplicate policy ID {policy_id!r}")
    return specs


def _parse_credentials(data: Mapping[str, Any], scenario: Scenario) -> None:
    """`tokens`, `users`, `access_keys` and `token_lifetime` into `scenario`."""
    if "tokens" in data:
        tokens = data["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("tokens: expected a list of non-empty strings")
        scenario.tokens = tuple(tokens)
    if "users" in data:
        scenario.users = users_from(data["users"])
    if "access_keys" in data:
        scenario.access_keys = access_keys_from(data["access_keys"])
    if "token_lifetime" in data:
        scenario.token_lifetime = token_lifetime_from(data["token_lifetime"])


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ValueError (starting with the path) when invalid."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return parse_scenario(data)
    except OSError as error:
        raise ValueError(f"{path}: cannot read scenario: {error.strerror or error}") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def builtin_scenario(name: str = "demo") -> Scenario:
    """A scenario shipped inside the package (`watcher/sim/scenarios/NAME.toml`)."""
    source = resources.files("watcher.sim").joinpath("scenarios").joinpath(f"{name}.toml")
    try:
        return parse_scenario(tomllib.loads(source.read_text(encoding="utf-8")))
    except ValueError as error:
        raise ValueError(f"built-in scenario {name!r}: {error}") from None
