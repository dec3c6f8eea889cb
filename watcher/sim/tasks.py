"""The simulated task model: a spec, and pure functions giving a task's state at any wall time.

Nothing here runs on a timer. A task is its creation time plus its spec; its status, progress
and timestamps at `now` are computed on demand (`task_state`), so a fake clock can jump an hour
ahead and the next request simply sees the task an hour older.

Timeline of a task without explicit `phases`, measured from creation:

- `success`: `waiting` seconds `waiting`, then `running` seconds `running`, then `success`.
  Progress follows 100·x^a (x = share of the running phase done, a = the progress exponent),
  reaches 99 at 95 % of the running phase and stays there until the task ends at 100.
- `failed`: like success, but progress stops growing at `stop_at` (a share of the running
  phase) and the task ends `failed` at the same moment a success would have ended, with a
  non-empty `error_info`.
- `timeout`: like failed (a step hangs), but ends `timeout` with an empty `error_info`.
- `skipped`: `waiting` seconds `waiting`, then `skipped` directly: it never runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

PENDING = frozenset({"waiting", "running"})
TERMINAL = frozenset({"success", "failed", "skipped", "timeout"})
OUTCOMES = ("success", "failed", "skipped", "timeout")
STYLES = ("seed", "compact")

# Share of the running phase after which progress sits at 99 until the task ends: real
# backups spend their last moments committing metadata with nothing left to count.
TAIL_START = 0.95
EXPONENT_RANGE = (0.6, 1.8)
STOP_AT_RANGE = (0.3, 0.8)

# Resource types and provider IDs as the CBR API reference lists them.
PROVIDERS = {
    "OS::Nova::Server": "0daac4c5-6707-4851-97ba-169e36266b66",
    "OS::Cinder::Volume": "d1603440-187d-4516-af25-121250c7cc97",
    "OS::Sfs::Turbo": "3f3c3220-245c-4805-b811-758870015881",
    "OS::Workspace::DesktopV2": "86a80900-71bf-4961-956a-d52df944f84a",
}
NAME_PREFIX = {
    "OS::Nova::Server": "ecs",
    "OS::Cinder::Volume": "evs",
    "OS::Sfs::Turbo": "sfs-turbo",
    "OS::Workspace::DesktopV2": "desktop",
}

# The real failure codes are not documented per operation; these are plausible stand-ins.
DEFAULT_ERRORS = {
    "backup": ("BackupService.5009", "Failed to create the snapshot of the disk."),
    "restore": ("BackupService.2002", "Failed to restore the backup to the target resource."),
    "replication": ("BackupService.1012", "Failed to replicate the backup to the destination."),
    "copy": ("BackupService.1012", "Failed to replicate the backup to the destination."),
}
FALLBACK_ERROR = ("BackupService.9999", "The task failed because of an internal error.")

Phase = tuple[str, float, int | None]

# RFC 4122 version 4: the version nibble is 4 and the variant's two top bits are 10.
_UUID_FIXED_BITS = (0xF000 << 64) | (0xC000 << 48)
_UUID_V4_BITS = (0x4000 << 64) | (0x8000 << 48)


@dataclass
class SimTaskSpec:
    """What a simulated task does. Durations are seconds; every field has a default.

    `phases`, when given, replaces the outcome timeline: a list of (status, seconds,
    progress) where the last phase lasts forever and a None progress is left out of the body.
    `faults` is a script applied to the next ShowOpLog requests for this task, one per request.
    `style` picks the body flavour: "seed" (timestamps like `…23.584+00:00`, progress 0 while
    waiting) or "compact" (timestamps like `…23Z`, no progress while waiting, and an extra
    top-level key the client does not model); None alternates by creation order.
    `extra` is merged into the top level of the operation_log object as-is.
    `enterprise_project_id` is "0" (the default enterprise project) unless set.
    """

    id: str | None = None
    operation_type: str = "backup"
    outcome: str = "success"
    waiting: float = 5.0
    running: float = 60.0
    progress_exponent: float | None = None
    stop_at: float | None = None
    visible_after: float = 0.0
    phases: list[Phase] | None = None
    faults: list[str] = field(default_factory=list)
    vault_id: str | None = None
    vault_name: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    resource_type: str = "OS::Nova::Server"
    provider_id: str | None = None
    policy_id: str | None = None
    enterprise_project_id: str = "0"
    error_code: str | None = None
    error_message: str | None = None
    style: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {self.outcome!r}")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not {self.style!r}")
        for name in ("waiting", "running", "visible_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds")
        if self.progress_exponent is not None and not 0 < self.progress_exponent < 100:
            raise ValueError("progress_exponent must be a positive number")
        if self.stop_at is not None and not 0 <= self.stop_at <= 1:
            raise ValueError("stop_at must be between 0 and 1")
        if self.phases is not None:
            if not self.phases:
                raise ValueError("phases must not be empty")
            for status, seconds, progress in self.phases:
                if not status or seconds < 0:
                    raise ValueError("each phase needs a status and non-negative seconds")
                if progress is not None and not 0 <= progress <= 100:
                    raise ValueError("phase progress must be between 0 and 100")


@dataclass(frozen=True)
class SimTask:
    """A spec made concrete at creation: every random choice is drawn once and kept here."""

    id: str
    index: int
    spec: SimTaskSpec
    created_wall: float
    exponent: float
    stop_at: float
    style: str
    vault_id: str
    vault_name: str
    resource_id: str
    resource_name: str
    provider_id: str
    checkpoint_id: str
    backup_id: str
    request_id: str
    backend_task_id: str

    @property
    def end_wall(self) -> float | None:
        """When the outcome timeline ends (None for open-ended `phases`)."""
        if self.spec.phases is not None:
            return None
        spec = self.spec
        if spec.outcome == "skipped":
            return self.created_wall + spec.waiting
        return self.created_wall + spec.waiting + spec.running

    def visible(self, now_wall: float) -> bool:
        """Whether ShowOpLog / ListOpLogs can see the task yet."""
        return now_wall - self.created_wall >= self.spec.visible_after


@dataclass(frozen=True)
class TaskState:
    """A task as CBR would report it at one instant (wall-clock epoch seconds)."""

    status: str
    progress: int | None
    started: float
    updated: float
    ended: float | None


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID string drawn from `rng`, so seeded runs produce the same IDs.

    Exactly `str(uuid.UUID(int=..., version=4))`, spelled out: it is three times faster, and a
    policy creating 50,000 tasks draws six of these per task.
    """
    value = rng.getrandbits(128) & ~_UUID_FIXED_BITS | _UUID_V4_BITS
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def realize(
    spec: SimTaskSpec,
    *,
    index: int,
    created_wall: float,
    rng: random.Random,
    default_vault: tuple[str, str],
) -> SimTask:
    """Draw everything the spec leaves open, in a fixed order so a seed reproduces a run."""
    generated_id = random_uuid(rng)
    exponent = rng.uniform(*EXPONENT_RANGE)
    stop_at = rng.uniform(*STOP_AT_RANGE)
    resource_id = random_uuid(rng)
    checkpoint_id = random_uuid(rng)
    backup_id = random_uuid(rng)
    request_id = "req-" + random_uuid(rng)
    backend_task_id = random_uuid(rng)
    prefix = NAME_PREFIX.get(spec.resource_type, "resource")
    default_provider = PROVIDERS["OS::Nova::Server"]
    return SimTask(
        id=spec.id or generated_id,
        index=index,
        spec=spec,
        created_wall=created_wall,
        exponent=spec.progress_exponent or exponent,
        stop_at=spec.stop_at if spec.stop_at is not None else stop_at,
        style=spec.style or STYLES[index % len(STYLES)],
        vault_id=spec.vault_id or default_vault[0],
        vault_name=spec.vault_name or default_vault[1],
        resource_id=spec.resource_id or resource_id,
        resource_name=spec.resource_name or f"{prefix}-{index + 1:04d}",
        provider_id=spec.provider_id or PROVIDERS.get(spec.resource_type, default_provider),
        checkpoint_id=checkpoint_id,
        backup_id=backup_id,
        request_id=request_id,
        backend_task_id=backend_task_id,
    )


