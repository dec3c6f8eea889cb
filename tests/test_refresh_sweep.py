"""The refresh sweep on the fake clock: who it covers, what a refused listing costs, and that
a refusal at 10,000 tasks makes no herd."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from watcher.cbr.errors import FatalError
from watcher.cbr.models import OperationLog, OpLogPage
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.testing import FakeClock, drive_until


class FakeCloud:
    """CBR in memory: every task keeps running; listing answers until it is refused (403).
    (The simulator serves the same over HTTP; in memory, 10,000 tasks take seconds.)"""

    def __init__(self, clock: FakeClock, task_ids: list[str], *, refuse_listing: bool) -> None:
        self.clock = clock
        self.refuse_listing = refuse_listing
        created = datetime.fromtimestamp(clock.wall() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.logs = {
            task_id: OperationLog.from_raw(
                {
                    "id": task_id,
                    "status": "running",
                    "operation_type": "backup",
                    "created_at": created,
                    "project_id": "p",
                    "extra_info": {"common": {"progress": 10}},
                }
            )
            for task_id in task_ids
        }
        self.order = list(reversed(task_ids))
        self.shows: list[float] = []
        self.lists: list[float] = []

    async def show_op_log(self, task_id: str) -> OperationLog:
        """ShowOpLog always works."""
        self.shows.append(self.clock.monotonic())
        await asyncio.sleep(0)
        return self.logs[task_id]

    async def list_op_logs(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
        **_: object,
    ) -> OpLogPage:
        """ListOpLogs, or the gateway's 403 when listing is not allowed."""
        self.lists.append(self.clock.monotonic())
        await asyncio.sleep(0)
        if self.refuse_listing:
            raise FatalError(
                "HTTP 403 APIGW.0302: not authorized", http_status=403, error_code="APIGW.0302"
            )
        start = offset or 0
        ids = self.order[start : start + (limit or 1000)]
        return OpLogPage([self.logs[i] for i in ids])

    async def reload_credentials(self) -> None:
        """Nothing to reload."""


def engine_for(cloud: FakeCloud, clock: FakeClock, rate: float) -> Engine:
    return Engine(
        client=cloud,
        clock=clock,
        policy=Policy(),
        max_requests_per_second=rate,
        max_concurrency=512,
        rng=random.Random(3),
    )


async def watch(engine: Engine, cloud: FakeCloud) -> None:
    """Hand every task to the engine the way discovery does (with its listed answer)."""
    for operation_log in cloud.logs.values():
        await engine.discovered(operation_log, {})


async def run_for(engine: Engine, clock: FakeClock, seconds: float) -> None:
    """Run the engine for `seconds` of fake time, then stop it."""
    runner = asyncio.create_task(engine.run())
    until = clock.monotonic() + seconds
    try:
        await drive_until(
            clock, lambda: clock.monotonic() >= until, busy=lambda: engine.in_flight > 0
        )
    finally:
        engine.stop()
        await drive_until(clock, runner.done)
        await runner


@pytest.mark.parametrize("refused_after", [0.0, 95.0])
async def test_a_refused_listing_at_ten_thousand_tasks_makes_no_herd(refused_after: float) -> None:
    """10,000 running tasks, 500 requests/s, listing refused (403) at the first sweep or
    mid-run: one warning that says what it costs, the refusal counted, no listing again
    within the hour, and the tasks' own looks spread so that no second carries more than the
    budget and the scheduler never falls behind (p99 lag ≤ 100 ms)."""
    clock = FakeClock()
    ids = [f"task-{n:05d}" for n in range(10_000)]
    cloud = FakeCloud(clock, ids, refuse_listing=refused_after == 0)
    rate = 500.0
    engine = engine_for(cloud, clock, rate)
    await watch(engine, cloud)

    def busy() -> bool:
        return engine.in_flight > 0

    runner = asyncio.create_task(engine.run())
    try:
        with capture_logs() as logs:
            start = clock.monotonic()
            await drive_until(clock, lambda: clock.monotonic() >= start + refused_after, busy=busy)
            cloud.refuse_listing = True
            engine.stats.lag_samples.clear()
            refused_at = clock.monotonic()
            lists_before = len(cloud.lists)
            await drive_until(clock, lambda: clock.monotonic() >= refused_at + 180, busy=busy)
    finally:
        engine.stop()
        await drive_until(clock, runner.done)
        await runner
    refused = [e for e in logs if e["event"] == "refresh.list_refused"]
    assert len(refused) == 1
    assert "ShowOpLog" in refused[0]["detail"]
    assert engine.stats.list_refused["refresh"] == 1
    assert len(cloud.lists) == lists_before + 1  # not tried again within the hour
    shows = [t for t in cloud.shows if t >= refused_at]
    per_second = collections.Counter(math.floor(t) for t in shows)
    assert max(per_second.values()) <= rate
    assert len(shows) >= 3 * len(ids)  # every task keeps being looked at
    lags = sorted(engine.stats.lag_samples)
    assert lags[int(0.99 * len(lags))] <= 0.1


async def test_many_tasks_cost_one_page_per_list_interval_and_no_showoplog() -> None:
    clock = FakeClock()
    cloud = FakeCloud(clock, [f"t{n}" for n in range(50)], refuse_listing=False)
    engine = engine_for(cloud, clock, 20.0)
    await watch(engine, cloud)
    await run_for(engine, clock, 600)
    assert cloud.shows == []
    assert 55 <= len(cloud.lists) <= 62
    gaps = [b - a for a, b in zip(cloud.lists, cloud.lists[1:], strict=False)]
    assert max(gaps) <= 10.0 + 1e-6


async def test_one_task_alone_is_looked_at_within_poll_interval_max() -> None:
    clock = FakeClock()
    cloud = FakeCloud(clock, ["alone"], refuse_listing=False)
    engine = engine_for(cloud, clock, 20.0)
    start = clock.monotonic()
    await watch(engine, cloud)  # the listed answer is the first look
    await run_for(engine, clock, 600)
    assert cloud.lists == []
    looks = [start, *cloud.shows]
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    assert len(cloud.shows) >= 600 / 15 - 1
    assert max(gaps) <= 15.0 + 1e-6
