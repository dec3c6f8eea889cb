"""The simulator's inventory: vaults, RRULE policies, skips and backups, over real HTTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_sim import PID, Api
from watcher.sim import FaultProfile, SimTaskSpec, Simulator, load_scenario
from watcher.sim.inventory import (
    BackupSpec,
    ResourceSpec,
    VaultSpec,
    page_of,
    parse_sort,
    select_backups,
    select_vaults,
)
from watcher.sim.policies import PolicySkip, PolicySpec, parse_pattern
from watcher.testing import FakeClock

HOUR = 3600.0
DAY = 24 * HOUR
# FakeClock starts on Thursday 2026-01-01 at 00:00:00 UTC.
START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
DAILY_14 = "FREQ=DAILY;INTERVAL=1;BYHOUR=14;BYMINUTE=00"


def utc(text: str) -> float:
    """Epoch seconds of a `2026-01-02 14:00` UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def inventory_time(text: str) -> float:
    """Epoch seconds of an inventory timestamp (`2026-01-02T14:00:00.000000`, UTC)."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", text), text
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    """Two vaults; a daily 14:00 UTC backup policy on the servers' vault."""
    sim = Simulator(clock, seed=4)
    sim.inventory.add_vaults(
        [
            VaultSpec(id="vault-web", name="web", resources=(ResourceSpec(), ResourceSpec())),
            VaultSpec(
                name="disks",
                resource_type="OS::Cinder::Volume",
                resources=(ResourceSpec(id="disk-1", name="data-1", size=100),),
                enterprise_project_id="ep-1",
            ),
        ]
    )
    return sim


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        yield Api(session, base_url)


async def listed(api: Api, collection: str, **params: str) -> dict[str, Any]:
    status, _, body = await api.get(f"/v3/{PID}/{collection}", params=params)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def daily(**overrides: Any) -> PolicySpec:
    values: dict[str, Any] = {"id": "p-daily", "pattern": (DAILY_14,), "vaults": ("web",)}
    values.update(duration=600, duration_sigma=0.0, waiting=10)
    values.update(overrides)
    return PolicySpec(**values)


def runs_of(sim: Simulator, policy_id: str) -> dict[float, set[str]]:
    """Each creation time of the policy's tasks → the resource names backed up then."""
    out: dict[float, set[str]] = {}
    for task in sim.tasks.values():
        if task.spec.policy_id == policy_id:
            out.setdefault(task.created_wall, set()).add(task.resource_name)
    return out


# -- policies on their RRULEs -----------------------------------------------------------------


def test_a_pattern_policy_backs_up_its_vaults_at_its_utc_times(
    sim: Simulator, clock: FakeClock
) -> None:
    sim.add_policy(daily())
    clock.advance(14 * HOUR - 1)
    assert runs_of(sim, "p-daily") == {}
    clock.advance(1)
    assert runs_of(sim, "p-daily") == {utc("2026-01-01 14:00"): {"ecs-v1-0001", "ecs-v1-0002"}}
    clock.advance(2 * DAY)
    assert sorted(runs_of(sim, "p-daily")) == [
        utc("2026-01-01 14:00"),
        utc("2026-01-02 14:00"),
        utc("2026-01-03 14:00"),
    ]
    task = next(task for task in sim.tasks.values() if task.resource_name == "ecs-v1-0001")
    resource = sim.inventory.resource("ecs-v1-0001")
    assert (task.resource_id, task.vault_id, task.vault_name) == (resource.id, "vault-web", "web")


def test_several_rules_weekdays_and_intervals(sim: Simulator, clock: FakeClock) -> None:
    patterns = (
        "FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=3;BYMINUTE=15",
        "FREQ=DAILY;INTERVAL=3;BYHOUR=20;BYMINUTE=30",
    )
    sim.add_policy(daily(pattern=patterns))
    clock.advance(7 * DAY)
    assert sorted(runs_of(sim, "p-daily")) == [
        utc("2026-01-01 20:30"),  # Thursday: the start day counts for INTERVAL=3
        utc("2026-01-04 20:30"),
        utc("2026-01-05 03:15"),  # Monday
        utc("2026-01-07 03:15"),  # Wednesday
        utc("2026-01-07 20:30"),
    ]


