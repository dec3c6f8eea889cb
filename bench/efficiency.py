"""Polling efficiency: requests per task and detection delay, cbr-watcher against the waiters
people use, on one seeded population of CBR-like tasks, all on a fake clock.

    python bench/efficiency.py [--tasks 120] [--seed 1] [--json out.json]

Every system is the real `watcher.engine.engine.Engine` with a real `CbrClient`, polling the CBR
simulator on a real socket in this process, on a `FakeClock` that jumps whenever the engine
is idle (so a 12-hour backup takes a fraction of a second), one ShowOpLog per poll (ListOpLogs
batching is off: it would cut every system's requests when many tasks are due together, and
this compares cadences). Each system gets a fresh simulator with the same task specs created at
the same fake instant; only the cadence differs:

* `cbr-watcher` — `schedule.after_success` with the defaults (progress-aware);
* `fixed 15 s` — botocore's most common waiter delay;
* `Terraform StateChangeConf` — 0.2 s doubling, capped at 10 s;
* `Smithy waiter` — random in [2 s, min(120 s, 2·2^n)];

plus the limit: one request per task, seen the instant it ends. The baselines replace
`watcher.engine.schedule.after_success` for their run (errors, 404s and the deadline are not
exercised: the simulator injects no faults here).

Detection delay = when the engine saw the terminal status − when the simulator ended the task.

The population (see `population`): running time log-normal with median 20 min and 90th
percentile 3 h (clipped to 1 min–12 h), waiting exponential with mean 1 min; progress curves
linear, power (front- or back-loaded), S-shaped, stalling, jumping (sitting at 0 then
leaping, plus a jump mid-run), a few failures (progress freezes, the task fails when it would
have finished) and 5 % of tasks without progress. Every curve with progress sits at 99 % for
the last 3–8 % of its run, as CBR's does. See bench/README.md for the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.engine import schedule
from watcher.engine.engine import Engine
from watcher.engine.events import TaskEvent
from watcher.engine.schedule import Decision, Policy, PollState, Reason
from watcher.observe.logs import configure_logging
from watcher.sim import DEFAULT_TOKENS, SimTaskSpec, Simulator
from watcher.sim.tasks import Phase
from watcher.testing import FakeClock, drive_until

MEDIAN_RUNNING = 20 * 60.0
P90_RUNNING = 3 * 3600.0
SIGMA = math.log(P90_RUNNING / MEDIAN_RUNNING) / 1.2815515655446004
"""Log-normal shape so that the 90th percentile is P90_RUNNING (z of 0.9 = 1.2816)."""
RUNNING_RANGE = (60.0, 12 * 3600.0)
MEAN_WAITING = 60.0
TAIL_SHARE = (0.03, 0.08)
"""Share of the run spent at 99 % by the curves this bench draws (the simulator's own
power curves use its built-in tail of 5–6.6 %)."""
KINDS = {
    "linear": 0.20,
    "power": 0.20,
    "s-curve": 0.20,
    "stall": 0.175,
    "jump": 0.175,
    "no-progress": 0.05,
    "failed": 0.0,
}
"""Shares of the population; `--failed-share` moves that share of tasks from every other
kind to "failed" (progress freezes; the task fails when a success would have ended)."""
DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class PopTask:
    """One task of the population and when it truly ends (seconds after its creation)."""

    spec: SimTaskSpec
    kind: str
    ends_after: float


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
    steps = 4000
    current, since = 0, 0.0
    for step in range(1, steps + 1):
        value = min(99, math.floor(100 * shape(step / steps) + 1e-9))
        if value > current:
            at = before * step / steps
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


def population(count: int, seed: int, *, failed_share: float = 0.0) -> list[PopTask]:
    """The seeded task population every system watches."""
    rng = random.Random(f"cbr-watcher-efficiency-{seed}")
    kinds, weights = zip(*KINDS.items(), strict=True)
    tasks = []
    for index in range(count):
        task_id = f"bench-{index:04d}"
        kind = rng.choices(kinds, weights)[0]
        # Drawn for every task, so the share changes which tasks fail and nothing else.
        if rng.random() < failed_share:
            kind = "failed"
        waiting = min(rng.expovariate(1 / MEAN_WAITING), 600.0)
        running = rng.lognormvariate(math.log(MEDIAN_RUNNING), SIGMA)
        running = min(max(running, RUNNING_RANGE[0]), RUNNING_RANGE[1])
        waiting_progress = 0 if index % 2 == 0 else None
        spec: SimTaskSpec
        if kind in ("linear", "power", "failed"):
            spec = SimTaskSpec(
                id=task_id,
                waiting=waiting,
                running=running,
                progress_exponent=1.0 if kind == "linear" else rng.uniform(0.6, 1.8),
                outcome="failed" if kind == "failed" else "success",
                stop_at=rng.uniform(0.3, 0.8) if kind == "failed" else None,
            )
        elif kind == "no-progress":
            phases: list[Phase] = [
                ("waiting", waiting, None),
                ("running", running, None),
                ("success", 0.0, None),
            ]
            spec = SimTaskSpec(id=task_id, phases=phases)
        else:
            phases = _curve_phases(
                _shape(kind, rng),
                waiting=waiting,
                waiting_progress=waiting_progress,
                running=running,
                tail=rng.uniform(*TAIL_SHARE),
            )
            spec = SimTaskSpec(id=task_id, phases=phases)
        tasks.append(PopTask(spec, kind, waiting + running))
    return tasks


# ---- the cadences ------------------------------------------------------------------------


class AfterSuccess(Protocol):
    """The signature of `schedule.after_success`."""

    def __call__(
        self,
        policy: Policy,
        state: PollState,
        *,
        changed: bool,
        rng: random.Random,
        status: str | None = None,
        progress: int | None = None,
        now: float | None = None,
    ) -> Decision:
        """The next poll after a successful one."""
        ...


def fixed_15s(
    policy: Policy, state: PollState, *, changed: bool, rng: random.Random, **_: object
) -> Decision:
    """botocore's most common waiter: a constant 15 s."""
    return Decision(PollState(), 15.0, Reason.UNCHANGED)


