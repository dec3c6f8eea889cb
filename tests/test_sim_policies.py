"""Backup policies in the simulator: scheduled tasks appearing as the clock reaches them."""

from __future__ import annotations

import asyncio
import io
import re
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.test_sim import PID, Api, until
from watcher.sim import Simulator, builtin_scenario, load_scenario
from watcher.sim.policies import PolicySpec
from watcher.sim.simulator import run_simulator
from watcher.testing import FakeClock

HOUR = 3600.0
DAY = 24 * HOUR


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(clock, seed=11)


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        yield Api(session, base_url)


async def logs(api: Api, **params: str) -> list[dict[str, Any]]:
    status, _, body = await api.list(**params)
    assert status == 200, body
    result: list[dict[str, Any]] = body["operation_logs"]
    return result


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def resource_ids(found: list[dict[str, Any]]) -> list[str]:
    return sorted(log["extra_info"]["resource"]["id"] for log in found)


async def test_policy_tasks_appear_at_their_times_with_stable_resources(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    start = clock.wall()
    policy_id = sim.add_policy(
        PolicySpec(id="policy-daily", resources=5, every=DAY, first=600, duration=1200)
    )
    assert policy_id == "policy-daily"
    clock.advance(599)
    assert await logs(api) == []
    clock.advance(1)
    first_run = await logs(api)
    assert len(first_run) == 5
    assert {log["policy_id"] for log in first_run} == {"policy-daily"}
    assert {epoch(log["created_at"]) for log in first_run} == {start + 600}
    assert {log["status"] for log in first_run} == {"waiting"}

    clock.advance(DAY + 3 * HOUR)  # well past the second run: it is there, at its own time
    both = await logs(api)
    assert len(both) == 10
    second_run = both[:5]  # newest first
    assert {epoch(log["created_at"]) for log in second_run} == {start + 600 + DAY}
    assert resource_ids(second_run) == resource_ids(first_run)
    assert {log["id"] for log in second_run}.isdisjoint(log["id"] for log in first_run)
    names = {log["extra_info"]["resource"]["name"] for log in both}
    assert names == {f"ecs-p1-000{n}" for n in range(1, 6)}
    assert {log["status"] for log in both} == {"success"}

    status, _, body = await api.show(second_run[0]["id"])
    assert status == 200
    assert body["operation_log"]["policy_id"] == "policy-daily"


async def test_a_run_is_spread_over_its_window(sim: Simulator, clock: FakeClock, api: Api) -> None:
    start = clock.wall()
    sim.add_policy(PolicySpec(resources=100, every=HOUR, spread=600, first=60))
    clock.advance(60 + 300)
    halfway = len(await logs(api))
    assert 25 <= halfway <= 75
    clock.advance(300)
    run = await logs(api)
    assert len(run) == 100
    created = [epoch(log["created_at"]) for log in run]
    assert all(start + 60 <= moment <= start + 660 for moment in created)
    assert len(set(created)) > 90
    exact = [sim.tasks[log["id"]].created_wall for log in run]
    assert exact == sorted(exact, reverse=True)


async def test_outcome_shares_follow_the_policy(sim: Simulator, clock: FakeClock, api: Api) -> None:
    sim.add_policy(
        PolicySpec(
            resources=400,
            every=DAY,
            fail_share=0.1,
            skip_share=0.05,
            timeout_share=0.05,
            duration=1200,
        )
    )
    clock.advance(6 * HOUR)
    found = await logs(api)
    outcomes = Counter(log["status"] for log in found)
    assert sum(outcomes.values()) == 400
    assert 20 <= outcomes["failed"] <= 60
    assert 5 <= outcomes["skipped"] <= 40
    assert 5 <= outcomes["timeout"] <= 40
    assert outcomes["success"] >= 280
    failed = [log for log in found if log["status"] == "failed"]
    assert all(log["error_info"]["code"] for log in failed)
    # Running times spread log-normally around the median duration.
    ran = [
        epoch(log["ended_at"]) - epoch(log["started_at"])
        for log in found
        if log["status"] == "success"
    ]
    assert 1000 <= statistics.median(ran) <= 1400
    assert max(ran) - min(ran) > 300


async def test_policy_tasks_and_filters(sim: Simulator, clock: FakeClock, api: Api) -> None:
    sim.add_policy(
        PolicySpec(
            id="p-vault",
            resources=3,
            every=HOUR,
            vault_id="vault-policy",
            enterprise_project_id="ep-7",
            duration=1200,
            duration_sigma=0,
            waiting=0,
        )
    )
    sim.add_policy(
        PolicySpec(id="p-restore", resources=2, every=HOUR, operation_type="restore", waiting=0)
    )
    clock.advance(HOUR + 60)  # run 2 of both has just started; run 1 has ended
    in_vault = await logs(api, vault_id="vault-policy")
    assert len(in_vault) == 6
    assert {log["vault_name"] for log in in_vault} == {"vault-p1"}
    assert len(await logs(api, vault_id="vault-policy", status="running")) == 3
    assert len(await logs(api, vault_id="vault-policy", status="success")) == 3
    assert len(await logs(api, operation_type="restore")) == 4
    assert len(await logs(api, enterprise_project_id="ep-7")) == 6
    assert len(await logs(api, enterprise_project_id="all_granted_eps")) == 10

    resource = in_vault[0]["extra_info"]["resource"]["id"]
    history = await logs(api, resource_id=resource)
    assert [log["status"] for log in history] == ["running", "success"]  # newest first
    page = await api.list(status="running", limit="2", offset="0")
    assert (page[0], len(page[2]["operation_logs"]), page[2]["count"]) == (200, 2, 5)
    window = await logs(api, start_time="2026-01-01T00:30:00Z")
    assert len(window) == 5


async def test_runs_limit_and_control_api(sim: Simulator, clock: FakeClock, api: Api) -> None:
    status, body = await api.control(
        "POST", "/_sim/policies", {"id": "twice", "resources": 2, "every": "1h", "runs": 2}
    )
    assert (status, body) == (201, {"ids": ["twice"]})
    clock.advance(10 * HOUR)
    assert len(await logs(api)) == 4
    status, body = await api.control("GET", "/_sim/policies")
    assert status == 200
    (summary,) = body["policies"]
    assert (summary["id"], summary["resources"], summary["tasks_created"]) == ("twice", 2, 4)
    status, body = await api.control("GET", "/_sim/tasks")
    assert [task["policy_id"] for task in body["tasks"]] == ["twice"] * 4
    assert len({task["resource_id"] for task in body["tasks"]}) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"every": "1h"}, "policy.resources: required"),
        ({"resources": 1}, "policy.every: required"),
        ({"resources": "many", "every": "1h"}, "policy.resources: expected an integer"),
        ({"resources": 1, "every": "daily"}, "policy.every: expected a duration"),
        ({"resources": 1, "every": "1h", "spread": "2h"}, "spread must not be longer"),
        ({"resources": 1, "every": "1h", "fail_share": 0.8, "skip_share": 0.3}, "together"),
        ({"resources": 1, "every": "1h", "colour": "red"}, "policy.colour: unknown key"),
        ([{"resources": 1, "every": "1h", "id": "x"}] * 2, "policy ID 'x' already exists"),
        ("[", "not valid JSON"),
    ],
)
async def test_control_api_rejects_bad_policies(
    sim: Simulator, api: Api, body: object, message: str
) -> None:
    status, answer = await api.control("POST", "/_sim/policies", body)
    assert status == 400
    assert message in answer["error"]
    assert not sim.policies


