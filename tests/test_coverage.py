"""Coverage (SPEC §11) against the simulator: every protected resource from the first inventory,
what an inventory costs, and backup.missed once per resource and scheduled start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.support import Events, Running, World, make_engine
from watcher.config.model import CoverageSettings
from watcher.coverage.coverage import Coverage
from watcher.delivery.outbox import Outbox, Route
from watcher.delivery.recorder import StateRecorder
from watcher.engine.engine import Engine
from watcher.observe.metrics import Metrics
from watcher.sim import Simulator
from watcher.sim.inventory import BackupSpec, ResourceSpec, VaultSpec
from watcher.sim.policies import PolicySkip, PolicySpec
from watcher.state.sqlite import Store

HOUR = 3600.0
DAY = 24 * HOUR
DAILY_14 = "FREQ=DAILY;BYHOUR=14;BYMINUTE=0"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def stage(sim: Simulator, *, skip: tuple[PolicySkip, ...] = ()) -> None:
    """Three servers under a daily 14:00 UTC policy (two backed up a day ago, one never), and
    a disk vault that no policy applies to."""
    sim.inventory.add_vaults(
        [
            VaultSpec(
                id="vault-web",
                name="web",
                resources=tuple(ResourceSpec(id=f"ecs-{n}", name=f"web-{n}") for n in (1, 2, 3)),
            ),
            VaultSpec(
                id="vault-disks",
                name="disks",
                resource_type="OS::Cinder::Volume",
                resources=(ResourceSpec(id="disk-1", name="data-1"),),
            ),
        ]
    )
    sim.inventory.add_backups([BackupSpec("ecs-1", age=DAY), BackupSpec("ecs-2", age=DAY + HOUR)])
    sim.add_policy(
        PolicySpec(
            id="p-daily",
            pattern=(DAILY_14,),
            vaults=("vault-web",),
            skip=skip,
            duration=600,
            duration_sigma=0,
            waiting=10,
        )
    )


class Daemon:
    """An engine, its metrics, a state file and coverage, as the daemon wires them."""

    def __init__(self, world: World, store: Store, *, receivers: bool = True, **cov: Any):
        self.world = world
        self.store = store
        self.metrics = Metrics(clock=world.clock, process_metrics=False)
        routes = [Route("ops", ("backup.*",))] if receivers else []
        outbox = Outbox(routes, project_id=world.sim.project_id)
        self.recorder = StateRecorder(store, outbox)
        self.events = Events()
        self.engine: Engine = make_engine(world, on_event=self.events, record=self.recorder)
        self.metrics.attach(self.engine)
        self.engine.subscribe(self.metrics.on_event)
        settings = CoverageSettings.model_validate({"enabled": True, **cov})
        self.coverage = Coverage(
            api=world.client,
            engine=self.engine,
            clock=world.clock,
            settings=settings,
            observer=self.metrics,
            record_missed=self.recorder.record_missed,
            store=store,
        )
        self.engine.subscribe(self.coverage.on_event)
        self.metrics.attach_coverage(self.coverage)

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        body, _ = self.metrics.render()
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name:
                    out[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def by_resource(self, name: str) -> dict[str, float]:
        return {dict(labels)["resource_id"]: v for labels, v in self.samples(name).items()}


async def call(running: Running, work: Callable[[], Awaitable[Any]]) -> Any:
    task = asyncio.ensure_future(work())
    await running.until(task.done, max_seconds=3 * DAY)
    return task.result()


async def test_the_first_inventory_covers_every_protected_resource(
    world: World, tmp_path: Path
) -> None:
    """Before any task finished: every resource is protected (with its policy, or none), two
    have a last success from their newest backup, and two have never been backed up."""
    stage(world.sim)
    start = world.clock.wall()
    store = await Store.open(str(tmp_path / "state.db"))
    daemon = Daemon(world, store)
    async with Running(world, daemon.engine) as running:
        assert await call(running, daemon.coverage.inventory_once)
        assert await call(running, daemon.coverage.seed)
    protected = daemon.samples("cbr_watcher_resource_protected")
    assert {dict(labels)["resource_id"]: dict(labels) for labels in protected}["ecs-1"] == {
        "resource_id": "ecs-1",
        "resource_name": "web-1",
        "resource_type": "OS::Nova::Server",
        "vault_id": "vault-web",
        "vault_name": "web",
        "policy_id": "p-daily",
    }
    policies = {dict(labels)["resource_id"]: dict(labels)["policy_id"] for labels in protected}
    assert policies == {"ecs-1": "p-daily", "ecs-2": "p-daily", "ecs-3": "p-daily", "disk-1": ""}
    success = daemon.by_resource("cbr_watcher_resource_last_success_timestamp_seconds")
    assert success == {"ecs-1": start - DAY, "ecs-2": start - DAY - HOUR}
    assert daemon.by_resource("cbr_watcher_resource_last_status") == {}  # no task finished
    assert daemon.by_resource("cbr_watcher_resource_never_backed_up") == {
        "ecs-1": 0,
        "ecs-2": 0,
        "ecs-3": 1,
        "disk-1": 1,
    }
    assert daemon.by_resource("cbr_watcher_resource_next_backup_timestamp_seconds") == {
        r: utc("2026-01-01 14:00") for r in ("ecs-1", "ecs-2", "ecs-3")
    }
    assert set(daemon.by_resource("cbr_watcher_resource_missed_backups_total").values()) == {0}
    [(_, completed)] = daemon.samples(
        "cbr_watcher_inventory_last_success_timestamp_seconds"
    ).items()
    assert completed == daemon.coverage.completed
    # Two vault pages (the second empty), one ListPolicies, one ListBackups per resource.
    assert daemon.coverage.requests == 2 + 1 + 4
    await store.close()


async def test_a_steady_inventory_costs_only_the_vault_and_policy_pages(
    world: World, tmp_path: Path
) -> None:
    stage(world.sim)
    store = await Store.open(str(tmp_path / "state.db"))
    daemon = Daemon(world, store)
    async with Running(world, daemon.engine) as running:
        await call(running, daemon.coverage.inventory_once)
        await call(running, daemon.coverage.seed)
        before = daemon.coverage.requests
        await call(running, daemon.coverage.inventory_once)
        await call(running, daemon.coverage.seed)
        assert daemon.coverage.requests - before == 3
    await store.close()
    # A restart asks ListBackups about nobody again: the seeds are in the state file.
    store = await Store.open(str(tmp_path / "state.db"))
    daemon = Daemon(world, store)
    await daemon.coverage.restore()
    async with Running(world, daemon.engine) as running:
        await call(running, daemon.coverage.inventory_once)
        await call(running, daemon.coverage.seed)
    assert daemon.coverage.requests == 3
    assert daemon.by_resource("cbr_watcher_resource_never_backed_up")["ecs-3"] == 1
    assert daemon.by_resource("cbr_watcher_resource_last_success_timestamp_seconds")["ecs-1"] > 0
    await store.close()


async def test_a_skipped_run_is_announced_once_and_survives_a_restart(
    world: World, tmp_path: Path
) -> None:
    """ecs-2 gets no backup task at 14:00: at 15:00 (the grace) one backup.missed is committed
    to the outbox, logged and counted; the others are not, though the engine watched none of
    their tasks (a ListOpLogs listing showed them). A restart announces nothing again."""
    stage(world.sim, skip=(PolicySkip("ecs-2", run=0),))
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    daemon = Daemon(world, store)
    with capture_logs() as logs:
        async with Running(world, daemon.engine) as running:
            runner = asyncio.ensure_future(daemon.coverage.run())
            await running.until(lambda: world.clock.wall() >= utc("2026-01-01 16:00"))
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    missed = [e for e in logs if e["event"] == "backup.missed"]
    assert missed == [
        {
            "event": "backup.missed",
            "log_level": "warning",
            "resource_id": "ecs-2",
            "resource_name": "web-2",
            "vault_id": "vault-web",
            "policy_id": "p-daily",
            "scheduled_at": "2026-01-01T14:00:00Z",
        }
    ]
    assert daemon.by_resource("cbr_watcher_resource_missed_backups_total") == {
        "ecs-1": 0,
        "ecs-2": 1,
        "ecs-3": 0,
        "disk-1": 0,
    }
    rows = await store.due("ops", world.clock.wall(), limit=10)
    assert len(rows) == 1
    body = json.loads(rows[0].body)
    assert body == {
        "type": "backup.missed",
        "timestamp": "2026-01-01T15:00:00.000Z",
        "data": {
            "project_id": world.sim.project_id,
            "resource": {"id": "ecs-2", "name": "web-2", "type": "OS::Nova::Server"},
            "vault_id": "vault-web",
            "vault_name": "web",
            "policy_id": "p-daily",
            "policy_name": "p-daily",
            "scheduled_at": "2026-01-01T14:00:00.000Z",
        },
    }
    event_id = rows[0].event_id
    await store.close()

    store = await Store.open(path)
    again = Daemon(world, store)
    await again.coverage.restore()
    with capture_logs() as logs:
        async with Running(world, again.engine) as running:
            runner = asyncio.ensure_future(again.coverage.run())
            await running.until(lambda: world.clock.wall() >= utc("2026-01-01 17:00"))
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    assert [e for e in logs if e["event"] == "backup.missed"] == []
    assert again.by_resource("cbr_watcher_resource_missed_backups_total")["ecs-2"] == 1
    rows = await store.due("ops", world.clock.wall(), limit=10)
    assert [row.event_id for row in rows] == [event_id]
    await store.close()