def terraform(
    policy: Policy, state: PollState, *, changed: bool, rng: random.Random, **_: object
) -> Decision:
    """Terraform's StateChangeConf with MinTimeout 0: 0.2 s, doubling each refresh, ≤ 10 s."""
    attempt = state.quiet_polls
    delay = 10.0 if attempt >= 6 else min(10.0, 0.2 * 2.0**attempt)
    return Decision(PollState(quiet_polls=attempt + 1), delay, Reason.UNCHANGED)


def smithy(
    policy: Policy, state: PollState, *, changed: bool, rng: random.Random, **_: object
) -> Decision:
    """The Smithy waiter rule: uniform in [2 s, min(120 s, 2·2^n)] for the n-th retry."""
    attempt = state.quiet_polls
    cap = 120.0 if attempt >= 6 else min(120.0, 2.0 * 2.0**attempt)
    return Decision(PollState(quiet_polls=attempt + 1), rng.uniform(2.0, cap), Reason.UNCHANGED)


@dataclass(frozen=True)
class System:
    """One way of polling: a policy, and optionally a replacement for after_success."""

    name: str
    policy: Policy
    after_success: AfterSuccess | None = None


BASELINE = "fixed 15 s (botocore)"


def systems(progress_interval: float = DEFAULT_POLICY.progress_interval) -> list[System]:
    """Every system compared; `progress_interval` is cbr-watcher's `[watch]` setting."""
    name = "cbr-watcher (defaults)"
    if progress_interval != DEFAULT_POLICY.progress_interval:
        name = f"cbr-watcher (progress_interval {progress_interval:g} s)"
    return [
        System(name, Policy(progress_interval=progress_interval)),
        System(BASELINE, DEFAULT_POLICY, fixed_15s),
        System("Terraform StateChangeConf", DEFAULT_POLICY, terraform),
        System("Smithy waiter (2–120 s)", DEFAULT_POLICY, smithy),
    ]


@contextmanager
def cadence(after_success: AfterSuccess | None) -> Iterator[None]:
    """Make the engine use `after_success` (the engine calls `schedule.after_success`)."""
    original = schedule.after_success
    if after_success is not None:
        schedule.after_success = after_success
    try:
        yield
    finally:
        schedule.after_success = original


OPERATION_TYPE = "backup"


# ---- one run -----------------------------------------------------------------------------


@dataclass
class TaskResult:
    """What one system did for one task."""

    task_id: str
    kind: str
    requests: int
    delay: float


@dataclass
class SystemResult:
    """One system over the whole population."""

    name: str
    tasks: list[TaskResult]
    reasons: dict[str, int]
    fake_seconds: float
    real_seconds: float
    summary: dict[str, float] = field(default_factory=dict)


async def run_system(system: System, tasks: Sequence[PopTask], seed: int) -> SystemResult:
    """Watch the population with one system until every task ended."""
    started = time.perf_counter()
    clock = FakeClock()
    sim = Simulator(clock, seed=seed)
    detected: dict[str, float] = {}
    engine: Engine | None = None

    async def on_event(event: TaskEvent) -> None:
        if event.ends_watch:
            detected[event.task_id] = event.occurred_at

    async with sim.running() as base_url:
        client = CbrClient(
            endpoint=base_url,
            project_id=sim.project_id,
            auth=TokenAuthenticator(token=DEFAULT_TOKENS[0]),
            clock=clock,
            max_connections=64,
        )
        async with client:
            ids = sim.add_tasks([task.spec for task in tasks])
            created = {task_id: sim.tasks[task_id].created_wall for task_id in ids}
            engine = Engine(
                client=client,
                clock=clock,
                policy=system.policy,
                max_concurrency=64,
                # The comparison is about cadence, not about a shared budget, nor about
                # ListOpLogs batching (watcher.engine.listing), which would serve every system's due
                # polls with shared pages: one ShowOpLog per poll, as the waiters make.
                max_requests_per_second=1e6,
                batch_refresh=False,
                on_event=on_event,
                retention=1e9,
                rng=random.Random(seed),
            )
            for task_id in ids:
                engine.add(task_id)
            start = clock.monotonic()
            with cadence(system.after_success):
                runner = asyncio.create_task(engine.run())

                def busy() -> bool:
                    return engine.in_flight > 0

                await drive_until(clock, engine.all_done, busy=busy, max_seconds=2 * 86_400)
                engine.stop()
                await drive_until(clock, runner.done, busy=busy)
                await runner
            fake = clock.monotonic() - start
    results = [
        TaskResult(
            task.spec.id or "",
            task.kind,
            sim.request_count(task.spec.id or ""),
            detected[task.spec.id or ""] - (created[task.spec.id or ""] + task.ends_after),
        )
        for task in tasks
    ]
    reasons = {reason: count for reason, count in engine.stats.poll_reasons.items() if count}
    return SystemResult(system.name, results, reasons, fake, time.perf_counter() - started)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[round(q * 1000) - 1]


