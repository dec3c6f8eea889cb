"""Simulator dialects: each answer to what the CBR API reference leaves open, over HTTP.

The default dialect is the simulator as it always was; each test here switches one guess and
checks what a client sees on the wire, and that the watcher's own client still reads it.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.daemon_process import clean_env, spawned
from tests.support import World
from tests.test_sim import PID, Api, assert_cbr_headers, until
from tests.test_simulate_command import free_port
from watcher.cbr.errors import FatalError
from watcher.cbr.models import parse_list_body, parse_show_body
from watcher.sim import PRESETS, Dialect, FaultProfile, PolicySpec, SimTaskSpec, Simulator
from watcher.sim.__main__ import main as sim_main
from watcher.sim.bodies import operation_log
from watcher.sim.dialects import DEFAULT_DIALECT, dialect_from_mapping, preset
from watcher.sim.listing import parse_list_query, select
from watcher.sim.scenario import parse_scenario
from watcher.sim.simulator import run_simulator
from watcher.sim.tasks import OUTCOMES, task_state
from watcher.testing import FakeClock

TIMESTAMP_KEYS = ("created_at", "started_at", "updated_at", "ended_at")
SPELLINGS = {
    "Z": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
    "+00:00": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"),
    "zoneless": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}"),
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(clock, seed=3)


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        yield Api(session, base_url)


async def listed(api: Api, **params: str) -> dict[str, Any]:
    status, _, body = await api.list(**params)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [log["id"] for log in body["operation_logs"]]


async def shown(api: Api, task_id: str) -> dict[str, Any]:
    status, _, body = await api.show(task_id)
    assert status == 200, body
    log = body["operation_log"]
    assert isinstance(log, dict)
    return log


# -- the default ----------------------------------------------------------------------------


async def test_the_default_dialect_is_the_simulator_as_it_was(sim: Simulator, api: Api) -> None:
    """Nothing switched: total count, limits 1-1000, per-task spelling, no nulls."""
    assert sim.dialect == Dialect() == PRESETS["default"]
    status, body = await api.control("GET", "/_sim/dialect")
    assert (status, body) == (
        200,
        {
            "count": "total",
            "limit_cap": None,
            "timestamps": "task",
            "null_policy": False,
            "null_vault_for": [],
            "retry_after": "fault",
            "order": "newest",
            "list_forbidden": False,
        },
    )
    sim.add_tasks([SimTaskSpec(id="r", operation_type="restore", style="seed"), SimTaskSpec()])
    log = await shown(api, "r")
    assert "policy_id" not in log
    assert log["vault_id"] == sim.default_vault[0]
    assert SPELLINGS["+00:00"].fullmatch(log["created_at"])
    assert (await api.list(limit="1001"))[0] == 400


# -- count ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "counts"), [("total", [5, 5, 5, 5]), ("page", [2, 2, 1, 0])])
async def test_count_is_every_match_or_this_page(
    sim: Simulator, api: Api, mode: str, counts: list[int]
) -> None:
    sim.dialect = dialect_from_mapping({"count": mode})
    sim.add_tasks([SimTaskSpec(id=f"t{n}") for n in range(5)])
    seen = []
    for offset in (0, 2, 4, 6):
        body = await listed(api, limit="2", offset=str(offset))
        seen.append(body["count"])
    assert seen == counts
    assert parse_list_body(body).count == counts[-1]


# -- limit cap ------------------------------------------------------------------------------


async def test_a_capped_page_is_short_without_being_the_end(sim: Simulator, api: Api) -> None:
    """At most `limit_cap` entries whatever `limit` asks, above 1000 too; the asked limit is
    echoed, so only paging to an empty page finds every task."""
    sim.dialect = Dialect(limit_cap=3)
    sim.add_tasks([SimTaskSpec(id=f"t{n:02d}") for n in range(10)])
    body = await listed(api)
    assert (len(ids(body)), body["count"], body["limit"]) == (3, 10, 1000)
    body = await listed(api, limit="5000")
    assert (len(ids(body)), body["limit"]) == (3, 5000)
    assert len(ids(await listed(api, limit="2"))) == 2
    for bad in ("0", "-1", "x"):
        assert (await api.list(limit=bad))[0] == 400
    found: list[str] = []
    while True:
        page = parse_list_body(await listed(api, limit="1000", offset=str(len(found))))
        if not page.returned:
            break
        found += [log.id for log in page.operation_logs]
    assert sorted(found) == [f"t{n:02d}" for n in range(10)]


# -- order ----------------------------------------------------------------------------------


async def test_the_list_order_is_newest_or_oldest_first(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    """`order = "oldest"` lists the same tasks the other way round, page by page."""
    for n in range(4):
        sim.add_task(SimTaskSpec(id=f"o{n}"))
        clock.advance(1.0)
    assert ids(await listed(api, limit="3")) == ["o3", "o2", "o1"]
    sim.dialect = dialect_from_mapping({"order": "oldest"})
    assert ids(await listed(api, limit="3")) == ["o0", "o1", "o2"]
    assert ids(await listed(api, limit="3", offset="3")) == ["o3"]
    with pytest.raises(ValueError, match="order must be one of newest, oldest"):
        dialect_from_mapping({"order": "random"})


# -- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "created", "ended"),
    [
        ("Z", "2026-01-01T00:00:00Z", "2026-01-01T00:01:05Z"),
        ("+00:00", "2026-01-01T00:00:00.000+00:00", "2026-01-01T00:01:05.250+00:00"),
        ("zoneless", "2026-01-01T00:00:00.000000", "2026-01-01T00:01:05.250000"),
    ],
)
async def test_every_timestamp_in_one_spelling(
    sim: Simulator, clock: FakeClock, api: Api, spelling: str, created: str, ended: str
) -> None:
    """The spelling overrides each task's style, in ShowOpLog and ListOpLogs alike, and the
    client reads each as the same UTC instant."""
    sim.dialect = dialect_from_mapping({"timestamps": spelling})
    for style in ("seed", "compact"):
        sim.add_task(SimTaskSpec(id=f"t-{style}", style=style, waiting=5, running=60.25))
    clock.advance(70)
    listing = (await listed(api))["operation_logs"]
    for log in [await shown(api, "t-seed"), await shown(api, "t-compact"), *listing]:
        for key in TIMESTAMP_KEYS:
            assert SPELLINGS[spelling].fullmatch(log[key]), (key, log[key])
        assert (log["created_at"], log["ended_at"]) == (created, ended)
        parsed = parse_show_body({"operation_log": log})
        expected_end = datetime(2026, 1, 1, 0, 1, 5, 250000 if spelling != "Z" else 0, UTC)
        assert parsed.ended_at == expected_end
        assert parsed.created_at == datetime(2026, 1, 1, tzinfo=UTC)


# -- nulls ----------------------------------------------------------------------------------


async def test_nulls_as_the_official_examples_send_them(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    """`policy_id` null for a task without a policy; vault fields null for the chosen types,
    which then match no vault filter; the client reads every null as absent."""
    sim.dialect = Dialect(null_policy=True, null_vault_for=frozenset({"restore"}))
    sim.add_tasks(
        [
            SimTaskSpec(id="manual", operation_type="backup"),
            SimTaskSpec(id="restore", operation_type="restore"),
        ]
    )
    sim.add_policy(PolicySpec(resources=1, every=3600, id="daily"))
    clock.advance(1)
    manual, restore = await shown(api, "manual"), await shown(api, "restore")
    assert manual["policy_id"] is None
    assert manual["vault_id"] == sim.default_vault[0]
    assert (restore["policy_id"], restore["vault_id"], restore["vault_name"]) == (None, None, None)
    by_policy = [log for log in (await listed(api))["operation_logs"] if log["policy_id"]]
    assert [log["policy_id"] for log in by_policy] == ["daily"]
    vault_id, vault_name = sim.default_vault
    assert "restore" not in ids(await listed(api, vault_id=vault_id))
    assert "restore" not in ids(await listed(api, vault_name=vault_name))
    assert "restore" in ids(await listed(api, operation_type="restore"))
    parsed = parse_show_body({"operation_log": restore})
    assert (parsed.policy_id, parsed.vault_id, parsed.vault_name) == (None, None, None)
    assert parsed.raw["vault_id"] is None


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fault", "header"),
    [
        ("fault", "throttle", None),
        ("fault", "throttle:3", "3"),
        ("never", "throttle:3", None),
        ("always", "throttle", "2"),
        ("always", "throttle:3", "3"),
        ("never", "throttle_odd:garbage", "soon, maybe"),  # hostile faults are not the dialect's
    ],
)
async def test_retry_after_on_a_429(
    sim: Simulator, api: Api, mode: str, fault: str, header: str | None
) -> None:
    sim.dialect = dialect_from_mapping({"retry_after": mode})
    task_id = sim.add_task(SimTaskSpec(faults=[fault]))
    status, headers, body = await api.show(task_id)
    assert (status, body["error_code"], headers.get("Retry-After")) == (429, "APIGW.0308", header)
    assert (await api.show(task_id))[0] == 200


async def test_always_retry_after_covers_random_throttles(clock: FakeClock) -> None:
    """The random profile's throttles (no header by default) carry its retry_after_seconds."""
    sim = Simulator(
        clock,
        faults=FaultProfile(throttle_rate=1.0, retry_after_seconds=7),
        dialect=Dialect(retry_after="always"),
    )
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        status, headers, _ = await Api(session, base_url).list()
    assert (status, headers.get("Retry-After")) == (429, "7")


