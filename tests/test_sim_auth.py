"""The simulator's credential checks over a real socket: IAM tokens, AK/SK signatures, locks."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from watcher.cbr import signer
from watcher.sim import SimTaskSpec, Simulator
from watcher.sim.auth import AccessKey, User
from watcher.sim.scenario import parse_scenario
from watcher.testing import FakeClock

PID = "04f1829c788037ac2fb8c01eb2b04b95"
AK, SK, TEMP_AK, TEMP_SK, STS = "AKSIM1", "sk-one", "AKTEMP", "sk-temp", "sts-token-xyz"
USER = User("acme", "ops", "pw-correct")
Headers = CIMultiDict[str]


class Caller:
    """Raw HTTP to the simulator: IAM token requests, token calls and signed calls."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, clock: FakeClock) -> None:
        self.session = session
        self.base_url = base_url
        self.clock = clock

    async def token_request(self, body: object) -> tuple[int, Headers, Any]:
        data = body if isinstance(body, str) else json.dumps(body)
        async with self.session.post(f"{self.base_url}/v3/auth/tokens", data=data) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.json(content_type=None)

    async def send(self, url: URL, headers: dict[str, str]) -> tuple[int, Headers, Any]:
        async with self.session.get(url, headers=headers) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.json(content_type=None)

    def url(self, task_id: str | None = None, query: list[tuple[str, str]] | None = None) -> URL:
        path = f"{self.base_url}/v3/{PID}/operation-logs" + (f"/{task_id}" if task_id else "")
        encoded = signer.encode_query(query or [])
        return URL(path + (f"?{encoded}" if encoded else ""), encoded=True)

    async def signed(
        self,
        url: URL,
        *,
        ak: str = AK,
        sk: str = SK,
        skew: float = 0.0,
        extra: dict[str, str] | None = None,
        after: dict[str, str] | None = None,
    ) -> tuple[int, Headers, Any]:
        """Sign with `extra` headers included, then add `after` headers unsigned."""
        headers = {"Content-Type": "application/json", "X-Project-Id": PID, **(extra or {})}
        signer.sign(
            "GET", url, headers, b"", access_key=ak, secret_key=sk, now=self.clock.wall() + skew
        )
        return await self.send(url, {**headers, **(after or {})})


def password_body(password: str = USER.password, project_id: str = PID) -> dict[str, Any]:
    user = {"name": USER.name, "password": password, "domain": {"name": USER.domain}}
    return {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": {"id": project_id}},
        }
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    sim = Simulator(
        clock,
        seed=2,
        users=[USER],
        access_keys=[AccessKey(AK, SK), AccessKey(TEMP_AK, TEMP_SK, STS)],
    )
    sim.add_task(SimTaskSpec(id="t-1"))
    return sim


@pytest.fixture
async def caller(sim: Simulator, clock: FakeClock) -> AsyncIterator[Caller]:
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        yield Caller(session, base_url, clock)


def reason(body: Any) -> str:
    """The gateway's reason after the fixed APIGW.0301 prefix."""
    assert body["error_code"] == "APIGW.0301"
    prefix = "Incorrect IAM authentication information: "
    assert body["error_msg"].startswith(prefix)
    return str(body["error_msg"]).removeprefix(prefix)


# -- IAM --------------------------------------------------------------------------------------


async def test_iam_issues_a_project_scoped_token(
    sim: Simulator, caller: Caller, clock: FakeClock
) -> None:
    status, headers, body = await caller.token_request(password_body())
    assert status == 201
    token = headers["X-Subject-Token"]
    assert body["token"]["expires_at"] == "2026-01-02T00:00:00.000000Z"
    assert body["token"]["issued_at"] == "2026-01-01T00:00:00.000000Z"
    assert body["token"]["project"]["id"] == PID
    assert body["token"]["user"]["name"] == USER.name
    assert body["token"]["methods"] == ["password"]
    assert parsedate_to_datetime(headers["Date"]).timestamp() == clock.wall()
    status, _, _ = await caller.send(caller.url("t-1"), {"X-Auth-Token": token})
    assert status == 200
    assert [(r.user, r.status) for r in sim.iam.requests] == [(USER.name, 201)]
    assert sim.request_log[-1].status == 200  # IAM calls are not CBR requests
    assert len(sim.request_log) == 1