def summarize(result: SystemResult, baseline_mean: float | None) -> dict[str, float]:
    """requests/task mean and p95, delay p50/p95/max, and the ratio to the baseline."""
    requests = [float(task.requests) for task in result.tasks]
    delays = [max(0.0, task.delay) for task in result.tasks]
    mean = statistics.fmean(requests)
    return {
        "requests_mean": mean,
        "requests_p95": _quantile(requests, 0.95),
        "delay_p50": _quantile(delays, 0.5),
        "delay_p95": _quantile(delays, 0.95),
        "delay_max": max(delays),
        "ratio_to_fixed": (baseline_mean / mean) if baseline_mean else float("nan"),
    }


def table(results: Sequence[SystemResult], tasks: int) -> str:
    """The markdown table of every system plus the limit."""
    lines = [
        "| system | requests/task mean | p95 | fixed 15 s ÷ this | delay p50 | p95 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        s = result.summary
        lines.append(
            f"| {result.name} | {s['requests_mean']:.1f} | {s['requests_p95']:.0f} | "
            f"{s['ratio_to_fixed']:.2f}× | {s['delay_p50']:.1f} s | "
            f"{s['delay_p95']:.1f} s | {s['delay_max']:.1f} s |"
        )
    baseline = next(r for r in results if r.name == BASELINE).summary["requests_mean"]
    lines.append(f"| limit (one request, no delay) | 1.0 | 1 | {baseline:.0f}× | 0 s | 0 s | 0 s |")
    return "\n".join(lines)


def by_kind(result: SystemResult) -> str:
    """Per curve kind, for one system: tasks, requests/task, delay p95 and max."""
    lines = [
        f"{result.name}, by curve kind:",
        "",
        "| kind | tasks | requests/task mean | delay p95 | max |",
        "|---|---|---|---|---|",
    ]
    kinds = Counter(task.kind for task in result.tasks)
    for kind in KINDS:
        chosen = [task for task in result.tasks if task.kind == kind]
        if not chosen:
            continue
        delays = [max(0.0, task.delay) for task in chosen]
        lines.append(
            f"| {kind} | {kinds[kind]} | {statistics.fmean(t.requests for t in chosen):.1f} | "
            f"{_quantile(delays, 0.95):.1f} s | {max(delays):.1f} s |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run every system on the same population, print the tables, return every number."""
    tasks = population(args.tasks, args.seed, failed_share=args.failed_share)
    results = []
    for system in systems(args.progress_interval):
        result = await run_system(system, tasks, args.seed)
        results.append(result)
        print(f"ran {system.name}: {result.real_seconds:.1f} s", file=sys.stderr)
    baseline = statistics.fmean(
        t.requests for t in next(r for r in results if r.name == BASELINE).tasks
    )
    for result in results:
        result.summary = summarize(result, baseline)
    kinds = Counter(task.kind for task in tasks)
    running = sorted(task.ends_after for task in tasks)
    print(
        f"{args.tasks} tasks, seed {args.seed}: "
        + ", ".join(f"{kind} {kinds[kind]}" for kind in KINDS if kinds[kind])
        + f"; waiting+running median {statistics.median(running) / 60:.1f} min, "
        f"p90 {_quantile(running, 0.9) / 3600:.2f} h, max {running[-1] / 3600:.2f} h\n"
    )
    print(table(results, args.tasks))
    print()
    print(by_kind(results[0]))
    print()
    print(f"poll reasons ({results[0].name}):", dict(sorted(results[0].reasons.items())))
    return {
        "tasks": args.tasks,
        "seed": args.seed,
        "progress_interval": args.progress_interval,
        "failed_share": args.failed_share,
        "population": [
            {"task_id": t.spec.id, "kind": t.kind, "ends_after": t.ends_after} for t in tasks
        ],
        "systems": [asdict(result) for result in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=120, help="population size (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="population seed (default 1)")
    parser.add_argument("--json", default="", help="write every number to this file")
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_POLICY.progress_interval,
        help="cbr-watcher's watch.progress_interval in seconds (default 120)",
    )
    parser.add_argument(
        "--failed-share",
        type=float,
        default=0.0,
        help="share of tasks that fail after progress froze (default 0)",
    )
    args = parser.parse_args(argv)
    configure_logging(level="error", stream=sys.stderr)
    payload = asyncio.run(main_async(args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
