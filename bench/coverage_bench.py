"""Coverage at scale: what the inventory costs at 10 and at 10,000 resources.

    python bench/coverage_bench.py [--sizes 10,10000] [--vaults 50] [--json out.json]

For each size the simulator (in this process, on a real loopback socket) holds the resources
in `--vaults` vaults (one vault at 10 resources), a daily 14:00 UTC backup policy on every
vault, and one available backup for nine resources in ten. Coverage runs with the daemon's
defaults (`max_requests_per_second` 20, so coverage gets 5 requests/s; `coverage.interval`
15 min) on a fake clock that only moves when nothing is in flight, so the simulated times are
what the request budget allows, and the real time and CPU time are what the watcher and the
simulator (in this process) spent.

Measured: the first inventory (vault pages and ListPolicies) and the seeding of every new
resource (one ListBackups each): requests, simulated duration, CPU; then the steady cost over
two simulated days (inventories every 15 min and the daily missed-backup checks, discovery off:
each check lists the backup tasks created since the start through ListOpLogs): requests per
hour; and the RSS the coverage state adds per resource (VmRSS after a garbage collection,
before and after, with the simulator's inventory built beforehand). Results: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watcher.cbr.auth import TokenAuthenticator  # noqa: E402
from watcher.cbr.client import CbrClient  # noqa: E402
from watcher.config.model import CoverageSettings  # noqa: E402
from watcher.coverage.coverage import Coverage  # noqa: E402
from watcher.delivery.outbox import Outbox  # noqa: E402
from watcher.delivery.recorder import StateRecorder  # noqa: E402
from watcher.engine.engine import Engine  # noqa: E402
from watcher.engine.schedule import Policy  # noqa: E402
from watcher.observe.metrics import Metrics  # noqa: E402
from watcher.sim import Simulator  # noqa: E402
from watcher.sim.inventory import BackupSpec, ResourceSpec, VaultSpec  # noqa: E402
from watcher.sim.policies import PolicySpec  # noqa: E402
from watcher.state.sqlite import Store  # noqa: E402
from watcher.testing import FakeClock, drive_until  # noqa: E402

DAY = 86_400.0
SETTLE = 60.0
"""The fake clock never moves while a request is in flight (a slow simulator answer must not
look like simulated time)."""


def rss_mib() -> float:
    """VmRSS of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BusyStore:
    """The state store, counted as busy while a call is under way: the fake clock must not
    run on while coverage waits for the disk, only while it waits for the budget."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.busy = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.busy += 1
            try:
                return await method(*args, **kwargs)
            finally:
                self.busy -= 1

        return call


def stage(sim: Simulator, resources: int, vaults: int) -> None:
    per_vault = -(-resources // vaults)
    specs = []
    made = 0
    for v in range(vaults):
        count = min(per_vault, resources - made)
        if count <= 0:
            break
        specs.append(
            VaultSpec(
                id=f"vault-{v:03d}",
                resources=tuple(ResourceSpec(id=f"ecs-{made + i:05d}") for i in range(count)),
            )
        )
        made += count
    sim.inventory.add_vaults(specs)
    sim.inventory.add_backups(
        BackupSpec(f"ecs-{n:05d}", age=20 * 3600.0) for n in range(resources) if n % 10
    )
    sim.add_policy(
        PolicySpec(
            id="p-daily",
            pattern=("FREQ=DAILY;BYHOUR=14;BYMINUTE=0",),
            vaults=tuple(spec.id for spec in specs if spec.id),
            spread=600.0,
            duration=900.0,
        )
    )


async def measure(resources: int, vaults: int) -> dict[str, Any]:
    clock = FakeClock()
    sim = Simulator(clock, tokens=["t"], seed=1)
    stage(sim, resources, vaults)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "token").write_text("t\n")
    result: dict[str, Any] = {"resources": resources, "vaults": min(vaults, resources)}
    async with sim.running() as base_url:
        client = CbrClient(
            endpoint=base_url,
            project_id=sim.project_id,
            auth=TokenAuthenticator(token_file=tmp / "token"),
            clock=clock,
        )
        async with client:
            store = BusyStore(await Store.open(str(tmp / "state.db")))
            metrics = Metrics(clock=clock, process_metrics=False)
            recorder = StateRecorder(store, Outbox([], project_id=sim.project_id))  # type: ignore[arg-type]
            engine = Engine(
                client=client,
                clock=clock,
                policy=Policy(interval_min=5, interval_max=15, deadline=DAY, not_found_grace=60),
                max_requests_per_second=20,
                rng=random.Random(1),
            )
            coverage = Coverage(
                api=client,
                engine=engine,
                clock=clock,
                settings=CoverageSettings(enabled=True),
                observer=metrics,
                record_missed=recorder.record_missed,
                store=store,
            )
            metrics.attach_coverage(coverage)

            def busy() -> bool:
                return engine.in_flight > 0 or store.busy > 0

            running = asyncio.ensure_future(engine.run())

            async def call(work: Any) -> Any:
                task = asyncio.ensure_future(work())
                await drive_until(
                    clock,
                    task.done,
                    busy=busy,
                    max_seconds=30 * DAY,
                    settle_real=SETTLE,
                )
                return task.result()

            gc.collect()
            rss_before = rss_mib()
            cpu_before, real_before, sim_before = cpu(), time.perf_counter(), clock.monotonic()
            await call(coverage.inventory_once)
            first_inventory = coverage.requests
            inventory_sim = clock.monotonic() - sim_before
            await call(coverage.seed)
            result["first_inventory_requests"] = first_inventory
            result["first_inventory_simulated_s"] = round(inventory_sim, 1)
            result["seed_requests"] = coverage.requests - first_inventory
            result["first_total_simulated_s"] = round(clock.monotonic() - sim_before, 1)
            result["first_cpu_s"] = round(cpu() - cpu_before, 2)
            result["first_real_s"] = round(time.perf_counter() - real_before, 2)
            body, _ = metrics.render()
            result["series_lines"] = body.count(b"\n")
            gc.collect()
            result["rss_added_mib"] = round(rss_mib() - rss_before, 1)
            result["rss_bytes_per_resource"] = round(
                (rss_mib() - rss_before) * 1024 * 1024 / resources
            )

            # Steady state: two simulated days of the inventory loop and the check loop.
            before = coverage.requests
            steady_cpu = cpu()
            start = clock.monotonic()
            loops = asyncio.ensure_future(coverage.run())
            await drive_until(
                clock,
                lambda: clock.monotonic() - start >= 2 * DAY,
                busy=busy,
                max_seconds=3 * DAY,
                settle_real=SETTLE,
            )
            loops.cancel()
            await asyncio.gather(loops, return_exceptions=True)
            hours = (clock.monotonic() - start) / 3600
            result["steady_requests_per_hour"] = round((coverage.requests - before) / hours, 1)
            result["steady_inventories"] = coverage.inventories
            result["steady_cpu_s_per_hour"] = round((cpu() - steady_cpu) / hours, 3)
            result["missed_announced"] = sum(coverage.counts.values())
            engine.stop()
            await drive_until(clock, running.done, busy=busy)
            await store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000")
    parser.add_argument("--vaults", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results = []
    for size in (int(part) for part in args.sizes.split(",")):
        results.append(asyncio.run(measure(size, args.vaults if size >= args.vaults else 1)))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
