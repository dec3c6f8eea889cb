"""Real-time benchmark of the watch engine against the CBR simulator in a separate process.

    python bench/engine_bench.py --tasks 1000 --duration 60 --rps 200 --concurrency 64

Starts `python -m watcher.sim` on a free port with an empty scenario, creates `--tasks` tasks
through its control API (all of them run far longer than the measurement window, so every one
of them is polled for the whole run), then runs `watcher.engine.engine.Engine` in this
process on the real clock for `--duration` seconds and reports what it achieved: polls per
second, CPU seconds
per 1,000 polls (of this process and of the simulator), peak RSS, and the scheduling lag, both
as the engine measures it (due time → the scheduler starts the poll) and on the wire (due
time → the request headers were written to the socket, from an aiohttp trace hook).

See bench/README.md for the configurations and the results on the reference machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from watcher import __version__
from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.clock import RealClock
from watcher.engine.budget import RequestBudget
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.observe.logs import configure_logging
from watcher.sim.simulator import DEFAULT_PROJECT_ID, DEFAULT_TOKENS

SIM_START_TIMEOUT = 20.0
"""Seconds to wait for the simulator to print its address and answer /_sim/stats."""
CREATE_CHUNK = 2000
"""Task specs per control-API request (aiohttp's default request body limit is 1 MiB)."""
WARM_UP = 2.0
"""Seconds at the start of the window when the client is still opening connections."""
SAMPLE_EVERY = 1.0
"""Seconds between samples of the engine's backlog and in-flight count."""
_READY_LINE = re.compile(r"endpoint=(?P<endpoint>\S+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- the simulator process ----------------------------------------------------------------


@dataclass
class SimProcess:
    """The simulator subprocess and where it listens."""

    proc: asyncio.subprocess.Process
    endpoint: str
    stderr_path: Path


async def start_simulator(workdir: Path, latency: float, *, cwd: Path | None = None) -> SimProcess:
    """Start `python -m watcher.sim` on 127.0.0.1:0 with no tasks; return once it answers.

    With `cwd`, the simulator runs from that source tree (e.g. a worktree of the parent)."""
    scenario = workdir / "bench-scenario.toml"
    text = "# cbr-watcher engine benchmark: the bench adds tasks via /_sim/tasks\nseed = 1\n"
    if latency > 0:
        text += f"[faults]\nlatency = {latency!r}\n"
    scenario.write_text(text, encoding="utf-8")
    stderr_path = workdir / "sim-stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher.sim",
            "--listen",
            "127.0.0.1:0",  # the kernel picks a free port; the simulator prints it
            "--scenario",
            str(scenario),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
        )
    sim = SimProcess(proc, "", stderr_path)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), SIM_START_TIMEOUT)
        match = _READY_LINE.search(line.decode(errors="replace"))
        if match is None:
            raise RuntimeError(f"simulator did not start: {_tail(stderr_path)}")
        sim.endpoint = match["endpoint"]
        await _wait_until_answering(sim.endpoint)
    except BaseException:
        await stop_simulator(sim)
        raise
    return sim


async def _wait_until_answering(endpoint: str) -> None:
    deadline = time.monotonic() + SIM_START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{endpoint}/_sim/stats") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator at {endpoint} does not answer /_sim/stats")
            await asyncio.sleep(0.05)


async def stop_simulator(sim: SimProcess) -> None:
    """SIGTERM the simulator (it shuts down cleanly), SIGKILL it if it hangs."""
    if sim.proc.returncode is not None:
        return
    sim.proc.terminate()
    try:
        await asyncio.wait_for(sim.proc.wait(), 5.0)
    except TimeoutError:
        sim.proc.kill()
        await sim.proc.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:].strip() or "(no stderr)"
    except OSError:
        return "(no stderr)"


async def create_sim_tasks(
    endpoint: str, count: int, *, waiting: float, running: float
) -> list[str]:
    """Create `count` tasks that end with success after `waiting` + `running` seconds."""
    spec = {"outcome": "success", "waiting": waiting, "running": running}
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, CREATE_CHUNK):
            batch = [spec] * min(CREATE_CHUNK, count - start)
            async with session.post(f"{endpoint}/_sim/tasks", json=batch) as response:
                body = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"POST /_sim/tasks: HTTP {response.status}: {body}")
                ids.extend(str(task_id) for task_id in body["ids"])
    return ids