def curve(share: float, exponent: float) -> int:
    """Progress (0–99) after `share` of the running phase: 100·y^a, y = share / TAIL_START."""
    y = min(1.0, max(0.0, share) / TAIL_START)
    return min(99, math.floor(100 * math.pow(y, exponent)))


def _share_reaching(progress: int, exponent: float) -> float:
    """The earliest share of the running phase at which `curve` reports `progress`."""
    if progress <= 0:
        return 0.0
    return TAIL_START * math.pow(progress / 100, 1 / exponent)


def task_state(task: SimTask, now_wall: float) -> TaskState:
    """The task's status, progress and timestamps at `now_wall`."""
    if task.spec.phases is not None:
        return _phase_state(task, task.spec.phases, now_wall)
    return _outcome_state(task, now_wall)


def _outcome_state(task: SimTask, now: float) -> TaskState:
    spec = task.spec
    created = task.created_wall
    run_start = created + spec.waiting
    waiting_progress = 0 if task.style == "seed" else None
    if now < run_start:
        return TaskState("waiting", waiting_progress, created, created, None)
    if spec.outcome == "skipped":
        return TaskState("skipped", 0, created, run_start, run_start)
    run_end = run_start + spec.running
    limit = 1.0 if spec.outcome == "success" else task.stop_at
    if now >= run_end:
        progress = 100 if spec.outcome == "success" else curve(limit, task.exponent)
        return TaskState(spec.outcome, progress, run_start, run_end, run_end)
    share = min(limit, (now - run_start) / spec.running)
    progress = curve(share, task.exponent)
    updated = run_start + spec.running * _share_reaching(progress, task.exponent)
    return TaskState("running", progress, run_start, min(now, updated), None)