# -- listing refused ------------------------------------------------------------------------


async def test_listing_refused_while_show_keeps_working(sim: Simulator, api: Api) -> None:
    sim.dialect = Dialect(list_forbidden=True)
    task_id = sim.add_task(SimTaskSpec(faults=["http_503"]))
    status, headers, body = await api.list()
    assert status == 403
    assert_cbr_headers(headers)
    assert body == {
        "error_code": "APIGW.0302",
        "error_msg": "The IAM user is not authorized to access the API.",
        "request_id": headers["X-Request-Id"],
    }
    # The task's scripted fault was not spent on the refused listing.
    assert (await api.show(task_id))[0] == 503
    assert (await api.show(task_id))[0] == 200
    assert sim.stats()["by_status"] == {"200": 1, "403": 1, "503": 1}


async def test_listing_can_be_revoked_and_restored_mid_run(sim: Simulator, api: Api) -> None:
    """`PUT /_sim/dialect` changes only the fields given, from the next request on."""
    sim.dialect = Dialect(count="page")
    sim.add_task(SimTaskSpec(id="t"))
    assert (await api.list())[0] == 200
    status, body = await api.control("PUT", "/_sim/dialect", {"list_forbidden": True})
    assert (status, body["list_forbidden"], body["count"]) == (200, True, "page")
    assert (await api.list())[0] == 403
    assert (await api.show("t"))[0] == 200
    assert (await api.control("PUT", "/_sim/dialect", {"list_forbidden": False}))[0] == 200
    assert (await api.list())[0] == 200
    assert await api.control("PUT", "/_sim/dialect", {"preset": "default"}) == (
        200,
        Dialect().as_json(),
    )
    assert sim.dialect == Dialect()


