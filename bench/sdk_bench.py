"""CPU per poll: the whole cbr-watcher daemon against the official SDK in a thread pool.

    pip install -e '.[bench]'          # huaweicloudsdkcbr, pinned in constraints.txt
    python bench/sdk_bench.py --rates 200,500,1000 [--tasks 2000] [--window 30] [--json out.json]

The simulator runs in its own process with `--tasks` running tasks and one access key; both
pollers sign every request with AK/SK. For every rate R, each in its own process and one
after the other:

* **cbr-watcher**: `bench/daemon_probe.py` runs the daemon as `cbr-watcher run` would
  (`auth.method = "aksk"`, batched refresh off so every poll is one ShowOpLog), the tasks
  polled every tasks / R seconds; after a warm-up (every task polled once) it measures a
  window: polls started, process CPU (`getrusage`, all threads).
* **SDK**: `sdk_bench.py sdk-poller` builds huaweicloudsdkcbr's `CbrClient` with
  `BasicCredentials` and submits `show_op_log` calls to a `ThreadPoolExecutor` at R per
  second, round-robin over the same tasks; after the same warm-up it measures the same
  window: calls answered, process CPU.

Reported per rate: polls per second reached and CPU milliseconds per poll for each, and their
ratio. The simulator's own CPU is not counted on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
import scale_bench
from engine_bench import create_sim_tasks, start_simulator, stop_simulator

ACCESS_KEY = "BENCHAKSKACCESSKEY01"
SECRET_KEY = "bench-secret-key-for-the-sdk-comparison"  # noqa: S105 - a simulator key
WARMUP_POLLS_PER_TASK = 1.2
TREE = Path(__file__).resolve().parent.parent
SDK_WORKERS = 32


@dataclass
class RateResult:
    """One rate: both pollers."""

    rate: float
    watcher_polls_per_second: float
    watcher_cpu_ms_per_poll: float
    sdk_polls_per_second: float
    sdk_cpu_ms_per_poll: float
    sdk_errors: int

    @property
    def ratio(self) -> float:
        """SDK CPU per poll ÷ cbr-watcher CPU per poll."""
        return self.sdk_cpu_ms_per_poll / max(self.watcher_cpu_ms_per_poll, 1e-9)


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the SDK side (its own process) ------------------------------------------------------------


def sdk_poller(args: argparse.Namespace) -> int:
    """Poll at `args.rate` through the official SDK; print one JSON line of results."""
    from huaweicloudsdkcbr.v1 import CbrClient, ShowOpLogRequest
    from huaweicloudsdkcore.auth.credentials import (
        BasicCredentials,
    )
    from huaweicloudsdkcore.http.http_config import HttpConfig

    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    client = (
        CbrClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(args.ak, args.sk, args.project_id))
        .with_endpoint(args.endpoint)
        .build()
    )
    ids = Path(args.ids).read_text(encoding="utf-8").split()
    lock = threading.Lock()
    counts = {"ok": 0, "errors": 0}

    def finished(future: Future[Any]) -> None:
        with lock:
            counts["ok" if future.exception() is None else "errors"] += 1

    def poll(task_id: str) -> None:
        client.show_op_log(ShowOpLogRequest(operation_log_id=task_id))

    pool = ThreadPoolExecutor(max_workers=args.workers)
    rate, warmup, window = args.rate, args.warmup, args.window
    start = time.monotonic()
    marks: dict[str, float] = {}
    n = 0
    while True:
        now = time.monotonic()
        if "cpu0" not in marks and now - start >= warmup:
            with lock:
                marks.update(cpu0=cpu_seconds(), t0=now, ok0=counts["ok"])
        if now - start >= warmup + window:
            with lock:
                marks.update(cpu1=cpu_seconds(), t1=now, ok1=counts["ok"])
            break
        due = start + n / rate
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        pool.submit(poll, ids[n % len(ids)]).add_done_callback(finished)
        n += 1
    pool.shutdown(wait=False, cancel_futures=True)
    polls = marks["ok1"] - marks["ok0"]
    elapsed = marks["t1"] - marks["t0"]
    print(
        json.dumps(
            {
                "polls": polls,
                "polls_per_second": round(polls / elapsed, 1),
                "cpu_ms_per_poll": round((marks["cpu1"] - marks["cpu0"]) / max(polls, 1) * 1000, 3),
                "errors": counts["errors"],
            }
        ),
        flush=True,
    )
    return 0


async def run_sdk(
    endpoint: str, project_id: str, ids_file: Path, rate: float, warmup: float, window: float
) -> dict[str, Any]:
    """One SDK poller process at `rate`; its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "sdk-poller",
        "--endpoint",
        endpoint,
        "--project-id",
        project_id,
        "--ak",
        ACCESS_KEY,
        "--sk",
        SECRET_KEY,
        "--ids",
        str(ids_file),
        "--rate",
        f"{rate:g}",
        "--warmup",
        f"{warmup:g}",
        "--window",
        f"{window:g}",
        "--workers",
        str(SDK_WORKERS),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), warmup + window + 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"sdk-poller exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# ---- the cbr-watcher side ------------------------------------------------------------------------