def test_a_policy_added_mid_day_starts_at_its_next_occurrence(
    sim: Simulator, clock: FakeClock
) -> None:
    clock.advance(14 * HOUR + 30)
    sim.add_policy(daily())
    clock.advance(DAY)
    assert sorted(runs_of(sim, "p-daily")) == [utc("2026-01-02 14:00")]


def test_a_skip_leaves_no_task_for_that_resource_at_that_run(
    sim: Simulator, clock: FakeClock
) -> None:
    skip = PolicySkip("ecs-v1-0002", at=utc("2026-01-02 14:00"))
    sim.add_policy(daily(skip=(skip,)))
    clock.advance(3 * DAY)
    assert runs_of(sim, "p-daily") == {
        utc("2026-01-01 14:00"): {"ecs-v1-0001", "ecs-v1-0002"},
        utc("2026-01-02 14:00"): {"ecs-v1-0001"},
        utc("2026-01-03 14:00"): {"ecs-v1-0001", "ecs-v1-0002"},
    }


async def test_a_skipped_run_is_a_missing_backup(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    """Staging a missed backup: the skipped resource has no backup of that day; the other
    resource, and the days around it, have theirs."""
    sim.add_policy(daily(skip=(PolicySkip("ecs-v1-0002", run=1),)))
    clock.advance(3 * DAY)
    body = await listed(api, "backups", status="available", sort="created_at:asc")
    days: dict[str, list[str]] = {}
    for backup in body["backups"]:
        days.setdefault(backup["resource_name"], []).append(backup["created_at"][:10])
    assert days == {
        "ecs-v1-0001": ["2026-01-01", "2026-01-02", "2026-01-03"],
        "ecs-v1-0002": ["2026-01-01", "2026-01-03"],
    }


async def test_the_control_api_skips_the_next_run(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.add_policy(daily())
    clock.advance(15 * HOUR)  # the first run has started
    resource_id = sim.inventory.resource("ecs-v1-0001").id
    status, body = await api.control(
        "POST", "/_sim/policies/p-daily/skips", {"resource": resource_id}
    )
    assert status == 201, body
    assert body == {
        "policy_id": "p-daily",
        "resource": resource_id,
        "run": 1,
        "at": "2026-01-02T14:00:00.000000",
    }
    clock.advance(DAY)
    assert runs_of(sim, "p-daily")[utc("2026-01-02 14:00")] == {"ecs-v1-0002"}

    status, body = await api.control(
        "POST", "/_sim/policies/p-daily/skips", {"resource": "ecs-v1-0001", "run": 0}
    )
    assert (status, body["error"]) == (400, "run 0 of policy 'p-daily' has already started")
    status, body = await api.control(
        "POST", "/_sim/policies/p-daily/skips", {"resource": "ecs-v9-0001"}
    )
    assert (status, body["error"]) == (400, "policy 'p-daily' backs up no resource 'ecs-v9-0001'")
    status, body = await api.control(
        "POST",
        "/_sim/policies/p-daily/skips",
        {"resource": "ecs-v1-0001", "at": "2026-01-05T13:00:00Z"},
    )
    assert (status, body["error"]) == (400, "policy 'p-daily' has no run at 2026-01-05T13:00:00Z")
    status, body = await api.control("POST", "/_sim/policies/nope/skips", {"resource": "x"})
    assert status == 404


def test_a_disabled_policy_never_runs(sim: Simulator, clock: FakeClock) -> None:
    sim.add_policy(daily(enabled=False))
    clock.advance(3 * DAY)
    assert runs_of(sim, "p-daily") == {}


def test_skips_work_for_interval_policies_too(sim: Simulator, clock: FakeClock) -> None:
    sim.add_policy(
        PolicySpec(id="p-hourly", resources=2, every=HOUR, skip=(PolicySkip("ecs-p1-0001", 1),))
    )
    clock.advance(2.5 * HOUR)
    assert runs_of(sim, "p-hourly") == {
        START: {"ecs-p1-0001", "ecs-p1-0002"},
        START + HOUR: {"ecs-p1-0002"},
        START + 2 * HOUR: {"ecs-p1-0001", "ecs-p1-0002"},
    }


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (["FREQ=HOURLY"], "FREQ=HOURLY is not DAILY or WEEKLY"),
        (["FREQ=DAILY;BYHOUR=24"], "BYHOUR=24 is not hours from 0 to 23"),
        (["FREQ=DAILY;INTERVAL=0"], "INTERVAL=0 is not a whole number from 1 to 100"),
        (["FREQ=WEEKLY;BYDAY=+1MO"], "BYDAY=+1MO is not days among"),
        (["FREQ=DAILY;COUNT=3"], "expected KEY=VALUE parts, each key once, of FREQ"),
        (["RRULE:FREQ=DAILY"], "expected KEY=VALUE parts"),
        (["BYHOUR=3"], "FREQ is required"),
        (["FREQ=DAILY;BYHOUR=3;BYMINUTE=0,30"], "runs must be at least an hour apart"),
        (["FREQ=DAILY;BYHOUR=3;BYMINUTE=0", "FREQ=DAILY;BYHOUR=3;BYMINUTE=59"], "an hour apart"),
        (["FREQ=DAILY"] * 25, "at most 24 rules"),
        ("FREQ=DAILY", "expected a list of RRULE strings"),
    ],
)
def test_patterns_cbr_would_refuse_are_refused(pattern: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_pattern(pattern)


_RULE_PART = st.tuples(
    st.sampled_from(["FREQ", "INTERVAL", "BYDAY", "BYHOUR", "BYMINUTE", "COUNT", "freq"]),
    st.one_of(
        st.sampled_from(["DAILY", "WEEKLY", "HOURLY", "", "MO,+1TU"]),
        st.integers(-3, 10**6).map(str),
        st.lists(st.sampled_from(["MO", "TU", "SA", "SU", "XX"]), max_size=4).map(",".join),
        st.lists(st.integers(0, 70), max_size=5).map(lambda items: ",".join(map(str, items))),
    ),
).map("=".join)


@given(st.lists(st.lists(_RULE_PART, min_size=1, max_size=5).map(";".join), max_size=4))
@settings(max_examples=300, deadline=1000)
def test_any_pattern_is_read_or_refused_quickly(patterns: list[str]) -> None:
    """No pattern hangs or crashes the parser (dateutil loops forever on INTERVAL=0)."""
    try:
        rules = parse_pattern(patterns)
    except ValueError:
        return
    assert rules == tuple(patterns)


# -- ListVaults ----------------------------------------------------------------------------


async def test_list_vaults_shows_each_vault_with_its_resources(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.add_policy(daily())
    clock.advance(2 * DAY)
    body = await listed(api, "vaults")
    assert (body["count"], body["limit"], body["offset"]) == (2, 1000, 0)
    web, disks = body["vaults"]
    assert (web["id"], web["name"], web["billing"]["object_type"]) == ("vault-web", "web", "server")
    assert web["provider_id"] == "0daac4c5-6707-4851-97ba-169e36266b66"
    assert inventory_time(web["created_at"]) == START
    assert [item["name"] for item in web["resources"]] == ["ecs-v1-0001", "ecs-v1-0002"]
    first = web["resources"][0]
    assert first["id"] == sim.inventory.resource("ecs-v1-0001").id
    assert (first["type"], first["size"], first["protect_status"]) == (
        "OS::Nova::Server",
        40,
        "available",
    )
    assert (first["backup_count"], first["backup_size"]) == (2, 80)  # two daily runs
    (disk,) = disks["resources"]
    assert (disk["id"], disk["name"], disk["type"], disk["backup_count"]) == (
        "disk-1",
        "data-1",
        "OS::Cinder::Volume",
        0,
    )
    assert disks["billing"]["object_type"] == "disk"
    assert disks["enterprise_project_id"] == "ep-1"


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"object_type": "disk"}, ["disks"]),
        ({"policy_id": "p-daily"}, ["web"]),
        ({"policy_id": "p-other"}, []),
        ({"resource_ids": "nope,disk-1"}, ["disks"]),
        ({"enterprise_project_id": "ep-1"}, ["disks"]),
        ({"enterprise_project_id": "all_granted_eps"}, ["web", "disks"]),
        ({"id": "vault-web"}, ["web"]),
        ({"name": "disks", "object_type": "server"}, []),
        ({"name": ""}, ["web", "disks"]),
        ({"limit": "1", "offset": "1"}, ["disks"]),
        ({"offset": "2"}, []),
    ],
)
async def test_list_vaults_filters_and_pages(
    sim: Simulator, api: Api, params: dict[str, str], names: list[str]
) -> None:
    sim.add_policy(daily())
    body = await listed(api, "vaults", **params)
    assert [vault["name"] for vault in body["vaults"]] == names
    paged = "limit" in params or "offset" in params
    assert body["count"] == (2 if paged else len(names))


