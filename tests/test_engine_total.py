"""The engine is total: no exception, failed write or lost schedule leaves a task without a
next poll, and nothing is published that was not committed first."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.support import Events, Running, World, make_engine, open_world, run_until
from watcher.cbr.client import CbrClient
from watcher.cbr.models import OperationLog, OpLogPage
from watcher.delivery.recorder import StateRecorder
from watcher.engine.engine import INVARIANT_CHECK_INTERVAL, Engine, WatchedTask
from watcher.engine.events import TaskEvent
from watcher.observe.metrics import Metrics
from watcher.observe.server import Health
from watcher.sim import SimTaskSpec
from watcher.state.sqlite import Store

SURPRISES: list[type[Exception]] = [
    RecursionError,
    OverflowError,
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    RuntimeError,
    ZeroDivisionError,
]


class SurprisingClient:
    """The real client, except that scripted calls raise what no client should raise."""

    def __init__(self, client: CbrClient, script: Sequence[type[Exception] | None]) -> None:
        self._client = client
        self.script = list(script)
        self.raised = 0

    async def show_op_log(self, task_id: str) -> OperationLog:
        """Raise the next scripted exception, or ask the simulator."""
        surprise = self.script.pop(0) if self.script else None
        if surprise is not None:
            self.raised += 1
            raise surprise("injected")
        return await self._client.show_op_log(task_id)

    async def list_op_logs(self, **query: Any) -> OpLogPage:
        """Forward."""
        return await self._client.list_op_logs(**query)

    async def reload_credentials(self) -> None:
        """Forward."""
        await self._client.reload_credentials()


def with_client(world: World, client: SurprisingClient, **options: object) -> Engine:
    """`make_engine`, polling through `client`."""
    return make_engine(world, client=client, **options)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(st.one_of(st.none(), st.sampled_from(SURPRISES)), max_size=30),
    outcome=st.sampled_from(["success", "failed", "skipped", "timeout"]),
)
def test_no_exception_ends_a_watch_early(
    script: list[type[Exception] | None], outcome: str
) -> None:
    """Whatever a poll raises, the task reaches its true status and the run ends."""

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with open_world(Path(tmp), seed=3) as world:
                task_id = world.sim.add_task(
                    SimTaskSpec(id="t1", outcome=outcome, waiting=20, running=300)
                )
                client = SurprisingClient(world.client, script)
                events = Events()
                engine = with_client(world, client, on_event=events, exit_when_done=True)
                engine.add(task_id)
                async with Running(world, engine) as running:
                    await running.until(engine.all_done, max_seconds=6 * 3600)
                    assert engine.check_invariants() == []
                task = engine.tasks[task_id]
                assert task.end_reason == outcome
                assert engine.stats.internal_errors["poll"] == client.raised
                assert events.of(task_id)[-1].startswith("task.")
                assert events.of(task_id).count(events.of(task_id)[-1]) == 1

    asyncio.run(scenario())


async def test_internal_errors_are_logged_once_per_streak(world: World) -> None:
    """Five surprises in a row are one error log line, with the type and no traceback."""
    task_id = world.sim.add_task(SimTaskSpec(id="t2", waiting=5, running=120))
    client = SurprisingClient(world.client, [RecursionError] * 5)
    engine = with_client(world, client)
    engine.add(task_id)
    with capture_logs() as logs:
        await run_until(world, engine, engine.all_done)
    failing = [e for e in logs if e["event"] == "upstream.failing"]
    assert len(failing) == 1
    assert failing[0]["kind"] == "internal"
    assert "RecursionError" in failing[0]["error"]
    assert not any("exc_info" in e for e in logs if e["log_level"] != "debug")
    assert engine.tasks[task_id].end_reason == "success"


class FlakyRecorder:
    """The real StateRecorder, failing like a full disk while `failing` is set."""

    def __init__(self, inner: StateRecorder) -> None:
        self._inner = inner
        self.failing = False
        self.refused = 0

    async def __call__(self, task: WatchedTask, events: Sequence[TaskEvent]) -> None:
        if self.failing:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        await self._inner(task, events)


async def test_a_failed_write_publishes_nothing_and_is_retried(
    world: World, tmp_path: Path
) -> None:
    """Durable before visible, on the failure path too: while the state file refuses writes,
    the task keeps its last saved state, no event is published, /readyz says the store is
    failing; once writes work again every event arrives once, in order, and is on disk."""
    task_id = world.sim.add_task(SimTaskSpec(id="t3", waiting=10, running=200))
    store = await Store.open(str(tmp_path / "state.db"))
    try:
        recorder = FlakyRecorder(StateRecorder(store, None))
        events = Events()
        engine = make_engine(world, on_event=events, record=recorder)
        health = Health(world.clock)
        health.check("store", lambda: engine.store_failing_since is None)
        engine.add(task_id)
        async with Running(world, engine) as running:
            await running.until(lambda: engine.tasks[task_id].status == "running")
            saved_progress = engine.tasks[task_id].progress
            recorder.failing = True
            await running.until(lambda: recorder.refused >= 3)
            task = engine.tasks[task_id]
            assert (task.status, task.progress) == ("running", saved_progress)
            assert events.of(task_id) == ["task.started"]
            ready, conditions = health.readiness()
            assert not ready
            assert conditions["store"] is False
            # The task ends in CBR while the disk is full: still not published.
            world.clock.advance(400)
            await running.until(lambda: recorder.refused >= 6)
            assert events.of(task_id) == ["task.started"]
            assert engine.active_count() == 1
            recorder.failing = False
            await running.until(engine.all_done)
        assert events.of(task_id)[0] == "task.started"
        assert events.of(task_id)[-1] == "task.succeeded"
        assert events.of(task_id).count("task.succeeded") == 1
        assert health.readiness()[1]["store"] is True
        saved = {record.task_id: record for record in await store.load_tasks()}
        assert saved[task_id].end_reason == "success"
        assert engine.stats.internal_errors["store"] == recorder.refused
    finally:
        await store.close()


async def test_a_lost_schedule_is_found_and_repaired(world: World) -> None:
    """If a bug ever drops a task from the heap, the invariant check finds it and polls it."""
    ids = [world.sim.add_task(SimTaskSpec(id=f"t{n}", waiting=5, running=900)) for n in range(3)]
    # Without the refresh sweep, which would otherwise reschedule them before the check runs.
    engine = make_engine(world, batch_refresh=False)
    for task_id in ids:
        engine.add(task_id)
    with capture_logs() as logs:
        async with Running(world, engine) as running:
            await running.until(lambda: all(engine.tasks[t].status for t in ids))
            engine.scheduler.clear_heap()  # simulate the bug
            assert len(engine.check_invariants()) == 3
            await running.until(lambda: engine.check_invariants() == [], max_seconds=120)
            await running.until(engine.all_done)
    violated = [e for e in logs if e["event"] == "engine.invariant_violated"]
    assert len(violated) == 1
    assert violated[0]["count"] == 3
    assert all(engine.tasks[t].end_reason == "success" for t in ids)
    assert INVARIANT_CHECK_INTERVAL <= 120


async def test_a_failing_subscriber_loses_no_watch(world: World) -> None:
    """An event subscriber that raises is counted; the task still ends and is committed."""
    task_id = world.sim.add_task(SimTaskSpec(id="t4", waiting=5, running=60))

    seen: list[str] = []

    async def broken(event: TaskEvent) -> None:
        seen.append(event.type)
        raise RuntimeError("subscriber bug")

    engine = make_engine(world, on_event=broken)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    assert engine.tasks[task_id].end_reason == "success"
    assert seen[0] == "task.started"
    assert seen[-1] == "task.succeeded"
    assert engine.stats.internal_errors["events"] == len(seen)


async def test_a_mistyped_id_warns_at_the_first_404(world: World) -> None:
    """One `task.not_found_yet` at once, with the grace left, then `watch.not_found`."""
    engine = make_engine(world)
    engine.add("typo-4827f2da")
    with capture_logs() as logs:
        await run_until(world, engine, engine.all_done)
    names = [e["event"] for e in logs if e["event"].startswith(("task.not_found", "watch."))]
    assert names == ["task.not_found_yet", "watch.not_found"]
    first = next(e for e in logs if e["event"] == "task.not_found_yet")
    assert first["grace_remaining_seconds"] == 120
    assert first["log_level"] == "warning"


async def test_internal_errors_are_exported(world: World) -> None:
    """`cbr_watcher_internal_errors_total{component}` shows what the engine survived."""
    task_id = world.sim.add_task(SimTaskSpec(id="t5", waiting=5, running=60))
    client = SurprisingClient(world.client, [KeyError, OverflowError])
    engine = with_client(world, client)
    metrics = Metrics(clock=world.clock, process_metrics=False)
    before, _ = metrics.render()
    assert b'cbr_watcher_internal_errors_total{component="poll"} 0.0' in before
    metrics.attach(engine)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    after, _ = metrics.render()
    assert b'cbr_watcher_internal_errors_total{component="poll"} 2.0' in after
    assert b'cbr_watcher_internal_errors_total{component="store"} 0.0' in after