def write_config(path: Path, *, endpoint: str, project_id: str, state: Path, interval: float,
                 task_file: Path) -> int:  # fmt: skip
    """A daemon config with AK/SK auth; returns the metrics port."""
    port = scale_bench.free_port()
    path.write_text(
        f"""[cbr]
endpoint = "{endpoint}"
project_id = "{project_id}"
[auth]
method = "aksk"
access_key = "{ACCESS_KEY}"
secret_key = "{SECRET_KEY}"
[watch]
task_file = "{task_file}"
poll_interval_min = "{interval:g}s"
poll_interval_max = "{interval * 3:g}s"
progress_interval = "{interval:g}s"
max_requests_per_second = 100000
max_concurrency = 64
[state]
path = "{state}"
[server]
listen = "127.0.0.1:{port}"
api_listen = ""
""",
        encoding="utf-8",
    )
    return port


async def run_watcher(
    workdir: Path, endpoint: str, project_id: str, ids_file: Path, tasks: int, rate: float,
    window: float,
) -> dict[str, Any]:  # fmt: skip
    """One daemon at `rate` polls/s; its window report."""
    interval = tasks / rate
    tag = f"{rate:g}"
    config = workdir / f"watcher-{tag}.toml"
    port = write_config(
        config,
        endpoint=endpoint,
        project_id=project_id,
        state=workdir / f"watcher-{tag}.db",
        interval=interval,
        task_file=ids_file,
    )
    report = workdir / f"watcher-{tag}.json"
    warmup = interval * WARMUP_POLLS_PER_TASK + 3
    daemon = scale_bench.Daemon(
        TREE,
        config,
        report,
        workdir / f"watcher-{tag}.log",
        ["--show-only", "--warmup", f"{warmup:g}", "--window", f"{window:g}"],
    )
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as session:
            await daemon.ready(session, port)
        await daemon.wait(warmup + window + 120)
    finally:
        await daemon.stop()
    result: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return result


async def run(rates: Sequence[float], tasks: int, window: float) -> list[RateResult]:
    """Every rate, the daemon then the SDK, against one simulator."""
    from watcher.sim.simulator import DEFAULT_PROJECT_ID

    results: list[RateResult] = []
    with tempfile.TemporaryDirectory(prefix="cbr-sdk-bench-") as tmp:
        workdir = Path(tmp)
        sim = await start_simulator(workdir, 0.0)
        try:
            async with aiohttp.ClientSession() as session:
                keys = {"access_keys": [{"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}]}
                async with session.put(f"{sim.endpoint}/_sim/auth", json=keys) as response:
                    if response.status != 200:
                        raise RuntimeError(f"PUT /_sim/auth: HTTP {response.status}")
            ids = await create_sim_tasks(sim.endpoint, tasks, waiting=0.0, running=86400.0)
            ids_file = workdir / "ids.txt"
            ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
            for rate in rates:
                print(f"… {rate:g} polls/s: cbr-watcher", file=sys.stderr, flush=True)
                watcher = await run_watcher(
                    workdir, sim.endpoint, DEFAULT_PROJECT_ID, ids_file, tasks, rate, window
                )
                print(f"… {rate:g} polls/s: SDK", file=sys.stderr, flush=True)
                sdk = await run_sdk(sim.endpoint, DEFAULT_PROJECT_ID, ids_file, rate, 5.0, window)
                results.append(
                    RateResult(
                        rate=rate,
                        watcher_polls_per_second=watcher["polls_per_second"],
                        watcher_cpu_ms_per_poll=watcher["cpu_ms_per_poll"],
                        sdk_polls_per_second=sdk["polls_per_second"],
                        sdk_cpu_ms_per_poll=sdk["cpu_ms_per_poll"],
                        sdk_errors=sdk["errors"],
                    )
                )
                print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        finally:
            await stop_simulator(sim)
    return results


def format_table(results: Sequence[RateResult]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| asked polls/s | cbr-watcher polls/s | ms CPU/poll | SDK polls/s | ms CPU/poll "
        "(errors) | SDK ÷ cbr-watcher |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.rate:g} | {r.watcher_polls_per_second:.0f} | {r.watcher_cpu_ms_per_poll:.2f} | "
        f"{r.sdk_polls_per_second:.0f} | {r.sdk_cpu_ms_per_poll:.2f} ({r.sdk_errors}) | "
        f"{r.ratio:.1f}× |"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison (or, as `sdk-poller`, one SDK poller process)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sdk-poller"]:
        poller = argparse.ArgumentParser(prog="sdk_bench.py sdk-poller")
        for name in ("--endpoint", "--project-id", "--ak", "--sk", "--ids"):
            poller.add_argument(name, required=True)
        for name in ("--rate", "--warmup", "--window"):
            poller.add_argument(name, type=float, required=True)
        poller.add_argument("--workers", type=int, default=SDK_WORKERS)
        return sdk_poller(poller.parse_args(args_list[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,500,1000", help="polls/s (%(default)s)")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks (%(default)s)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds (%(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(args_list)
    rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    results = asyncio.run(run(rates, args.tasks, args.window))
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