def test_the_same_seed_gives_the_same_tasks_however_they_are_looked_at() -> None:
    def run(look_every: float) -> list[tuple[str, float, str]]:
        clock = FakeClock()
        sim = Simulator(clock, seed=3)
        sim.add_policy(PolicySpec(resources=20, every=HOUR, spread=1800, fail_share=0.3))
        for _ in range(int(3.5 * HOUR / look_every)):
            clock.advance(look_every)
            sim.materialize()
        return sorted(
            (task.id, task.created_wall, sim.state(task.id).status) for task in sim.tasks.values()
        )

    often, rarely = run(60), run(3.5 * HOUR)
    assert often == rarely
    assert len(often) == 80  # runs at 0h, 1h, 2h and 3h
    other_seed = Simulator(FakeClock(), seed=4)
    other_seed.add_policy(PolicySpec(resources=20, every=HOUR))
    assert not {task_id for task_id, _, _ in often} & set(other_seed.tasks)


SCENARIO = """
seed = 9
[[tasks]]
id = "manual-0001"
[[policies]]
id = "policy-daily"
resources = 50
every = "24h"
first = "0s"
spread = "10m"
fail_share = 0.1
duration = "20m"
[[policies]]
resources = 3
every = "1h"
first = "30m"
operation_type = "replication"
vault_id = "vault-replica"
"""


