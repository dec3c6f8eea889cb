"""The task population of `bench/efficiency.py`: CBR-like backups, kept N at a time.

Each task: waiting exponential (mean 1 min, capped at 10 min), then running log-normal with
median 20 min and 90th percentile 3 h (clipped to 1 min–12 h); progress linear, power (front- or
back-loaded), S-shaped, stalling, jumping (sitting at 0, leaping, jumping again mid-run) or
absent (5 %); every curve with progress sits at 99 % for the last 3–8 % of its run, as CBR's
does. A share of tasks (5 % by default) fails: progress freezes and the task fails when a
success would have ended.

**Steady state, exactly N concurrently.** N *slots* each run one task after another, the next
created the instant the previous one ends, so exactly N tasks are pending at every instant.
Time 0 is when the engine starts: each slot is then in the middle of a task drawn from the
stationary (length-biased) distribution, at a uniform point of its life, so the engine meets
tasks of every age, as a daemon that has been running for days (and has just restarted) does.
Before it, each slot's history goes back until no task that could still run at time 0 was
created earlier (`HISTORY`): the simulator holds those ended tasks too, because a ListOpLogs
window starting at the oldest running task's creation lists them all.

Every task's randomness comes from its own stream, named by (seed, slot, sequence), so slot k
holds the same tasks whatever N is: a population of 100 is the first 100 slots of the one of
10,000, and a subsample is exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from watcher.sim import SimTaskSpec
from watcher.sim.tasks import Phase

MEDIAN_RUNNING = 20 * 60.0
P90_RUNNING = 3 * 3600.0
SIGMA = math.log(P90_RUNNING / MEDIAN_RUNNING) / 1.2815515655446004
"""Log-normal shape so that the 90th percentile is P90_RUNNING (z of 0.9 = 1.2816)."""
RUNNING_RANGE = (60.0, 12 * 3600.0)
MEAN_WAITING = 60.0
MAX_WAITING = 600.0
LONGEST = MAX_WAITING + RUNNING_RANGE[1]
"""The longest a task can be pending: no task pending at time 0 was created before -LONGEST."""
HISTORY = LONGEST
TAIL_SHARE = (0.03, 0.08)
"""Share of the run spent at 99 % by the curves drawn here (the simulator's own power curves
use its built-in tail of 5–6.6 %)."""
KINDS = {
    "linear": 0.20,
    "power": 0.20,
    "s-curve": 0.20,
    "stall": 0.175,
    "jump": 0.175,
    "no-progress": 0.05,
}
"""Shares of the population before failures are drawn."""
FAILED = "failed"
FAILED_SHARE = 0.05
CURVE_STEPS = 4000
"""Resolution of the drawn curves (integer progress steps are read off it)."""


@dataclass(frozen=True, slots=True)
class PopTask:
    """One task of the population. Times are seconds relative to the engine's start."""

    spec: SimTaskSpec
    kind: str
    slot: int
    created: float
    ends_after: float
    """Seconds from creation to the terminal status."""

    @property
    def task_id(self) -> str:
        """The task's ID (always set by this module)."""
        return self.spec.id or ""

    @property
    def ends(self) -> float:
        """When the task truly ends, relative to the engine's start."""
        return self.created + self.ends_after

    @property
    def failed(self) -> bool:
        """Whether the task ends `failed`."""
        return self.kind == FAILED


@dataclass(frozen=True, slots=True)
class Population:
    """N slots over time: what ended before time 0, what runs at 0, what starts later."""

    slots: int
    seed: int
    failed_share: float
    history: list[PopTask]
    """Created and ended before time 0 (never watched; listed by ListOpLogs windows)."""
    running: list[PopTask]
    """Pending at time 0: one per slot, handed to the engine when it starts."""
    arrivals: list[PopTask]
    """Created after time 0, in creation order: handed to the engine when created."""

    @property
    def watched(self) -> list[PopTask]:
        """Every task the engine watches."""
        return [*self.running, *self.arrivals]


def _curve_phases(
    shape: Callable[[float], float],
    *,
    waiting: float,
    waiting_progress: int | None,
    running: float,
    tail: float,
) -> list[Phase]:
    """Phases that follow `shape` (0 → 1 over the run before the plateau) in integer steps,
    then sit at 99 for `tail` of the run, then succeed."""
    before = running * (1 - tail)
    phases: list[Phase] = [("waiting", waiting, waiting_progress)]
    current, since = 0, 0.0
    for step in range(1, CURVE_STEPS + 1):
        value = min(99, math.floor(100 * shape(step / CURVE_STEPS) + 1e-9))
        if value > current:
            at = before * step / CURVE_STEPS
            phases.append(("running", at - since, current))
            current, since = value, at
    phases.append(("running", running - since, current))
    phases.append(("success", 0.0, 100))
    return phases


def _shape(kind: str, rng: random.Random) -> Callable[[float], float]:
    if kind == "s-curve":
        steep, middle = rng.uniform(4, 7), rng.uniform(0.4, 0.6)

        def logistic(x: float) -> float:
            return 1 / (1 + math.exp(-steep * (x - middle)))

        low, high = logistic(0), logistic(1)
        return lambda x: (logistic(x) - low) / (high - low)
    if kind == "stall":
        begin, length = rng.uniform(0.15, 0.6), rng.uniform(0.1, 0.3)
        exponent = rng.uniform(0.8, 1.3)

        def stalling(x: float) -> float:
            moving = x if x < begin else max(begin, x - length)
            return float((moving / (1 - length)) ** exponent)

        return stalling
    if kind == "jump":
        idle, leap = rng.uniform(0.05, 0.3), rng.uniform(0.15, 0.5)
        second_at, second = rng.uniform(idle + 0.1, 0.85), rng.uniform(0.05, 0.2)

        def jumping(x: float) -> float:
            if x < idle:
                return 0.0
            share = (x - idle) / (1 - idle)
            return leap + (1 - leap - second) * share + (second if x >= second_at else 0.0)

        return jumping
    raise ValueError(kind)


