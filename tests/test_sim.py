"""The CBR simulator, exercised over a real socket with a fake clock."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from watcher.cbr.models import MalformedBodyError, parse_list_body, parse_show_body
from watcher.net.listener import parse_listen
from watcher.sim import FaultProfile, SimTaskSpec, Simulator, builtin_scenario, load_scenario
from watcher.sim.__main__ import main as sim_main
from watcher.sim.faults import HOSTILE_FAULTS, FaultInjector, parse_fault
from watcher.sim.scenario import parse_scenario
from watcher.sim.simulator import run_simulator
from watcher.sim.tasks import TAIL_START
from watcher.testing import FakeClock

Headers = CIMultiDict[str]
PID = "04f1829c788037ac2fb8c01eb2b04b95"
TOKEN = "sim-token"
START = "2026-01-01T00:00:00"
MILLIS_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
ZULU_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SEED_KEYS = {
    "id",
    "status",
    "operation_type",
    "project_id",
    "provider_id",
    "checkpoint_id",
    "vault_id",
    "vault_name",
    "created_at",
    "started_at",
    "updated_at",
    "error_info",
    "extra_info",
}


class Api:
    """A tiny CBR caller: returns (status, headers, parsed JSON or None)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def get(
        self, path: str, *, token: str | None = TOKEN, params: dict[str, str] | None = None
    ) -> tuple[int, Headers, Any]:
        headers = {"X-Auth-Token": token} if token is not None else {}
        async with self.session.get(self.base_url + path, headers=headers, params=params) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            return resp.status, CIMultiDict(resp.headers), body

    async def show(self, task_id: str, **kwargs: Any) -> tuple[int, Headers, Any]:
        return await self.get(f"/v3/{PID}/operation-logs/{task_id}", **kwargs)

    async def list(self, **params: str) -> tuple[int, Headers, Any]:
        return await self.get(f"/v3/{PID}/operation-logs", params=params)

    async def control(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = body if isinstance(body, str) else json.dumps(body)
        async with self.session.request(method, self.base_url + path, data=data) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(clock, seed=1)


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        yield Api(session, base_url)


async def until(condition: Callable[[], bool], real_seconds: float = 5.0) -> None:
    """Wait for the server side of a real socket to reach a point; fails after real_seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + real_seconds
    # Polling is the point: the condition is set by I/O in the server, not by this test.
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def assert_cbr_headers(headers: Headers) -> None:
    assert headers["Content-Type"] == "application/json;charset=UTF-8"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])


# -- ShowOpLog ------------------------------------------------------------------------------


async def test_show_success_has_seed_field_set(sim: Simulator, clock: FakeClock, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(id="t-seed", style="seed", waiting=5, running=60))
    clock.advance(66)
    status, headers, body = await api.show(task_id)
    assert status == 200
    assert_cbr_headers(headers)
    log = body["operation_log"]
    assert set(body) == {"operation_log"}
    assert set(log) == SEED_KEYS | {"ended_at"}
    assert log["id"] == "t-seed"
    assert log["status"] == "success"
    assert log["project_id"] == PID
    assert log["provider_id"] == "0daac4c5-6707-4851-97ba-169e36266b66"
    assert log["error_info"] == {"code": "", "message": ""}
    assert log["created_at"] == f"{START}.000+00:00"
    assert log["started_at"] == f"{START[:-2]}05.000+00:00"
    assert log["ended_at"] == "2026-01-01T00:01:05.000+00:00"
    for key in ("created_at", "started_at", "updated_at", "ended_at"):
        assert MILLIS_TS.fullmatch(log[key])
    extra = log["extra_info"]
    assert extra["common"]["progress"] == 100
    assert extra["common"]["request_id"].startswith("req-")
    assert extra["resource"] == {
        "type": "OS::Nova::Server",
        "id": sim.tasks[task_id].resource_id,
        "name": "ecs-0001",
    }
    assert set(extra["backup"]) >= {"backup_id", "backup_name", "incremental"}
    parsed = parse_show_body(body)  # the client's models read it
    assert parsed.is_terminal
    assert parsed.progress == 100


async def test_compact_style_uses_z_timestamps_omits_waiting_progress_adds_unknown_key(
    sim: Simulator, api: Api
) -> None:
    task_id = sim.add_task(SimTaskSpec(style="compact", waiting=30))
    status, _, body = await api.show(task_id)
    log = body["operation_log"]
    assert status == 200
    assert log["status"] == "waiting"
    assert "progress" not in log["extra_info"]["common"]
    assert "ended_at" not in log
    assert ZULU_TS.fullmatch(log["created_at"])
    assert log["created_at"] == f"{START}Z"
    assert log["enterprise_project_id"] == "0"
    parsed = parse_show_body(body)
    assert parsed.progress is None
    assert parsed.raw["enterprise_project_id"] == "0"


async def test_styles_alternate_by_default(sim: Simulator, api: Api) -> None:
    first, second = sim.add_tasks([SimTaskSpec(), SimTaskSpec()])
    assert re.fullmatch(r"[0-9a-f-]{36}", first)
    _, _, one = await api.show(first)
    _, _, two = await api.show(second)
    assert MILLIS_TS.fullmatch(one["operation_log"]["created_at"])
    assert ZULU_TS.fullmatch(two["operation_log"]["created_at"])


@pytest.mark.parametrize(
    ("outcome", "final", "runs"),
    [
        ("success", "success", True),
        ("failed", "failed", True),
        ("timeout", "timeout", True),
        ("skipped", "skipped", False),
    ],
)
async def test_every_outcome_is_reachable(
    sim: Simulator, clock: FakeClock, api: Api, outcome: str, final: str, runs: bool
) -> None:
    task_id = sim.add_task(SimTaskSpec(outcome=outcome, waiting=10, running=100, style="seed"))
    seen = []
    for step in (0, 11, 60, 200):
        clock.advance_to(1000 + step)
        _, _, body = await api.show(task_id)
        seen.append(body["operation_log"])
    statuses = [log["status"] for log in seen]
    if runs:
        expected = ["waiting", "running", "running", final]
    else:
        expected = ["waiting", final, final, final]
    assert statuses == expected
    last = seen[-1]
    assert "ended_at" in last
    error = last["error_info"]
    if outcome == "failed":
        assert error["code"].startswith("BackupService.")
        assert error["message"]
        assert parse_show_body({"operation_log": last}).error == (error["code"], error["message"])
    else:
        assert error == {"code": "", "message": ""}


async def test_failed_task_uses_given_error_and_stops_progressing(sim: Simulator) -> None:
    clock = sim.clock
    assert isinstance(clock, FakeClock)
    task_id = sim.add_task(
        SimTaskSpec(
            outcome="failed",
            waiting=0,
            running=100,
            stop_at=0.5,
            progress_exponent=1.0,
            error_code="BackupService.4242",
            error_message="disk busy",
        )
    )
    clock.advance(50)
    at_stop = sim.state(task_id).progress
    clock.advance(40)
    assert sim.state(task_id).status == "running"
    assert sim.state(task_id).progress == at_stop == 52
    clock.advance(10)
    state = sim.state(task_id)
    assert (state.status, state.progress) == ("failed", at_stop)


def test_progress_is_integer_monotonic_nonlinear_and_stalls_at_99(clock: FakeClock) -> None:
    sim = Simulator(clock, seed=3)
    task_id = sim.add_task(SimTaskSpec(waiting=0, running=1000, progress_exponent=1.6))
    samples: list[int] = []
    for _ in range(1000):
        state = sim.state(task_id)
        assert state.status == "running"
        assert state.progress is not None
        samples.append(state.progress)
        clock.advance(1)
    assert all(isinstance(p, int) and 0 <= p <= 99 for p in samples)
    assert samples == sorted(samples)
    assert samples[0] == 0
    assert samples[500] < 50 - 10  # well below a straight line halfway through
    tail = samples[int(1000 * TAIL_START) :]
    assert set(tail) == {99}
    assert sim.state(task_id).progress == 100


def test_default_exponents_are_seeded_and_in_range(clock: FakeClock) -> None:
    def exponents(seed: int) -> list[float]:
        sim = Simulator(clock, seed=seed)
        ids = sim.add_tasks(SimTaskSpec() for _ in range(20))
        return [sim.tasks[task_id].exponent for task_id in ids]

    first = exponents(5)
    assert first == exponents(5)
    assert first != exponents(6)
    assert all(0.6 <= value <= 1.8 for value in first)


async def test_phases_give_an_exact_sequence_and_unknown_statuses(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    task_id = sim.add_task(
        SimTaskSpec(phases=[("waiting", 10, None), ("running", 10, 40), ("frozen", 5, 40)])
    )
    seen = []
    for _ in range(4):
        _, _, body = await api.show(task_id)
        log = body["operation_log"]
        seen.append((log["status"], log["extra_info"]["common"].get("progress"), "ended_at" in log))
        clock.advance(10)
    assert seen == [
        ("waiting", None, False),
        ("running", 40, False),
        ("frozen", 40, False),
        ("frozen", 40, False),
    ]
    assert not parse_show_body(body).is_known_status


async def test_unknown_task_is_404_backupservice_6500(api: Api) -> None:
    status, headers, body = await api.show("no-such-task")
    assert status == 404
    assert_cbr_headers(headers)
    assert body == {
        "error_code": "BackupService.6500",
        "error_msg": "Operation log does not exist.",
    }


async def test_task_is_invisible_until_visible_after(
    sim: Simulator, clock: FakeClock, api: Api
) -> None:
    task_id = sim.add_task(SimTaskSpec(visible_after=20))
    assert (await api.show(task_id))[0] == 404
    assert (await api.list())[2]["count"] == 0
    clock.advance(20)
    assert (await api.show(task_id))[0] == 200
    assert (await api.list())[2]["count"] == 1


# -- auth, project --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"), [(None, "x-auth-token not found"), ("wrong", "decrypt token fail")]
)
async def test_bad_or_missing_token_is_401(
    sim: Simulator, api: Api, token: str | None, reason: str
) -> None:
    task_id = sim.add_task(SimTaskSpec())
    for path in (f"/v3/{PID}/operation-logs/{task_id}", f"/v3/{PID}/operation-logs"):
        status, headers, body = await api.get(path, token=token)
        assert status == 401
        assert_cbr_headers(headers)
        assert body == {
            "error_code": "APIGW.0301",
            "error_msg": f"Incorrect IAM authentication information: {reason}",
            "request_id": headers["X-Request-Id"],
        }
    assert sim.request_count(task_id) == 1


async def test_set_tokens_rotates_credentials(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec())
    sim.set_tokens(["new-token"])
    assert (await api.show(task_id))[0] == 401
    assert (await api.show(task_id, token="new-token"))[0] == 200


async def test_wrong_project_is_403(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec())
    for path in (f"/v3/{'0' * 32}/operation-logs/{task_id}", f"/v3/{'0' * 32}/operation-logs"):
        status, headers, body = await api.get(path)
        assert status == 403
        assert body["error_code"] == "APIGW.0302"
        assert body["request_id"] == headers["X-Request-Id"]


async def test_unknown_api_path_is_gateway_404(api: Api) -> None:
    status, headers, body = await api.get(f"/v3/{PID}/checkpoints")
    assert status == 404
    assert_cbr_headers(headers)
    assert body["error_code"] == "APIGW.0101"


# -- scripted faults ------------------------------------------------------------------------


async def test_throttle_with_and_without_retry_after(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=["throttle", "throttle:3"]))
    status, headers, body = await api.show(task_id)
    assert status == 429
    assert "Retry-After" not in headers
    assert_cbr_headers(headers)
    assert body == {
        "error_code": "APIGW.0308",
        "error_msg": "The throttling threshold has been reached: policy user over ratelimit,"
        "limit:20,time:1 second",
        "request_id": headers["X-Request-Id"],
    }
    status, headers, _ = await api.show(task_id)
    assert (status, headers["Retry-After"]) == (429, "3")
    assert (await api.show(task_id))[0] == 200
    assert sim.request_count(task_id) == 3


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("http_500", 500, "BackupService.9999"),
        ("http_502", 502, "APIGW.0202"),
        ("http_503", 503, "BackupService.9998"),
        ("http_504", 504, "APIGW.0203"),
        ("unauthorized", 401, "APIGW.0301"),
        ("not_found", 404, "BackupService.6500"),
    ],
)
async def test_scripted_error_faults(
    sim: Simulator, api: Api, fault: str, status: int, code: str
) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=[fault]))
    got, headers, body = await api.show(task_id)
    assert (got, body["error_code"]) == (status, code)
    assert body["error_msg"]
    assert_cbr_headers(headers)
    assert (await api.show(task_id))[0] == 200
    assert [entry.fault for entry in sim.request_log] == [fault, None]


async def test_malformed_bodies(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=["malformed", "malformed:shape"]))
    status, headers, body = await api.show(task_id)
    assert (status, body) == (200, None)  # truncated: not JSON at all
    assert_cbr_headers(headers)
    status, _, body = await api.show(task_id)
    assert (status, body) == (200, {"operation_log": "oops"})
    with pytest.raises(MalformedBodyError):
        parse_show_body(body)
    assert (await api.show(task_id))[0] == 200


async def test_hang_never_answers_until_the_client_gives_up(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=["hang"]))
    with pytest.raises(TimeoutError):
        async with api.session.get(
            f"{api.base_url}/v3/{PID}/operation-logs/{task_id}",
            headers={"X-Auth-Token": TOKEN},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as resp:
            await resp.read()
    assert (await api.show(task_id))[0] == 200
    assert sim.request_count(task_id) == 2
    assert [(e.status, e.fault) for e in sim.request_log] == [(None, "hang"), (200, None)]


async def test_hang_is_released_on_shutdown(clock: FakeClock) -> None:
    sim = Simulator(clock)
    task_id = sim.add_task(SimTaskSpec(faults=["hang"]))
    async with aiohttp.ClientSession() as session:
        async with sim.running() as base_url:
            request = asyncio.ensure_future(
                session.get(
                    f"{base_url}/v3/{PID}/operation-logs/{task_id}", headers={"X-Auth-Token": TOKEN}
                )
            )
            await until(lambda: sim.request_count(task_id) > 0)
        with pytest.raises(aiohttp.ClientError):
            await request
    assert sim.request_log[0].status is None


async def test_reset_drops_the_connection(sim: Simulator, api: Api) -> None:
    # aiohttp itself re-sends a GET once after a disconnect, so one reset goes unnoticed.
    task_id = sim.add_task(SimTaskSpec(faults=["reset", "reset", "reset"]))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.show(task_id)
    assert (await api.show(task_id))[0] == 200
    assert [(e.status, e.fault) for e in sim.request_log] == [
        (None, "reset"),
        (None, "reset"),
        (None, "reset"),
        (200, None),
    ]


def test_fault_names_are_validated() -> None:
    assert parse_fault("throttle:2.5").retry_after == 2.5
    assert parse_fault("http_503").name == "http_503"
    for bad in ("http_418", "throttle:x", "throttle:-1", "explode", "hang:1", "malformed:odd"):
        with pytest.raises(ValueError, match="unknown fault"):
            parse_fault(bad)
    with pytest.raises(ValueError, match="unknown fault"):
        Simulator(FakeClock()).add_task(SimTaskSpec(faults=["boom"]))


# -- random fault profile -------------------------------------------------------------------


def test_fault_profile_is_reproducible_per_seed() -> None:
    profile = FaultProfile(
        error_rate=0.2,
        throttle_rate=0.2,
        throttle_retry_after_ratio=0.5,
        hang_rate=0.05,
        malformed_rate=0.1,
        reset_rate=0.05,
    )

    def sequence(seed: int) -> list[str | None]:
        injector = FaultInjector(profile, seed)
        return [(f.name if (f := injector.next_fault(None)) else None) for _ in range(300)]

    first = sequence(11)
    assert first == sequence(11)
    assert first != sequence(12)
    names = {name for name in first if name}
    assert {"reset", "hang", "throttle", "throttle:2"} <= names
    assert {name for name in names if name.startswith("http_")} == {
        "http_500",
        "http_502",
        "http_503",
        "http_504",
    }


async def test_same_seed_gives_same_responses_over_http(clock: FakeClock) -> None:
    async def statuses(seed: int) -> list[int]:
        sim = Simulator(clock, seed=seed, faults=FaultProfile(error_rate=0.3, throttle_rate=0.3))
        task_id = sim.add_task(SimTaskSpec(faults=["http_502"]))
        async with sim.running() as base_url, aiohttp.ClientSession() as session:
            api = Api(session, base_url)
            return [(await api.show(task_id))[0] for _ in range(25)]

    first = await statuses(4)
    assert first[0] == 502  # the script comes before the random profile
    assert first == await statuses(4)
    assert {200, 429} <= set(first)
    assert set(first) & {500, 502, 503, 504}


def test_fault_profile_validation() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        FaultProfile(error_rate=1.5)
    with pytest.raises(ValueError, match="latency"):
        FaultProfile(latency=-1)
    with pytest.raises(ValueError, match="add up"):
        FaultProfile(error_rate=0.6, throttle_rate=0.6)


async def test_latency_is_slept_on_the_sim_clock(clock: FakeClock) -> None:
    sim = Simulator(clock, faults=FaultProfile(latency=5))
    task_id = sim.add_task(SimTaskSpec())
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(Api(session, base_url).show(task_id))
        await until(lambda: clock.next_deadline() is not None)
        assert clock.next_deadline() == clock.monotonic() + 5
        assert not request.done()
        clock.advance(5)
        status, _, body = await request
    assert status == 200
    assert body["operation_log"]["updated_at"]


# -- ListOpLogs -----------------------------------------------------------------------------


async def test_list_filters_paging_and_count(sim: Simulator, clock: FakeClock, api: Api) -> None:
    sim.add_tasks(
        [
            SimTaskSpec(
                id=f"b{n}", operation_type="backup", vault_id="vault-a", waiting=5 + n, running=100
            )
            for n in range(5)
        ]
    )
    clock.advance(1)
    sim.add_tasks(
        [
            SimTaskSpec(id="r1", operation_type="restore", vault_id="vault-b", waiting=0),
            SimTaskSpec(id="hidden", visible_after=1000),
        ]
    )
    clock.advance(5.5)  # b0, b1 running; b2..b4 waiting; r1 running
    status, headers, body = await api.list()
    assert status == 200
    assert_cbr_headers(headers)
    assert (body["count"], body["limit"], body["offset"]) == (6, 1000, 0)
    ids = [log["id"] for log in body["operation_logs"]]
    assert ids == ["r1", "b0", "b1", "b2", "b3", "b4"]  # newest first, then by ID
    assert parse_list_body(body).count == 6

    _, _, body = await api.list(status="running")
    assert sorted(log["id"] for log in body["operation_logs"]) == ["b0", "b1", "r1"]
    _, _, body = await api.list(status="running", operation_type="backup", vault_id="vault-a")
    assert [log["id"] for log in body["operation_logs"]] == ["b0", "b1"]
    _, _, body = await api.list(vault_id="vault-b")
    assert body["count"] == 1
    _, _, body = await api.list(resource_name="ecs-0001", provider_id=sim.tasks["b0"].provider_id)
    assert [log["id"] for log in body["operation_logs"]] == ["b0"]

    pages = []
    for offset in range(0, 8, 4):
        _, _, body = await api.list(limit="4", offset=str(offset))
        assert (body["count"], body["limit"], body["offset"]) == (6, 4, offset)
        pages.append([log["id"] for log in body["operation_logs"]])
    assert pages == [ids[:4], ids[4:]]
    _, _, body = await api.list(offset="10")
    assert (body["operation_logs"], body["count"]) == ([], 6)


async def test_list_time_window(sim: Simulator, clock: FakeClock, api: Api) -> None:
    sim.add_task(SimTaskSpec(id="early"))
    clock.advance(3600)
    sim.add_task(SimTaskSpec(id="late"))
    _, _, body = await api.list(start_time="2026-01-01T00:30:00Z")
    assert [log["id"] for log in body["operation_logs"]] == ["late"]
    _, _, body = await api.list(end_time="2026-01-01T00:30:00Z")
    assert [log["id"] for log in body["operation_logs"]] == ["early"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"offset": "1.5"},
        {"start_time": "yesterday"},
    ],
)
async def test_list_rejects_bad_parameters(api: Api, params: dict[str, str]) -> None:
    status, headers, body = await api.list(**params)
    assert status == 400
    assert_cbr_headers(headers)
    assert body["error_code"] == "BackupService.9900"
    assert next(iter(params)) in body["error_msg"]


# -- control API ----------------------------------------------------------------------------


async def test_control_api(sim: Simulator, clock: FakeClock, api: Api) -> None:
    status, body = await api.control(
        "POST", "/_sim/tasks", {"id": "ctl-1", "waiting": "10s", "running": "1m"}
    )
    assert (status, body) == (201, {"ids": ["ctl-1"]})
    status, body = await api.control(
        "POST",
        "/_sim/tasks",
        [
            {"outcome": "failed", "faults": ["http_503"]},
            {"phases": [["running", "5s", 10], ["frozen", 0]]},
        ],
    )
    assert status == 201
    assert len(body["ids"]) == 2
    assert sim.tasks["ctl-1"].spec.running == 60
    assert sim.tasks[body["ids"][1]].spec.phases == [("running", 5.0, 10), ("frozen", 0.0, None)]

    await api.show("ctl-1")
    await api.show(body["ids"][0])
    await api.show("ctl-1", token="bad")
    assert await api.control("GET", "/_sim/tasks/ctl-1/requests") == (
        200,
        {"task_id": "ctl-1", "requests": 2},
    )
    assert await api.control("GET", "/_sim/stats") == (
        200,
        {"requests": 3, "by_status": {"200": 1, "401": 1, "503": 1}},
    )
    status, body = await api.control("GET", "/_sim/tasks")
    assert status == 200
    assert [task["status"] for task in body["tasks"]] == ["waiting", "waiting", "running"]

    assert await api.control("PUT", "/_sim/auth", {"tokens": ["rotated"]}) == (200, {"tokens": 1})
    assert (await api.show("ctl-1"))[0] == 401
    assert (await api.show("ctl-1", token="rotated"))[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("POST", "/_sim/tasks", "{not json", "not valid JSON"),
        ("POST", "/_sim/tasks", {"outcom": "failed"}, "task.outcom: unknown key"),
        ("POST", "/_sim/tasks", [{}, {"waiting": "soon"}], "tasks[1].waiting"),
        ("POST", "/_sim/tasks", {"faults": ["boom"]}, "task.faults: unknown fault"),
        ("POST", "/_sim/tasks", {"id": "bad/id"}, "task.id: invalid task ID"),
        ("POST", "/_sim/tasks", [{"id": "dup"}, {"id": "dup"}], "already exists"),
        ("PUT", "/_sim/auth", {"tokens": "x"}, "tokens"),
    ],
)
async def test_control_api_rejects_bad_bodies(
    sim: Simulator, api: Api, method: str, path: str, body: object, message: str
) -> None:
    status, answer = await api.control(method, path, body)
    assert status == 400
    assert message in answer["error"]
    assert not sim.tasks


# -- scenarios ------------------------------------------------------------------------------


def test_builtin_demo_scenario_is_varied(clock: FakeClock) -> None:
    scenario = builtin_scenario("demo")
    assert len(scenario.tasks) == 10
    assert {spec.outcome for spec in scenario.tasks} == {"success", "failed", "skipped", "timeout"}
    assert len({spec.operation_type for spec in scenario.tasks}) >= 5
    sim = scenario.build(clock)
    clock.advance(3600)
    assert {sim.state(task_id).status for task_id in sim.tasks} == {
        "success",
        "failed",
        "skipped",
        "timeout",
    }


def test_load_scenario_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'seed = 7\nproject_id = "p1"\ntokens = ["a", "b"]\n'
        '[faults]\nerror_rate = 0.05\nlatency = "250ms"\n'
        '[[tasks]]\nid = "backup-ecs-0001"\nwaiting = "10s"\nrunning = "4m"\n'
        'faults = ["http_503", "throttle:2"]\n'
        '[[tasks]]\noperation_type = "restore"\noutcome = "failed"\nrunning = 90\n'
        'phases = [["running", "1m", 50], ["paused", 0]]\n',
        encoding="utf-8",
    )
    scenario = load_scenario(path)
    assert (scenario.seed, scenario.project_id, scenario.tokens) == (7, "p1", ("a", "b"))
    assert scenario.faults == FaultProfile(error_rate=0.05, latency=0.25)
    first, second = scenario.tasks
    assert (first.id, first.waiting, first.running) == ("backup-ecs-0001", 10.0, 240.0)
    assert first.faults == ["http_503", "throttle:2"]
    assert (second.operation_type, second.outcome, second.running) == ("restore", "failed", 90.0)
    sim = scenario.build(clock)
    assert sim.project_id == "p1"
    assert sim.faults.pending("backup-ecs-0001") == ["http_503", "throttle:2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sede = 1", "sede: unknown key"),
        ("seed = 'x'", "seed: expected an integer"),
        ("[[tasks]]\noutcome = 'maybe'", "tasks[0]: outcome must be one of"),
        ("[[tasks]]\n[[tasks]]\nrunning = 'forever'", "tasks[1].running"),
        ("[[tasks]]\nfaults = ['http_418']", "tasks[0].faults: unknown fault"),
        ("[faults]\nerror_rat = 0.1", "faults.error_rat: unknown key"),
        ("[faults]\nerror_rate = 2", "error_rate must be between 0 and 1"),
        ("tokens = 'x'", "tokens: expected a list"),
        ("[[tasks]]\nid = 'a'\n[[tasks]]\nid = 'a'", "tasks[1].id: duplicate"),
        ("seed = ", "Invalid"),
    ],
)
def test_bad_scenarios_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(str(path))


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read scenario"):
        load_scenario(tmp_path / "nope.toml")


def test_parse_scenario_defaults() -> None:
    scenario = parse_scenario({})
    assert (scenario.seed, scenario.project_id, scenario.tokens, scenario.tasks) == (
        0,
        PID,
        ("sim-token",),
        [],
    )


# -- running it alone -----------------------------------------------------------------------


async def test_run_simulator_prints_how_to_connect(clock: FakeClock) -> None:
    stop = asyncio.Event()
    out = io.StringIO()
    runner = asyncio.ensure_future(run_simulator("127.0.0.1:0", None, stop, clock, out=out))
    await until(lambda: bool(out.getvalue()) or runner.done())
    line = out.getvalue()
    assert line.count("\n") == 1
    match = re.search(r"endpoint=(http://127\.0\.0\.1:\d+) project_id=(\w+) token=(\S+)", line)
    assert match is not None
    base_url, project_id, token = match.groups()
    async with aiohttp.ClientSession() as session:
        url = f"{base_url}/v3/{project_id}/operation-logs/backup-ecs-0003"
        async with session.get(url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
    stop.set()
    await runner


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:9473", default_host="127.0.0.1") == ("0.0.0.0", 9473)
    assert parse_listen("[::1]:80", default_host="127.0.0.1") == ("::1", 80)
    assert parse_listen(":8080", default_host="127.0.0.1") == ("127.0.0.1", 8080)
    for bad in ("localhost", "host:port", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_module_entry_point_rejects_a_bad_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("sede = 1", encoding="utf-8")
    assert sim_main(["--listen", "127.0.0.1:0", "--scenario", str(path)]) == 78
    assert "sede: unknown key" in capsys.readouterr().err


# -- hostile faults (opt-in) ----------------------------------------------------------------


async def raw_show(api: Api, task_id: str) -> tuple[int, Headers, bytes]:
    """ShowOpLog without parsing: the exact bytes the simulator sent."""
    async with api.session.get(
        f"{api.base_url}/v3/{PID}/operation-logs/{task_id}", headers={"X-Auth-Token": TOKEN}
    ) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def test_hostile_fault_names_round_trip() -> None:
    for name in (*HOSTILE_FAULTS, "reset:reused"):
        assert parse_fault(name).name == name
    assert parse_fault("reset").name == "reset"
    assert parse_fault("malformed").variant == "truncated"
    for bad in ("progress", "progress:12", "throttle_odd", "far_date:soon", "deep_json:3"):
        with pytest.raises(ValueError, match="unknown fault"):
            parse_fault(bad)


async def test_deep_json_body(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=["deep_json"]))
    status, headers, data = await raw_show(api, task_id)
    assert status == 200
    assert_cbr_headers(headers)
    assert data.startswith(b'{"operation_log":[[[[')
    assert data.count(b"[") == 100_000
    with pytest.raises(RecursionError):
        json.loads(data)
    assert (await api.show(task_id))[0] == 200


@pytest.mark.parametrize("fault", ["oversized", "oversized:chunked"])
async def test_oversized_bodies(sim: Simulator, api: Api, fault: str) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=[fault]))
    status, headers, data = await raw_show(api, task_id)
    assert status == 200
    assert len(data) > 9 * 1024 * 1024
    assert ("Content-Length" in headers) is (fault == "oversized")
    assert_cbr_headers(headers)
    assert json.loads(data)["operation_log"]["id"] == task_id
    assert [entry.status for entry in sim.request_log] == [200]


@pytest.mark.parametrize(
    ("variant", "text"),
    [
        ("Infinity", b"Infinity"),
        ("-Infinity", b"-Infinity"),
        ("NaN", b"NaN"),
        ("1e999", b"1e999"),
        ("huge", b"9" * 400),
        ("superscript", '"\u00b2"'.encode()),
    ],
)
async def test_progress_written_as_raw_json(
    sim: Simulator, api: Api, variant: str, text: bytes
) -> None:
    task_id = sim.add_task(SimTaskSpec(waiting=0, faults=[f"progress:{variant}"]))
    _, _, data = await raw_show(api, task_id)
    assert b'"progress": ' + text in data
    assert json.loads(data)["operation_log"]["status"] == "running"


@pytest.mark.parametrize(
    ("fault", "date"),
    [("far_date", "9999-12-31T23:59:59-05:00"), ("far_date:past", "0001-01-01T00:00:00+05:00")],
)
async def test_far_dates(sim: Simulator, api: Api, fault: str, date: str) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=[fault]))
    _, _, body = await api.show(task_id)
    log = body["operation_log"]
    assert {log[key] for key in ("created_at", "started_at", "updated_at")} == {date}


async def test_lone_surrogates_are_escaped_in_the_json(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=["surrogate", "surrogate:status"]))
    _, _, data = await raw_show(api, task_id)
    assert b"\\ud800" in data  # the only way JSON can carry one
    log = json.loads(data)["operation_log"]
    assert log["vault_name"].startswith("\udfff")
    assert log["extra_info"]["resource"]["name"].endswith("\udc80")
    assert log["status"] == "waiting"
    _, _, data = await raw_show(api, task_id)
    assert json.loads(data)["operation_log"]["status"] == "waiting\ud800"


async def test_odd_retry_after_headers(sim: Simulator, clock: FakeClock, api: Api) -> None:
    names = ["minus0000", "superscript", "huge", "garbage", "rfc850", "asctime"]
    task_id = sim.add_task(SimTaskSpec(faults=[f"throttle_odd:{name}" for name in names]))
    seen = []
    for _ in names:
        status, headers, body = await api.show(task_id)
        assert (status, body["error_code"]) == (429, "APIGW.0308")
        seen.append(headers["Retry-After"])
    assert seen[:4] == ["Wed, 21 Oct 2015 07:28:00 -0000", "\u00b2", "99999999999", "soon, maybe"]
    assert seen[4] == "Thursday, 01-Jan-26 00:01:00 GMT"
    assert seen[5] == "Thu Jan  1 00:01:00 2026"


async def test_reset_on_a_reused_connection_waits_for_one(sim: Simulator, api: Api) -> None:
    task_id = sim.add_task(SimTaskSpec(faults=["reset:reused"]))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        assert (await Api(fresh, api.base_url).show(task_id))[0] == 200
        assert (await Api(fresh, api.base_url).show(task_id))[0] == 200
    assert sim.faults.pending(task_id) == ["reset:reused"]
    # aiohttp re-sends a GET once after a disconnect; the script has only one fault.
    assert (await api.show(task_id))[0] == 200
    assert (await api.show(task_id))[0] == 200
    assert [(e.reused, e.fault, e.status) for e in sim.request_log] == [
        (False, None, 200),
        (False, None, 200),
        (False, None, 200),
        (True, "reset:reused", None),
        (False, None, 200),
    ]


def test_hostile_profile_is_opt_in_and_reproducible() -> None:
    assert FaultProfile().hostile_rate == FaultProfile().reused_reset_rate == 0
    profile = FaultProfile(hostile_rate=0.5, reused_reset_rate=0.2)

    def sequence(seed: int, reused: bool) -> list[str | None]:
        injector = FaultInjector(profile, seed)
        faults = [injector.next_fault(None, reused=reused) for _ in range(400)]
        return [fault.name if fault else None for fault in faults]

    first = sequence(3, reused=True)
    assert first == sequence(3, reused=True)
    assert set(HOSTILE_FAULTS) <= set(first)
    assert "reset:reused" in first
    assert "reset:reused" not in sequence(3, reused=False)
    with pytest.raises(ValueError, match="add up"):
        FaultProfile(hostile_rate=0.6, error_rate=0.6)


def test_scenarios_accept_the_hostile_rates() -> None:
    scenario = parse_scenario(
        {
            "faults": {"hostile_rate": 0.1, "reused_reset_rate": 0.05},
            "tasks": [{"faults": ["deep_json", "throttle_odd:huge", "reset:reused"]}],
        }
    )
    assert scenario.faults is not None
    assert (scenario.faults.hostile_rate, scenario.faults.reused_reset_rate) == (0.1, 0.05)