@pytest.mark.parametrize("collection", ["vaults", "backups"])
@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"offset": "-1"}]
)
async def test_bad_paging_is_refused_as_list_op_logs_refuses_it(
    api: Api, collection: str, params: dict[str, str]
) -> None:
    expected = await api.get(f"/v3/{PID}/operation-logs", params=params)
    status, _, body = await api.get(f"/v3/{PID}/{collection}", params=params)
    assert status == expected[0] == 400
    assert body == expected[2]
    assert body["error_code"] == "BackupService.9900"


@pytest.mark.parametrize("collection", ["vaults", "policies", "backups"])
async def test_inventory_needs_credentials_and_the_project(api: Api, collection: str) -> None:
    status, _, body = await api.get(f"/v3/{PID}/{collection}", token=None)
    assert (status, body["error_code"]) == (401, "APIGW.0301")
    status, _, body = await api.get(f"/v3/{PID}/{collection}", token="wrong")
    assert status == 401
    status, _, body = await api.get(f"/v3/other-project/{collection}")
    assert (status, body["error_code"]) == (403, "APIGW.0302")


async def test_inventory_requests_get_the_random_faults_too(clock: FakeClock) -> None:
    sim = Simulator(clock, faults=FaultProfile(error_rate=1.0))
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        status, _, _ = await Api(session, base_url).get(f"/v3/{PID}/vaults")
    assert status >= 500
    assert sim.request_log[-1].path == f"/v3/{PID}/vaults"


