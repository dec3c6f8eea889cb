"""Backup policies: a schedule that starts one task per resource at every run, created lazily.

A policy has one of two schedules:

- **interval** (`every`): runs at S + first, S + first + every, ... where S is when the policy
  was added. Each run backs up `resources` resources the policy makes up itself, in its own
  vault. A load generator: such policies and their resources are not in the inventory
  (ListPolicies, ListVaults), though their backups are in ListBackups.
- **pattern** (`pattern`): CBR's own schedule, a list of iCalendar RRULEs. Each run backs up
  every resource of the policy's `vaults`, as they are at that run. These policies are listed
  by ListPolicies. How a pattern is read (docs/simulator.md): UTC throughout; DTSTART is the
  policy's start (`trigger.properties.start_time`) without its seconds, so a BYHOUR or
  BYMINUTE left out takes the start's hour or minute (RFC 5545); the first run is the first
  occurrence at or after the start. As CBR does, only FREQ (DAILY or WEEKLY), INTERVAL, BYDAY,
  BYHOUR and BYMINUTE are accepted, at most 24 rules, with runs at least an hour apart.

For each run every resource gets one task, created at the run's time plus a random offset
within `spread`, unless a skip names that resource at that run: then nothing at all is made
for it (no task, so no backup), which is how a missed backup is staged. The tasks are not made
ahead of time: `PolicySchedule.due(now)` hands out those whose creation time has been reached,
so a fake clock can jump and the next request finds the tasks it skipped over, each with its
scheduled creation time.

Everything random comes from generators seeded by (simulator seed, policy ID, run, resource),
never from a shared stream, so the tasks of a seed are the same however the requests that
materialise them are spaced.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice, pairwise
from typing import Protocol

from watcher.cbr.ids import validate_task_id
from watcher.coverage.schedule import MAX_RULES as MAX_PATTERNS
from watcher.coverage.schedule import RULE_EXPECTATIONS, RULE_VALUES, dtstart_of, rule_set
from watcher.sim.tasks import NAME_PREFIX, STYLES, SimTask, SimTaskSpec, random_uuid, realize

MAX_RESOURCES = 100_000
# A clock jumping years ahead must not make a policy build millions of tasks in one request.
MAX_TASKS_PER_POLICY = 250_000
MIN_PATTERN_GAP = 3600.0
# How far `at` (a skip's occurrence) is looked for: ten years of hourly runs.
MAX_RUN_LOOKAHEAD = 100_000
# Where a pattern's gaps are checked: a Monday at midnight, over its first runs.
_GAP_CHECK_START = datetime(2024, 1, 1, tzinfo=UTC)
_GAP_CHECK_RUNS = 400


def parse_pattern(value: object) -> tuple[str, ...]:
    """A policy's `pattern`: 1–24 RRULE strings as CBR accepts them; ValueError otherwise."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError('expected a list of RRULE strings like "FREQ=DAILY;BYHOUR=14;BYMINUTE=0"')
    if len(value) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} rules")
    rules = tuple(_checked_rule(rule) for rule in value)
    starts = list(islice(rule_set(rules, _GAP_CHECK_START), _GAP_CHECK_RUNS))
    for earlier, later in pairwise(starts):
        if (later - earlier).total_seconds() < MIN_PATTERN_GAP:
            raise ValueError(
                f"runs must be at least an hour apart ({earlier:%a %H:%M}, {later:%H:%M})"
            )
    return rules


def _checked_rule(rule: object) -> str:
    if not isinstance(rule, str):
        raise ValueError("expected a list of RRULE strings")
    parts: dict[str, str] = {}
    for part in rule.split(";"):
        key, _, value = part.partition("=")
        if key not in RULE_VALUES or key in parts:
            known = ", ".join(RULE_VALUES)
            raise ValueError(f"{rule!r}: expected KEY=VALUE parts, each key once, of {known}")
        parts[key] = value
    for key, value in parts.items():
        if not RULE_VALUES[key](value):
            raise ValueError(f"{rule!r}: {key}={value} is not {RULE_EXPECTATIONS[key]}")
    if "FREQ" not in parts:
        raise ValueError(f"{rule!r}: FREQ is required")
    return rule


@dataclass(frozen=True)
class PolicySkip:
    """Make nothing for `resource` (its ID or name) at one run: `run` (from 0) or `at` (the
    run's scheduled time, epoch seconds); with neither, the next run not yet started."""

    resource: str
    run: int | None = None
    at: float | None = None

    def __post_init__(self) -> None:
        if not self.resource:
            raise ValueError("a skip needs the resource's ID or name")
        if self.run is not None and self.at is not None:
            raise ValueError("a skip takes run or at, not both")
        if self.run is not None and self.run < 0:
            raise ValueError("run must not be negative")


