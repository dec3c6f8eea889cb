"""How long a /metrics scrape takes with many watched tasks, and how long it blocks the loop.

    python bench/metrics_bench.py --tasks 10000 --scrapes 20 --churn 0.1 [--resources 10000]

Fills a task table with `--tasks` running tasks (realistic operation logs: backup, vault and
resource names), serves it with the real metrics listener (`watcher.observe.server`) on 127.0.0.1,
and scrapes it `--scrapes` times per format from a separate thread (so the client's own work
is not charged to the daemon's loop). Before each scrape `--churn` of the tasks change
progress, as they would between two scrapes of a busy daemon. `--resources` adds that many
per-resource freshness rows (restored, as at start-up).

Reported, in milliseconds:
- snapshot: copying the table on the event loop (the only per-scrape work done on the loop:
  the rows are immutable, so it copies references);
- render: choosing the exported tasks (retention, cap) and turning them into text, in the
  render thread (cold = no cached rows or lines, warm = after a scrape);
- generic: prometheus_client's own encoder over the same series (built by
  `baseline_render.py`, warm: after one collection), for comparison;
- scrape: end-to-end HTTP request time for text, OpenMetrics and gzip;
- loop max gap: the longest the event loop went without running a 1 ms ticker during scrapes
  (that is, the longest it was blocked), and the ticker's median gap;
- full GC during scrapes: generation-2 collections and their longest pause. A full collection
  stops every thread; with 10,000 tasks' operation logs in memory it takes about 100 ms
  whoever triggers it, so it shows up as the loop's max gap when one happens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import platform
import random
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any

from baseline_render import baseline_registry
from prometheus_client import generate_latest

from watcher import __version__
from watcher.cbr.models import OperationLog
from watcher.clock import RealClock
from watcher.coverage.freshness import ResourceKey, ResourceStatus
from watcher.engine.engine import WatchedTask
from watcher.observe.logs import configure_logging
from watcher.observe.metrics import Metrics
from watcher.observe.server import Health, start_metrics_listener

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


@dataclass
class Table:
    """A task table like the engine's."""

    tasks: dict[str, WatchedTask] = field(default_factory=dict)
    last_turn: float = 0.0


def make_table(count: int, now: float, rng: random.Random) -> Table:
    """`count` running tasks with full operation logs."""
    table = Table(last_turn=time.monotonic())
    for n in range(count):
        task_id = f"{rng.getrandbits(128):032x}"
        raw = {
            "id": task_id,
            "status": "running",
            "operation_type": rng.choice(["backup", "backup", "backup", "replication", "restore"]),
            "project_id": "04f1829c788037ac2fb8c01eb2b04b95",
            "vault_id": f"{rng.getrandbits(128):032x}",
            "vault_name": f"vault-{n % 50:03d}",
            "started_at": "2026-01-01T00:00:00Z",
            "extra_info": {
                "common": {"progress": rng.randint(0, 99)},
                "resource": {
                    "id": f"{rng.getrandbits(128):032x}",
                    "name": f"ecs-prod-{n:05d}",
                    "type": "OS::Nova::Server",
                },
            },
        }
        operation_log = OperationLog.from_raw(raw)
        table.tasks[task_id] = WatchedTask(
            task_id=task_id,
            labels={},
            source="config",
            added_wall=now,
            status="running",
            progress=operation_log.progress,
            operation_log=operation_log,
            started_wall=now,
            last_progress_wall=now,
        )
    return table


def make_resources(count: int, now: float, rng: random.Random) -> list[ResourceStatus]:
    """Freshness rows of `count` resources, one in ten of them failed last."""
    rows = []
    for n in range(count):
        failed = n % 10 == 0
        ended = now - rng.uniform(0, 86_400)
        rows.append(
            ResourceStatus(
                key=ResourceKey(f"{rng.getrandbits(128):032x}", "backup"),
                resource_name=f"ecs-prod-{n:05d}",
                resource_type="OS::Nova::Server",
                vault_id=f"{rng.getrandbits(128):032x}",
                last_status="failed" if failed else "success",
                last_ended=ended,
                last_success_ended=ended - 86_400 if failed else ended,
            )
        )
    return rows


def churn(table: Table, share: float, rng: random.Random) -> None:
    """Move the progress of `share` of the tasks, as polls between two scrapes would (the
    engine replaces a row to change it)."""
    now = time.time()
    tasks = list(table.tasks.values())
    for task in rng.sample(tasks, int(len(tasks) * share)):
        table.tasks[task.task_id] = replace(
            task, progress=min(100, (task.progress or 0) + 1), last_progress_wall=now
        )


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def fetch(url: str, headers: dict[str, str]) -> tuple[float, int]:
    """One blocking HTTP GET; (seconds, body bytes)."""
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our own listener
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        body = response.read()
    return time.perf_counter() - started, len(body)