def _phase_state(task: SimTask, phases: list[Phase], now: float) -> TaskState:
    created = task.created_wall
    start = created
    started: float | None = None
    for position, (status, seconds, progress) in enumerate(phases):
        if started is None and status != "waiting":
            started = start
        last = position == len(phases) - 1
        if last or now < start + seconds:
            ended = start if status in TERMINAL else None
            return TaskState(status, progress, started or created, start, ended)
        start += seconds
    raise AssertionError("unreachable: the last phase lasts forever")


def error_info(task: SimTask, status: str) -> dict[str, str]:
    """`error_info` as CBR sends it: filled in for failed tasks, empty strings otherwise."""
    if status != "failed":
        return {"code": "", "message": ""}
    code, message = DEFAULT_ERRORS.get(task.spec.operation_type, FALLBACK_ERROR)
    return {"code": task.spec.error_code or code, "message": task.spec.error_message or message}


def status_at(task: SimTask, now_wall: float) -> str:
    """Just the status `task_state` would report at `now_wall`, without the rest of the work.

    ListOpLogs filters every task on status; this keeps that scan cheap at 50,000 tasks.
    """
    spec = task.spec
    if spec.phases is not None:
        return _phase_state(task, spec.phases, now_wall).status
    run_start = task.created_wall + spec.waiting
    if now_wall < run_start:
        return "waiting"
    if spec.outcome == "skipped":
        return "skipped"
    return spec.outcome if now_wall >= run_start + spec.running else "running"


def _spec_field(name: str) -> Callable[[SimTask], str]:
    def value(task: SimTask) -> str:
        return str(getattr(task.spec, name))

    return value


# ListOpLogs filters other than `status`, each read from a task that never changes.
FILTER_FIELDS: Mapping[str, Callable[[SimTask], str]] = {
    "operation_type": _spec_field("operation_type"),
    "vault_id": attrgetter("vault_id"),
    "vault_name": attrgetter("vault_name"),
    "resource_id": attrgetter("resource_id"),
    "resource_name": attrgetter("resource_name"),
    "provider_id": attrgetter("provider_id"),
    "enterprise_project_id": _spec_field("enterprise_project_id"),
}