def test_scenario_policies(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    scenario = load_scenario(path)
    daily, hourly = scenario.policies
    assert (daily.id, daily.resources, daily.every, daily.spread) == ("policy-daily", 50, DAY, 600)
    assert (hourly.id, hourly.first, hourly.operation_type) == (None, 1800, "replication")
    sim = scenario.build(clock)
    clock.advance(3600)
    by_policy = Counter(task.spec.policy_id for task in sim.tasks.values())
    hourly_id = sim.policies[1].id
    assert re.fullmatch(r"[0-9a-f-]{36}", hourly_id)
    assert by_policy == {None: 1, "policy-daily": 50, hourly_id: 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policies = 3", "policies: expected an array of tables"),
        ("[[policies]]\nevery = '1h'", "policies[0].resources: required"),
        ("[[policies]]\nresources = 0\nevery = '1h'", "policies[0]: resources must be from 1"),
        ("[[policies]]\nresources = 1\nevery = '0s'", "policies[0]: every must be at least 1s"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nruns = 0", "runs must be at least 1"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nfirst = '-1s'", "policies[0].first"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nfail_share = 'x'", "fail_share: expected"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nstyle = 'fancy'", "style must be one of"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nid = 'a b'", "invalid task ID"),
        ("[[policies]]\nresources = 1\nevery = '1h'\nevry = 1", "policies[0].evry: unknown key"),
        (
            "[[policies]]\nid = 'p'\nresources = 1\nevery = '1h'\n"
            "[[policies]]\nid = 'p'\nresources = 1\nevery = '1h'",
            "policies[1].id: duplicate policy ID 'p'",
        ),
    ],
)
def test_bad_policy_keys_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(str(path))


async def test_policies_work_through_the_standalone_simulator(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    stop = asyncio.Event()
    out = io.StringIO()
    runner = asyncio.ensure_future(run_simulator("127.0.0.1:0", path, stop, clock, out=out))
    try:
        await until(lambda: bool(out.getvalue()) or runner.done())
        match = re.search(r"endpoint=(\S+) ", out.getvalue())
        assert match is not None
        clock.advance(2 * HOUR)
        async with aiohttp.ClientSession() as session:
            api = Api(session, match.group(1))
            status, _, body = await api.get(
                f"/v3/{PID}/operation-logs", params={"vault_id": "vault-replica"}
            )
            assert status == 200
            assert body["count"] == 6  # runs at 30m and 1h30m
            status, _, body = await api.get(
                f"/v3/{PID}/operation-logs", params={"status": "failed", "limit": "1"}
            )
            assert body["operation_logs"][0]["policy_id"] == "policy-daily"
    finally:
        stop.set()
        await runner


def test_builtin_fleet_scenario_has_ten_thousand_running_backups(clock: FakeClock) -> None:
    sim = builtin_scenario("fleet").build(clock)
    clock.advance(15 * 60)
    statuses = Counter(sim.state(task_id).status for task_id in sim.tasks)
    assert len(sim.tasks) == 10_200
    assert statuses["running"] >= 10_000
