"""Password (IAM token) and AK/SK authentication against the simulator, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from tests.daemon_process import json_lines, run_cli
from tests.support import World, make_engine, run_until
from tests.test_daemon import daemon_env
from watcher.cbr.aksk import AkSkAuthenticator
from watcher.cbr.auth import Authenticator, TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.cbr.errors import AuthError, CbrError
from watcher.cbr.iam import PasswordAuthenticator, parse_iam_time
from watcher.cli.wiring import build_authenticator
from watcher.clock import RealClock
from watcher.config import Settings
from watcher.engine.schedule import Policy
from watcher.sim import SimTaskSpec, Simulator
from watcher.sim.auth import AccessKey, User
from watcher.testing import FakeClock, drive_until

AK, SK, TEMP_AK, TEMP_SK, STS = "AKWATCH1", "sk-SECRET-1", "AKTEMP1", "sk-SECRET-t", "sts-SECRET"
TOKEN = "tok-SECRET"
USER = User("acme", "ops", "pw-SECRET")
T = TypeVar("T")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    sim = Simulator(
        clock,
        seed=4,
        users=[USER],
        access_keys=[AccessKey(AK, SK), AccessKey(TEMP_AK, TEMP_SK, STS)],
    )
    async with sim.running() as base_url:
        sim.base_url = base_url  # type: ignore[attr-defined]
        yield sim


def base(sim: Simulator) -> str:
    return str(sim.base_url)  # type: ignore[attr-defined]


@asynccontextmanager
async def world_with(sim: Simulator, clock: FakeClock, auth: Authenticator) -> AsyncIterator[World]:
    """The `world` fixture's shape with any authenticator."""
    client = CbrClient(endpoint=base(sim), project_id=sim.project_id, auth=auth, clock=clock)
    async with client:
        yield World(clock, sim, base(sim), client, Path("/nonexistent"))


async def on_clock(clock: FakeClock, call: Awaitable[T]) -> T:
    """Await `call` while the fake clock moves whenever nothing else can."""
    task = asyncio.ensure_future(call)
    await drive_until(clock, task.done, busy=lambda: not task.done())
    return task.result()


async def failure(clock: FakeClock, call: Awaitable[Any]) -> CbrError:
    task = asyncio.ensure_future(call)
    await drive_until(clock, task.done, busy=lambda: not task.done())
    error = task.exception()
    assert isinstance(error, CbrError), error
    return error


def aksk(sim: Simulator, clock: FakeClock, **options: Any) -> AkSkAuthenticator:
    values: dict[str, Any] = {"access_key": AK, "secret_key": SK}
    values.update(options)
    return AkSkAuthenticator(project_id=sim.project_id, clock=clock, **values)


def password_auth(sim: Simulator, clock: FakeClock, **options: Any) -> PasswordAuthenticator:
    values: dict[str, Any] = {
        "iam_endpoint": base(sim),
        "domain_name": USER.domain,
        "user_name": USER.name,
        "password": USER.password,
    }
    values.update(options)
    return PasswordAuthenticator(project_id=sim.project_id, clock=clock, **values)


def iam_statuses(sim: Simulator) -> list[int]:
    return [request.status for request in sim.iam.requests]


# -- AK/SK ------------------------------------------------------------------------------------


async def test_aksk_requests_pass_the_simulators_verifier(sim: Simulator, clock: FakeClock) -> None:
    """ShowOpLog and ListOpLogs (a query with ':' and a space) are signed as sent."""
    sim.add_task(SimTaskSpec(id="t-1", vault_name="vault one"))
    async with world_with(sim, clock, aksk(sim, clock)) as world:
        assert (await world.client.show_op_log("t-1")).id == "t-1"
        page = await world.client.list_op_logs(
            extra={"start_time": "2025-12-31T00:00:00Z", "vault_name": "vault one"}, limit=5
        )
    assert [log.id for log in page.operation_logs] == ["t-1"]
    assert not sim.auth.signature_failures
    assert [entry.status for entry in sim.request_log] == [200, 200]