@pytest.mark.parametrize(
    "body",
    [
        password_body("wrong"),
        {
            **password_body(),
            "auth": {
                **password_body()["auth"],
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": "nobody",
                            "password": "pw-correct",
                            "domain": {"name": "acme"},
                        }
                    },
                },
            },
        },
    ],
    ids=["wrong-password", "unknown-user"],
)
async def test_iam_wrong_credentials_are_401(caller: Caller, body: dict[str, Any]) -> None:
    status, headers, answer = await caller.token_request(body)
    assert status == 401
    assert "X-Subject-Token" not in headers
    assert answer == {
        "error": {
            "code": 401,
            "title": "Unauthorized",
            "message": "The username or password is wrong.",
        }
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not JSON"),
        ({"auth": {}}, "not a valid password-method token request"),
        ({"auth": {"identity": {"methods": ["token"]}}}, "Only the password method"),
        (password_body(project_id="0" * 32), "project ID"),
    ],
)
async def test_iam_bad_requests_are_400(caller: Caller, body: object, message: str) -> None:
    status, _, answer = await caller.token_request(body)
    assert status == 400
    assert answer["error"]["code"] == 400
    assert message in answer["error"]["message"]


async def test_issued_tokens_expire_on_the_sim_clock(
    sim: Simulator, caller: Caller, clock: FakeClock
) -> None:
    sim.auth.token_lifetime = 600
    _, headers, _ = await caller.token_request(password_body())
    token = headers["X-Subject-Token"]
    clock.advance(599)
    assert (await caller.send(caller.url("t-1"), {"X-Auth-Token": token}))[0] == 200
    clock.advance(1)
    status, _, body = await caller.send(caller.url("t-1"), {"X-Auth-Token": token})
    assert status == 401
    assert reason(body) == "token expires, expires_at: 2026-01-01T00:10:00.000000Z"


async def test_iam_outage_is_503(sim: Simulator, caller: Caller) -> None:
    sim.auth.iam_unavailable = True
    status, headers, body = await caller.token_request(password_body())
    assert status == 503
    assert "X-Subject-Token" not in headers
    assert body["error_code"] == "APIGW.0202"


# -- AK/SK ------------------------------------------------------------------------------------


async def test_signed_requests_pass(caller: Caller, clock: FakeClock) -> None:
    """ShowOpLog and ListOpLogs with a query that needs encoding (':' in start_time)."""
    assert (await caller.signed(caller.url("t-1")))[0] == 200
    query = [("start_time", "2025-12-31T00:00:00Z"), ("limit", "10"), ("vault_name", "a b+c")]
    status, headers, body = await caller.signed(caller.url(query=query))
    assert status == 200
    assert body["limit"] == 10
    assert parsedate_to_datetime(headers["Date"]).timestamp() == clock.wall()