async def sim_stats(endpoint: str) -> dict[str, Any]:
    """GET /_sim/stats: total requests and counts per HTTP status."""
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/_sim/stats") as resp:
        data: dict[str, Any] = await resp.json()
        return data


# ---- process accounting (Linux /proc) ------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of another process, in seconds, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    # Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    rest = text[text.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _CLOCK_TICKS


def proc_memory_kib(pid: int | str = "self") -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB from /proc/<pid>/status; (0, 0) if unavailable."""
    rss = hwm = 0
    try:
        lines = Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- measuring -----------------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of already sorted values; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The largest number of `times` (sorted) inside any half-open window of `window` seconds."""
    best = 0
    low = 0
    for high, now in enumerate(times):
        while times[low] <= now - window:
            low += 1
        best = max(best, high - low + 1)
    return best


@dataclass
class LagSummary:
    """Percentiles of a lag sample, in milliseconds."""

    count: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LagSummary:
        """Summarise lag values given in seconds."""
        ordered = sorted(seconds)
        if not ordered:
            return cls()
        return cls(
            count=len(ordered),
            p50_ms=round(quantile(ordered, 0.50) * 1000, 2),
            p99_ms=round(quantile(ordered, 0.99) * 1000, 2),
            max_ms=round(ordered[-1] * 1000, 2),
        )

    def text(self) -> str:
        """One line: p50 / p99 / max (n)."""
        return (
            f"p50 {self.p50_ms:9.1f} ms   p99 {self.p99_ms:9.1f} ms   "
            f"max {self.max_ms:9.1f} ms   (n={self.count})"
        )


class RecordingBudget(RequestBudget):
    """The engine's budget, unchanged, plus the time of every start it granted."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        self.granted: list[float] = []

    def try_acquire(self, now: float) -> bool:
        """Record a request start at `now` if the budget allows it (and remember `now`)."""
        ok = super().try_acquire(now)
        if ok:
            self.granted.append(now)
        return ok


def per_second_counts(times: Sequence[float], t0: float, t1: float) -> list[int]:
    """How many of `times` fall in each whole second [t0 + k, t0 + k + 1) before t1."""
    counts = [0] * int(t1 - t0)
    for when in times:
        slot = int(when - t0)
        if 0 <= slot < len(counts):
            counts[slot] += 1
    return counts


class WireRecorder:
    """aiohttp trace hook and client observer: when each request went out, and how it ended.

    The trace hook maps the request URL back to its task and reads the task's `due` (the engine
    reschedules only after the answer, so during the request it is the due time of this poll).
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.sent: list[float] = []
        self.first_lag: list[float] = []
        """due → headers sent, for each task's first poll (all due at once when added)."""
        self.repoll_lag: list[float] = []
        """due → headers sent, for every later poll."""
        self.lag_at: list[tuple[float, float]] = []
        """(sent time, due → headers sent) for every request."""
        self.latency_ok: list[float] = []
        self.labels: Counter[str] = Counter()
        self._seen: set[str] = set()

    def trace_config(self) -> aiohttp.TraceConfig:
        """A TraceConfig that records request-sent times into this recorder."""
        config = aiohttp.TraceConfig()
        config.on_request_headers_sent.append(self._on_headers_sent)
        return config

    async def _on_headers_sent(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestHeadersSentParams,
    ) -> None:
        now = time.monotonic()
        self.sent.append(now)
        if self.engine is None:
            return
        task_id = params.url.name
        due = self.engine.due_at(task_id)
        if due is None:
            return
        lag = now - due
        self.lag_at.append((now, lag))
        if task_id in self._seen:
            self.repoll_lag.append(lag)
        else:
            self._seen.add(task_id)
            self.first_lag.append(lag)

    def observe(self, operation: str, label: str, duration: float) -> None:
        """`CbrClient(observe=...)`: count outcomes and keep the latency of 200 answers."""
        self.labels[label] += 1
        if label == "200":
            self.latency_ok.append(duration)


