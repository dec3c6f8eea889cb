"""Batched refresh against one ShowOpLog per task: requests per task-hour and detection delay.

    python bench/batch_bench.py --sizes 10,100,1000 [--speed 30] [--seed 1] [--json out.json]

For each N, the simulator runs in **its own process** (this file, `serve-sim` mode) with N
backup tasks whose running phase is one simulated hour. They are already part-way through when
the run starts and their ends are spread evenly across the hour: task k (k = 0 … N−1) was
created (k + ½)/N of an hour before the start, so one ends every 3600/N simulated seconds.
Both processes run `ScaledClock(speed, origin=…)` with the same origin, so they share one
scaled timeline and the simulator's `ended_at` and the engine's `occurred_at` compare directly.

Each N runs twice, with the same simulator population:

* **batched**: `Engine(batch_refresh=True)`, which refreshes the watched tasks with ListOpLogs
  pages whenever that costs fewer requests than the ShowOpLogs due soon;
* **baseline**: `Engine(batch_refresh=False)`, one ShowOpLog per task at the same schedule.

Both start the same way: one ListOpLogs listing of the running tasks (as discovery would), each
task handed to `Engine.discovered`. Then the engine runs until every task has ended (or, for a
shortened run, until the window given by `--short-baseline` plus a grace). Counted on the wire
(`CbrClient(observe=...)`, checked against the simulator's `/_sim/stats`): ShowOpLogs and list
pages, the seeding listing included. Task-hours: for each task, the simulated time from the
start until it ended (or the run stopped). Detection delay: the `occurred_at` of the engine's
terminal event minus the simulator's `ended_at`.

The budget is set out of the way (`max_requests_per_second` 1,000,000 per simulated second,
`max_concurrency` 64), so only the schedule decides when a request goes out. The speed is
chosen per N so that the real request rate stays within what one core serves.
See bench/README.md ("Batched refresh") for results.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import LIST, SHOW, CbrClient
from watcher.cbr.models import OperationLog, OpLogPage
from watcher.clock import ScaledClock
from watcher.engine.engine import Engine
from watcher.engine.events import TERMINAL_EVENT_FOR_STATUS, TaskEvent
from watcher.engine.schedule import Policy
from watcher.observe.logs import configure_logging
from watcher.sim import DEFAULT_PROJECT_ID, DEFAULT_TOKENS, SimTaskSpec, Simulator

HOUR = 3600.0
MAX_CONCURRENCY = 64
MAX_REQUESTS_PER_SECOND = 1_000_000.0
"""Per simulated second: never reached, so the budget does not throttle either mode."""
DEFAULT_SPEEDS = {10: (200.0, 200.0), 100: (100.0, 100.0), 1000: (30.0, 30.0), 10000: (10.0, 5.0)}
"""Simulated seconds per real second by N, (batched, baseline); another N takes the speeds
of the nearest N below it. The 10,000 baseline sends ~1,000 requests per simulated second at
its start, so it runs slower to stay within one core."""
DEFAULT_SHORT_BASELINE = "10000:900"
"""Baseline runs with at least this many tasks cover only this many simulated seconds."""
GRACE = 120.0
"""Simulated seconds a shortened run goes on after its window, so its ends can be seen."""
SETUP_TIMEOUT = 120.0
"""Real seconds the simulator process may take to create its tasks and start listening."""
REAL_REQUEST_TIMEOUT = 30.0
"""The client's request timeout, in real seconds (it runs on the scaled clock)."""
TERMINAL_EVENTS = frozenset(TERMINAL_EVENT_FOR_STATUS.values())
MODES = ("batched", "baseline")
SIM_SCRIPT = str(Path(__file__).resolve())
"""This file: run again as `serve-sim`, it is the simulator process."""


# ---- the simulator process ---------------------------------------------------------------


class LateAnchoredClock:
    """The simulator's clock: a fixed wall time while tasks are created, then a ScaledClock.

    Creating tasks at `setup_wall` lets them be backdated (already part-way through). Once the
    bench sends the origin, every reading comes from `ScaledClock(speed, origin=...)`.
    """

    def __init__(self, setup_wall: float) -> None:
        self.setup_wall = setup_wall
        self.scaled: ScaledClock | None = None

    def monotonic(self) -> float:
        """Scaled monotonic seconds once anchored, else 0."""
        return self.scaled.monotonic() if self.scaled is not None else 0.0

    def wall(self) -> float:
        """Scaled epoch seconds once anchored, else `setup_wall`."""
        return self.scaled.wall() if self.scaled is not None else self.setup_wall

    async def sleep(self, seconds: float) -> None:
        """Sleep on the scaled clock (real seconds before it is anchored)."""
        await (self.scaled.sleep(seconds) if self.scaled else asyncio.sleep(max(0.0, seconds)))

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """A timeout on the scaled clock (real seconds before it is anchored)."""
        return self.scaled.timeout(seconds) if self.scaled else asyncio.timeout(seconds)


