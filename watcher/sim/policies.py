"""Backup policies: a schedule that starts one task per resource every period, created lazily.

A policy starting at wall time S runs at S + first, S + first + every, ... For each run every
resource gets one task, created at the run's time plus a random offset within `spread`. The
tasks are not made ahead of time: `PolicySchedule.due(now)` hands out those whose creation time
has been reached, so a fake clock can jump and the next request finds the tasks it skipped over,
each with its scheduled creation time.

Everything random comes from generators seeded by (simulator seed, policy ID, run, resource),
never from a shared stream, so the tasks of a seed are the same however the requests that
materialise them are spaced.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from watcher.cbr.ids import validate_task_id
from watcher.sim.tasks import NAME_PREFIX, STYLES, SimTask, SimTaskSpec, random_uuid, realize

MAX_RESOURCES = 100_000
# A clock jumping years ahead must not make a policy build millions of tasks in one request.
MAX_TASKS_PER_POLICY = 250_000


@dataclass(frozen=True)
class PolicySpec:
    """What a backup policy does. Durations are seconds, shares are 0–1.

    `duration` is the median running time; each task draws its own from a log-normal with
    `duration_sigma` (0: every task runs exactly `duration`). `waiting` is fixed. `runs`
    limits how many runs there are (None: one every period for as long as the simulator runs,
    up to MAX_TASKS_PER_POLICY tasks). A run's share of failed, skipped and timed-out tasks
    follows `fail_share`, `skip_share` and `timeout_share`; the rest succeed.
    """

    resources: int
    every: float
    id: str | None = None
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
        if not 1 <= self.resources <= MAX_RESOURCES:
            raise ValueError(f"resources must be from 1 to {MAX_RESOURCES}")
        if self.runs is not None and self.runs < 1:
            raise ValueError("runs must be at least 1")
        if not math.isfinite(self.every) or self.every < 1:
            raise ValueError("every must be at least 1s")
        for name in ("first", "spread", "duration", "waiting", "duration_sigma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.spread > self.every:
            raise ValueError("spread must not be longer than every (runs would overlap)")
        if self.duration_sigma > 3:
            raise ValueError("duration_sigma must be at most 3")
        shares = (self.fail_share, self.skip_share, self.timeout_share)
        if not all(0 <= share <= 1 for share in shares) or sum(shares) > 1:
            # One message for all three: a sum over 1 is no single key's fault.
            raise ValueError("fail_share, skip_share, timeout_share: each 0-1, together at most 1")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not {self.style!r}")


@dataclass(frozen=True)
class PolicyResource:
    """One resource a policy backs up: the same ID and name in every run."""

    id: str
    name: str


class PolicySchedule:
    """A policy started at `start_wall`, handing out its tasks as their creation times come."""

    def __init__(
        self,
        spec: PolicySpec,
        *,
        position: int,
        start_wall: float,
        seed: int,
        default_vault: tuple[str, str],
    ) -> None:
        self.spec = spec
        self.start_wall = start_wall
        self._seed = seed
        self.id = spec.id or random_uuid(random.Random(f"cbr-sim-policy-id-{seed}-{position}"))
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
        self.created = 0
        self._run = 0
        self._plan: list[tuple[float, int]] | None = None
        self._next = 0

    def run_time(self, run: int) -> float:
        """When run number `run` (from 0) starts."""
        return self.start_wall + self.spec.first + run * self.spec.every

    def due(self, now: float) -> list[SimTask]:
        """The tasks created since the last call up to `now` (inclusive), oldest first."""
        spec = self.spec
        out: list[SimTask] = []
        while spec.runs is None or self._run < spec.runs:
            if self._plan is None:
                if self.run_time(self._run) > now:
                    break
                self._plan = self._plan_run(self._run)
                self._next = 0
            while self._next < len(self._plan) and self._plan[self._next][0] <= now:
                if self.created >= MAX_TASKS_PER_POLICY:
                    return out
                created, index = self._plan[self._next]
                out.append(self._task(self._run, index, created))
                self._next += 1
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
        times = [start + (rng.uniform(0, spread) if spread else 0.0) for _ in self.resources]
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
        resource = self.resources[index]
        task_spec = SimTaskSpec(
            operation_type=spec.operation_type,
            outcome=outcome,
            waiting=spec.waiting,
            running=running,
            vault_id=self.vault[0],
            vault_name=self.vault[1],
            resource_id=resource.id,
            resource_name=resource.name,
            resource_type=spec.resource_type,
            provider_id=spec.provider_id,
            policy_id=self.id,
            enterprise_project_id=spec.enterprise_project_id,
            style=spec.style or STYLES[(run + index) % len(STYLES)],
        )
        position = run * spec.resources + index
        return realize(
            task_spec, index=position, created_wall=created, rng=rng, default_vault=self.vault
        )

    def summary(self) -> dict[str, object]:
        """What the control API shows about this policy."""
        spec = self.spec
        return {
            "id": self.id,
            "operation_type": spec.operation_type,
            "resources": spec.resources,
            "every": spec.every,
            "first_run_at": self.run_time(0),
            "runs": spec.runs,
            "tasks_created": self.created,
            "vault_id": self.vault[0],
        }