async def test_requests_signed_by_the_official_sdk_pass(
    caller: Caller, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator's verifier accepts what huaweicloudsdkcore signs, sent as the SDK sends it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    base = URL(caller.base_url)
    request = SdkRequest(
        method="GET",
        schema="http",
        host=f"{base.host}:{base.port}",
        resource_path=f"/v3/{PID}/operation-logs",
        query_params=[("start_time", "2025-12-31T00:00:00Z"), ("status", "waiting")],
        header_params={
            "Content-Type": "application/json",
            "X-Project-Id": PID,
            "X-Sdk-Date": signer.sdk_date(clock.wall()),
        },
        body=b"",
    )
    Signer(types.SimpleNamespace(ak=AK, sk=SK)).sign(request)
    url = URL(f"{caller.base_url}{request.uri}", encoded=True)
    status, _, body = await caller.send(url, dict(request.header_params))
    assert status == 200, body
    assert body["count"] == 1


async def test_a_wrong_signature_is_401_with_the_canonical_request(caller: Caller) -> None:
    status, _, body = await caller.signed(caller.url("t-1"), sk="not-the-key")
    assert status == 401
    text = reason(body)
    assert text.startswith(f"verify aksk signature fail, GET|/v3/{PID}/operation-logs/t-1/||")
    assert "x-project-id:" + PID in text


async def test_an_unknown_access_key_is_401(caller: Caller) -> None:
    status, _, body = await caller.signed(caller.url("t-1"), ak="AKNOPE")
    assert status == 401
    assert reason(body) == "Get secretKey failed,ak:******,err:ak not exist"


@pytest.mark.parametrize(("skew", "ok"), [(-899, True), (899, True), (-901, False), (901, False)])
async def test_x_sdk_date_must_be_within_15_minutes(caller: Caller, skew: float, ok: bool) -> None:
    status, _, body = await caller.signed(caller.url("t-1"), skew=skew)
    assert (status == 200) is ok
    if not ok:
        assert reason(body).startswith("signature expired, signature time:")


async def test_a_temporary_key_needs_its_signed_security_token(caller: Caller) -> None:
    url = caller.url("t-1")
    token = {"X-Security-Token": STS}
    assert (await caller.signed(url, ak=TEMP_AK, sk=TEMP_SK))[0] == 401
    assert (await caller.signed(url, ak=TEMP_AK, sk=TEMP_SK, after=token))[0] == 401
    wrong = {"X-Security-Token": "other"}
    assert (await caller.signed(url, ak=TEMP_AK, sk=TEMP_SK, extra=wrong))[0] == 401
    assert (await caller.signed(url, ak=TEMP_AK, sk=TEMP_SK, extra=token))[0] == 200


async def test_more_than_five_failures_lock_the_access_key_for_five_minutes(
    sim: Simulator, caller: Caller, clock: FakeClock
) -> None:
    url = caller.url("t-1")
    for _ in range(5):
        assert (await caller.signed(url, sk="bad"))[0] == 401
    assert (await caller.signed(url))[0] == 200  # five is not yet "more than five"
    for _ in range(6):
        assert (await caller.signed(url, sk="bad"))[0] == 401
    status, _, body = await caller.signed(url)
    assert status == 401
    assert reason(body) == "AK access failed to reach the limit,forbidden"
    assert sim.auth.ak_locks == 1
    assert (await caller.signed(url, ak=TEMP_AK, sk=TEMP_SK, extra={"X-Security-Token": STS}))[
        0
    ] == 200  # other keys are not affected
    clock.advance(300)
    assert (await caller.signed(url))[0] == 200
    assert sim.auth.signature_failures[AK] == 11


# -- configuration ----------------------------------------------------------------------------


async def test_control_api_replaces_credentials(sim: Simulator, caller: Caller) -> None:
    body = {
        "users": [{"domain": "d2", "user": "u2", "password": "p2"}],
        "access_keys": [{"access_key": "AK2", "secret_key": "SK2", "security_token": ""}],
        "token_lifetime": "10m",
        "iam_unavailable": False,
    }
    async with caller.session.put(f"{caller.base_url}/_sim/auth", json=body) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "users": 1,
            "access_keys": 1,
            "token_lifetime": 600.0,
            "iam_unavailable": False,
        }
    assert (await caller.signed(caller.url("t-1"), ak="AK2", sk="SK2"))[0] == 200
    assert (await caller.signed(caller.url("t-1")))[0] == 401  # AK1 is gone
    assert (await caller.token_request(password_body()))[0] == 401  # so is the old user
    assert sim.auth.token_lifetime == 600


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "tokens"),
        ({"user": []}, "access_keys"),
        ({"users": [{"domain": "d", "user": "u"}]}, "users[0].password"),
        (
            {"access_keys": [{"access_key": "a", "secret_key": "s", "x": 1}]},
            "access_keys[0].x: unknown key",
        ),
        ({"token_lifetime": "soon"}, "token_lifetime"),
        ({"token_lifetime": 0}, "token_lifetime"),
        ({"iam_unavailable": "yes"}, "iam_unavailable"),
        ({"tokens": ["ok"], "users": "x"}, "users"),
    ],
)
async def test_control_api_rejects_bad_credentials(
    sim: Simulator, caller: Caller, body: object, message: str
) -> None:
    async with caller.session.put(f"{caller.base_url}/_sim/auth", json=body) as resp:
        assert resp.status == 400
        assert message in (await resp.json())["error"]
    assert sim.auth.tokens.accepts("sim-token")  # nothing half-applied


def test_scenario_credentials(clock: FakeClock) -> None:
    scenario = parse_scenario(
        {
            "token_lifetime": "2h",
            "users": [{"domain": "acme", "user": "ops", "password": "pw"}],
            "access_keys": [{"access_key": "AK", "secret_key": "SK", "security_token": "ST"}],
        }
    )
    sim = scenario.build(clock)
    assert sim.auth.token_lifetime == 7200
    assert sim.auth.users[("acme", "ops")].password == "pw"
    assert sim.auth.access_keys["AK"].security_token == "ST"
    assert "pw" not in repr(sim.auth.users)
    assert "SK" not in repr(sim.auth.access_keys)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"users": {"domain": "d"}}, "users: expected a list of tables"),
        ({"users": ["x"]}, "users[0]: expected a table"),
        ({"access_keys": [{"access_key": "", "secret_key": "s"}]}, "access_keys[0].access_key"),
        ({"token_lifetime": -1}, "token_lifetime"),
    ],
)
def test_bad_scenario_credentials_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(data)
