"""Batched refresh: many watched tasks through ListOpLogs pages, against the simulator."""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

import pytest

from tests.support import Events, Running, World, make_engine, run_until
from watcher.cbr.errors import CbrError, NotFoundError, ThrottledError
from watcher.cbr.models import OperationLog, OpLogPage
from watcher.config.model import DiscoverSettings
from watcher.engine import listing as batch
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.sim import SimTaskSpec
from watcher.sources.discovery import Discovery

pytestmark = pytest.mark.every_dialect


def shows(world: World) -> int:
    return sum(1 for r in world.sim.request_log if r.task_id is not None)


def lists(world: World) -> int:
    return sum(1 for r in world.sim.request_log if r.task_id is None and "operation-logs" in r.path)


async def test_many_tasks_are_refreshed_by_listings_and_all_end_once(
    world: World, dialect: str
) -> None:
    """200 tasks end with one terminal event each (in every dialect), for far fewer requests
    than one ShowOpLog per task per poll."""
    specs = [
        SimTaskSpec(
            id=f"bulk-{i:04d}",
            outcome="failed" if i % 10 == 0 else "success",
            waiting=10,
            running=600 + 7 * i,
        )
        for i in range(200)
    ]
    ids = world.sim.add_tasks(specs)
    events = Events()
    engine = make_engine(world, on_event=events, retention=86_400)
    for task_id in ids:
        engine.add(task_id)
    await run_until(world, engine, engine.all_done)

    for i, task_id in enumerate(ids):
        terminal = [t for t in events.of(task_id) if t in ("task.succeeded", "task.failed")]
        assert terminal == ["task.failed" if i % 10 == 0 else "task.succeeded"], task_id
        assert engine.tasks[task_id].end_reason == ("failed" if i % 10 == 0 else "success")
    requests = shows(world) + lists(world)
    # One ShowOpLog per task at least (the first poll tells its creation time), then pages.
    assert lists(world) > 0
    assert engine.stats.list_refreshed > 5 * len(ids)
    # Polled one by one, each task would cost one request every 5-60 s for its ~10-35 min.
    # Pages capped at 100 take three a sweep instead of one (each stands on the last entry).
    pages_per_sweep = 3 if world.sim.dialect.limit_cap is not None else 1
    assert requests < (2 + pages_per_sweep) * len(ids), (dialect, shows(world), lists(world))


async def test_a_single_task_is_polled_with_showoplog(world: World) -> None:
    """One task alone never costs a listing: a page would refresh nothing more."""
    task_id = world.sim.add_task(SimTaskSpec(id="alone", waiting=5, running=900))
    engine = make_engine(world)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    assert engine.tasks[task_id].end_reason == "success"
    assert lists(world) == 0


class ShiftingList:
    """A ListOpLogs that deletes the newest entry after each page, shifting offsets, over a
    fixed set of logs (newest first)."""

    def __init__(self, logs: list[OperationLog]) -> None:
        self.logs = list(logs)
        self.calls: list[int] = []

    async def list_op_logs(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        extra: object = None,
        **_: object,
    ) -> OpLogPage:
        assert limit is not None
        assert offset is not None
        self.calls.append(offset)
        page = self.logs[offset : offset + limit]
        result = OpLogPage(operation_logs=page, count=len(self.logs), limit=limit, offset=offset)
        if self.logs:
            del self.logs[0]  # a deletion at the head: every later entry moves one earlier
        return result


def _log(task_id: str) -> OperationLog:
    return OperationLog.from_raw(
        {
            "id": task_id,
            "status": "running",
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "project_id": "p",
            "error_info": {"code": "", "message": ""},
        }
    )


async def _no_wait() -> None:
    return None


async def test_paging_under_deletions_reads_again_instead_of_skipping() -> None:
    """Deletions at the head pull entries toward earlier offsets while paging: plain offset
    paging would skip some. Each page stands on the last entry read, so the pager notices
    and reads again: every task still listed is found, and only the deleted ones are missing
    (the engine confirms those with a ShowOpLog). Repeated entries are counted once."""
    logs = [_log(f"t-{i:03d}") for i in range(30)]
    api = ShiftingList(logs)
    wanted = [log.id for log in logs]
    result = await batch.list_all(api, batch.Listing({}), wanted=wanted, acquire=_no_wait, limit=10)
    still_listed = {log.id for log in api.logs}
    missing = set(wanted) - set(result.found)
    assert still_listed <= set(result.found)
    assert missing <= set(wanted) - still_listed
    assert all(task_id in wanted for task_id in result.found)


class DroppingClient:
    """The world's client, except that listings never show the tasks in `hidden` (as if
    CBR had deleted them from the list, or they moved past the offset while paging)."""

    def __init__(self, world: World, hidden: set[str]) -> None:
        self._client = world.client
        self.hidden = hidden

    async def show_op_log(self, task_id: str) -> OperationLog:
        return await self._client.show_op_log(task_id)

    async def reload_credentials(self) -> None:
        await self._client.reload_credentials()

    async def list_op_logs(self, **kwargs: Any) -> OpLogPage:
        page = await self._client.list_op_logs(**kwargs)
        kept = [log for log in page.operation_logs if log.id not in self.hidden]
        return OpLogPage(
            operation_logs=kept, count=page.count, limit=page.limit, offset=page.offset
        )


