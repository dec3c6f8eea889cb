"""Discovery (SPEC §9): tasks nobody named are found through ListOpLogs and watched."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support import Events, Running, World, make_engine
from watcher.cbr.errors import ThrottledError, TransientError
from watcher.cbr.models import OpLogPage
from watcher.config.model import DiscoverSettings
from watcher.engine.engine import Engine
from watcher.sim import SimTaskSpec
from watcher.sources.discovery import Discovery
from watcher.state.sqlite import Store

pytestmark = pytest.mark.every_dialect


def discovery(
    world: World,
    engine: Engine,
    blocks: list[dict[str, object]] | None = None,
    *,
    store: Store | None = None,
    lookback: float = 3600.0,
) -> Discovery:
    return Discovery(
        client=world.client,
        engine=engine,
        clock=world.clock,
        blocks=[DiscoverSettings.model_validate(b) for b in (blocks or [{}])],
        interval=30.0,
        lookback=lookback,
        cursors=store,
    )


async def look(running: Running, finder: Discovery) -> list[str]:
    """One look while the engine runs (it serves the request budget)."""
    task = asyncio.ensure_future(finder.look())
    await running.until(task.done, max_seconds=600)
    return (await task).watched


async def test_discovery_watches_tasks_nobody_named_with_the_blocks_labels(world: World) -> None:
    """A running backup nobody named is watched with source "discover", its block's labels,
    and then the usual events through to its end."""
    task_id = world.sim.add_task(SimTaskSpec(id="policy-run-1", waiting=5, running=900))
    events = Events()
    engine = make_engine(world, on_event=events, retention=86_400)
    finder = discovery(world, engine, [{"labels": {"team": "storage"}}])
    async with Running(world, engine) as running:
        with capture_logs() as logs:
            assert await look(running, finder) == [task_id]
        await running.until(engine.all_done)
    row = engine.tasks[task_id]
    assert row.source == "discover"
    assert dict(row.labels) == {"team": "storage"}
    assert row.end_reason == "success"
    assert events.of(task_id)[-1] == "task.succeeded"
    watching = [e for e in logs if e["event"] == "task.watching"]
    assert watching == [
        {"event": "task.watching", "task_id": task_id, "source": "discover", "log_level": "info"}
    ]


async def test_a_task_that_started_and_ended_between_looks_gets_its_end_once(
    world: World,
) -> None:
    """A short task that ran entirely between two looks is still reported: one terminal
    event, and later looks do not report it again."""
    events = Events()
    engine = make_engine(world, on_event=events, retention=86_400)
    finder = discovery(world, engine)
    async with Running(world, engine) as running:
        assert await look(running, finder) == []
        task_id = world.sim.add_task(
            SimTaskSpec(id="quick-one", waiting=1, running=10, outcome="failed")
        )
        world.clock.advance(25)
        assert await look(running, finder) == [task_id]
        world.clock.advance(30)
        assert await look(running, finder) == []
    assert events.of(task_id) == ["task.failed"]
    assert engine.tasks[task_id].end_reason == "failed"


async def test_blocks_filter_by_vault_and_operation_type(world: World) -> None:
    """Only tasks matching a block are watched; each operation type of a block is listed."""
    world.sim.add_tasks(
        [
            SimTaskSpec(id="in-vault-backup", vault_id="vault-a", operation_type="backup"),
            SimTaskSpec(id="in-vault-restore", vault_id="vault-a", operation_type="restore"),
            SimTaskSpec(id="in-vault-copy", vault_id="vault-a", operation_type="replication"),
            SimTaskSpec(id="other-vault", vault_id="vault-b", operation_type="backup"),
            SimTaskSpec(id="ep-finance", vault_id="vault-c", enterprise_project_id="ep-fin"),
            SimTaskSpec(id="ep-default", vault_id="vault-c"),
        ]
    )
    engine = make_engine(world)
    blocks: list[dict[str, object]] = [
        {"vault_id": "vault-a", "operation_type": ["backup", "replication"]},
        {"enterprise_project_id": "ep-fin", "labels": {"ep": "finance"}},
    ]
    finder = discovery(world, engine, blocks)
    assert len(finder.queries) == 3
    async with Running(world, engine) as running:
        found = await look(running, finder)
    assert sorted(found) == ["ep-finance", "in-vault-backup", "in-vault-copy"]
    assert dict(engine.tasks["ep-finance"].labels) == {"ep": "finance"}


async def test_first_start_looks_back_and_a_restart_resumes_from_the_cursor(
    world: World, tmp_path: Path
) -> None:
    """The first start picks up tasks created within the lookback (and still-running older
    ones); a restart on the same state file announces nothing again and misses nothing
    created while it was down."""
    world.sim.add_task(SimTaskSpec(id="old-and-done", waiting=1, running=60))
    world.sim.add_task(SimTaskSpec(id="old-and-running", waiting=1, running=20_000))
    world.clock.advance(7200)
    recent = world.sim.add_task(SimTaskSpec(id="recent-done", waiting=1, running=60))
    world.clock.advance(600)
    path = str(tmp_path / "state.db")

    events = Events()
    store = await Store.open(path)
    try:
        engine = make_engine(world, on_event=events, retention=86_400)
        finder = discovery(world, engine, store=store)
        async with Running(world, engine) as running:
            found = await look(running, finder)
        assert sorted(found) == sorted(["old-and-running", recent])
    finally:
        await store.close()

    down = world.sim.add_task(SimTaskSpec(id="while-down", waiting=1, running=60))
    world.clock.advance(300)
    store = await Store.open(path)
    try:
        engine = make_engine(world, on_event=events, retention=86_400)
        engine.remember_ended({recent: None})  # what restore() would tell it from the state file
        engine.add("old-and-running")
        finder = discovery(world, engine, store=store)
        async with Running(world, engine) as running:
            found = await look(running, finder)
        assert found == [down]
    finally:
        await store.close()
    assert events.of(recent) == ["task.succeeded"]


async def test_a_task_removed_through_the_api_is_not_brought_back(world: World) -> None:
    """DELETE stops watching a discovered task; later looks leave it alone."""
    task_id = world.sim.add_task(SimTaskSpec(id="unwanted", waiting=1, running=20_000))
    engine = make_engine(world)
    finder = discovery(world, engine)
    async with Running(world, engine) as running:
        assert await look(running, finder) == [task_id]
        assert engine.remove(task_id)
        world.clock.advance(30)
        assert await look(running, finder) == []
    assert task_id not in engine.tasks


class FlakyLister:
    """The world's client, whose first `failures` listings answer 503."""

    def __init__(self, world: World, failures: int) -> None:
        self._client = world.client
        self.failures = failures

    async def list_op_logs(self, **kwargs: Any) -> OpLogPage:
        if self.failures > 0:
            self.failures -= 1
            raise TransientError("HTTP 503 from CBR", http_status=503)
        return await self._client.list_op_logs(**kwargs)


