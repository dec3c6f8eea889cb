"""The frontier: requests per task-hour and detection delay at 1 to 10,000 concurrently
watched tasks, cbr-watcher against the waiters people use, all on a fake clock.

    python bench/efficiency.py [--sizes 1,10,100,1000,10000] [--seed 1] [--json out.json]

Every system is the real `watcher.engine.engine.Engine` on a `FakeClock` against the CBR
simulator (in process; see `efficiency_world` for the transports), watching the same
population (see `efficiency_population`): N slots, each running one CBR-like backup after
another, so exactly N tasks are pending at every instant, of every age (log-normal running
time, median 20 min, 90th percentile 3 h; stalls, jumps, 5 % failures). The engine starts at
time 0 with the N tasks then pending and is handed every later task the instant it is created
(`Engine.add`: its first look at once, or with the refresh sweep on, the next sweep's). After
a warm-up, a measurement window; the runs go on for
a grace period after it, so every end inside the window can be seen.

* `cbr-watcher (defaults)` — `Policy()` with the refresh sweep on (`batch_refresh=True`);
* `fixed 15 s (botocore)` — botocore's most common waiter delay, one ShowOpLog per look;
* `Terraform StateChangeConf` — 0.2 s doubling, capped at 10 s;
* `Smithy waiter (2–120 s)` — uniform in [2 s, min(120 s, 2·2ⁿ)] (its policy's
  `poll_interval_max` is 120 s, so the engine's hard cap does not cut it to 15 s);
* the limit — one request per task, seen the instant it ends.

The baselines replace `watcher.engine.schedule.after_success` (and `on_grid`, cbr-watcher's own
rule) and run with the sweep off. The
request budget is out of the way (10⁶/s): this compares cadences. cbr-watcher also runs once in
each simulator dialect, and two "listing refused" scenarios run with a budget of 500/s.

Requests per task-hour = requests started inside the window ÷ task-hours pending inside it
(N × the window: the same denominator for every system). Detection delay = when the engine
published the terminal event − when the simulator ended the task, over the tasks that ended
inside the window (failed ones also on their own). See bench/README.md for the results.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import structlog
from efficiency_population import FAILED_SHARE, Population, population
from efficiency_world import AfterSuccess, Run, Setup, run

from watcher.engine.budget import WINDOW as BUDGET_WINDOW
from watcher.engine.schedule import Decision, Policy, PollState, Reason
from watcher.observe.logs import configure_logging
from watcher.sim import PRESETS, Dialect

DEFAULT_POLICY = Policy()
INTERVAL_MAX = DEFAULT_POLICY.interval_max
SIZES = (1, 10, 100, 1000, 10_000)
WINDOWS = {1: 259_200.0, 10: 43_200.0, 100: 7_200.0, 1000: 1_800.0, 10_000: 600.0}
"""Measurement window (seconds) per N: long enough for enough ends at small N, short
enough to run at large N. Sizes not listed get the window of the next larger listed size."""
WARMUP = 300.0
GRACE = 30.0
"""After the window, on top of the system's `poll_interval_max` (Smithy's is 120 s): an end
inside the window not seen by then counts as missed."""
DIALECTS = ("default", "page-count", "capped", "examples", "worst-case", "oldest-first")
BASELINE_SLOTS = 1000
REFUSED_SIZE = 10_000
REFUSED_RPS = 500.0
LAG_TARGET = 0.1


# ---- the cadences ------------------------------------------------------------------------


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
    """One way of polling."""

    name: str
    policy: Policy
    after_success: AfterSuccess | None = None
    batch_refresh: bool = False


CBR_WATCHER = "cbr-watcher (defaults)"
DEFAULT_RPS = 20.0
"""`watch.max_requests_per_second`'s default."""
BUDGET_DIALECTS = ("default", "capped")
BASELINE = "fixed 15 s (botocore)"
LIMIT = "limit (one request, seen at once)"
SYSTEMS = (
    System(CBR_WATCHER, DEFAULT_POLICY, None, batch_refresh=True),
    System(BASELINE, DEFAULT_POLICY, fixed_15s),
    System("Terraform StateChangeConf", DEFAULT_POLICY, terraform),
    System("Smithy waiter (2–120 s)", replace(DEFAULT_POLICY, interval_max=120.0), smithy),
)