async def test_engine_confirms_tasks_a_listing_missed(world: World) -> None:
    """Tasks missing from the pages are confirmed with ShowOpLog and still end; the
    others are refreshed by the listings."""
    ids = world.sim.add_tasks(
        [SimTaskSpec(id=f"miss-{i:02d}", waiting=5, running=1200 + 10 * i) for i in range(12)]
    )
    hidden = {ids[0], ids[5]}
    events = Events()
    engine = Engine(
        client=DroppingClient(world, hidden),
        clock=world.clock,
        policy=Policy(interval_min=5, interval_max=60, deadline=6 * 3600, not_found_grace=120),
        max_requests_per_second=50,
        on_event=events,
        retention=86_400,
        rng=random.Random(3),
    )
    for task_id in ids:
        engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    assert all(engine.tasks[t].end_reason == "success" for t in ids)
    assert all(events.of(t).count("task.succeeded") == 1 for t in ids)
    per_task = collections.Counter(r.task_id for r in world.sim.request_log if r.task_id)
    assert lists(world) > 0
    # The hidden ones are polled one by one throughout; the rest mostly through listings.
    assert min(per_task[t] for t in hidden) > 3 * max(per_task[t] for t in ids if t not in hidden)


class FailingLists(DroppingClient):
    """The world's client whose first listing fails with `error` (then lists normally)."""

    def __init__(self, world: World, error: Exception) -> None:
        super().__init__(world, set())
        self.error: Exception | None = error
        self.clock = world.clock
        self.failed_at: float | None = None

    async def list_op_logs(self, **kwargs: Any) -> OpLogPage:
        if self.error is not None:
            error, self.error = self.error, None
            self.failed_at = self.clock.monotonic()
            raise error
        return await super().list_op_logs(**kwargs)


def engine_on(world: World, client: Any, *, rate: float = 50) -> Engine:
    return Engine(
        client=client,
        clock=world.clock,
        policy=Policy(interval_min=5, interval_max=60, deadline=6 * 3600, not_found_grace=120),
        max_requests_per_second=rate,
        retention=86_400,
        rng=random.Random(8),
    )


@pytest.mark.parametrize(
    "error",
    [
        ThrottledError("over the limit", retry_after=40.0, error_code="APIGW.0308"),
        NotFoundError("Operation log does not exist.", http_status=404),
    ],
    ids=["429", "404"],
)
async def test_a_failed_list_page_loses_no_task(world: World, error: CbrError) -> None:
    """A 429 (with Retry-After) or a 404 on a list page: every task still ends with its true
    status through ShowOpLogs; after a 429 no request at all is made until it expires."""
    ids = world.sim.add_tasks(
        [SimTaskSpec(id=f"pg-{i:02d}", waiting=5, running=900 + 30 * i) for i in range(10)]
    )
    client = FailingLists(world, error)
    engine = engine_on(world, client)
    for task_id in ids:
        engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    assert all(engine.tasks[t].end_reason == "success" for t in ids)
    assert client.failed_at is not None
    if isinstance(error, ThrottledError):
        paused = [
            r.monotonic
            for r in world.sim.request_log
            if client.failed_at < r.monotonic < client.failed_at + 40.0
        ]
        assert paused == []


async def test_lists_shows_and_discovery_share_one_budget(world: World) -> None:
    """Named tasks refreshed by listings and ShowOpLogs, and discovery looking every few
    seconds: no one second on the wire carries more than max_requests_per_second."""
    world.sim.add_tasks(
        [SimTaskSpec(id=f"named-{i:02d}", waiting=2, running=300 + 11 * i) for i in range(30)]
    )
    world.sim.add_tasks(
        [SimTaskSpec(id=f"found-{i:02d}", waiting=2, running=200 + 13 * i) for i in range(10)]
    )
    rate = 3
    engine = engine_on(world, world.client, rate=rate)
    for i in range(30):
        engine.add(f"named-{i:02d}")
    finder = Discovery(
        client=world.client,
        engine=engine,
        clock=world.clock,
        blocks=[DiscoverSettings()],
        interval=4.0,
        lookback=3600.0,
    )
    async with Running(world, engine) as running:
        looking = asyncio.ensure_future(finder.run())
        try:
            await running.until(
                lambda: finder.looks >= 1 and engine.all_done(),
                max_seconds=4 * 3600,
                settle_real=5.0,
            )
        finally:
            looking.cancel()
    assert finder.discovered == 10
    assert engine.stats.list_pages > 0
    times = sorted(r.monotonic for r in world.sim.request_log)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= rate