async def test_a_failing_listing_is_retried_and_never_ends_discovery(world: World) -> None:
    """A 503 on a look is logged once and retried at the next look, which finds the task."""
    task_id = world.sim.add_task(SimTaskSpec(id="found-later", waiting=1, running=20_000))
    engine = make_engine(world)
    finder = Discovery(
        client=FlakyLister(world, failures=1),
        engine=engine,
        clock=world.clock,
        blocks=[DiscoverSettings()],
        interval=30.0,
        lookback=3600.0,
    )
    async with Running(world, engine) as running:
        with capture_logs() as logs:
            assert await look(running, finder) == []
            # Discovery's requests count for the daemon's health (the heartbeat) too.
            failing_since = [engine.upstream_failing_since]
            world.clock.advance(30)
            assert await look(running, finder) == [task_id]
            failing_since.append(engine.upstream_failing_since)
    assert failing_since[0] is not None
    assert failing_since[1] is None
    names = [entry["event"] for entry in logs]
    assert names.count("discovery.list_failed") == 1
    assert "discovery.recovered" in names


class ThrottlingLister:
    """ListOpLogs that always answers 429 with an hour-long Retry-After."""

    async def list_op_logs(self, **query: Any) -> OpLogPage:
        raise ThrottledError("HTTP 429 APIGW.0308", retry_after=3600.0, error_code="APIGW.0308")


async def test_a_throttled_listing_pauses_the_budget_no_longer_than_poll_interval_max(
    world: World,
) -> None:
    """Discovery shares the request budget: a 429 with Retry-After: 3600 pauses every request
    — but for poll_interval_max at most, like a poll's, so no header stops the watching."""
    engine = make_engine(world)
    finder = Discovery(
        client=ThrottlingLister(),
        engine=engine,
        clock=world.clock,
        blocks=[DiscoverSettings()],
        interval=30.0,
        lookback=600.0,
    )
    async with Running(world, engine) as running:
        looking = asyncio.ensure_future(finder.look())
        await running.until(looking.done)
    result = await looking
    assert result.failed == 1
    now = world.clock.monotonic()
    assert engine.budget.next_allowed(now) <= now + engine.policy.interval_max