async def test_the_client_sees_a_refused_listing_as_fatal(world: World) -> None:
    """The watcher's own client: ListOpLogs fails as a 403, ShowOpLog still answers."""
    world.sim.add_task(SimTaskSpec(id="t-1"))
    world.sim.dialect = replace(world.sim.dialect, list_forbidden=True)
    with pytest.raises(FatalError) as refused:
        await world.client.list_op_logs()
    assert (refused.value.http_status, refused.value.error_code) == (403, "APIGW.0302")
    assert (await world.client.show_op_log("t-1")).id == "t-1"


async def test_the_client_reads_the_examples_dialect(world: World) -> None:
    """Zoneless timestamps and nulls through the real client: nothing malformed."""
    world.sim.dialect = preset("examples")
    world.sim.add_tasks([SimTaskSpec(id="b"), SimTaskSpec(id="r", operation_type="restore")])
    world.clock.advance(100)
    page = await world.client.list_op_logs()
    assert page.malformed == []
    by_id = {log.id: log for log in page.operation_logs}
    assert by_id["r"].vault_id is None
    assert by_id["b"].vault_id == world.sim.default_vault[0]
    assert by_id["b"].ended_at == datetime(2026, 1, 1, 0, 1, 5, tzinfo=UTC)
    assert by_id["b"].policy_id is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"cuont": "page"}, "dialect.cuont: unknown key"),
        ({"count": "all"}, "count must be one of total, page"),
        ({"limit_cap": 0}, "limit_cap must be a positive integer"),
        ({"preset": "nope"}, "dialect.preset: unknown dialect 'nope'"),
        ({"null_vault_for": "restore"}, "null_vault_for must be a list"),
        (["list_forbidden"], "expected a table"),
    ],
)
async def test_control_api_rejects_bad_dialects(
    sim: Simulator, api: Api, body: object, message: str
) -> None:
    status, answer = await api.control("PUT", "/_sim/dialect", body)
    assert status == 400
    assert message in answer["error"]
    assert sim.dialect == Dialect()