def backdated_simulator(tasks: int, start_wall: float, seed: int) -> Simulator:
    """A simulator holding `tasks` one-hour backups whose ends are spread over the hour after
    `start_wall` (task k was created (k + ½)/N of an hour before it)."""
    clock = LateAnchoredClock(start_wall)
    sim = Simulator(clock, tokens=DEFAULT_TOKENS, seed=seed)
    for k in reversed(range(tasks)):  # oldest first: each new task is the newest
        clock.setup_wall = start_wall - HOUR * (k + 0.5) / tasks
        # style "seed": timestamps to the millisecond, so delays are not rounded to seconds
        sim.add_task(SimTaskSpec(outcome="success", waiting=0.0, running=HOUR, style="seed"))
    clock.setup_wall = start_wall
    return sim


async def serve_simulator(tasks: int, start_wall: float, speed: float, seed: int) -> None:
    """Serve a backdated simulator; anchor its clock at the origin read from stdin.

    Protocol on stdout: `endpoint=URL` once listening, `anchored` once the origin is set.
    Stdin: one line `origin MONOTONIC`; end of input (the bench went away) stops the server.
    """
    sim = backdated_simulator(tasks, start_wall, seed)
    clock = sim.clock
    assert isinstance(clock, LateAnchoredClock)
    loop = asyncio.get_running_loop()
    async with sim.running("127.0.0.1", 0) as base_url:
        print(f"endpoint={base_url}", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.startswith("origin "):
            return
        clock.scaled = ScaledClock(speed, origin=(float(line.split()[1]), start_wall))
        print("anchored", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes stdin


class SimProcess:
    """The simulator subprocess: started, anchored, and stopped in every outcome."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.endpoint = ""

    @classmethod
    async def start(
        cls, workdir: Path, tasks: int, start_wall: float, speed: float, seed: int
    ) -> SimProcess:
        """Start `serve-sim` and wait until it listens."""
        stderr = workdir / f"sim-{tasks}.log"
        with stderr.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                SIM_SCRIPT,
                "serve-sim",
                f"--tasks={tasks}",
                f"--start-wall={start_wall!r}",
                f"--speed={speed!r}",
                f"--seed={seed}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
            )
        sim = cls(proc, stderr)
        try:
            line = await sim._line("endpoint=")
            sim.endpoint = line.removeprefix("endpoint=")
        except BaseException:
            await sim.stop()
            raise
        return sim

    async def anchor(self, origin_monotonic: float) -> None:
        """Send the shared origin; return once the simulator's clock runs on it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"origin {origin_monotonic!r}\n".encode())
        await self.proc.stdin.drain()
        await self._line("anchored")

    async def _line(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), SETUP_TIMEOUT)
        line = raw.decode(errors="replace").strip()
        if not line.startswith(prefix):
            tail = self.stderr.read_text(errors="replace")[-1500:].strip()
            raise RuntimeError(f"simulator did not answer {prefix!r}: {line!r} {tail}")
        return line

    def cpu_seconds(self) -> float:
        """utime + stime of the simulator process so far."""
        text = Path(f"/proc/{self.proc.pid}/stat").read_text(errors="replace")
        rest = text[text.rindex(")") + 2 :].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        """Close its stdin (it exits), SIGTERM after 3 s, SIGKILL after 3 more."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        for signal_it in (None, self.proc.terminate, self.proc.kill):
            if self.proc.returncode is not None:
                return
            if signal_it is not None:
                signal_it()
            try:
                await asyncio.wait_for(self.proc.wait(), 3.0)
            except TimeoutError:
                continue


# ---- measuring ---------------------------------------------------------------------------


@dataclass
class ListCall:
    """One ListOpLogs page the engine asked for."""

    at: float
    offset: int
    entries: int
    count: int | None


class CountingClient:
    """The CbrClient the engine sees, with every list page it reads written down."""

    def __init__(self, client: CbrClient, clock: ScaledClock) -> None:
        self._client = client
        self._clock = clock
        self.list_calls: list[ListCall] = []

    async def show_op_log(self, task_id: str) -> OperationLog:
        """ShowOpLog, unchanged."""
        return await self._client.show_op_log(task_id)

    async def reload_credentials(self) -> None:
        """Unchanged."""
        await self._client.reload_credentials()

    async def list_op_logs(self, **kwargs: Any) -> OpLogPage:
        """ListOpLogs, recording offset, entries and count of each page."""
        page = await self._client.list_op_logs(**kwargs)
        offset = int(kwargs.get("offset") or 0)
        self.list_calls.append(
            ListCall(self._clock.monotonic(), offset, len(page.operation_logs), page.count)
        )
        return page


class WireCounter:
    """`CbrClient(observe=...)`: requests by operation, and when each went out (real time)."""

    def __init__(self) -> None:
        self.by_operation: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.real_times: list[float] = []

    def observe(self, operation: str, label: str, duration: float) -> None:
        """Count one answered (or failed) request."""
        self.by_operation[operation] += 1
        self.labels[label] += 1
        self.real_times.append(time.monotonic())


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile; 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class RunResult:
    """One mode at one N. Times in simulated seconds unless named otherwise."""

    mode: str
    tasks: int
    speed: float
    window: float
    """Simulated seconds the run covered (from the start to the engine stopping)."""
    shortened: bool
    task_hours: float = 0.0
    show_requests: int = 0
    list_pages: int = 0
    seed_pages: int = 0
    sim_requests: int = 0
    """The simulator's own count of API requests (a cross-check of the two above)."""
    requests_per_task_hour: float = 0.0
    ended: int = 0
    """Tasks that ended within the window."""
    detected: int = 0
    """Of those, the ones whose end the engine reported."""
    delay_p50: float = 0.0
    delay_p95: float = 0.0
    delay_max: float = 0.0
    real_seconds: float = 0.0
    real_requests_per_second: float = 0.0
    busiest_real_second: int = 0
    watcher_cpu_share: float = 0.0
    sim_cpu_share: float = 0.0
    rounds: int = 0
    """Listings started by the engine (list pages at offset 0, the seeding one excluded)."""
    pages_per_round: float = 0.0
    entries_per_page: float = 0.0
    list_refreshed: int = 0
    rounds_by_gap: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class Detection:
    """Terminal events seen by the engine: task → delay (simulated seconds)."""

    delays: dict[str, float] = field(default_factory=dict)

    async def __call__(self, event: TaskEvent) -> None:
        if event.type not in TERMINAL_EVENTS:
            return
        operation_log = event.operation_log
        if operation_log is None or operation_log.ended_at is None:
            return
        self.delays[event.task_id] = event.occurred_at - operation_log.ended_at.timestamp()


async def seed(engine: Engine, client: CbrClient) -> int:
    """List the running tasks (limit 1000, by offset) and hand each to the engine, as
    discovery does; returns the pages read."""
    offset, pages = 0, 0
    while True:
        page = await client.list_op_logs(status="running", limit=1000, offset=offset)
        pages += 1
        for operation_log in page.operation_logs:
            await engine.discovered(operation_log, {})
        offset += len(page.operation_logs)
        if len(page.operation_logs) < 1000 or (page.count is not None and offset >= page.count):
            return pages


async def run_mode(
    workdir: Path,
    mode: str,
    tasks: int,
    speed: float,
    window: float | None,
    rng_seed: int,
    round_spacing: float | None = None,
) -> RunResult:
    """One engine run against a fresh simulator process; `window` None = until all ended."""
    start_wall = float(int(time.time()))
    sim = await SimProcess.start(workdir, tasks, start_wall, speed, rng_seed)
    try:
        origin = time.monotonic()
        await sim.anchor(origin)
        clock = ScaledClock(speed, origin=(origin, start_wall))
        return await _measure(sim, clock, mode, tasks, window, rng_seed, round_spacing)
    finally:
        await sim.stop()


async def _measure(
    sim: SimProcess,
    clock: ScaledClock,
    mode: str,
    tasks: int,
    window: float | None,
    rng_seed: int,
    round_spacing: float | None,  # the experiment was retired with the refresh sweep
) -> RunResult:
    start_wall = clock.origin[1]
    wire = WireCounter()
    detection = Detection()
    real_cpu0, sim_cpu0, real0 = _self_cpu(), sim.cpu_seconds(), time.monotonic()
    client = CbrClient(
        endpoint=sim.endpoint,
        project_id=DEFAULT_PROJECT_ID,
        auth=TokenAuthenticator(token=DEFAULT_TOKENS[0]),
        clock=clock,
        request_timeout=REAL_REQUEST_TIMEOUT * clock.speed,
        max_connections=MAX_CONCURRENCY,
        observe=wire.observe,
    )
    async with client:
        counting = CountingClient(client, clock)
        engine = Engine(
            client=counting,
            clock=clock,
            policy=Policy(),
            max_concurrency=MAX_CONCURRENCY,
            max_requests_per_second=MAX_REQUESTS_PER_SECOND,
            on_event=detection,
            exit_when_done=True,
            retention=10 * HOUR,
            rng=random.Random(rng_seed),
            batch_refresh=mode == "batched",
        )
        seed_pages = await seed(engine, client)
        runner = asyncio.create_task(engine.run(), name="engine")
        limit = HOUR + 600.0 if window is None else window + GRACE
        await asyncio.wait({runner}, timeout=(start_wall + limit - clock.wall()) / clock.speed)
        engine.stop()
        await runner
        stop_wall = clock.wall()
        sim_requests = await _sim_request_count(sim.endpoint)
    real_seconds = time.monotonic() - real0
    ends = [start_wall + HOUR - HOUR * (k + 0.5) / tasks for k in range(tasks)]
    cutoff = stop_wall if window is None else start_wall + window
    ended_in_window = sum(end <= cutoff for end in ends)
    delays = list(detection.delays.values())
    result = RunResult(
        mode=mode,
        tasks=tasks,
        speed=clock.speed,
        window=round(stop_wall - start_wall, 1),
        shortened=window is not None,
        task_hours=sum(max(0.0, min(end, stop_wall) - start_wall) for end in ends) / HOUR,
        show_requests=wire.by_operation[SHOW],
        list_pages=wire.by_operation[LIST],
        seed_pages=seed_pages,
        sim_requests=sim_requests,
        ended=ended_in_window,
        detected=len(delays),
        delay_p50=round(quantile(delays, 0.5), 2),
        delay_p95=round(quantile(delays, 0.95), 2),
        delay_max=round(max(delays, default=0.0), 2),
        real_seconds=round(real_seconds, 1),
        list_refreshed=engine.stats.list_refreshed,
        labels=dict(wire.labels),
    )
    total = result.show_requests + result.list_pages
    result.requests_per_task_hour = round(total / result.task_hours, 3)
    result.real_requests_per_second = round(total / real_seconds, 1)
    per_second = Counter(int(t - real0) for t in wire.real_times)
    result.busiest_real_second = max(per_second.values(), default=0)
    result.watcher_cpu_share = round((_self_cpu() - real_cpu0) / real_seconds, 2)
    result.sim_cpu_share = round((sim.cpu_seconds() - sim_cpu0) / real_seconds, 2)
    _describe_rounds(result, counting.list_calls)
    return result


def _describe_rounds(result: RunResult, calls: Sequence[ListCall]) -> None:
    starts = [call.at for call in calls if call.offset == 0]
    result.rounds = len(starts)
    if calls:
        result.pages_per_round = round(len(calls) / max(1, len(starts)), 2)
        result.entries_per_page = round(sum(c.entries for c in calls) / len(calls), 1)
    gaps: Counter[str] = Counter(_gap_bucket(b - a) for a, b in itertools.pairwise(starts))
    result.rounds_by_gap = dict(gaps)


def _gap_bucket(gap: float) -> str:
    for bound in (10, 30, 60):
        if gap < bound:
            return f"<{bound}s"
    return ">=60s"


async def _sim_request_count(endpoint: str) -> int:
    """The simulator's count of API requests it received (GET /_sim/stats)."""
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/_sim/stats") as resp:
        body: Mapping[str, Any] = await resp.json()
    return int(body["requests"])


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- reporting ---------------------------------------------------------------------------


def speed_for(tasks: int, mode: str, given: float | None) -> float:
    """`--speed` if given, else the default for `mode` at the nearest N at or below `tasks`."""
    if given is not None:
        return given
    sizes = [n for n in sorted(DEFAULT_SPEEDS) if n <= tasks] or [min(DEFAULT_SPEEDS)]
    return DEFAULT_SPEEDS[sizes[-1]][MODES.index(mode)]


def markdown_table(results: Sequence[RunResult]) -> str:
    """One row per N and mode, plus the ratio row per N."""
    lines = [
        "| N | mode | speed | simulated window | task-hours | ShowOpLog | list pages (seed) "
        "| requests / task-hour | delay p50 / p95 / max (s) | seen / ended | real req/s (peak) "
        "| rounds, pages/round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_n: dict[int, dict[str, RunResult]] = {}
    for r in results:
        by_n.setdefault(r.tasks, {})[r.mode] = r
    for n, modes in by_n.items():
        for r in modes.values():
            window = f"{r.window:.0f} s" + (" **(shortened)**" if r.shortened else "")
            rounds = f"{r.rounds}, {r.pages_per_round:g}" if r.mode == "batched" else "–"
            lines.append(
                f"| {n:,} | {r.mode} | {r.speed:g}× | {window} | {r.task_hours:,.1f} "
                f"| {r.show_requests:,} | {r.list_pages:,} ({r.seed_pages}) "
                f"| **{r.requests_per_task_hour:,.2f}** "
                f"| {r.delay_p50:.1f} / {r.delay_p95:.1f} / {r.delay_max:.1f} "
                f"| {r.detected:,} / {r.ended:,} | {r.real_requests_per_second:,.0f} "
                f"({r.busiest_real_second:,}) | {rounds} |"
            )
        if set(modes) == set(MODES):
            batched, baseline = modes["batched"], modes["baseline"]
            ratio = baseline.requests_per_task_hour / max(batched.requests_per_task_hour, 1e-9)
            p95 = "no worse" if batched.delay_p95 <= baseline.delay_p95 else "WORSE"
            lines.append(
                f"| {n:,} | **ratio** | | | | | | **{ratio:,.1f}× fewer** "
                f"| p95 {batched.delay_p95:.1f} vs {baseline.delay_p95:.1f} s: {p95} | | | |"
            )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    """ "10,100,1000" → [10, 100, 1000] (underscores and thousands commas are not allowed)."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"expected numbers separated by commas: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not sizes or any(n < 1 or n > 100_000 for n in sizes):
        raise argparse.ArgumentTypeError("every size must be between 1 and 100000")
    return sizes


def parse_short(text: str) -> tuple[int, float] | None:
    """ "10000:900" → (10000, 900.0); "none" → None."""
    if text.lower() in ("none", "0", ""):
        return None
    try:
        n, seconds = text.split(":")
        parsed = int(n), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:SECONDS or 'none', not {text!r}") from None
    if parsed[0] < 1 or not 60 <= parsed[1] <= HOUR:
        raise argparse.ArgumentTypeError("N must be positive and SECONDS 60–3600")
    return parsed


async def run_all(args: argparse.Namespace) -> list[RunResult]:
    """Every N, batched first then baseline; prints a line as each run finishes."""
    results: list[RunResult] = []
    short: tuple[int, float] | None = args.short_baseline
    with tempfile.TemporaryDirectory(prefix="cbr-batch-bench-") as tmp:
        for n in args.sizes:
            for mode in MODES:
                speed = speed_for(n, mode, args.speed)
                window = short[1] if short and mode == "baseline" and n >= short[0] else None
                r = await run_mode(Path(tmp), mode, n, speed, window, args.seed, args.round_spacing)
                print(
                    f"# N={n} {mode}: {r.requests_per_task_hour:.2f} req/task-hour, "
                    f"p95 {r.delay_p95:.1f} s, {r.real_seconds:.0f} s real, "
                    f"{r.real_requests_per_second:.0f} req/s (cpu {r.watcher_cpu_share:.0%} + "
                    f"sim {r.sim_cpu_share:.0%}), sim counted {r.sim_requests}",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, as `serve-sim`, be its simulator process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-sim"]:
        serve = argparse.ArgumentParser(prog="batch_bench.py serve-sim")
        serve.add_argument("--tasks", type=int, required=True)
        serve.add_argument("--start-wall", type=float, required=True)
        serve.add_argument("--speed", type=float, required=True)
        serve.add_argument("--seed", type=int, default=1)
        sim_args = serve.parse_args(argv[1:])
        asyncio.run(
            serve_simulator(sim_args.tasks, sim_args.start_wall, sim_args.speed, sim_args.seed)
        )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[10, 100, 1000], help="N list")
    parser.add_argument("--speed", type=float, help="simulated s per real s (default: by N)")
    parser.add_argument("--seed", type=int, default=1, help="simulator and jitter seed")
    parser.add_argument(
        "--short-baseline",
        type=parse_short,
        default=parse_short(DEFAULT_SHORT_BASELINE),
        help="N:SECONDS: baseline runs with ≥ N tasks cover only SECONDS simulated "
        f"(default {DEFAULT_SHORT_BASELINE}; 'none' for the full hour)",
    )
    parser.add_argument(
        "--round-spacing",
        type=float,
        help="experiment: listings at least this many simulated s apart (default: the "
        "engine's own, poll_interval_min)",
    )
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    if args.speed is not None and not 0 < args.speed <= 1000:
        parser.error("--speed must be in (0, 1000]")
    if args.round_spacing is not None and not 0 < args.round_spacing <= 600:
        parser.error("--round-spacing must be in (0, 600] simulated seconds")
    configure_logging(level="warning", stream=sys.stderr)
    try:
        results = asyncio.run(run_all(args))
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
