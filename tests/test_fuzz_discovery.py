"""Fuzzing discovery and batched paging with whatever a ListOpLogs answer may hold."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.cbr.ids import is_valid_task_id
from watcher.cbr.models import MalformedBodyError, OperationLog, OpLogPage
from watcher.config.model import DiscoverSettings
from watcher.engine import listing as batch
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.sources.discovery import Discovery
from watcher.testing import FakeClock

STATUSES = st.sampled_from(["waiting", "running", "success", "failed", "skipped", "timeout"])
TIMES = st.one_of(
    st.integers(1_600_000_000, 1_900_000_000).map(
        lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ),
    st.text(max_size=12),
    st.none(),
)
IDS = st.one_of(
    st.sampled_from([f"task-{n}" for n in range(8)]),
    st.text(max_size=20),
)


@st.composite
def raw_logs(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": draw(IDS),
        "status": draw(st.one_of(STATUSES, st.text(max_size=8))),
        "created_at": draw(TIMES),
        "started_at": draw(TIMES),
        "updated_at": draw(TIMES),
        "project_id": "p",
        "error_info": {"code": "", "message": ""},
        "extra_info": draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"common": st.fixed_dictionaries({"progress": st.integers(-5, 150)})}
                ),
            )
        ),
    }
    return raw


def parsed(raws: list[dict[str, Any]]) -> list[OperationLog]:
    logs = []
    for raw in raws:
        try:
            logs.append(OperationLog.from_raw(raw))
        except MalformedBodyError:
            continue
    return logs


class PagedApi:
    """A ListOpLogs over fixed logs, honouring limit/offset, with a `count` that may lie."""

    def __init__(self, logs: list[OperationLog], count_skew: int) -> None:
        self.logs = logs
        self.count_skew = count_skew
        self.calls = 0

    async def list_op_logs(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
        **_: object,
    ) -> OpLogPage:
        self.calls += 1
        start = offset or 0
        page = self.logs[start : start + (limit or 1000)]
        return OpLogPage(
            operation_logs=page, count=max(0, len(self.logs) + self.count_skew), limit=limit
        )

    async def show_op_log(self, task_id: str) -> OperationLog:
        raise AssertionError("discovery must not need a ShowOpLog")

    async def reload_credentials(self) -> None:
        return None


async def _no_wait() -> None:
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raws=st.lists(raw_logs(), max_size=25),
    limit=st.integers(1, 7),
    skew=st.integers(-30, 30),
)
def test_paging_terminates_and_finds_each_listed_task_once(
    raws: list[dict[str, Any]], limit: int, skew: int
) -> None:
    """Whatever `count` claims, paging ends, stays within the page cap, and every task on
    the pages read is found under its ID."""
    logs = parsed(raws)
    api = PagedApi(logs, skew)
    result = asyncio.run(
        batch.list_all(api, batch.Listing({}), wanted=(), acquire=_no_wait, limit=limit)
    )
    assert api.calls <= batch.MAX_PAGES
    assert set(result.found) <= {log.id for log in logs}
    if skew >= 0:
        assert set(result.found) == {log.id for log in logs}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raws=st.lists(raw_logs(), max_size=25))
def test_a_look_never_raises_and_watches_each_valid_new_task_once(
    raws: list[dict[str, Any]],
) -> None:
    """Any listing: the look returns; each valid ID is watched exactly once; invalid IDs are
    skipped; a second look over the same list watches nothing more."""
    logs = parsed(raws)

    async def scenario() -> tuple[list[str], list[str], Engine]:
        clock = FakeClock(start_wall=1_900_000_000.0)
        api = PagedApi(logs, 0)
        engine = Engine(client=api, clock=clock, policy=Policy(), max_requests_per_second=1e9)
        finder = Discovery(
            client=api,
            engine=engine,
            clock=clock,
            blocks=[DiscoverSettings()],
            interval=30.0,
            lookback=3600.0,
        )
        first = (await finder.look()).watched
        second = (await finder.look()).watched
        return first, second, engine

    first, second, engine = asyncio.run(scenario())
    valid = {log.id for log in logs if is_valid_task_id(log.id)}
    assert sorted(first) == sorted(valid)
    assert second == []
    assert all(engine.tasks[task_id].source == "discover" for task_id in first)