def _draw(rng: random.Random, failed_share: float) -> tuple[str, float, float]:
    """(kind, waiting, running) of one task."""
    kinds, weights = zip(*KINDS.items(), strict=True)
    kind = rng.choices(kinds, weights)[0]
    # Drawn for every task, so the share changes which tasks fail and nothing else.
    if rng.random() < failed_share:
        kind = FAILED
    waiting = min(rng.expovariate(1 / MEAN_WAITING), MAX_WAITING)
    running = rng.lognormvariate(math.log(MEDIAN_RUNNING), SIGMA)
    return kind, waiting, min(max(running, RUNNING_RANGE[0]), RUNNING_RANGE[1])


def _spec(
    task_id: str,
    kind: str,
    waiting: float,
    running: float,
    rng: random.Random,
    *,
    detailed: bool,
    waiting_progress: int | None,
) -> SimTaskSpec:
    """The simulator spec. Without `detailed` (a task that ended before anyone watched it),
    a drawn curve is replaced by the simulator's own: its terminal answer is the same."""
    if kind in ("linear", "power", FAILED) or (not detailed and kind != "no-progress"):
        return SimTaskSpec(
            id=task_id,
            waiting=waiting,
            running=running,
            progress_exponent=1.0 if kind == "linear" else rng.uniform(0.6, 1.8),
            outcome="failed" if kind == FAILED else "success",
            stop_at=rng.uniform(0.3, 0.8) if kind == FAILED else None,
        )
    if kind == "no-progress":
        phases: list[Phase] = [
            ("waiting", waiting, None),
            ("running", running, None),
            ("success", 0.0, None),
        ]
        return SimTaskSpec(id=task_id, phases=phases)
    phases = _curve_phases(
        _shape(kind, rng),
        waiting=waiting,
        waiting_progress=waiting_progress,
        running=running,
        tail=rng.uniform(*TAIL_SHARE),
    )
    return SimTaskSpec(id=task_id, phases=phases)


def _task_id(slot: int, sequence: int) -> str:
    """`s00012f000` is slot 12's task at time 0, `…f002` two later, `…p003` three before."""
    return f"s{slot:05d}{'p' if sequence < 0 else 'f'}{abs(sequence):03d}"


def _stream(seed: int, slot: int, sequence: int, attempt: int = 0) -> random.Random:
    return random.Random(f"cbr-watcher-frontier-{seed}-{slot}-{sequence}-{attempt}")


def _task(
    seed: int,
    slot: int,
    sequence: int,
    created: float,
    failed_share: float,
    *,
    detailed: bool,
) -> PopTask:
    rng = _stream(seed, slot, sequence)
    kind, waiting, running = _draw(rng, failed_share)
    task_id = _task_id(slot, sequence)
    spec = _spec(
        task_id,
        kind,
        waiting,
        running,
        rng,
        detailed=detailed,
        waiting_progress=0 if sequence % 2 == 0 else None,
    )
    return PopTask(spec, kind, slot, created, waiting + running)


def _current(seed: int, slot: int, failed_share: float) -> PopTask:
    """The slot's task at time 0: length-biased (a long task is more likely to be the one
    running at a given instant), at a uniform point of its life."""
    attempt = 0
    while True:
        rng = _stream(seed, slot, 0, attempt)
        kind, waiting, running = _draw(rng, failed_share)
        pending = waiting + running
        if rng.random() * LONGEST < pending:
            break
        attempt += 1
    age = rng.uniform(0.0, pending)
    spec = _spec(_task_id(slot, 0), kind, waiting, running, rng, detailed=True, waiting_progress=0)
    return PopTask(spec, kind, slot, -age, pending)


def population(
    slots: int, seed: int, *, until: float, failed_share: float = FAILED_SHARE
) -> Population:
    """`slots` tasks pending at every instant, from HISTORY before time 0 to `until` (seconds
    after it): what ended before 0, what runs at 0, and what is created up to `until`."""
    history: list[PopTask] = []
    running: list[PopTask] = []
    arrivals: list[PopTask] = []
    for slot in range(slots):
        current = _current(seed, slot, failed_share)
        running.append(current)
        ends_before, sequence = current.created, -1
        while ends_before > -HISTORY:
            # Drawn as if created at 0, then moved back to end when its successor starts.
            past = _task(seed, slot, sequence, 0.0, failed_share, detailed=False)
            created = ends_before - past.ends_after
            history.append(PopTask(past.spec, past.kind, slot, created, past.ends_after))
            ends_before, sequence = created, sequence - 1
        created, sequence = current.ends, 1
        while created <= until:
            task = _task(seed, slot, sequence, created, failed_share, detailed=True)
            arrivals.append(task)
            created, sequence = task.ends, sequence + 1
    history.sort(key=lambda task: task.created)
    arrivals.sort(key=lambda task: task.created)
    return Population(slots, seed, failed_share, history, running, arrivals)