@dataclass
class Sample:
    """One look at the engine during the run."""

    t: float
    polls_started: int
    in_flight: int
    backlog: int
    """Tasks overdue (due ≤ now) and not yet started."""
    rss_mib: float
    """This process's resident set size."""
    watcher_cpu: float
    """CPU seconds this process used since the previous sample (sampler included)."""
    sim_cpu: float
    """CPU seconds the simulator used since the previous sample."""


class Sampler:
    """Samples backlog and in-flight once a second; its own CPU time is kept to subtract."""

    def __init__(self, engine: Engine, t0: float, sim_pid: int) -> None:
        self.engine = engine
        self.t0 = t0
        self.sim_pid = sim_pid
        self.samples: list[Sample] = []
        self.cpu_seconds = 0.0
        self._last_cpu = (self_cpu_seconds(), proc_cpu_seconds(sim_pid))

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            cpu0 = time.process_time()
            now = time.monotonic()
            backlog = self.engine.backlog(now)
            cpu = (self_cpu_seconds(), proc_cpu_seconds(self.sim_pid))
            self.samples.append(
                Sample(
                    round(now - self.t0, 3),
                    self.engine.stats.polls_started,
                    self.engine.in_flight,
                    backlog,
                    round(proc_memory_kib()[0] / 1024, 1),
                    round(cpu[0] - self._last_cpu[0], 3),
                    round(cpu[1] - self._last_cpu[1], 3),
                )
            )
            self._last_cpu = cpu
            self.cpu_seconds += time.process_time() - cpu0


# ---- the benchmark -------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Everything the command line sets."""

    tasks: int
    duration: float
    rps: float
    concurrency: int
    interval_min: float
    interval_max: float
    request_timeout: float
    sim_latency: float
    task_waiting: float
    task_running: float
    wire_trace: bool
    seed: int