# -- presets, scenarios and the command line ------------------------------------------------


def test_presets() -> None:
    """Each preset names itself; worst-case is every unkind guess but a refused listing."""
    for name, dialect in PRESETS.items():
        assert dialect.summary() == name
        assert preset(name) is dialect
    worst = PRESETS["worst-case"]
    assert worst == Dialect(
        count="page",
        limit_cap=100,
        timestamps="zoneless",
        null_policy=True,
        null_vault_for=frozenset({"restore", "vault_delete"}),
        retry_after="never",
    )
    assert Dialect(count="page", limit_cap=7).summary() == "count:page,limit_cap:7"
    assert Dialect(null_vault_for=frozenset({"sync", "restore"})).summary() == (
        "null_vault_for:restore+sync"
    )
    with pytest.raises(ValueError, match="unknown dialect 'x': expected one of default"):
        preset("x")


def test_scenario_dialect_table(clock: FakeClock) -> None:
    """`[dialect]`: a preset, then single keys changed on top of it."""
    scenario = parse_scenario(
        {"dialect": {"preset": "examples", "count": "page", "null_vault_for": ["sync"]}}
    )
    sim = scenario.build(clock)
    assert sim.dialect == replace(
        PRESETS["examples"], count="page", null_vault_for=frozenset({"sync"})
    )
    assert parse_scenario({}).dialect == DEFAULT_DIALECT
    with pytest.raises(ValueError, match=r"dialect\.timestamp: unknown key"):
        parse_scenario({"dialect": {"timestamp": "Z"}})
    with pytest.raises(ValueError, match="dialect: retry_after must be one of fault"):
        parse_scenario({"dialect": {"retry_after": "sometimes"}})


async def banner(path: Path, clock: FakeClock, dialect: Dialect | None) -> str:
    """The line `run_simulator` prints for the scenario at `path`, once it listens."""
    stop = asyncio.Event()
    out = io.StringIO()
    runner = asyncio.ensure_future(
        run_simulator("127.0.0.1:0", path, stop, clock, out=out, dialect=dialect)
    )
    await until(lambda: bool(out.getvalue()) or runner.done())
    stop.set()
    await runner
    return out.getvalue().rstrip()


async def test_run_simulator_dialect_replaces_the_scenario_s(
    clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[dialect]\ncount = "page"\nlimit_cap = 5\n[[tasks]]\nid = "t"\n', encoding="utf-8"
    )
    assert (await banner(path, clock, None)).endswith(" dialect=count:page,limit_cap:5")
    assert (await banner(path, clock, PRESETS["no-list"])).endswith(" dialect=no-list")