# ---- summaries ---------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (inclusive method); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[round(q * 1000) - 1]


def _in(times: Sequence[float], t0: float, t1: float) -> int:
    return bisect.bisect_left(times, t1) - bisect.bisect_left(times, t0)


def most_in_one_second(times: Sequence[float]) -> int:
    """The most of `times` (ascending) in any half-open 1-second window."""
    most, low = 0, 0
    for high, at in enumerate(times):
        while times[low] <= at - 1.0:
            low += 1
        most = max(most, high - low + 1)
    return most


@dataclass
class Summary:
    """One run (or the limit) over the measurement window."""

    label: str
    size: int
    slots: int
    """Slots this run watched (fewer than `size` for a subsample)."""
    dialect: str
    task_hours: float
    shows: int
    pages: int
    ended: int
    ended_failed: int
    delays: list[float] = field(repr=False)
    failed_delays: list[float] = field(repr=False)
    missed: list[str]
    duplicates: list[str]
    wrong_event: list[str]
    late: int
    """Ends seen more than poll_interval_max (15 s) after they happened."""
    most_per_second: int
    lag: dict[str, dict[str, float]]
    reasons: dict[str, int]
    real_seconds: float
    watched: tuple[int, int] = (0, 0)
    """Fewest and most tasks the engine watched at a whole minute of the window."""
    note: str = ""

    @property
    def requests(self) -> int:
        """ShowOpLogs and list pages started in the window."""
        return self.shows + self.pages

    @property
    def per_task_hour(self) -> float:
        """Requests per task-hour."""
        return self.requests / self.task_hours

    def delay(self, q: float, *, failed: bool = False) -> float:
        """Detection delay quantile (1.0 = the maximum), all tasks or failed ones."""
        values = self.failed_delays if failed else self.delays
        if q >= 1.0:
            return max(values, default=float("nan"))
        return quantile(values, q)


def summarize(
    result: Run, *, label: str, size: int, slots: int, t0: float, t1: float, note: str = ""
) -> Summary:
    """Requests, delays and anomalies of one run over the window [t0, t1)."""
    ended = [task for task in result.tasks if t0 <= task.ends < t1]
    delays, failed_delays = [], []
    for task in ended:
        if task.seen is None:
            continue
        delay = max(0.0, task.seen - task.ends)
        delays.append(delay)
        if task.failed:
            failed_delays.append(delay)
    task_hours = sum(max(0.0, min(task.ends, t1) - max(task.created, t0)) for task in result.tasks)
    window = sorted(at for at in [*result.shows, *result.pages] if t0 <= at < t1)
    expected = {True: "task.failed", False: "task.succeeded"}
    counts = [count for at, count in result.active if t0 <= at <= t1]
    lag = {
        phase: {
            "count": len(samples),
            "p50": quantile(samples, 0.5),
            "p99": quantile(samples, 0.99),
            "max": max(samples, default=float("nan")),
        }
        for phase, samples in result.lag.items()
    }
    return Summary(
        label=label,
        size=size,
        slots=slots,
        dialect=str(result.setup["dialect"]),
        task_hours=task_hours / 3600,
        shows=_in(result.shows, t0, t1),
        pages=_in(result.pages, t0, t1),
        ended=len(ended),
        ended_failed=sum(task.failed for task in ended),
        delays=delays,
        failed_delays=failed_delays,
        missed=[task.task_id for task in result.tasks if task.ends < t1 and task.seen is None],
        duplicates=[task.task_id for task in result.tasks if len(task.terminal_events) > 1],
        wrong_event=[
            task.task_id
            for task in result.tasks
            if task.terminal_events and task.terminal_events[0] != expected[task.failed]
        ],
        late=sum(delay > INTERVAL_MAX + 1e-6 for delay in delays),
        most_per_second=most_in_one_second(window),
        lag=lag,
        reasons=result.reasons,
        real_seconds=result.real_seconds,
        watched=(min(counts, default=0), max(counts, default=0)),
        note=note,
    )