class GcPauses:
    """Full (generation 2) garbage collections and how long each stopped every thread."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


class Ticker:
    """Measures how long the event loop goes without running a 1 ms sleeper."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.001)
            self.gaps.append(loop.time() - started - 0.001)

    def stop(self) -> None:
        self._stop.set()


async def bench(
    tasks: int, scrapes: int, share: float, seed: int, resources: int = 0
) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = RealClock()
    table = make_table(tasks, clock.wall(), rng)
    metrics = Metrics(clock=clock)
    metrics.attach(table)
    metrics.restore_resources(make_resources(resources, clock.wall(), rng))
    health = Health(clock)
    health.watch_loop(table)
    results: dict[str, Any] = {
        "tasks": tasks,
        "resources": resources,
        "scrapes_per_format": scrapes,
        "churn": share,
    }

    cold_snapshot, snapshot = timed(metrics.snapshot)
    cold_text, (body, _) = timed(metrics.render, "", snapshot)
    warm_snapshot, snapshot = timed(metrics.snapshot)
    warm_text, (body, _) = timed(metrics.render, "", snapshot)
    warm_om, (om_body, _) = timed(metrics.render, OPENMETRICS, snapshot)
    gzip_time, packed = timed(gzip.compress, body, 5)
    baseline = baseline_registry(metrics)
    generate_latest(baseline)
    generic_time, _ = timed(generate_latest, baseline)
    results["series"] = body.count(b"\n") - body.count(b"\n#")
    results["bytes"] = {"text": len(body), "openmetrics": len(om_body), "gzip": len(packed)}
    results["in_process_ms"] = {
        "snapshot_cold": ms(cold_snapshot),
        "snapshot_warm": ms(warm_snapshot),
        "render_text_cold": ms(cold_text),
        "render_text_warm": ms(warm_text),
        "render_openmetrics_warm": ms(warm_om),
        "gzip": ms(gzip_time),
        "generic_prometheus_client_encoder": ms(generic_time),
    }

    snapshots: list[float] = []
    original = metrics.snapshot

    def measured_snapshot() -> Any:
        elapsed, result = timed(original)
        snapshots.append(elapsed)
        return result

    metrics.snapshot = measured_snapshot  # type: ignore[method-assign]
    listener = await start_metrics_listener(metrics, health, "127.0.0.1:0")
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    scrape_ms: dict[str, dict[str, float]] = {}
    gc_pauses = GcPauses()
    try:
        with gc_pauses:
            url = listener.url + "/metrics"
            for name, headers in (
                ("text", {"Accept-Encoding": "identity"}),
                ("openmetrics", {"Accept": OPENMETRICS, "Accept-Encoding": "identity"}),
                ("openmetrics_gzip", {"Accept": OPENMETRICS, "Accept-Encoding": "gzip"}),
            ):
                times = []
                for _ in range(scrapes):
                    churn(table, share, rng)
                    elapsed, _size = await asyncio.to_thread(fetch, url, headers)
                    times.append(elapsed)
                scrape_ms[name] = {
                    "median": ms(statistics.median(times)),
                    "max": ms(max(times)),
                }
    finally:
        ticker.stop()
        await ticking
        await listener.close()
    results["http_scrape_ms"] = scrape_ms
    results["on_loop_snapshot_ms"] = {
        "median": ms(statistics.median(snapshots)),
        "max": ms(max(snapshots)),
    }
    results["loop_gap_ms"] = {
        "median": ms(statistics.median(ticker.gaps)),
        "max": ms(max(ticker.gaps)),
    }
    results["full_gc_during_scrapes"] = {
        "count": len(gc_pauses.pauses),
        "max_pause_ms": ms(max(gc_pauses.pauses, default=0.0)),
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20, help="per format")
    parser.add_argument("--churn", type=float, default=0.1, help="share of tasks changed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--resources", type=int, default=0, help="per-resource freshness rows (capped at 10,000)"
    )
    args = parser.parse_args(argv)
    configure_logging(level="warning", fmt="json", stream=sys.stderr)  # stdout is the report
    results = asyncio.run(bench(args.tasks, args.scrapes, args.churn, args.seed, args.resources))
    results["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cbr_watcher": __version__,
    }
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