async def test_temporary_credentials_from_files(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    """secret_key_file and security_token_file; X-Security-Token is sent and signed."""
    (tmp_path / "sk").write_text(TEMP_SK + "\n")
    (tmp_path / "sts").write_text(STS + "\n")
    sim.add_task(SimTaskSpec(id="t-1"))
    auth = aksk(
        sim,
        clock,
        access_key=TEMP_AK,
        secret_key="",
        secret_key_file=tmp_path / "sk",
        security_token_file=tmp_path / "sts",
    )
    async with world_with(sim, clock, auth) as world:
        assert (await world.client.show_op_log("t-1")).id == "t-1"


async def test_rotated_secret_key_file_is_used(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    """The cloud gets a new SK: requests fail until the file holds it, then pass again."""
    secret_file = tmp_path / "sk"
    secret_file.write_text(SK)
    sim.add_task(SimTaskSpec(id="t-1"))
    async with world_with(
        sim, clock, aksk(sim, clock, secret_key="", secret_key_file=secret_file)
    ) as world:
        assert (await world.client.show_op_log("t-1")).id == "t-1"
        sim.auth.set_access_keys([AccessKey(AK, "sk-SECRET-2")])
        assert isinstance(await failure(clock, world.client.show_op_log("t-1")), AuthError)
        secret_file.write_text("sk-SECRET-2\n")
        assert (await world.client.show_op_log("t-1")).id == "t-1"


async def test_rotation_lifts_a_lockout(sim: Simulator, clock: FakeClock, tmp_path: Path) -> None:
    """Locked out after a wrong SK; writing the right one works at once, without waiting."""
    secret_file = tmp_path / "sk"
    secret_file.write_text("wrong")
    sim.add_task(SimTaskSpec(id="t-1"))
    auth = aksk(sim, clock, secret_key="", secret_key_file=secret_file)
    async with world_with(sim, clock, auth) as world:
        for _ in range(4):
            await failure(clock, world.client.show_op_log("t-1"))
        assert auth.locked_until is not None
        secret_file.write_text(SK)
        assert (await world.client.show_op_log("t-1")).id == "t-1"
    assert sum(sim.auth.signature_failures.values()) == 3


async def test_a_wrong_secret_key_costs_three_requests_then_a_pause(
    sim: Simulator, clock: FakeClock
) -> None:
    """20 concurrent calls with a wrong SK: one probe at a time, 3 rejections, then nothing is
    sent for 5 minutes; the cloud's own lock (after 5) is never reached."""
    sim.add_task(SimTaskSpec(id="t-1"))
    auth = aksk(sim, clock, secret_key="wrong-SECRET")
    async with world_with(sim, clock, auth) as world:
        with capture_logs() as logs:
            calls = [world.client.show_op_log("t-1") for _ in range(20)]
            results = await on_clock(clock, asyncio.gather(*calls, return_exceptions=True))
        assert all(isinstance(result, AuthError) for result in results)
        assert len(sim.request_log) == 3
        locked = [entry for entry in logs if entry["event"] == "auth.locked_out"]
        assert len(locked) == 1
        assert locked[0]["log_level"] == "error"
        message = str(results[-1])
        assert "not signing for another 300s" in message
        assert "wrong-SECRET" not in message
        clock.advance(299)
        await failure(clock, world.client.show_op_log("t-1"))
        assert len(sim.request_log) == 3
        clock.advance(1)
        await failure(clock, world.client.show_op_log("t-1"))  # one probe, locked again
        assert len(sim.request_log) == 4
        assert auth.locked_until == clock.monotonic() + 900
    assert sim.auth.ak_locks == 0


async def test_wrong_secret_key_over_an_hour_with_the_engine(
    sim: Simulator, clock: FakeClock
) -> None:
    """Ten watched tasks, a wrong SK, one hour: 3 rejections, a probe after 5 minutes and
    another 15 minutes later; the cloud's lock (more than 5 in a row) is never reached."""
    ids = [sim.add_task(SimTaskSpec(id=f"t-{n}", running=7200)) for n in range(10)]
    start = clock.monotonic()
    async with world_with(sim, clock, aksk(sim, clock, secret_key="wrong")) as world:
        engine = make_engine(world)
        for task_id in ids:
            engine.add(task_id)
        with capture_logs() as logs:
            await run_until(world, engine, lambda: clock.monotonic() >= start + 3600)
    assert len(sim.request_log) == 5
    assert sim.auth.ak_locks == 0
    locked = [e for e in logs if e["event"] == "auth.locked_out"]
    assert [(e["log_level"], e["pause_seconds"]) for e in locked] == [
        ("error", 300),
        ("warning", 900),
        ("warning", 3600),
    ]


async def test_clock_skew_is_warned_once(sim: Simulator) -> None:
    """Our clock 10 minutes ahead of the server: still accepted, one warning."""
    sim.add_task(SimTaskSpec(id="t-1"))
    ahead = FakeClock(start_wall=sim.clock.wall() + 600)
    async with world_with(sim, ahead, aksk(sim, ahead)) as world:
        with capture_logs() as logs:
            for _ in range(3):
                assert (await world.client.show_op_log("t-1")).id == "t-1"
    warnings = [entry for entry in logs if entry["event"] == "auth.clock_skew"]
    assert len(warnings) == 1
    assert warnings[0]["skew_seconds"] == 600


async def test_too_much_skew_is_rejected_and_named_in_the_lockout(sim: Simulator) -> None:
    """20 minutes off: the simulator refuses the date, the lockout log says how far off."""
    sim.add_task(SimTaskSpec(id="t-1"))
    behind = FakeClock(start_wall=sim.clock.wall() - 1200)
    async with world_with(sim, behind, aksk(sim, behind)) as world:
        with capture_logs() as logs:
            for _ in range(3):
                error = await failure(behind, world.client.show_op_log("t-1"))
    assert "signature expired" in str(error)
    locked = [entry for entry in logs if entry["event"] == "auth.locked_out"]
    assert locked[0]["clock_skew_seconds"] == -1200


async def test_secrets_echoed_by_the_gateway_are_redacted(sim: Simulator, clock: FakeClock) -> None:
    """A rejected signature's message echoes the signed X-Security-Token: never shown."""
    auth = aksk(sim, clock, access_key=TEMP_AK, secret_key="wrong-SECRET", security_token=STS)
    async with world_with(sim, clock, auth) as world:
        error = await failure(clock, world.client.show_op_log("t-1"))
    assert "verify aksk signature fail" in str(error)
    assert STS not in str(error)
    assert TEMP_AK not in str(error)
    assert "x-security-token:**********" in str(error)


# -- password ---------------------------------------------------------------------------------


async def test_concurrent_requests_share_one_token(sim: Simulator, clock: FakeClock) -> None:
    """20 calls at once: one IAM request; the expiry is exposed and reported."""
    sim.add_task(SimTaskSpec(id="t-1"))
    seen: list[float] = []
    auth = password_auth(sim, clock, on_token=seen.append)
    initial = auth.expires_at
    assert initial is None
    async with world_with(sim, clock, auth) as world:
        calls = [world.client.show_op_log("t-1") for _ in range(20)]
        await asyncio.gather(*calls)
    assert iam_statuses(sim) == [201]
    assert auth.expires_at == clock.wall() + 86400
    assert seen == [auth.expires_at]


async def test_token_is_refreshed_ahead_of_expiry(sim: Simulator, clock: FakeClock) -> None:
    """A 2-hour token is renewed after 1.5 h (a quarter of its life before the end)."""
    sim.auth.token_lifetime = 7200
    sim.add_task(SimTaskSpec(id="t-1", running=86400))
    seen: list[float] = []
    auth = password_auth(sim, clock, on_token=seen.append)
    async with world_with(sim, clock, auth) as world:
        await world.client.show_op_log("t-1")
        first = auth.expires_at
        clock.advance(5399)
        await world.client.show_op_log("t-1")
        assert iam_statuses(sim) == [201]
        clock.advance(2)
        await world.client.show_op_log("t-1")
    assert iam_statuses(sim) == [201, 201]
    assert first is not None
    assert seen == [first, first + 5401]


async def test_tokens_never_expire_in_use_over_ten_hours(sim: Simulator, clock: FakeClock) -> None:
    """The engine polling for 10 h with 2-hour tokens: no 401 at all, one fetch per 1.5 h."""
    sim.auth.token_lifetime = 7200
    task_id = sim.add_task(SimTaskSpec(id="long", running=10 * 3600))
    async with world_with(sim, clock, password_auth(sim, clock)) as world:
        policy = Policy(interval_min=5, interval_max=600, deadline=12 * 3600, not_found_grace=120)
        engine = make_engine(world, policy=policy)
        engine.add(task_id)
        await run_until(world, engine, engine.all_done, max_seconds=12 * 3600)
    assert engine.tasks[task_id].end_reason == "success"
    assert {entry.status for entry in sim.request_log} == {200}
    assert len(sim.iam.requests) == 7  # at 0, 1.5 h, 3 h, … 9 h


async def test_a_401_fetches_one_new_token(sim: Simulator, clock: FakeClock) -> None:
    """Tokens revoked upstream: the engine reloads, one new token serves every task."""
    ids = [sim.add_task(SimTaskSpec(id=f"t-{n}", waiting=0, running=600)) for n in range(5)]
    auth = password_auth(sim, clock)
    async with world_with(sim, clock, auth) as world:
        await world.client.show_op_log(ids[0])
        clock.advance(120)
        sim.auth.issued.clear()  # e.g. the password was changed elsewhere
        engine = make_engine(world)
        for task_id in ids:
            engine.add(task_id)
        await run_until(world, engine, engine.all_done)
    assert all(task.end_reason == "success" for task in engine.tasks.values())
    assert iam_statuses(sim) == [201, 201]


async def test_wrong_password_over_an_hour(sim: Simulator, clock: FakeClock) -> None:
    """One clear error, IAM asked about 0, 5, 15 and 35 minutes in, CBR never called."""
    ids = [sim.add_task(SimTaskSpec(id=f"t-{n}", running=7200)) for n in range(5)]
    start = clock.monotonic()
    auth = password_auth(sim, clock, password="wrong-SECRET")
    async with world_with(sim, clock, auth) as world:
        engine = make_engine(world)
        for task_id in ids:
            engine.add(task_id)
        with capture_logs() as logs:
            await run_until(world, engine, lambda: clock.monotonic() >= start + 3600)
    assert iam_statuses(sim) == [401] * 4
    walls = [r.wall for r in sim.iam.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(walls)]
    # The backoff (5, 10, 20 minutes), plus at most one poll interval until a poll asks.
    for gap, backoff in zip(gaps, [300, 600, 1200], strict=True):
        assert backoff <= gap <= backoff + 60
    assert sim.request_log == []
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == ["auth.token_failed"]
    assert "IAM rejected the password for user 'ops' in domain 'acme'" in errors[0]["error"]
    assert "wrong-SECRET" not in repr(logs)


async def test_iam_failures_are_told_apart(sim: Simulator, clock: FakeClock) -> None:
    """Wrong password, IAM down (503) and IAM unreachable give three different messages."""
    sim.add_task(SimTaskSpec(id="t-1"))
    cases = [
        (password_auth(sim, clock, password="nope"), "IAM rejected the password"),
        (password_auth(sim, clock, iam_endpoint="http://127.0.0.1:9"), "IAM is unreachable"),
    ]
    for auth, expected in cases:
        async with world_with(sim, clock, auth) as world:
            error = await failure(clock, world.client.show_op_log("t-1"))
        assert isinstance(error, AuthError)
        assert expected in str(error)
        assert "next IAM attempt in" in str(error)
    sim.auth.iam_unavailable = True
    async with world_with(sim, clock, password_auth(sim, clock)) as world:
        error = await failure(clock, world.client.show_op_log("t-1"))
    assert "IAM is unavailable (HTTP 503: Backend unavailable.)" in str(error)


async def test_iam_outage_during_refresh_keeps_the_old_token(
    sim: Simulator, clock: FakeClock
) -> None:
    """Refresh fails: the old token serves until it expires, then requests stop; IAM back
    → a new token on the next attempt after the backoff."""
    sim.auth.token_lifetime = 7200
    sim.add_task(SimTaskSpec(id="t-1", running=86400))
    async with world_with(sim, clock, password_auth(sim, clock)) as world:
        await world.client.show_op_log("t-1")
        sim.auth.iam_unavailable = True
        clock.advance(5500)
        await world.client.show_op_log("t-1")  # refresh failed, old token still good
        clock.advance(1700)  # past expiry
        sent = len(sim.request_log)
        error = await failure(clock, world.client.show_op_log("t-1"))
        assert "IAM is unavailable" in str(error)
        assert len(sim.request_log) == sent
        sim.auth.iam_unavailable = False
        clock.advance(600)
        await world.client.show_op_log("t-1")
    assert iam_statuses(sim)[0] == 201
    assert iam_statuses(sim)[-1] == 201
    assert set(iam_statuses(sim)[1:-1]) == {503}


async def test_a_fixed_password_file_is_tried_at_once(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    """During the 5-minute backoff after a wrong password, a changed file is used at once."""
    password_file = tmp_path / "password"
    password_file.write_text("wrong\n")
    sim.add_task(SimTaskSpec(id="t-1"))
    auth = password_auth(sim, clock, password="", password_file=password_file)
    async with world_with(sim, clock, auth) as world:
        await failure(clock, world.client.show_op_log("t-1"))
        await failure(clock, world.client.show_op_log("t-1"))
        assert iam_statuses(sim) == [401]
        password_file.write_text(USER.password + "\n")
        assert (await world.client.show_op_log("t-1")).id == "t-1"
    assert iam_statuses(sim) == [401, 201]


async def test_an_iam_endpoint_ending_in_v3_works(sim: Simulator, clock: FakeClock) -> None:
    """Terraform spells the IAM endpoint with "/v3"; both spellings reach the same path."""
    sim.add_task(SimTaskSpec(id="t-1"))
    auth = password_auth(sim, clock, iam_endpoint=base(sim) + "/v3/")
    async with world_with(sim, clock, auth) as world:
        assert (await world.client.show_op_log("t-1")).id == "t-1"


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2020-01-04T09:05:22.701000Z", 1578128722.701),
        ("2020-01-04T09:05:22Z", 1578128722.0),
        ("2020-01-04T17:05:22.701+08:00", 1578128722.701),
    ],
)
def test_iam_timestamps(text: str, epoch: float) -> None:
    assert parse_iam_time(text) == pytest.approx(epoch)


@pytest.mark.parametrize("text", [None, "", "2020-01-04T09:05:22", "yesterday"])
def test_bad_iam_timestamps(text: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError is the contract
        parse_iam_time(text)


# -- wiring -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "kind"),
    [
        ({"method": "token", "token": "t"}, TokenAuthenticator),
        ({"method": "aksk", "access_key": "a", "secret_key": "s"}, AkSkAuthenticator),
        (
            {"method": "password", "domain_name": "d", "user_name": "u", "password": "p"},
            PasswordAuthenticator,
        ),
    ],
)
def test_build_authenticator_follows_auth_method(auth: dict[str, str], kind: type[object]) -> None:
    settings = Settings(cbr={"region": "ap-southeast-1", "project_id": "p"}, auth=auth)
    assert isinstance(build_authenticator(settings, FakeClock()), kind)


# -- the daemon end to end --------------------------------------------------------------------


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time with a user and a temporary access key, for a subprocess."""
    sim = Simulator(
        RealClock(),
        tokens=[TOKEN],
        seed=6,
        users=[USER],
        access_keys=[AccessKey(TEMP_AK, TEMP_SK, STS)],
    )
    async with sim.running() as base_url:
        yield sim, base_url


MODES = {
    "token": {"CBR_WATCHER_AUTH__METHOD": "token", "CBR_WATCHER_AUTH__TOKEN": TOKEN},
    "password": {
        "CBR_WATCHER_AUTH__METHOD": "password",
        "CBR_WATCHER_AUTH__DOMAIN_NAME": USER.domain,
        "CBR_WATCHER_AUTH__USER_NAME": USER.name,
        "CBR_WATCHER_AUTH__PASSWORD": USER.password,
    },
    "aksk": {
        "CBR_WATCHER_AUTH__METHOD": "aksk",
        "CBR_WATCHER_AUTH__ACCESS_KEY": TEMP_AK,
        "CBR_WATCHER_AUTH__SECRET_KEY": TEMP_SK,
        "CBR_WATCHER_AUTH__SECURITY_TOKEN": STS,
    },
}


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_the_daemon_runs_in_every_auth_mode(
    live_sim: tuple[Simulator, str], mode: str
) -> None:
    """`cbr-watcher run --exit-when-done` against the simulator: exit 0, no secret in output."""
    sim, base_url = live_sim
    ids = [sim.add_task(SimTaskSpec(id=f"{mode}-{n}", waiting=0.1, running=0.4)) for n in range(3)]
    env = daemon_env(sim, base_url, **MODES[mode])
    if mode != "token":
        del env["CBR_WATCHER_AUTH__TOKEN"]
    if mode == "password":
        env["CBR_WATCHER_AUTH__IAM_ENDPOINT"] = base_url
    code, out, err = await run_cli(
        "run", "--exit-when-done", *[arg for i in ids for arg in ("--task", i)], env=env
    )
    assert code == 0, err
    lines = json_lines(out)
    finals = {line["task_id"]: line["status"] for line in lines if line.get("final")}
    assert finals == dict.fromkeys(ids, "success")
    for secret in (TOKEN, USER.password, TEMP_SK, STS, TEMP_AK):
        assert secret not in out + err
    assert {entry.status for entry in sim.request_log} == {200}
    if mode == "password":
        assert [line["event"] for line in lines].count("auth.token_issued") == 1
        assert [r.status for r in sim.iam.requests] == [201]
    if mode == "aksk":
        assert not sim.auth.signature_failures