def limit_summary(pop: Population, size: int, t0: float, t1: float) -> Summary:
    """The limit: one request per task, at the instant it ends."""
    watched = pop.watched
    ended = [task for task in watched if t0 <= task.ends < t1]
    task_hours = sum(max(0.0, min(t.ends, t1) - max(t.created, t0)) for t in watched) / 3600
    return Summary(
        label=LIMIT,
        size=size,
        slots=pop.slots,
        dialect="-",
        task_hours=task_hours,
        shows=len(ended),
        pages=0,
        ended=len(ended),
        ended_failed=sum(task.failed for task in ended),
        delays=[0.0] * len(ended),
        failed_delays=[0.0] * sum(task.failed for task in ended),
        missed=[],
        duplicates=[],
        wrong_event=[],
        late=0,
        most_per_second=0,
        lag={},
        reasons={},
        real_seconds=0.0,
    )


# ---- tables ------------------------------------------------------------------------------


def _s(value: float) -> str:
    return "–" if value != value else f"{value:.1f}"


def _delays(summary: Summary, *, failed: bool) -> str:
    values = summary.failed_delays if failed else summary.delays
    if not values:
        return "–"
    return " / ".join(_s(summary.delay(q, failed=failed)) for q in (0.5, 0.95, 1.0))


def _ratio(baseline: Summary | None, summary: Summary) -> str:
    if baseline is None or not summary.requests:
        return "–"
    return f"{baseline.per_task_hour / summary.per_task_hour:.1f}×"


def _anomalies(summary: Summary) -> str:
    parts = [
        f"{len(summary.missed)} missed" if summary.missed else "",
        f"{len(summary.duplicates)} twice" if summary.duplicates else "",
        f"{len(summary.wrong_event)} wrong event" if summary.wrong_event else "",
    ]
    return ", ".join(part for part in parts if part) or "none"


