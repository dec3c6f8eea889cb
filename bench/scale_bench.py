"""Scale benchmark of the whole daemon: N running tasks at 500 polls/s, a scrape every 15 s.

    python bench/scale_bench.py --sizes 1000,10000,50000 [--baseline /tmp/cbr-baseline]
        [--gc-variants tuned,none] [--batched] [--json out.json]

(`python bench/engine_bench.py --sizes ...` runs the same.)

For every size N the simulator (its own process) gets N tasks that run for a day. Then, for
each source tree (the `--baseline` worktree of the previous commit first, then this tree,
each under every `--gc-variants` entry), the daemon runs as its own process
(`bench/daemon_probe.py`, real time, real sockets) three times:

1. **TOML**: `watch.tasks` lists the N IDs. Start-up = process spawn → `GET /readyz` 200.
   Then N task-API PUTs of new IDs (64 at a time) measure how fast the API accepts tasks.
2. **task file**: `watch.task_file` names the N IDs; start-up as above. The daemon then runs:
   `poll_interval_min` = `progress_interval` = N / 500 s and a budget of 600 req/s, so each
   task is polled about once per interval, ≈ 500 polls/s on average. The driver scrapes
   /metrics every 15 s (RSS read from /proc before and after each scrape); the probe
   measures a window after a warm-up of one interval (every task polled once): re-poll lag,
   CPU, the longest GC pause. This run fills the state file.
3. **state file**: only `state.path` (filled by run 2): N unfinished watches are restored.

Results print as one table; bench/README.md has the reference machine's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

POLLS_PER_SECOND = 500.0
BUDGET = 600.0
SCRAPE_EVERY = 15.0
WINDOW = 45.0
READY_TIMEOUT = 240.0
PUT_CONCURRENCY = 64
SHOW_ONLY = True
"""Run this tree's daemon with one ShowOpLog per poll (`daemon_probe.py --show-only`)."""
PROBE = Path(__file__).with_name("daemon_probe.py")
PROJECT_ID = "04f1829c788037ac2fb8c01eb2b04b95"
"""Must match the simulator's default project (watcher.sim.simulator.DEFAULT_PROJECT_ID)."""


@dataclass
class TreeRun:
    """Everything measured for one tree (and gc variant) at one size."""

    label: str
    tasks: int
    startup_toml_s: float = 0.0
    startup_file_s: float = 0.0
    startup_state_s: float = 0.0
    restored: int = 0
    puts_per_second: float = 0.0
    rss_before_first_scrape_mib: float = 0.0
    rss_after_first_scrape_mib: float = 0.0
    rss_after_last_scrape_mib: float = 0.0
    scrape_ms_max: float = 0.0
    scrapes: int = 0
    window: dict[str, Any] = field(default_factory=dict)

    def bytes_per_task(self) -> float:
        """(RSS after the scrapes − the process's RSS before start-up) ÷ tasks."""
        base = float(self.window.get("rss_base_kib", 0)) * 1024
        return (self.rss_after_last_scrape_mib * 1024 * 1024 - base) / max(self.tasks, 1)


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    """VmRSS of `pid` in MiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def write_config(
    path: Path, *, endpoint: str, token: str, state: Path, tasks: int, extra_watch: str
) -> tuple[int, int]:
    """A daemon config; returns (metrics port, API port)."""
    interval = max(1.0, tasks / POLLS_PER_SECOND)
    metrics_port, api_port = free_port(), free_port()
    path.write_text(
        f"""[cbr]