@dataclass
class BenchResult:
    """What one run measured. Times in seconds unless the name says otherwise."""

    config: BenchConfig
    machine: dict[str, Any] = field(default_factory=dict)
    add_seconds: float = 0.0
    wall_seconds: float = 0.0
    drain_seconds: float = 0.0
    all_done: bool = False
    polls_started: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    polls_per_second: float = 0.0
    per_second_median: float = 0.0
    """Polls started per whole second of the window (engine-side), median over the seconds."""
    per_second_min: int = 0
    per_second_max: int = 0
    max_granted_in_any_1s: int = 0
    """Most starts the engine's budget granted in any sliding 1-s window (its own clock)."""
    max_sent_in_any_1s: int = 0
    """Most requests whose headers hit the socket in any sliding 1-s window."""
    max_sent_in_any_1s_warm: int = 0
    """The same, leaving out the first WARM_UP seconds (connections being opened)."""
    budget_exceeded_engine: bool = False
    budget_exceeded_wire: bool = False
    watcher_cpu_seconds: float = 0.0
    watcher_cpu_per_1000_polls: float = 0.0
    watcher_cpu_share: float = 0.0
    sim_cpu_seconds: float = 0.0
    sim_cpu_per_1000_polls: float = 0.0
    sim_cpu_share: float = 0.0
    sim_requests: int = 0
    watcher_peak_rss_mib: float = 0.0
    watcher_rss_before_add_mib: float = 0.0
    watcher_rss_before_run_mib: float = 0.0
    watcher_rss_after_run_mib: float = 0.0
    sim_rss_after_run_mib: float = 0.0
    sim_peak_rss_mib: float = 0.0
    latency_ok: LagSummary = field(default_factory=LagSummary)
    lag_engine_all: LagSummary = field(default_factory=LagSummary)
    lag_engine_repolls: LagSummary = field(default_factory=LagSummary)
    lag_wire_all: LagSummary = field(default_factory=LagSummary)
    lag_wire_first: LagSummary = field(default_factory=LagSummary)
    lag_wire_repolls: LagSummary = field(default_factory=LagSummary)
    lag_wire_second_half: LagSummary = field(default_factory=LagSummary)
    """Wire lag of the requests sent in the second half of the window (after the sweep)."""
    peak_second: dict[str, float] = field(default_factory=dict)
    """The busiest 1-s sample: polls started, and CPU seconds of the watcher and simulator."""
    initial_sweep_seconds: float = 0.0
    limiter_seconds: dict[str, int] = field(default_factory=dict)
    mean_in_flight: float = 0.0
    demand_first_round: float = 0.0
    demand_long_run: float = 0.0
    limiter: str = ""
    samples: list[Sample] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    """Where the numbers came from."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cbr_watcher": __version__,
        "platform": platform.platform(),
    }


LIMITERS = {
    "budget": "the request budget (tasks overdue, rate at the budget)",
    "schedule": "the schedule (nothing overdue: demand below the budget)",
    "concurrency": "max_concurrency (tasks overdue, every slot waiting for an answer)",
    "watcher-cpu": "the watcher's event loop (tasks overdue, budget and slots free)",
}


def classify_seconds(samples: Sequence[Sample], rps: float, concurrency: int) -> dict[str, int]:
    """Count the 1-s samples by what held the poll rate down during that second.

    Overdue tasks with budget and free slots left mean the loop could not launch them fast
    enough: the watcher process is CPU-bound (the simulator's answer time shows up as slots
    in use instead).
    """
    counts = dict.fromkeys(LIMITERS, 0)
    previous_t, previous_polls = 0.0, 0
    for sample in samples:
        elapsed = max(sample.t - previous_t, 1e-9)
        rate = (sample.polls_started - previous_polls) / elapsed
        previous_t, previous_polls = sample.t, sample.polls_started
        if sample.backlog == 0:
            counts["schedule"] += 1
        elif rate >= 0.95 * rps:
            counts["budget"] += 1
        elif sample.in_flight >= concurrency:
            counts["concurrency"] += 1
        else:
            counts["watcher-cpu"] += 1
    return counts


def describe_limiter(counts: dict[str, int]) -> str:
    """The dominant limiter and the share of seconds for each."""
    total = sum(counts.values())
    if not total:
        return "no samples"
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    shares = ", ".join(f"{name} {n / total:.0%}" for name, n in ranked if n)
    return f"{LIMITERS[ranked[0][0]]}; seconds by limiter: {shares}"


async def run_bench(cfg: BenchConfig) -> BenchResult:
    """Start the simulator, fill it with tasks, run the engine for the window and measure."""
    result = BenchResult(config=cfg, machine=machine_info())
    if cfg.task_running <= cfg.duration + 10:
        raise ValueError("--task-running must exceed --duration (every task must stay pending)")
    with tempfile.TemporaryDirectory(prefix="cbr-bench-") as tmp:
        sim = await start_simulator(Path(tmp), cfg.sim_latency)
        try:
            ids = await create_sim_tasks(
                sim.endpoint, cfg.tasks, waiting=cfg.task_waiting, running=cfg.task_running
            )
            await _measure(cfg, sim, ids, result)
            stats = await sim_stats(sim.endpoint)
            result.sim_requests = int(stats["requests"])
            sim_rss, sim_hwm = proc_memory_kib(sim.proc.pid)
            result.sim_rss_after_run_mib = round(sim_rss / 1024, 1)
            result.sim_peak_rss_mib = round(sim_hwm / 1024, 1)
        finally:
            await stop_simulator(sim)
    return result


def _make_session(cfg: BenchConfig, recorder: WireRecorder) -> aiohttp.ClientSession:
    """The session CbrClient would build for itself, plus the wire-timing trace hook."""
    connector = aiohttp.TCPConnector(limit=cfg.concurrency)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"cbr-watcher/{__version__}"},
        timeout=aiohttp.ClientTimeout(total=cfg.request_timeout * 3 + 5),
        trace_configs=[recorder.trace_config()],
    )


async def _measure(cfg: BenchConfig, sim: SimProcess, ids: list[str], result: BenchResult) -> None:
    recorder = WireRecorder()
    session = _make_session(cfg, recorder) if cfg.wire_trace else None
    clock = RealClock()
    client = CbrClient(
        endpoint=sim.endpoint,
        project_id=DEFAULT_PROJECT_ID,
        auth=TokenAuthenticator(token=DEFAULT_TOKENS[0]),
        clock=clock,
        request_timeout=cfg.request_timeout,
        max_connections=cfg.concurrency,
        observe=recorder.observe,
        session=session,
    )
    policy = Policy(interval_min=cfg.interval_min, interval_max=cfg.interval_max)
    try:
        async with client:
            engine = Engine(
                client=client,
                clock=clock,
                policy=policy,
                max_concurrency=cfg.concurrency,
                max_requests_per_second=cfg.rps,
                exit_when_done=True,
                rng=random.Random(cfg.seed),
            )
            engine.scheduler.budget = RecordingBudget(cfg.rps)
            recorder.engine = engine
            result.watcher_rss_before_add_mib = round(proc_memory_kib()[0] / 1024, 1)
            added_at = time.monotonic()
            for task_id in ids:
                engine.add(task_id)
            result.add_seconds = round(time.monotonic() - added_at, 4)
            await _run_window(cfg, engine, sim, recorder, result)
    finally:
        if session is not None:
            await session.close()


async def _run_window(
    cfg: BenchConfig, engine: Engine, sim: SimProcess, recorder: WireRecorder, result: BenchResult
) -> None:
    result.watcher_rss_before_run_mib = round(proc_memory_kib()[0] / 1024, 1)
    sim_cpu0 = proc_cpu_seconds(sim.proc.pid)
    cpu0 = self_cpu_seconds()
    t0 = time.monotonic()
    runner = asyncio.create_task(engine.run(), name="engine")
    sampler = Sampler(engine, t0, sim.proc.pid)
    sampling = asyncio.create_task(sampler.run(), name="sampler")
    await asyncio.wait({runner}, timeout=cfg.duration)
    t_stop = time.monotonic()
    result.all_done = engine.all_done()
    engine.stop()
    await runner
    t_end = time.monotonic()
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    cpu = self_cpu_seconds() - cpu0 - sampler.cpu_seconds
    sim_cpu = proc_cpu_seconds(sim.proc.pid) - sim_cpu0

    stats = engine.stats
    result.wall_seconds = round(t_stop - t0, 3)
    result.drain_seconds = round(t_end - t_stop, 3)
    result.polls_started = stats.polls_started
    result.polls_ok = stats.polls_ok
    result.polls_failed = stats.polls_failed
    result.outcomes = dict(sorted(recorder.labels.items()))
    result.polls_per_second = round(stats.polls_started / result.wall_seconds, 1)
    polls_k = max(stats.polls_started, 1) / 1000
    result.watcher_cpu_seconds = round(cpu, 3)
    result.watcher_cpu_per_1000_polls = round(cpu / polls_k, 4)
    result.watcher_cpu_share = round(cpu / (t_end - t0), 3)
    result.sim_cpu_seconds = round(sim_cpu, 3)
    result.sim_cpu_per_1000_polls = round(sim_cpu / polls_k, 4)
    result.sim_cpu_share = round(sim_cpu / (t_end - t0), 3)
    result.watcher_peak_rss_mib = round(peak_rss_mib(), 1)
    result.watcher_rss_after_run_mib = round(proc_memory_kib()[0] / 1024, 1)
    result.latency_ok = LagSummary.of(recorder.latency_ok)

    # The engine's own lag: the first `tasks` samples are the first polls (all due at add
    # time, so they leave the heap before any re-poll); the rest are re-polls.
    lags = list(stats.lag_samples)
    result.lag_engine_all = LagSummary.of(lags)
    if len(lags) == stats.polls_started:  # the deque is bounded; only split a complete record
        result.lag_engine_repolls = LagSummary.of(lags[cfg.tasks :])
        result.initial_sweep_seconds = round(max(lags[: cfg.tasks], default=0.0), 3)
    result.lag_wire_all = LagSummary.of(recorder.first_lag + recorder.repoll_lag)
    result.lag_wire_first = LagSummary.of(recorder.first_lag)
    result.lag_wire_repolls = LagSummary.of(recorder.repoll_lag)
    half = t0 + (t_stop - t0) / 2
    result.lag_wire_second_half = LagSummary.of([lag for at, lag in recorder.lag_at if at >= half])

    capacity = max(1, int(cfg.rps))
    granted = engine.budget.granted if isinstance(engine.budget, RecordingBudget) else []
    result.max_granted_in_any_1s = max_in_window(granted)
    result.budget_exceeded_engine = result.max_granted_in_any_1s > capacity
    sent = sorted(recorder.sent) if cfg.wire_trace else []
    result.max_sent_in_any_1s = max_in_window(sent)
    result.budget_exceeded_wire = result.max_sent_in_any_1s > capacity
    result.max_sent_in_any_1s_warm = max_in_window([t for t in sent if t >= t0 + WARM_UP])
    per_second = per_second_counts(granted, t0, t_stop)
    if per_second:
        result.per_second_median = quantile(sorted(per_second), 0.5)
        result.per_second_min = min(per_second)
        result.per_second_max = max(per_second)
    samples = sampler.samples
    result.samples = samples
    if samples:
        result.limiter_seconds = classify_seconds(samples, cfg.rps, cfg.concurrency)
        result.mean_in_flight = round(sum(s.in_flight for s in samples) / len(samples), 1)
        previous = 0
        for sample in samples:
            polls = sample.polls_started - previous
            previous = sample.polls_started
            if polls > result.peak_second.get("polls", -1):
                result.peak_second = {
                    "t": sample.t,
                    "polls": polls,
                    "watcher_cpu": sample.watcher_cpu,
                    "sim_cpu": sample.sim_cpu,
                }
    result.demand_first_round = round(cfg.tasks / cfg.interval_min, 1)
    result.demand_long_run = round(cfg.tasks / ((cfg.interval_min + cfg.interval_max) / 2), 1)
    result.limiter = describe_limiter(result.limiter_seconds)


# ---- reporting -----------------------------------------------------------------------------


def format_report(r: BenchResult) -> str:
    """The human-readable summary printed after a run."""
    c = r.config
    lines = [
        f"cbr-watcher engine bench — {c.tasks} tasks, budget {c.rps:g} req/s, "
        f"concurrency {c.concurrency}, intervals {c.interval_min:g}–{c.interval_max:g} s, "
        f"sim latency {c.sim_latency * 1000:g} ms",
        f"  machine            {r.machine['cpus']} CPUs, Python {r.machine['python']}, "
        f"aiohttp {r.machine['aiohttp']}",
        f"  window             {r.wall_seconds:.1f} s (+{r.drain_seconds:.2f} s drain)"
        f"{', all tasks done' if r.all_done else ''}; adding the tasks took {r.add_seconds:.3f} s",
        f"  polls              started {r.polls_started}, ok {r.polls_ok}, failed {r.polls_failed}"
        f"  outcomes {r.outcomes}; simulator saw {r.sim_requests} requests",
        f"  rate               {r.polls_per_second:.1f} polls/s achieved (budget {c.rps:g}); "
        f"per whole second: min {r.per_second_min}, median {r.per_second_median:g}, "
        f"max {r.per_second_max}",
        f"  budget check       engine clock: max {r.max_granted_in_any_1s} starts in any 1 s "
        f"window → {'EXCEEDED' if r.budget_exceeded_engine else 'never exceeded'}",
    ]
    if c.wire_trace:
        lines.append(
            f"                     on the wire:  max {r.max_sent_in_any_1s} requests sent in any "
            f"1 s window → {'EXCEEDED' if r.budget_exceeded_wire else 'never exceeded'}; "
            f"after the first {WARM_UP:g} s: max {r.max_sent_in_any_1s_warm}"
        )
    lines += [
        f"  schedule demand    {c.tasks} due at once at start, ≈{r.demand_first_round:g}/s in "
        f"the first rounds, → ≈{r.demand_long_run:g}/s long-run (N / mean interval)",
        f"  watcher CPU        {r.watcher_cpu_seconds:.2f} s = {r.watcher_cpu_per_1000_polls:.3f} "
        f"s per 1,000 polls ({r.watcher_cpu_share:.0%} of a core)",
        f"  simulator CPU      {r.sim_cpu_seconds:.2f} s = {r.sim_cpu_per_1000_polls:.3f} "
        f"s per 1,000 polls ({r.sim_cpu_share:.0%} of a core)",
        f"  watcher RSS        peak {r.watcher_peak_rss_mib:.1f} MiB; "
        f"{r.watcher_rss_before_add_mib:.1f} before adding tasks → "
        f"{r.watcher_rss_before_run_mib:.1f} before the run → "
        f"{r.watcher_rss_after_run_mib:.1f} after "
        f"(growth during run {r.watcher_rss_after_run_mib - r.watcher_rss_before_run_mib:+.1f})",
        f"  simulator RSS      {r.sim_rss_after_run_mib:.1f} MiB after the run, "
        f"peak {r.sim_peak_rss_mib:.1f}",
        f"  request latency    {r.latency_ok.text()}  (200 answers, client-side)",
        f"  engine lag (due → scheduler starts poll, engine.stats.lag_samples); initial sweep "
        f"{r.initial_sweep_seconds:.2f} s",
        f"    all              {r.lag_engine_all.text()}",
        f"    re-polls         {r.lag_engine_repolls.text()}",
    ]
    if c.wire_trace:
        lines += [
            "  wire lag (due → request headers written, aiohttp trace)",
            f"    all              {r.lag_wire_all.text()}",
            f"    first polls      {r.lag_wire_first.text()}",
            f"    re-polls         {r.lag_wire_repolls.text()}",
            f"    2nd half         {r.lag_wire_second_half.text()}",
        ]
    lines += [
        f"  in flight          mean {r.mean_in_flight:g} of {c.concurrency} (1-s samples)",
        f"  busiest second     {r.peak_second.get('polls', 0):g} polls; CPU in that second: "
        f"watcher {r.peak_second.get('watcher_cpu', 0):.2f} s, "
        f"simulator {r.peak_second.get('sim_cpu', 0):.2f} s",
        f"  limiter            {r.limiter}",
    ]
    return "\n".join(lines)


def _json_default(value: object) -> object:
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, Path | None]:
    """The command line into a BenchConfig and the --json path (None when not given)."""
    parser = argparse.ArgumentParser(
        description="Benchmark the watch engine against the CBR simulator in real time.",
    )
    parser.add_argument("--tasks", type=int, default=1000, help="tasks to watch (%(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, help="window, s (%(default)s)")
    parser.add_argument("--rps", type=float, default=20.0, help="request budget (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=32, help="max in flight (%(default)s)")
    parser.add_argument("--interval-min", type=float, default=5.0, help="s (%(default)s)")
    parser.add_argument("--interval-max", type=float, default=60.0, help="s (%(default)s)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="s (%(default)s)")
    parser.add_argument(
        "--sim-latency", type=float, default=0.0, help="simulator latency per request, s"
    )
    parser.add_argument("--task-waiting", type=float, default=0.0, help="s (%(default)s)")
    parser.add_argument("--task-running", type=float, default=86400.0, help="s (%(default)s)")
    parser.add_argument(
        "--no-wire-trace",
        action="store_true",
        help="let CbrClient build its own session (no wire lag, no per-request trace cost)",
    )
    parser.add_argument("--seed", type=int, default=1, help="engine jitter seed (%(default)s)")
    parser.add_argument("--json", type=Path, help="also write the full result as JSON here")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.duration <= 0 or args.rps <= 0 or args.concurrency < 1:
        parser.error("--tasks, --duration, --rps and --concurrency must be positive")
    cfg = BenchConfig(
        tasks=args.tasks,
        duration=args.duration,
        rps=args.rps,
        concurrency=args.concurrency,
        interval_min=args.interval_min,
        interval_max=args.interval_max,
        request_timeout=args.request_timeout,
        sim_latency=args.sim_latency,
        task_waiting=args.task_waiting,
        task_running=args.task_running,
        wire_trace=not args.no_wire_trace,
        seed=args.seed,
    )
    json_path: Path | None = args.json
    return cfg, json_path


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark, print the summary, optionally write JSON; 1 if it could not run."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--sizes" or arg.startswith("--sizes=") for arg in args):
        sys.path.insert(0, str(Path(__file__).parent))
        import scale_bench  # the whole daemon at several sizes, against a baseline tree

        return scale_bench.main(args)
    cfg, json_path = parse_args(argv)
    configure_logging(level="warning", stream=sys.stderr)
    try:
        result = asyncio.run(run_bench(cfg))
    except (RuntimeError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(result))
    if json_path is not None:
        json_path.write_text(
            json.dumps(asdict(result), indent=2, default=_json_default) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