def systems_table(rows: Sequence[Summary]) -> str:
    """Per N and system: requests per task-hour, the ratio, delays all and failed-only."""
    lines = [
        "| N | system | ended in window (failed) | requests / task-hour | fixed 15 s ÷ this |"
        " delay p50 / p95 / max (s) | failed: p50 / p95 / max (s) | > 15 s | missed, twice |"
        " note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sorted({row.size for row in rows}):
        group = [row for row in rows if row.size == size]
        baseline = next((row for row in group if row.label == BASELINE), None)
        for row in group:
            lines.append(
                f"| {size:,} | {row.label} | {row.ended:,} ({row.ended_failed}) |"
                f" {row.per_task_hour:.2f} | {_ratio(baseline, row)} |"
                f" {_delays(row, failed=False)} | {_delays(row, failed=True)} |"
                f" {row.late} | {_anomalies(row) if row.label != LIMIT else '–'} |"
                f" {row.note} |"
            )
    return "\n".join(lines)


def dialects_table(rows: Sequence[Summary], baselines: dict[int, Summary]) -> str:
    """cbr-watcher per N and dialect: cost split, delays, anomalies."""
    lines = [
        "| N | dialect | watched | requests / task-hour (pages + ShowOpLog) |"
        " fixed 15 s ÷ this | most in 1 s | delay p50 / p95 / max (s) |"
        " failed: p50 / p95 / max (s) | > 15 s | missed, twice |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(
        rows, key=lambda r: (r.size, DIALECTS.index(r.dialect) if r.dialect in DIALECTS else 99)
    ):
        split = f"{row.pages / row.task_hours:.2f} + {row.shows / row.task_hours:.2f}"
        lines.append(
            f"| {row.size:,} | {row.dialect} | {row.watched[0]:,}–{row.watched[1]:,} |"
            f" {row.per_task_hour:.2f} ({split}) |"
            f" {_ratio(baselines.get(row.size), row)} | {row.most_per_second} |"
            f" {_delays(row, failed=False)} | {_delays(row, failed=True)} | {row.late} |"
            f" {_anomalies(row)} |"
        )
    return "\n".join(lines)


def refused_table(rows: Sequence[Summary], rps: float) -> str:
    """The listing-refused scenarios: lag, the most requests in 1 s, delays."""
    lines = [
        "| scenario | requests / task-hour (pages + ShowOpLog) | lag p50 / p99 / max (ms) |"
        " most requests in 1 s"
        f" (budget {rps:g}) | delay p50 / p95 / max (s) | failed: p50 / p95 / max (s) |"
        " > 15 s | missed, twice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lags = "; ".join(
            f"{phase}: {lag['p50'] * 1000:.0f} / {lag['p99'] * 1000:.0f} / {lag['max'] * 1000:.0f}"
            for phase, lag in row.lag.items()
        )
        lines.append(
            f"| {row.label} | {row.per_task_hour:.2f} ({row.pages / row.task_hours:.2f} +"
            f" {row.shows / row.task_hours:.2f}) | {lags} | {row.most_per_second} |"
            f" {_delays(row, failed=False)} | {_delays(row, failed=True)} | {row.late} |"
            f" {_anomalies(row)} |"
        )
    return "\n".join(lines)


def _delay_targets(row: Summary, size: int) -> list[tuple[str, bool, str]]:
    """p95 ≤ 10 s (N ≥ 10) and nothing later than poll_interval_max, for one row."""
    found = []
    which = "" if row.label == CBR_WATCHER else f", {row.dialect}, budget {DEFAULT_RPS:g}/s"
    if size >= 10:
        p95, failed_p95 = row.delay(0.95), row.delay(0.95, failed=True)
        found.append(
            (
                f"N={size:,}{which}: p95 delay ≤ 10 s, failed included",
                p95 <= 10.0 and not failed_p95 > 10.0,
                f"p95 {_s(p95)} s, failed p95 {_s(failed_p95)} s",
            )
        )
    worst = row.delay(1.0)
    found.append(
        (
            f"N={size:,}{which}: no end seen later than {INTERVAL_MAX:g} s",
            not worst > INTERVAL_MAX + 1e-6,
            f"max {_s(worst)} s ({row.late} later)",
        )
    )
    return found


def targets(
    rows: Sequence[Summary],
    dialect_rows: Sequence[Summary],
    budget: Sequence[Summary],
    refused: Sequence[Summary],
    rps: float,
) -> list[tuple[str, bool, str]]:
    """(target, met, the numbers) for every target of issue 20 item 6 that was measured."""
    found: list[tuple[str, bool, str]] = []
    by = {(row.size, row.label): row for row in rows}
    sizes = sorted({row.size for row in rows})
    wanted_ratio = {10: 5.0, 100: 40.0}
    for size in sizes:
        ours, fixed = by.get((size, CBR_WATCHER)), by.get((size, BASELINE))
        if ours is None:
            continue
        found += _delay_targets(ours, size)
        for row in budget:
            if row.size == size:
                found += _delay_targets(row, size)
        if fixed is None:
            continue
        ratio = fixed.per_task_hour / ours.per_task_hour
        want = wanted_ratio.get(size, 200.0 if size >= 1000 else None)
        if want is not None:
            found.append(
                (
                    f"N={size:,}: ≥ {want:g}× fewer requests than fixed 15 s",
                    ratio >= want,
                    f"{ratio:.1f}× ({ours.per_task_hour:.2f} vs {fixed.per_task_hour:.2f})",
                )
            )
        if size == 1:
            pairs = [
                (q, failed, ours.delay(q, failed=failed), fixed.delay(q, failed=failed))
                for q in (0.5, 0.95, 1.0)
                for failed in (False, True)
            ]
            worse = [
                f"{'failed ' if failed else ''}{'max' if q == 1 else f'p{q * 100:g}'}"
                f" {_s(a)} > {_s(b)} s"
                for q, failed, a, b in pairs
                if a > b + 1e-9
            ]
            found.append(
                (
                    "N=1: no worse than fixed 15 s on requests and on delays (failed included)",
                    ours.per_task_hour <= fixed.per_task_hour and not worse,
                    f"{ours.per_task_hour:.2f} vs {fixed.per_task_hour:.2f} requests/task-hour;"
                    + (" worse: " + ", ".join(worse) if worse else " delays no worse"),
                )
            )
    for row in dialect_rows:
        default = by.get((row.size, CBR_WATCHER))
        same = default is not None and abs(row.delay(0.95) - default.delay(0.95)) <= 1.0
        found.append(
            (
                f"N={row.size:,}, dialect {row.dialect}: none missed, none twice, same delays",
                not row.missed and not row.duplicates and not row.wrong_event and same,
                f"{_anomalies(row)}; p95 {_s(row.delay(0.95))} s vs"
                f" {_s(default.delay(0.95)) if default else '–'} s default,"
                f" max {_s(row.delay(1.0))} s",
            )
        )
    for row in refused:
        lags = [lag["p99"] for lag in row.lag.values()]
        found.append(
            (
                f"{row.label}: p99 lag ≤ {LAG_TARGET * 1000:g} ms, never above the budget",
                all(lag <= LAG_TARGET for lag in lags) and row.most_per_second <= rps,
                "p99 "
                + ", ".join(f"{p}: {lag['p99'] * 1000:.0f} ms" for p, lag in row.lag.items())
                + f"; most in 1 s {row.most_per_second} (budget {rps:g})",
            )
        )
    return found


# ---- the runs ----------------------------------------------------------------------------


def window_for(size: int, windows: dict[int, float]) -> float:
    """The measurement window for `size` (the next larger listed size's for others)."""
    for listed in sorted(windows):
        if size <= listed:
            return windows[listed]
    return windows[max(windows)]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def budget_rows(args: argparse.Namespace, size: int, measure: float) -> list[Summary]:
    """cbr-watcher with every default, the request budget (20/s) too, in each of
    --budget-dialects. The window starts once the first looks of the N tasks pending at time 0
    are through (N at 20 per 1.1 s)."""
    warmup = args.warmup + size * BUDGET_WINDOW / DEFAULT_RPS
    t0, t1 = warmup, warmup + measure
    pop = population(size, args.seed, until=t1, failed_share=args.failed_share)
    rows = []
    for name in args.budget_dialects:
        config = Setup(
            policy=DEFAULT_POLICY,
            after_success=None,
            batch_refresh=True,
            dialect=PRESETS[name],
            warmup=warmup,
            measure=measure,
            grace=DEFAULT_POLICY.interval_max + args.grace,
            rps=DEFAULT_RPS,
            transport=args.transport,
            seed=args.seed,
        )
        result = await run(pop, config)
        label = f"N={size:,}, {name}, budget {DEFAULT_RPS:g}/s (window after {warmup / 60:.1f} min)"
        _say(f"  cbr-watcher, {name}, budget {DEFAULT_RPS:g}/s: {result.real_seconds:.1f} s")
        note = f"window after {warmup / 60:.1f} min"
        rows.append(summarize(result, label=label, size=size, slots=size, t0=t0, t1=t1, note=note))
    return rows


async def one_size(
    args: argparse.Namespace, size: int, measure: float
) -> tuple[list[Summary], list[Summary]]:
    """Every system at one N, and cbr-watcher in every dialect: (system rows, dialect rows);
    then the rows with the default budget."""
    t0, t1 = args.warmup, args.warmup + measure
    pop = population(size, args.seed, until=t1, failed_share=args.failed_share)
    _say(
        f"N={size:,}: window {measure / 60:g} min after {args.warmup / 60:g} min;"
        f" {len(pop.history):,} ended before, {len(pop.arrivals):,} arrive"
    )

    def setup(system: System, dialect: Dialect) -> Setup:
        return Setup(
            policy=system.policy,
            after_success=system.after_success,
            batch_refresh=system.batch_refresh,
            dialect=dialect,
            warmup=args.warmup,
            measure=measure,
            grace=system.policy.interval_max + args.grace,
            transport=args.transport,
            seed=args.seed,
        )

    rows: list[Summary] = []
    dialect_rows: list[Summary] = []
    for system in SYSTEMS:
        if args.systems and system.name not in args.systems:
            continue
        slots, note, watched = size, "", pop
        if system.after_success is not None and size > args.baseline_slots:
            slots = args.baseline_slots
            watched = population(slots, args.seed, until=t1, failed_share=args.failed_share)
            note = f"subsample: the first {slots:,} of the {size:,} slots"
        result = await run(watched, setup(system, PRESETS["default"]))
        rows.append(
            summarize(result, label=system.name, size=size, slots=slots, t0=t0, t1=t1, note=note)
        )
        if system.name == CBR_WATCHER:
            dialect_rows.append(rows[-1])
        _say(f"  {system.name}: {result.real_seconds:.1f} s")
    rows.append(limit_summary(pop, size, t0, t1))
    for name in args.dialects:
        if name == "default":
            continue
        result = await run(pop, setup(SYSTEMS[0], PRESETS[name]))
        dialect_rows.append(
            summarize(result, label=CBR_WATCHER, size=size, slots=size, t0=t0, t1=t1)
        )
        _say(f"  cbr-watcher, dialect {name}: {result.real_seconds:.1f} s")
    return rows, dialect_rows


async def refused(args: argparse.Namespace, size: int, measure: float) -> list[Summary]:
    """cbr-watcher at `size` with the budget at --refused-rps: ListOpLogs refused from the
    start (dialect no-list), and from the middle of the window on."""
    t0, t1 = args.warmup, args.warmup + measure
    pop = population(size, args.seed, until=t1, failed_share=args.failed_share)
    scenarios = [
        (f"N={size:,}, dialect no-list (refused from the start)", PRESETS["no-list"], None),
        (
            f"N={size:,}, refused from minute {(t0 + measure / 2) / 60:g} on",
            PRESETS["default"],
            t0 + measure / 2,
        ),
    ]
    rows = []
    for label, dialect, refuse_at in scenarios:
        config = Setup(
            policy=DEFAULT_POLICY,
            after_success=None,
            batch_refresh=True,
            dialect=dialect,
            warmup=args.warmup,
            measure=measure,
            grace=DEFAULT_POLICY.interval_max + args.grace,
            rps=args.refused_rps,
            refuse_at=refuse_at,
            transport=args.transport,
            seed=args.seed,
        )
        result = await run(pop, config)
        rows.append(summarize(result, label=label, size=size, slots=size, t0=t0, t1=t1))
        _say(f"  {label}: {result.real_seconds:.1f} s")
    return rows


def report(
    args: argparse.Namespace,
    rows: Sequence[Summary],
    dialect_rows: Sequence[Summary],
    budget: Sequence[Summary],
    refused_rows: Sequence[Summary],
    met: Sequence[tuple[str, bool, str]],
    seconds: float,
) -> None:
    """Print every table (markdown) and the poll reasons."""
    print(
        f"seed {args.seed}, failed share {args.failed_share:g}, transport {args.transport};"
        f" {seconds:.0f} s of real time\n"
    )
    print(systems_table(rows))
    print()
    baselines = {row.size: row for row in rows if row.label == BASELINE}
    print(dialects_table(dialect_rows, baselines))
    if budget:
        print()
        print(refused_table(budget, DEFAULT_RPS))
    if refused_rows:
        print()
        print(refused_table(refused_rows, args.refused_rps))
    print()
    print("| target | met | measured |\n|---|---|---|")
    for text, ok, numbers in met:
        print(f"| {text} | {'yes' if ok else '**no**'} | {numbers} |")
    print()
    everything = [*rows, *dialect_rows, *budget, *refused_rows]
    for row in {id(row): row for row in everything}.values():
        if row.reasons:
            print(
                f"poll reasons, N={row.size:,}, {row.label}, {row.dialect}:",
                dict(sorted(row.reasons.items())),
            )


async def frontier(args: argparse.Namespace) -> dict[str, Any]:
    """Every run the arguments ask for; prints the tables, returns every number."""
    windows = {**WINDOWS, **args.windows}
    rows: list[Summary] = []
    dialect_rows: list[Summary] = []
    started = time.perf_counter()
    budget: list[Summary] = []
    for size in args.sizes:
        more, more_dialects = await one_size(args, size, window_for(size, windows))
        rows += more
        dialect_rows += more_dialects
        budget += await budget_rows(args, size, window_for(size, windows))
    refused_rows = []
    if args.refused_size:
        size = args.refused_size
        refused_rows = await refused(args, size, window_for(size, windows))
    met = targets(
        rows,
        [r for r in dialect_rows if r.dialect != "default"],
        budget,
        refused_rows,
        args.refused_rps,
    )
    report(args, rows, dialect_rows, budget, refused_rows, met, time.perf_counter() - started)
    return {
        "seed": args.seed,
        "failed_share": args.failed_share,
        "transport": args.transport,
        "systems": [asdict(row) for row in rows],
        "dialects": [asdict(row) for row in dialect_rows],
        "budget": [asdict(row) for row in budget],
        "refused": [asdict(row) for row in refused_rows],
        "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in met],
    }


def _sizes(text: str) -> list[int]:
    return [int(part.replace("_", "").replace(",", "")) for part in text.split(",") if part]


def _windows(text: str) -> dict[int, float]:
    windows = {}
    for part in text.split(","):
        if part:
            size, seconds = part.split(":")
            windows[int(size)] = float(seconds)
    return windows


def main(argv: Sequence[str] | None = None, *, cache_loggers: bool = False) -> int:
    """Command line entry point (`cache_loggers`: as a program, not from a test)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(SIZES),
        help="concurrently watched tasks, comma-separated (default 1,10,100,1000,10000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="population seed (default 1)")
    parser.add_argument(
        "--failed-share",
        type=float,
        default=FAILED_SHARE,
        help="share of tasks that fail (default 0.05)",
    )
    parser.add_argument(
        "--dialects",
        type=lambda text: text.split(","),
        default=list(DIALECTS),
        help="simulator dialects cbr-watcher runs in (default: " + ",".join(DIALECTS) + ")",
    )
    parser.add_argument(
        "--windows",
        type=_windows,
        default={},
        help="measurement window per N, e.g. 1000:1800,10000:600 (seconds)",
    )
    parser.add_argument(
        "--warmup", type=float, default=WARMUP, help="seconds before the window (default 600)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE,
        help="seconds after the window on top of each system's poll_interval_max (default 30)",
    )
    parser.add_argument(
        "--baseline-slots",
        type=int,
        default=BASELINE_SLOTS,
        help="above this N the baselines watch only the first this-many slots (default 1000)",
    )
    parser.add_argument(
        "--refused-size",
        type=int,
        default=REFUSED_SIZE,
        help="N of the listing-refused scenarios; 0 skips them (default 10000)",
    )
    parser.add_argument(
        "--refused-rps",
        type=float,
        default=REFUSED_RPS,
        help="their max_requests_per_second (default 500)",
    )
    parser.add_argument(
        "--budget-dialects",
        type=lambda text: [name for name in text.split(",") if name],
        default=list(BUDGET_DIALECTS),
        help=f"dialects cbr-watcher also runs in with the default budget ({DEFAULT_RPS:g}/s)"
        " at every N; empty skips them (default: " + ",".join(BUDGET_DIALECTS) + ")",
    )
    parser.add_argument(
        "--transport",
        choices=("direct", "socket"),
        default="direct",
        help="in-process answers (default) or CbrClient over a socket",
    )
    parser.add_argument(
        "--systems",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        help="run only these systems, by name (default: all; the baseline gives the ratios)",
    )
    parser.add_argument("--json", default="", help="write every number to this file")
    args = parser.parse_args(argv)
    unknown = [name for name in [*args.dialects, *args.budget_dialects] if name not in PRESETS]
    if unknown:
        parser.error(f"unknown dialect(s): {', '.join(unknown)}")
    configure_logging(level="error", stream=sys.stderr)
    if cache_loggers:
        # Nothing is logged at "error" here; caching the bound loggers only saves the work of
        # filtering out the engine's debug lines (on a fake clock, no figure depends on it).
        # Only when run as a program: cached loggers would outlive a test that calls `main`.
        structlog.configure(cache_logger_on_first_use=True)
    payload = asyncio.run(frontier(args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(cache_loggers=True))