def test_module_entry_point_rejects_an_unknown_dialect(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        sim_main(["--listen", "127.0.0.1:0", "--dialect", "klingon"])
    assert exited.value.code == 2
    assert "worst-case" in capsys.readouterr().err


async def test_simulate_command_takes_a_dialect() -> None:
    """`cbr-watcher simulate --dialect worst-case` serves zoneless bodies with nulls."""
    listen = f"127.0.0.1:{free_port()}"
    args = ("-m", "watcher", "simulate", "--listen", listen, "--dialect", "worst-case")
    async with spawned(sys.executable, *args, env=clean_env()) as proc:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert banner.rstrip().endswith("dialect=worst-case")
        token = banner.split("token=")[1].split()[0]
        base = f"http://{listen}/v3/{PID}/operation-logs"
        async with aiohttp.ClientSession() as http:
            answer = await http.get(base, headers={"X-Auth-Token": token})
            body = await answer.json()
        assert body["count"] == len(body["operation_logs"])
        assert SPELLINGS["zoneless"].fullmatch(body["operation_logs"][0]["created_at"])
        assert all("policy_id" in log for log in body["operation_logs"])
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


# -- every dialect, every outcome: what the client reads is what the simulator meant --------

DIALECTS = st.builds(
    Dialect,
    count=st.sampled_from(["total", "page"]),
    limit_cap=st.one_of(st.none(), st.integers(1, 7)),
    timestamps=st.sampled_from(["task", "Z", "+00:00", "zoneless"]),
    null_policy=st.booleans(),
    null_vault_for=st.frozensets(st.sampled_from(["backup", "restore", "vault_delete"])),
)
TASKS = st.lists(
    st.tuples(
        st.sampled_from(OUTCOMES),
        st.sampled_from(["backup", "restore", "vault_delete"]),
        st.sampled_from(["seed", "compact"]),
        st.floats(0, 50),
    ),
    max_size=9,
)


@settings(max_examples=100, deadline=None, database=None)
@given(DIALECTS, TASKS, st.integers(1, 5), st.floats(0, 400))
def test_any_dialect_pages_to_every_task_read_as_meant(
    dialect: Dialect,
    tasks: list[tuple[str, str, str, float]],
    limit: int,
    age: float,
) -> None:
    """Paging by entries until an empty page finds every task once, in any dialect, and the
    client reads each one's status, progress and instants as the simulator holds them."""
    clock = FakeClock()
    sim = Simulator(clock, seed=9, dialect=dialect)
    for outcome, kind, style, delay in tasks:
        sim.add_task(
            SimTaskSpec(operation_type=kind, outcome=outcome, style=style, waiting=5, running=90)
        )
        clock.advance(delay)
    clock.advance(age)
    now = clock.wall()
    found: list[str] = []
    while True:
        query = parse_list_query({"limit": str(limit), "offset": str(len(found))}, dialect)
        count, page = select(sim.listing(), query, now, dialect)
        body = {
            "operation_logs": [
                operation_log(task, task_state(task, now), PID, dialect) for task in page
            ],
            "count": count,
        }
        parsed = parse_list_body(body)
        assert parsed.malformed == []
        if not parsed.returned:
            break
        assert parsed.returned <= min(limit, dialect.limit_cap or limit)
        for log in parsed.operation_logs:
            state = sim.state(log.id)
            task = sim.tasks[log.id]
            assert (log.status, log.progress) == (state.status, state.progress)
            assert log.created_at is not None
            # Whole seconds at least; "Z" drops the fraction.
            assert abs(log.created_at.timestamp() - task.created_wall) < 1
            nulled = task.spec.operation_type in dialect.null_vault_for
            assert log.vault_id == (None if nulled else task.vault_id)
        found += [log.id for log in parsed.operation_logs]
    assert sorted(found) == sorted(sim.tasks)
