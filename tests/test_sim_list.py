"""The simulator's ListOpLogs: filters, time window, limit/offset, count and order, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_sim import Api, assert_cbr_headers
from watcher.cbr.models import parse_list_body
from watcher.sim import SimTaskSpec, Simulator
from watcher.sim.listing import parse_list_query, select
from watcher.sim.tasks import OUTCOMES, status_at, task_state
from watcher.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(clock, seed=5)


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        yield Api(session, base_url)


def ids(body: dict[str, Any]) -> list[str]:
    return [log["id"] for log in body["operation_logs"]]


async def listed(api: Api, **params: str) -> dict[str, Any]:
    status, _, body = await api.list(**params)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


# -- filters --------------------------------------------------------------------------------

TARGET = SimTaskSpec(
    id="target",
    operation_type="restore",
    waiting=0,
    running=600,
    vault_id="vault-x",
    vault_name="vault-name-x",
    resource_id="resource-x",
    resource_name="name-x",
    provider_id="provider-x",
    enterprise_project_id="ep-x",
)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("status", "running"),
        ("operation_type", "restore"),
        ("vault_id", "vault-x"),
        ("vault_name", "vault-name-x"),
        ("resource_id", "resource-x"),
        ("resource_name", "name-x"),
        ("provider_id", "provider-x"),
        ("enterprise_project_id", "ep-x"),
    ],
)
async def test_each_filter_picks_exactly_its_tasks(
    sim: Simulator, clock: FakeClock, api: Api, name: str, value: str
) -> None:
    sim.add_tasks([TARGET, SimTaskSpec(id="other", waiting=300), SimTaskSpec(id="third")])
    clock.advance(1)
    body = await listed(api, **{name: value})
    assert (ids(body), body["count"]) == (["target"], 1)
    body = await listed(api, **{name: value + "-nope"})
    assert (ids(body), body["count"]) == ([], 0)


async def test_filters_combine_and_empty_values_count_as_not_given(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.add_tasks([TARGET, SimTaskSpec(id="other", operation_type="restore", waiting=300)])
    clock.advance(1)
    assert ids(await listed(api, operation_type="restore")) == ["other", "target"]
    assert ids(await listed(api, operation_type="restore", status="running")) == ["target"]
    assert ids(await listed(api, operation_type="restore", status="waiting")) == ["other"]
    assert ids(await listed(api, status="running", vault_id="vault-b")) == []
    body = await listed(api, status="", vault_id="", start_time="")
    assert ids(body) == ["other", "target"]


async def test_enterprise_projects(sim: Simulator, api: Api) -> None:
    sim.add_tasks([TARGET, SimTaskSpec(id="default-ep", style="compact")])
    assert ids(await listed(api, enterprise_project_id="0")) == ["default-ep"]
    assert ids(await listed(api, enterprise_project_id="all_granted_eps")) == [
        "default-ep",
        "target",
    ]
    body = await listed(api)
    by_id = {log["id"]: log for log in body["operation_logs"]}
    assert by_id["target"]["enterprise_project_id"] == "ep-x"  # shown whatever the style
    assert by_id["default-ep"]["enterprise_project_id"] == "0"


async def test_unknown_enum_values_match_nothing(sim: Simulator, api: Api) -> None:
    sim.add_tasks([SimTaskSpec(id="plain"), SimTaskSpec(id="frozen", phases=[("frozen", 0, None)])])
    assert ids(await listed(api, status="exploded")) == []
    assert ids(await listed(api, operation_type="teleport")) == []
    # A task with scripted phases may report a status outside the enum: it can be filtered.
    assert ids(await listed(api, status="frozen")) == ["frozen"]


# -- time window ----------------------------------------------------------------------------


async def test_time_window_is_inclusive_over_creation_time(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    for name in ("t00", "t10", "t20"):
        sim.add_task(SimTaskSpec(id=name, waiting=0, running=5))
        clock.advance(10)
    # t00 was created (and ended) long before the window: the window is over creation time.
    at_ten = {"start_time": "2026-01-01T00:00:10Z", "end_time": "2026-01-01T00:00:10Z"}
    assert ids(await listed(api, **at_ten)) == ["t10"]
    assert ids(await listed(api, start_time="2026-01-01T00:00:10Z")) == ["t20", "t10"]
    assert ids(await listed(api, start_time="2026-01-01T00:00:11Z")) == ["t20"]
    assert ids(await listed(api, end_time="2026-01-01T00:00:19Z")) == ["t10", "t00"]
    body = await listed(api, start_time="2026-01-01T00:00:20Z", end_time="2026-01-01T00:00:00Z")
    assert (ids(body), body["count"]) == ([], 0)
    body = await listed(api, start_time="2025-12-31T23:59:59Z", limit="2", offset="1")
    assert (ids(body), body["count"]) == (["t10", "t00"], 3)


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2026-01-01T00:00:00",
        "2026-01-01 00:00:00Z",
        "2026-1-1T0:0:0Z",
        "2026-13-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("name", ["start_time", "end_time"])
async def test_time_must_use_the_documented_format(api: Api, name: str, value: str) -> None:
    status, headers, body = await api.list(**{name: value})
    assert status == 400
    assert_cbr_headers(headers)
    assert body["error_code"] == "BackupService.9900"
    assert name in body["error_msg"]


# -- limit, offset, count -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "abc"),
        ("limit", ""),
        ("limit", "+5"),
        ("limit", " 5"),
        ("limit", "1e3"),
        ("limit", "5.0"),
        ("limit", "\uff15"),  # a full-width 5: a digit to Python, not to CBR
        ("limit", "\u00b2"),
        ("offset", "-1"),
        ("offset", "1.5"),
        ("offset", "x"),
        ("offset", "1" * 19),
    ],
)
async def test_bad_limit_or_offset_is_400(sim: Simulator, api: Api, name: str, value: str) -> None:
    sim.add_task(SimTaskSpec())
    status, headers, body = await api.list(**{name: value})
    assert status == 400
    assert_cbr_headers(headers)
    assert body["error_code"] == "BackupService.9900"
    assert name in body["error_msg"]
    assert "operation_logs" not in body


async def test_limit_bounds_default_and_count_is_the_total(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.add_tasks([SimTaskSpec(id=f"t{n:04d}") for n in range(1001)])
    clock.advance(1)
    newest = sim.add_task(SimTaskSpec(id="newest"))
    body = await listed(api)
    assert (len(body["operation_logs"]), body["count"], body["limit"], body["offset"]) == (
        1000,
        1002,
        1000,
        0,
    )
    assert ids(body)[:2] == [newest, "t0000"]
    body = await listed(api, limit="1000")
    assert len(body["operation_logs"]) == 1000
    body = await listed(api, limit="1")
    assert (ids(body), body["count"], body["limit"]) == ([newest], 1002, 1)
    body = await listed(api, limit="007", offset="1000")
    assert (ids(body), body["count"], body["limit"], body["offset"]) == (
        ["t0999", "t1000"],
        1002,
        7,
        1000,
    )
    page = parse_list_body(body)  # the client's model reads the echoed fields
    assert (page.count, page.limit, page.offset) == (1002, 7, 1000)


async def test_offset_past_the_end_is_an_empty_page_with_the_count(
    sim: Simulator, api: Api
) -> None:
    sim.add_tasks([SimTaskSpec(id="a"), SimTaskSpec(id="b")])
    for offset in ("2", "3", "999999999999999999"):
        body = await listed(api, offset=offset)
        assert (ids(body), body["count"], body["offset"]) == ([], 2, int(offset))


# -- order and time -------------------------------------------------------------------------


async def test_newest_first_ties_by_id(sim: Simulator, clock: FakeClock, api: Api) -> None:
    sim.add_tasks([SimTaskSpec(id="m"), SimTaskSpec(id="a")])
    sim.add_task(SimTaskSpec(id="b"))  # the same instant as m and a: sorts between them
    clock.advance(1)
    sim.add_task(SimTaskSpec(id="z"))
    clock.advance(1)
    sim.add_task(SimTaskSpec(id="c"))
    assert ids(await listed(api)) == ["c", "z", "a", "b", "m"]
    assert ids(await listed(api, limit="2", offset="2")) == ["a", "b"]


async def test_each_request_sees_the_tasks_at_its_own_instant(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.add_task(SimTaskSpec(id="job", style="compact", waiting=10, running=60))
    statuses = []
    for _ in range(3):
        body = await listed(api)
        statuses.append(body["operation_logs"][0]["status"])
        clock.advance(40)
    assert statuses == ["waiting", "running", "success"]
    assert body["operation_logs"][0]["ended_at"] == "2026-01-01T00:01:10Z"


async def test_a_task_ending_between_pages_shifts_the_offsets(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    for name, running in (("a", 1000), ("b", 1000), ("c", 1000), ("d", 10)):
        sim.add_task(SimTaskSpec(id=name, waiting=0, running=running))
        clock.advance(1)
    first = await listed(api, status="running", limit="2", offset="0")
    assert (ids(first), first["count"]) == (["d", "c"], 4)
    clock.advance(10)  # d ends before the pager asks for the second page
    second = await listed(api, status="running", limit="2", offset="2")
    assert (ids(second), second["count"]) == (["a"], 3)
    # b moved up to offset 1 and neither page has it: a pager must not trust offsets alone.
    assert "b" not in ids(first) + ids(second)
    assert ids(await listed(api, status="running")) == ["c", "b", "a"]
    assert ids(await listed(api, status="success")) == ["d"]


# -- properties -----------------------------------------------------------------------------

task_specs = st.builds(
    SimTaskSpec,
    id=st.text("abcdef", min_size=1, max_size=6),
    outcome=st.sampled_from(OUTCOMES),
    waiting=st.floats(0, 50),
    running=st.floats(0, 200),
)
phased_specs = st.builds(
    SimTaskSpec,
    phases=st.lists(
        st.tuples(
            st.sampled_from(["waiting", "running", "success", "paused"]),
            st.floats(0, 100),
            st.none() | st.integers(0, 100),
        ),
        min_size=1,
        max_size=4,
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(st.tuples(task_specs, st.sampled_from([0.0, 0.5, 7.0])), max_size=25),
    limit=st.integers(1, 8),
    later=st.floats(0, 300),
    status=st.sampled_from([None, "running", "waiting", "success"]),
)
def test_paging_a_static_list_returns_it_whole_and_sorted(
    plan: list[tuple[SimTaskSpec, float]], limit: int, later: float, status: str | None
) -> None:
    clock = FakeClock()
    sim = Simulator(clock)
    for spec, pause in plan:
        if spec.id not in sim.tasks:
            sim.add_task(spec)
        clock.advance(pause)
    clock.advance(later)
    now = clock.wall()
    filters = {"status": status} if status else {}
    total, everything = select(sim.listing(), parse_list_query(filters), now)
    paged: list[str] = []
    while True:
        query = parse_list_query({**filters, "limit": str(limit), "offset": str(len(paged))})
        count, page = select(sim.listing(), query, now)
        assert count == total
        if not page:
            break
        assert len(page) <= limit
        paged.extend(task.id for task in page)
    expected = sorted(
        (task for task in sim.tasks.values() if status in (None, sim.state(task.id).status)),
        key=lambda task: (-task.created_wall, task.id),
    )
    assert paged == [task.id for task in everything] == [task.id for task in expected]
    assert total == len(expected)


@settings(max_examples=200, deadline=None)
@given(spec=task_specs | phased_specs, elapsed=st.floats(-10, 400))
def test_the_status_filter_agrees_with_the_reported_status(
    spec: SimTaskSpec, elapsed: float
) -> None:
    sim = Simulator(FakeClock())
    task = sim.tasks[sim.add_task(spec)]
    moment = task.created_wall + elapsed
    assert status_at(task, moment) == task_state(task, moment).status