# -- ListPolicies --------------------------------------------------------------------------


async def test_list_policies_shows_the_pattern_policies(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    clock.advance(90)
    sim.add_policies(
        [
            daily(name="servers daily", spread=600),
            daily(id="p-copy", vaults=("web", "disks"), operation_type="replication"),
            daily(id="p-off", vaults=(), enabled=False),
            PolicySpec(id="p-load", resources=3, every=HOUR),  # a load generator: not listed
        ]
    )
    body = await listed(api, "policies", limit="1", offset="5")  # no paging: both ignored
    assert body["count"] == 3
    backup, copy, off = body["policies"]
    assert (backup["id"], backup["name"], backup["enabled"]) == ("p-daily", "servers daily", True)
    assert backup["operation_type"] == "backup"
    assert backup["trigger"]["type"] == "time"
    assert backup["trigger"]["properties"] == {
        "pattern": [DAILY_14],
        "start_time": "2026-01-01 00:01:30",
        "start_window_minutes": 10,
    }
    assert backup["associated_vaults"] == [{"vault_id": "vault-web"}]
    disks_id = sim.inventory.vault("disks").id
    assert [item["vault_id"] for item in copy["associated_vaults"]] == ["vault-web", disks_id]
    assert all(item["destination_vault_id"] for item in copy["associated_vaults"])
    assert (off["enabled"], off["associated_vaults"]) == (False, [])

    only_copies = await listed(api, "policies", operation_type="replication")
    assert [item["id"] for item in only_copies["policies"]] == ["p-copy"]
    on_disks = await listed(api, "policies", vault_id=disks_id)
    assert [item["id"] for item in on_disks["policies"]] == ["p-copy"]


# -- ListBackups ---------------------------------------------------------------------------


async def test_a_backup_task_makes_a_backup_as_it_runs(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    """protecting while the task runs, available once it succeeded, with the IDs ShowOpLog
    gives; a failed task leaves an error backup, a skipped one none."""
    resource = sim.inventory.resource("data-1")
    common: dict[str, Any] = {
        "resource_id": resource.id,
        "resource_name": resource.name,
        "resource_type": "OS::Cinder::Volume",
        "waiting": 0,
    }
    ok = sim.add_task(SimTaskSpec(id="t-ok", vault_id="x", running=600, **common))
    sim.add_task(SimTaskSpec(id="t-failed", outcome="failed", running=60, **common))
    sim.add_task(SimTaskSpec(id="t-skipped", outcome="skipped", **common))
    sim.add_task(SimTaskSpec(id="t-restore", operation_type="restore", running=60, **common))
    clock.advance(300)
    body = await listed(api, "backups", resource_id=resource.id)
    assert sorted(item["status"] for item in body["backups"]) == ["error", "protecting"]
    clock.advance(300)
    _, _, shown = await api.show(ok)
    log = shown["operation_log"]
    body = await listed(api, "backups", resource_id=resource.id, status="available")
    (backup,) = body["backups"]
    assert backup["id"] == log["extra_info"]["backup"]["backup_id"]
    assert backup["name"] == log["extra_info"]["backup"]["backup_name"]
    assert backup["checkpoint_id"] == log["checkpoint_id"]
    assert (backup["resource_name"], backup["resource_size"]) == ("data-1", 100)
    assert inventory_time(backup["created_at"]) == START
    assert inventory_time(backup["protected_at"]) == START + 600
    assert backup["vault_id"] == "x"
    assert backup["scheduled_operation_id"] is None


async def test_list_backups_sorts_filters_and_pages(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.inventory.add_backups(
        [BackupSpec("data-1", age=2 * DAY), BackupSpec("data-1", age=DAY, status="error")]
    )
    sim.add_policy(daily())
    clock.advance(3 * DAY)
    newest = await listed(api, "backups", sort="created_at:desc")
    created = [inventory_time(item["created_at"]) for item in newest["backups"]]
    assert created == sorted(created, reverse=True)
    assert newest["count"] == 8  # 2 made before the start, 2 resources x 3 runs
    assert created[-1] == START - 2 * DAY
    oldest = await listed(api, "backups", sort="created_at:asc")
    assert [inventory_time(item["created_at"]) for item in oldest["backups"]] == created[::-1]
    ties = [item["id"] for item in oldest["backups"][2:4]]  # one run: same time, by ID
    assert ties == sorted(ties)
    default = await listed(api, "backups")
    assert default["backups"] == newest["backups"]

    page = await listed(api, "backups", limit="3", offset="3", sort="created_at")
    assert [item["id"] for item in page["backups"]] == [
        item["id"] for item in newest["backups"][3:6]
    ]
    assert (page["count"], page["limit"], page["offset"]) == (8, 3, 3)
    web = await listed(api, "backups", vault_id="vault-web", status="available")
    assert web["count"] == 6
    url = f"{api.base_url}/v3/{PID}/backups?status=error&status=available"
    async with api.session.get(url, headers={"X-Auth-Token": "sim-token"}) as response:
        assert response.status == 200
        assert (await response.json())["count"] == 8
    window = await listed(
        api, "backups", start_time="2026-01-02T00:00:00Z", end_time="2026-01-03T00:00:00Z"
    )
    assert {item["created_at"][:10] for item in window["backups"]} == {"2026-01-02"}


async def test_each_new_run_shows_up_in_a_resources_backups(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    sim.add_policy(daily())
    resource_id = sim.inventory.resource("ecs-v1-0001").id
    seen = []
    for _ in range(3):
        clock.advance(DAY)
        body = await listed(api, "backups", resource_id=resource_id, status="available")
        seen.append(body["count"])
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    "sort", ["size", "created_at:up", "created_at;desc", "created_at:desc,," + "x" * 300]
)
async def test_a_bad_sort_is_refused(api: Api, sort: str) -> None:
    status, _, body = await api.get(f"/v3/{PID}/backups", params={"sort": sort})
    assert status == 400
    assert body["error_code"] == "BackupService.9900"
    assert body["error_msg"].startswith("Invalid parameter sort: expected key[:asc|desc]")


def test_sort_takes_several_keys() -> None:
    assert parse_sort("status:asc,created_at") == [("status", False), ("created_at", True)]
    assert parse_sort(None) == [("created_at", True)]


@given(
    st.dictionaries(
        st.sampled_from(
            ["limit", "offset", "sort", "start_time", "end_time", "resource_ids", "status"]
        ),
        st.text(max_size=30),
        max_size=5,
    )
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_query_lists_or_is_refused_in_cbr_words(sim: Simulator, query: dict[str, str]) -> None:
    """Whatever a caller puts in the query: a listing, or a ValueError worded like CBR's."""
    try:
        page_of(select_vaults(sim, query), query)
        page_of(select_backups(sim, query, [query.get("status", "")], sim.clock.wall()), query)
    except ValueError as error:
        refusal = str(error)
    else:
        refusal = "Invalid parameter (none: listed)"
    assert refusal.startswith("Invalid parameter ")


# -- scenarios -----------------------------------------------------------------------------


SCENARIO = """
seed = 5
[[vaults]]
id = "vault-web"
name = "web"
resources = [{name = "ecs-web-1"}, {name = "ecs-web-2", size = 80}]
[[vaults]]
resource_type = "OS::Sfs::Turbo"
resources = 1
[[policies]]
id = "p-daily"
name = "daily at 14:00 UTC"
pattern = ["FREQ=DAILY;INTERVAL=1;BYHOUR=14;BYMINUTE=00"]
vaults = ["web", "vault-0002"]
skip = [{resource = "ecs-web-2", at = 2026-01-02T14:00:00Z}]
[[policies]]
id = "p-off"
pattern = ["FREQ=WEEKLY;BYDAY=SU;BYHOUR=1;BYMINUTE=0"]
vaults = ["web"]
enabled = false
[[backups]]
resource = "ecs-web-2"
age = "26h"
"""


async def test_a_scenario_stages_an_inventory_with_a_missed_backup(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    sim = load_scenario(path).build(clock)
    clock.advance(3 * DAY)
    assert [vault.name for vault in sim.inventory.vaults] == ["web", "vault-0002"]
    assert [item.name for item in sim.inventory.vaults[1].resources] == ["sfs-turbo-v2-0001"]
    assert runs_of(sim, "p-daily")[utc("2026-01-02 14:00")] == {"ecs-web-1", "sfs-turbo-v2-0001"}
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        api = Api(session, base_url)
        policies = await listed(api, "policies")
        assert [item["id"] for item in policies["policies"]] == ["p-daily", "p-off"]
        web_2 = sim.inventory.resource("ecs-web-2").id
        backups = await listed(api, "backups", resource_id=web_2, sort="created_at:asc")
    days = [item["created_at"][:10] for item in backups["backups"]]
    assert days == ["2025-12-30", "2026-01-01", "2026-01-03"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vaults = 1", "vaults: expected an array of tables"),
        ("[[vaults]]\ncolour = 'red'", "vaults[0].colour: unknown key"),
        ("[[vaults]]\nresource_type = 'OS::Nova::Potato'", "vaults[0]: resource_type must be"),
        ("[[vaults]]\nresources = -1", "vaults[0].resources: expected an integer of at least 0"),
        ("[[vaults]]\nresources = [{size = 0}]", "vaults[0].resources[0].size: expected"),
        ("[[vaults]]\nid = 'a b'", "invalid task ID"),
        ("[[backups]]\nage = '1h'", "backups[0].resource: required"),
        ("[[backups]]\nresource = 'x'", "backups[0].resource: no resource 'x' in a vault"),
        (
            "[[vaults]]\nresources = 1\n[[backups]]\nresource = 'ecs-v1-0001'\nstatus = 'gone'",
            "backups[0]: status must be one of",
        ),
        ("[[policies]]\npattern = ['FREQ=DAILY']\nvaults = ['x']", "policies[0].vaults: no vault"),
        ("[[policies]]\npattern = 'FREQ=DAILY'", "policies[0].pattern: expected a list"),
        ("[[policies]]\npattern = ['FREQ=DAILY']\nevery = '1h'", "every goes with every"),
        ("[[policies]]\npattern = ['FREQ=DAILY']\nresources = 3", "resources goes with every"),
        ("[[policies]]\npattern = ['FREQ=DAILY']\nspread = '2h'", "spread must be at most 1h"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nvaults = ['x']", "vaults go with pattern"),
        ("[[policies]]\npattern = ['FREQ=DAILY']\nenabled = 'yes'", "enabled: expected true"),
        (
            "[[vaults]]\nresources = 1\n[[policies]]\npattern = ['FREQ=DAILY']\n"
            "vaults = ['vault-0001']\nskip = [{resource = 'ecs-v1-0009'}]",
            "policies[0].skip: no resource 'ecs-v1-0009' in the policy's vaults",
        ),
        (
            "[[policies]]\npattern = ['FREQ=DAILY']\nskip = [{resource = 'a', run = 1, at = 1}]",
            "policies[0].skip: at: expected a time",
        ),
        (
            "[[policies]]\npattern = ['FREQ=DAILY']\nskip = [{resource = 'a', when = 1}]",
            "policies[0].skip: unknown key 'when'",
        ),
    ],
)
def test_bad_inventory_keys_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(str(path))


async def test_vaults_policies_and_backups_can_be_added_at_run_time(
    clock: FakeClock,
) -> None:
    sim = Simulator(clock)
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        api = Api(session, base_url)
        status, body = await api.control(
            "POST", "/_sim/vaults", [{"name": "web", "resources": 2}, {"name": "more"}]
        )
        assert status == 201
        assert len(body["ids"]) == 2
        status, body = await api.control("POST", "/_sim/vaults", {"name": "web"})
        assert (status, body["error"]) == (400, "a vault 'web' already exists")
        status, body = await api.control(
            "POST",
            "/_sim/policies",
            {"id": "p-1", "pattern": [DAILY_14], "vaults": ["web"], "skip": [{"resource": "x"}]},
        )
        assert (status, body["error"]) == (400, "policy 'p-1' backs up no resource 'x'")
        status, body = await api.control(
            "POST", "/_sim/policies", {"id": "p-1", "pattern": [DAILY_14], "vaults": ["web"]}
        )
        assert status == 201
        status, body = await api.control(
            "POST", "/_sim/backups", {"resource": "ecs-v1-0002", "age": "3d"}
        )
        assert status == 201
        status, body = await api.control("POST", "/_sim/backups", [{"resource": "nope"}])
        assert (status, body["error"]) == (400, "no resource 'nope' in any vault")
        clock.advance(DAY)
        vaults = await listed(api, "vaults", policy_id="p-1")
        policies = await listed(api, "policies")
        backups = await listed(api, "backups", status="available")
    assert [vault["name"] for vault in vaults["vaults"]] == ["web"]
    assert [policy["id"] for policy in policies["policies"]] == ["p-1"]
    assert backups["count"] == 3