endpoint = "{endpoint}"
project_id = "{PROJECT_ID}"
[auth]
method = "token"
token = "{token}"
[watch]
poll_interval_min = "{interval:g}s"
poll_interval_max = "{interval * 3:g}s"
progress_interval = "{interval:g}s"
max_requests_per_second = {BUDGET:g}
max_concurrency = 64
{extra_watch}
[state]
path = "{state}"
[server]
listen = "127.0.0.1:{metrics_port}"
api_listen = "127.0.0.1:{api_port}"
""",
        encoding="utf-8",
    )
    return metrics_port, api_port


class Daemon:
    """One probe process: spawn, wait for readiness, stop."""

    def __init__(self, tree: Path, config: Path, report: Path, log: Path, args: list[str]):
        self.tree, self.config, self.report, self.log, self.args = tree, config, report, log, args
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned = 0.0

    async def start(self) -> None:
        """Spawn the probe in the tree's directory."""
        self.spawned = time.monotonic()
        with self.log.open("ab") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(PROBE),
                "--tree",
                str(self.tree),
                "--config",
                str(self.config),
                "--report",
                str(self.report),
                *self.args,
                cwd=str(self.tree),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": str(self.tree)},
            )

    async def ready(self, session: aiohttp.ClientSession, port: int) -> float:
        """Seconds from spawn until /readyz answers 200."""
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() - self.spawned < READY_TIMEOUT:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError(f"daemon exited early; see {self.log}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return round(time.monotonic() - self.spawned, 3)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"daemon not ready within {READY_TIMEOUT:g} s; see {self.log}")

    async def stop(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """SIGTERM (the daemon stops cleanly), SIGKILL if it hangs; also when already gone."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait for the probe to exit on its own (it stops after its window)."""
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            await self.stop()


async def put_tasks(session: aiohttp.ClientSession, port: int, count: int) -> float:
    """PUT `count` new task IDs, PUT_CONCURRENCY at a time; accepted per second."""
    queue = iter(range(count))
    started = time.monotonic()

    async def worker() -> None:
        for n in queue:
            url = f"http://127.0.0.1:{port}/v1/tasks/api-{n:06d}"
            async with session.put(url) as response:
                if response.status not in (200, 201):
                    raise RuntimeError(f"PUT {url}: HTTP {response.status}")

    await asyncio.gather(*(worker() for _ in range(PUT_CONCURRENCY)))
    return round(count / (time.monotonic() - started), 1)


async def run_tree(
    label: str,
    tree: Path,
    gc_variant: str,
    *,
    ids: list[str],
    endpoint: str,
    token: str,
    workdir: Path,
) -> TreeRun:
    """The three runs (TOML, task file + window, state file) of one tree at one size."""
    n = len(ids)
    run = TreeRun(label=label, tasks=n)
    base = workdir / f"{label}-{n}"
    state = base.with_suffix(".db")
    log = base.with_suffix(".log")
    task_file = base.with_suffix(".tasks")
    task_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    probe_args = ["--gc", gc_variant, *(["--show-only"] if SHOW_ONLY else [])]
    interval = max(1.0, n / POLLS_PER_SECOND)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # 1. watch.tasks in TOML, then task-API PUTs.
        config = base.with_suffix(".toml.toml")
        listed = ", ".join(f'"{task_id}"' for task_id in ids)
        ports = write_config(
            config,
            endpoint=endpoint,
            token=token,
            state=workdir / f"{label}-{n}-toml.db",
            tasks=n,
            extra_watch=f"tasks = [{listed}]",
        )
        daemon = Daemon(tree, config, base.with_suffix(".toml.json"), log, probe_args)
        await daemon.start()
        try:
            run.startup_toml_s = await daemon.ready(session, ports[0])
            run.puts_per_second = await put_tasks(session, ports[1], n)
        finally:
            await daemon.stop()

        # 2. watch.task_file, and the measured window with scrapes.
        config = base.with_suffix(".file.toml")
        ports = write_config(
            config,
            endpoint=endpoint,
            token=token,
            state=state,
            tasks=n,
            extra_watch=f'task_file = "{task_file}"',
        )
        warmup = interval * 1.2 + 5
        report = base.with_suffix(".window.json")
        daemon = Daemon(
            tree,
            config,
            report,
            log,
            [*probe_args, "--warmup", f"{warmup:g}", "--window", f"{WINDOW:g}"],
        )
        await daemon.start()
        try:
            run.startup_file_s = await daemon.ready(session, ports[0])
            await scrape_until_exit(session, daemon, ports[0], run)
        finally:
            await daemon.stop()
        run.window = json.loads(report.read_text(encoding="utf-8"))

        # 3. the state file the window filled.
        config = base.with_suffix(".state.toml")
        ports = write_config(
            config, endpoint=endpoint, token=token, state=state, tasks=n, extra_watch=""
        )
        report = base.with_suffix(".state.json")
        daemon = Daemon(tree, config, report, log, probe_args)
        await daemon.start()
        try:
            run.startup_state_s = await daemon.ready(session, ports[0])
            for _ in range(100):
                if report.exists():
                    break
                await asyncio.sleep(0.05)
            run.restored = int(json.loads(report.read_text(encoding="utf-8"))["tasks"])
        finally:
            await daemon.stop()
    return run


async def scrape_until_exit(
    session: aiohttp.ClientSession, daemon: Daemon, port: int, run: TreeRun
) -> None:
    """GET /metrics every SCRAPE_EVERY seconds until the probe exits after its window."""
    proc = daemon.proc
    assert proc is not None
    url = f"http://127.0.0.1:{port}/metrics"
    while proc.returncode is None:
        before = rss_mib(proc.pid)
        started = time.monotonic()
        try:
            async with session.get(url) as response:
                await response.read()
        except aiohttp.ClientError:
            await asyncio.sleep(0.5)  # the probe may be exiting after its window
            if not _exited(proc):
                raise
            break
        run.scrape_ms_max = max(run.scrape_ms_max, round((time.monotonic() - started) * 1000))
        after = rss_mib(proc.pid)
        if run.scrapes == 0:
            run.rss_before_first_scrape_mib, run.rss_after_first_scrape_mib = before, after
        if after:
            run.rss_after_last_scrape_mib = after
        run.scrapes += 1
        try:
            await asyncio.wait_for(proc.wait(), SCRAPE_EVERY)
        except TimeoutError:
            continue


def _exited(proc: asyncio.subprocess.Process) -> bool:
    return proc.returncode is not None


def format_table(runs: list[TreeRun]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| N | tree | RSS before → after 1st scrape → after last (MiB) | bytes/task | CPU "
        "(core) | ms CPU/poll | polls/s | lag p50 / p99 / max (ms) | longest GC pause (ms) "
        "| full GCs | start-up: file / TOML / state (s) | API PUTs/s | longest scrape (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        w = r.window
        lines.append(
            f"| {r.tasks:,} | {r.label} | {r.rss_before_first_scrape_mib:.0f} → "
            f"{r.rss_after_first_scrape_mib:.0f} → {r.rss_after_last_scrape_mib:.0f} | "
            f"{r.bytes_per_task():,.0f} | {w.get('cpu_fraction', 0):.2f} | "
            f"{w.get('cpu_ms_per_poll', 0):.2f} | {w.get('polls_per_second', 0):.0f} | "
            f"{w.get('lag_p50_ms', 0):.1f} / {w.get('lag_p99_ms', 0):.1f} / "
            f"{w.get('lag_max_ms', 0):.1f} | {w.get('longest_pause_ms', 0):.1f} | "
            f"{w.get('full_collections', 0)} | {r.startup_file_s:.2f} / {r.startup_toml_s:.2f} / "
            f"{r.startup_state_s:.2f} ({r.restored:,} restored) | {r.puts_per_second:,.0f} | "
            f"{r.scrape_ms_max:.0f} |"
        )
    return "\n".join(lines)


async def run_suite(
    sizes: list[int],
    trees: list[tuple[str, Path, str]],
    *,
    sim_tree: Path,
    json_path: Path | None,
) -> list[TreeRun]:
    """Every size, every (label, tree, gc variant); one simulator per size."""
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_bench import create_sim_tasks, start_simulator, stop_simulator

    from watcher.sim.simulator import DEFAULT_TOKENS

    runs: list[TreeRun] = []
    with tempfile.TemporaryDirectory(prefix="cbr-scale-") as tmp:
        workdir = Path(tmp)
        for size in sizes:
            sim = await start_simulator(workdir, 0.0, cwd=sim_tree)
            try:
                ids = await create_sim_tasks(sim.endpoint, size, waiting=0.0, running=86400.0)
                for label, tree, variant in trees:
                    name = label if variant == "tuned" else f"{label}, gc {variant}"
                    print(f"… {size:,} tasks: {name}", file=sys.stderr, flush=True)
                    run = await run_tree(
                        name.replace(", ", "-").replace(" ", "-"),
                        tree,
                        variant,
                        ids=ids,
                        endpoint=sim.endpoint,
                        token=DEFAULT_TOKENS[0],
                        workdir=workdir,
                    )
                    run.label = name
                    runs.append(run)
                    print(format_table([run]).splitlines()[-1], file=sys.stderr, flush=True)
            finally:
                await stop_simulator(sim)
    if json_path is not None:
        json_path.write_text(  # noqa: ASYNC240 - once, after every run
            json.dumps([run.__dict__ for run in runs], indent=1) + "\n", encoding="utf-8"
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run every size and tree, print the table."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="task counts (%(default)s)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="source tree of the previous commit (e.g. `git worktree add /tmp/base HEAD~1`)",
    )
    parser.add_argument(
        "--gc-variants", default="tuned", help="this tree's gc variants: tuned,none,freeze,..."
    )
    parser.add_argument(
        "--batched",
        action="store_true",
        help="leave batched refresh on in this tree (default: one ShowOpLog per poll, "
        "as the baseline polls, so per-poll costs compare like for like)",
    )
    parser.add_argument("--json", type=Path, help="also write every run as JSON here")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    here = Path(__file__).resolve().parent.parent
    trees: list[tuple[str, Path, str]] = []
    if args.baseline is not None:
        trees.append(("previous commit", args.baseline.resolve(), "tuned"))
    trees += [("this tree", here, variant) for variant in args.gc_variants.split(",")]
    global SHOW_ONLY
    SHOW_ONLY = not args.batched
    runs = asyncio.run(run_suite(sizes, trees, sim_tree=here, json_path=args.json))
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