def parse_skips(value: object) -> tuple[PolicySkip, ...]:
    """A policy's `skip`: a list of tables with `resource` and optionally `run` or `at`
    (`2026-01-02T14:00:00Z`)."""
    if not isinstance(value, list):
        raise ValueError('expected a list of tables like {resource = "ecs-web-1", run = 1}')
    return tuple(skip_from_mapping(item) for item in value)


def skip_from_mapping(data: object) -> PolicySkip:
    """One skip from a table or JSON object; ValueError naming the bad key."""
    if not isinstance(data, Mapping):
        raise ValueError('expected a table like {resource = "ecs-web-1", run = 1}')
    unknown = set(data) - {"resource", "run", "at"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: at, resource, run)")
    resource, run, at = data.get("resource"), data.get("run"), data.get("at")
    if not isinstance(resource, str):
        raise ValueError("resource: expected the resource's ID or name")
    if run is not None and (isinstance(run, bool) or not isinstance(run, int)):
        raise ValueError("run: expected an integer (0 = the first run)")
    return PolicySkip(resource, run, None if at is None else _utc_seconds(at))


def _utc_seconds(value: object) -> float:
    if isinstance(value, datetime):  # TOML's own datetimes
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"at: expected a time like 2026-01-02T14:00:00Z, got {value!r}"
            ) from None
    else:
        raise ValueError("at: expected a time like 2026-01-02T14:00:00Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_vault_refs(value: object) -> tuple[str, ...]:
    """A policy's `vaults`: vault IDs or names."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("expected a list of vault IDs or names")
    return tuple(value)


@dataclass(frozen=True)
class PolicySpec:
    """What a backup policy does. Durations are seconds, shares are 0–1.

    Either `every` (with `resources`, `first`, `vault_id`, `vault_name`, `resource_type`) or
    `pattern` (with `vaults`, vault IDs or names) says when it runs and what it backs up.
    `duration` is the median running time; each task draws its own from a log-normal with
    `duration_sigma` (0: every task runs exactly `duration`). `waiting` is fixed. `runs`
    limits how many runs there are (None: as long as the simulator runs, up to
    MAX_TASKS_PER_POLICY tasks). A run's share of failed, skipped and timed-out tasks
    follows `fail_share`, `skip_share` and `timeout_share`; the rest succeed. A policy that
    is not `enabled` is listed but never runs. `skip` stages missed backups.
    """

    resources: int = 0
    every: float | None = None
    id: str | None = None
    name: str | None = None
    pattern: tuple[str, ...] = ()
    vaults: tuple[str, ...] = ()
    enabled: bool = True
    skip: tuple[PolicySkip, ...] = ()
    first: float = 0.0
    spread: float = 0.0
    runs: int | None = None
    operation_type: str = "backup"
    vault_id: str | None = None
    vault_name: str | None = None
    resource_type: str = "OS::Nova::Server"
    provider_id: str | None = None
    enterprise_project_id: str = "0"
    fail_share: float = 0.0
    skip_share: float = 0.0
    timeout_share: float = 0.0
    duration: float = 600.0
    duration_sigma: float = 0.25
    waiting: float = 10.0
    style: str | None = None

    def __post_init__(self) -> None:
        if self.id is not None:
            validate_task_id(self.id)
        if self.pattern:
            self._check_pattern_schedule()
        else:
            self._check_interval_schedule()
        if self.runs is not None and self.runs < 1:
            raise ValueError("runs must be at least 1")
        for name in ("first", "spread", "duration", "waiting", "duration_sigma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.duration_sigma > 3:
            raise ValueError("duration_sigma must be at most 3")
        shares = (self.fail_share, self.skip_share, self.timeout_share)
        if not all(0 <= share <= 1 for share in shares) or sum(shares) > 1:
            # One message for all three: a sum over 1 is no single key's fault.
            raise ValueError("fail_share, skip_share, timeout_share: each 0-1, together at most 1")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not {self.style!r}")

    def _check_interval_schedule(self) -> None:
        if self.every is None:
            raise ValueError("every or pattern is required")
        if not 1 <= self.resources <= MAX_RESOURCES:
            raise ValueError(f"resources must be from 1 to {MAX_RESOURCES}")
        if not math.isfinite(self.every) or self.every < 1:
            raise ValueError("every must be at least 1s")
        if self.spread > self.every:
            raise ValueError("spread must not be longer than every (runs would overlap)")
        if self.vaults:
            raise ValueError("vaults go with pattern: an interval policy makes its own resources")

    def _check_pattern_schedule(self) -> None:
        parse_pattern(self.pattern)
        given = [
            name for name in ("every", "vault_id", "vault_name") if getattr(self, name) is not None
        ]
        if self.resources or self.first or given:
            name = (given or ["resources" if self.resources else "first"])[0]
            raise ValueError(f"{name} goes with every: a pattern policy backs up its vaults")
        if self.spread > MIN_PATTERN_GAP:
            raise ValueError("spread must be at most 1h with pattern (runs may be an hour apart)")


@dataclass(frozen=True)
class PolicyResource:
    """One resource a policy backs up: the same ID and name in every run. `type`, `vault`
    (ID, name) and `enterprise_project_id` are None for a resource the policy made up, which
    takes the policy's own."""

    id: str
    name: str
    type: str | None = None
    vault: tuple[str, str] | None = None
    enterprise_project_id: str | None = None


Members = Callable[[Sequence[str]], list[PolicyResource]]
"""The resources of the vaults named (by ID or name); ValueError for a vault that does not
exist."""


class PolicySchedule:
    """A policy started at `start_wall`, handing out its tasks as their creation times come.

    A pattern policy asks `members` for its vaults' resources at each run; skips are kept
    by run, and `add_skip` takes more until that run has started.
    """

    def __init__(
        self,
        spec: PolicySpec,
        *,
        position: int,
        start_wall: float,
        seed: int,
        default_vault: tuple[str, str],
        members: Members | None = None,
    ) -> None:
        self.spec = spec
        self.start_wall = start_wall
        self._seed = seed
        self.id = spec.id or random_uuid(random.Random(f"cbr-sim-policy-id-{seed}-{position}"))
        self.resources: list[PolicyResource] = []
        if spec.pattern:
            self.vault = default_vault
            self._starts: _Starts = _PatternStarts(spec.pattern, start_wall)
        else:
            prefix = NAME_PREFIX.get(spec.resource_type, "resource")
            naming = random.Random(f"cbr-sim-policy-resources-{seed}-{self.id}")
            self.resources = [
                PolicyResource(random_uuid(naming), f"{prefix}-p{position + 1}-{index + 1:04d}")
                for index in range(spec.resources)
            ]
            if spec.vault_id is None:
                self.vault = default_vault
            else:
                self.vault = (spec.vault_id, spec.vault_name or f"vault-p{position + 1}")
            assert spec.every is not None
            self._starts = _IntervalStarts(start_wall + spec.first, spec.every)
        self._members = members
        if spec.vaults:
            self.members()  # an unknown vault is an error now, not a silent empty run
        self.created = 0
        self._run = 0
        self._plan: list[tuple[float, int]] | None = None
        self._plan_members: list[PolicyResource] = []
        self._next = 0
        self._skips: dict[int, set[str]] = {}
        for skip in spec.skip:
            self.add_skip(skip)

    def members(self) -> list[PolicyResource]:
        """The resources a run backs up now: the policy's own, or its vaults' current ones."""
        if not self.spec.pattern:
            return self.resources
        if not self.spec.vaults:
            return []
        if self._members is None:
            raise ValueError(f"policy {self.id!r}: no vaults to look its resources up in")
        return self._members(self.spec.vaults)

    def run_time(self, run: int) -> float:
        """When run number `run` (from 0) starts (infinity past a pattern's last run)."""
        return self._starts.at(run)

    def add_skip(self, skip: PolicySkip) -> int:
        """Make nothing for `skip.resource` at its run; returns the run. ValueError for a
        resource the policy does not back up, a time that is not one of its runs, or a run
        whose tasks have started to be made."""
        if not any(skip.resource in (item.id, item.name) for item in self.members()):
            raise ValueError(f"policy {self.id!r} backs up no resource {skip.resource!r}")
        if skip.run is not None:
            run = skip.run
        elif skip.at is not None:
            run = self._run_at(skip.at)
        else:
            run = self._run + (self._plan is not None)
        if run < self._run or (run == self._run and self._plan is not None):
            raise ValueError(f"run {run} of policy {self.id!r} has already started")
        self._skips.setdefault(run, set()).add(skip.resource)
        return run

    def _run_at(self, at: float) -> int:
        for run in range(MAX_RUN_LOOKAHEAD):
            moment = self.run_time(run)
            if abs(moment - at) < 0.001:
                return run
            if moment > at:
                break
        shown = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise ValueError(f"policy {self.id!r} has no run at {shown}")

    def skipped(self, run: int) -> frozenset[str]:
        """The resources (IDs or names) skipped at run `run`."""
        return frozenset(self._skips.get(run, ()))

    def due(self, now: float) -> list[SimTask]:
        """The tasks created since the last call up to `now` (inclusive), oldest first."""
        spec = self.spec
        out: list[SimTask] = []
        if not spec.enabled:
            return out
        while spec.runs is None or self._run < spec.runs:
            if self._plan is None:
                if self.run_time(self._run) > now:
                    break
                self._plan_members = self.members()
                self._plan = self._plan_run(self._run)
                self._next = 0
            skipped = self._skips.get(self._run, set())
            while self._next < len(self._plan) and self._plan[self._next][0] <= now:
                if self.created >= MAX_TASKS_PER_POLICY:
                    return out
                created, index = self._plan[self._next]
                self._next += 1
                resource = self._plan_members[index]
                if resource.id in skipped or resource.name in skipped:
                    continue
                out.append(self._task(self._run, index, created))
                self.created += 1
            if self._next < len(self._plan):
                break
            self._run += 1
            self._plan = None
        return out

    def _plan_run(self, run: int) -> list[tuple[float, int]]:
        """Each resource's creation time in run `run`, in creation order."""
        start = self.run_time(run)
        spread = self.spec.spread
        rng = random.Random(f"cbr-sim-policy-run-{self._seed}-{self.id}-{run}")
        times = [start + (rng.uniform(0, spread) if spread else 0.0) for _ in self._plan_members]
        return sorted((created, index) for index, created in enumerate(times))

    def _task(self, run: int, index: int, created: float) -> SimTask:
        spec = self.spec
        rng = random.Random(f"cbr-sim-policy-task-{self._seed}-{self.id}-{run}-{index}")
        draw = rng.random()
        if draw < spec.fail_share:
            outcome = "failed"
        elif draw < spec.fail_share + spec.skip_share:
            outcome = "skipped"
        elif draw < spec.fail_share + spec.skip_share + spec.timeout_share:
            outcome = "timeout"
        else:
            outcome = "success"
        running = spec.duration * math.exp(rng.gauss(0.0, spec.duration_sigma))
        resource = self._plan_members[index]
        vault = resource.vault or self.vault
        task_spec = SimTaskSpec(
            operation_type=spec.operation_type,
            outcome=outcome,
            waiting=spec.waiting,
            running=running,
            vault_id=vault[0],
            vault_name=vault[1],
            resource_id=resource.id,
            resource_name=resource.name,
            resource_type=resource.type or spec.resource_type,
            provider_id=spec.provider_id,
            policy_id=self.id,
            enterprise_project_id=resource.enterprise_project_id or spec.enterprise_project_id,
            style=spec.style or STYLES[(run + index) % len(STYLES)],
        )
        position = run * len(self._plan_members) + index
        return realize(
            task_spec, index=position, created_wall=created, rng=rng, default_vault=vault
        )

    def summary(self) -> dict[str, object]:
        """What the control API shows about this policy."""
        spec = self.spec
        return {
            "id": self.id,
            "operation_type": spec.operation_type,
            "enabled": spec.enabled,
            "pattern": list(spec.pattern),
            "vaults": list(spec.vaults),
            "resources": spec.resources if not spec.pattern else len(self.members()),
            "every": spec.every,
            "first_run_at": self.run_time(0),
            "runs": spec.runs,
            "tasks_created": self.created,
            "vault_id": None if spec.pattern else self.vault[0],
            "skips": {str(run): sorted(names) for run, names in sorted(self._skips.items())},
        }


class _Starts(Protocol):
    """When each run of a schedule starts."""

    def at(self, run: int) -> float:
        """Epoch seconds of run `run` (from 0)."""
        ...


class _IntervalStarts:
    def __init__(self, first: float, every: float) -> None:
        self._first = first
        self._every = every

    def at(self, run: int) -> float:
        return self._first + run * self._every


class _PatternStarts:
    """A pattern's occurrences from `start_wall` on, worked out as they are asked for."""

    def __init__(self, patterns: Sequence[str], start_wall: float) -> None:
        start = datetime.fromtimestamp(start_wall, UTC)
        rules = rule_set(patterns, dtstart_of(start))
        self._pending: Iterator[datetime] = rules.xafter(start, inc=True)
        self._times: list[float] = []

    def at(self, run: int) -> float:
        while len(self._times) <= run:
            moment = next(self._pending, None)
            if moment is None:
                return math.inf
            self._times.append(moment.timestamp())
        return self._times[run]
