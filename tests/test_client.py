"""The CBR client against the simulator: every failure becomes one of five kinds."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import World
from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient, parse_retry_after
from watcher.cbr.errors import (
    AuthError,
    CbrError,
    FatalError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from watcher.clock import FakeClock, RealClock, drive_until
from watcher.sim import SimTaskSpec, Simulator
from watcher.task_ids import InvalidTaskIdError


async def show_error(world: World, task_id: str) -> CbrError:
    """Call ShowOpLog expecting a failure; hung requests are released by the fake clock."""
    call = asyncio.create_task(world.client.show_op_log(task_id))
    await drive_until(world.clock, call.done, busy=lambda: not call.done())
    error = call.exception()
    assert isinstance(error, CbrError), error
    return error


async def test_show_returns_the_task(world: World) -> None:
    """A visible task comes back parsed, with the raw body kept."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-ok", waiting=0, running=100))
    world.clock.advance(50)
    log = await world.client.show_op_log(task_id)
    assert log.id == task_id
    assert log.status == "running"
    assert log.progress is not None
    assert 0 < log.progress < 100
    assert log.raw["id"] == task_id


@pytest.mark.parametrize(
    ("fault", "kind", "status", "code"),
    [
        ("unauthorized", AuthError, 401, "APIGW.0301"),
        ("not_found", NotFoundError, 404, "BackupService.6500"),
        ("throttle", ThrottledError, 429, "APIGW.0308"),
        ("http_500", TransientError, 500, None),
        ("http_502", TransientError, 502, None),
        ("http_503", TransientError, 503, None),
        ("http_504", TransientError, 504, None),
    ],
)
async def test_http_errors_map_to_kinds(
    world: World, fault: str, kind: type[CbrError], status: int, code: str | None
) -> None:
    """Each documented error status lands in its kind, with CBR's code kept for the logs."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-err", faults=[fault]))
    error = await show_error(world, task_id)
    assert type(error) is kind
    assert error.http_status == status
    if code is not None:
        assert error.error_code == code
    assert error.request_id


async def test_retry_after_header_is_read(world: World) -> None:
    """429 with Retry-After carries the seconds; without it, None."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-429", faults=["throttle:17", "throttle"]))
    first = await show_error(world, task_id)
    second = await show_error(world, task_id)
    assert isinstance(first, ThrottledError)
    assert isinstance(second, ThrottledError)
    assert (first.retry_after, second.retry_after) == (17.0, None)


def test_retry_after_http_date() -> None:
    """Retry-After may be an HTTP date; garbage means no header."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 100 < seconds <= 120
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_wrong_token_is_auth_error_without_the_token(world: World) -> None:
    """A rejected token is an AuthError; the token itself never appears in the message."""
    world.token_file.write_text("wrong-token-XYZ\n")
    task_id = world.sim.add_task(SimTaskSpec(id="t-auth"))
    error = await show_error(world, task_id)
    assert isinstance(error, AuthError)
    assert "wrong-token-XYZ" not in str(error)


async def test_token_file_changes_are_picked_up(world: World) -> None:
    """Rewriting the token file takes effect on the next request, without a reload call."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-rot"))
    world.sim.set_tokens(["token-2"])
    assert isinstance(await show_error(world, task_id), AuthError)
    world.token_file.write_text("token-2\n")
    assert (await world.client.show_op_log(task_id)).id == task_id


async def test_empty_token_file_is_an_auth_error(world: World) -> None:
    """An empty or missing token file fails the request as auth, naming the key."""
    world.token_file.write_text("")
    error = await show_error(world, "whatever")
    assert isinstance(error, AuthError)
    assert "auth.token_file" in str(error)
    world.token_file.unlink()
    assert "auth.token_file" in str(await show_error(world, "whatever"))


async def test_hung_request_times_out_as_transient(world: World) -> None:
    """A request that never answers fails after request_timeout (on the injected clock)."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-hang", faults=["hang"]))
    started = world.clock.monotonic()
    error = await show_error(world, task_id)
    assert isinstance(error, TransientError)
    assert error.code_label == "timeout"
    assert world.clock.monotonic() - started == pytest.approx(10.0)


@pytest.mark.parametrize("fault", ["malformed", "malformed:shape"])
async def test_malformed_body_is_transient(world: World, fault: str) -> None:
    """A 200 that is not the documented JSON is retried, labelled malformed."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-bad", faults=[fault]))
    error = await show_error(world, task_id)
    assert isinstance(error, TransientError)
    assert error.code_label == "malformed"


async def test_connection_resets_are_transient(world: World) -> None:
    """Resets (aiohttp retries one itself) surface as a transient connection error."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-reset", faults=["reset"] * 3))
    error = await show_error(world, task_id)
    assert isinstance(error, TransientError)
    assert error.code_label == "connection"


async def test_wrong_project_is_fatal(world: World) -> None:
    """403 means permissions: fatal, retrying the same call will not fix it."""
    client = CbrClient(
        endpoint=world.base_url,
        project_id="0" * 32,
        auth=TokenAuthenticator(token="token-1"),
        clock=world.clock,
    )
    async with client:
        with pytest.raises(FatalError) as caught:
            await client.show_op_log("anything")
    assert caught.value.http_status == 403


async def test_nothing_listening_is_transient() -> None:
    """A refused connection is transient."""
    client = CbrClient(
        endpoint="http://127.0.0.1:9", project_id="p", auth=TokenAuthenticator(token="t"),
        clock=FakeClock(),
    )
    async with client:
        with pytest.raises(TransientError) as caught:
            await client.show_op_log("t1")
    assert caught.value.code_label == "connection"


async def test_invalid_id_is_rejected_before_any_request(world: World) -> None:
    """A bad ID raises InvalidTaskIdError and sends nothing."""
    with pytest.raises(InvalidTaskIdError):
        await world.client.show_op_log("../../v3/other")
    assert world.sim.request_log == []


async def test_list_filters_and_pages(world: World) -> None:
    """ListOpLogs passes filters and offset/limit through; pages cover the set once."""
    for n in range(7):
        world.sim.add_task(
            SimTaskSpec(id=f"l-{n}", operation_type="backup" if n % 2 else "restore",
                        waiting=0, running=1000)
        )
    world.clock.advance(10)
    seen: list[str] = []
    offset = 0
    while True:
        page = await world.client.list_op_logs(operation_type="backup", limit=2, offset=offset)
        if not page.operation_logs:
            break
        assert page.count == 3
        seen += [log.id for log in page.operation_logs]
        offset += len(page.operation_logs)
    assert sorted(seen) == ["l-1", "l-3", "l-5"]
    running = await world.client.list_op_logs(status="running")
    assert running.count == 7


async def test_request_observer_sees_every_request(world: World) -> None:
    """The observer gets (operation, code, duration) for successes and failures alike."""
    seen: list[tuple[str, str]] = []
    task_id = world.sim.add_task(SimTaskSpec(id="t-obs", faults=["http_503"]))
    client = CbrClient(
        endpoint=world.base_url, project_id=world.sim.project_id,
        auth=TokenAuthenticator(token="token-1"), clock=world.clock,
        observe=lambda op, code, _duration: seen.append((op, code)),
    )
    async with client:
        with pytest.raises(TransientError):
            await client.show_op_log(task_id)
        await client.show_op_log(task_id)
        await client.list_op_logs(limit=1)
    assert seen == [("show_op_log", "503"), ("show_op_log", "200"), ("list_op_logs", "200")]


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1, made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_sim(tmp_path: Path) -> AsyncIterator[tuple[Simulator, str, Path]]:
    """The simulator behind HTTPS with a throwaway self-signed certificate."""
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sim = Simulator(RealClock(), tokens=["tok"])
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield sim, f"https://127.0.0.1:{port}", cert
    finally:
        await runner.cleanup()


async def test_tls_with_a_ca_file_and_without(tls_sim: tuple[Simulator, str, Path]) -> None:
    """cbr.ca_file trusts a private CA; without it verification fails as fatal (TLS)."""
    sim, url, cert = tls_sim
    task_id = sim.add_task(SimTaskSpec(id="tls-task"))

    def client(**tls: object) -> CbrClient:
        return CbrClient(
            endpoint=url, project_id=sim.project_id, auth=TokenAuthenticator(token="tok"),
            clock=RealClock(), **tls,  # type: ignore[arg-type]
        )

    async with client(ca_file=str(cert)) as trusted:
        assert (await trusted.show_op_log(task_id)).id == task_id
    async with client() as untrusting:
        with pytest.raises(FatalError) as caught:
            await untrusting.show_op_log(task_id)
        assert caught.value.code_label == "tls"
    async with client(verify_tls=False) as unverified:
        assert (await unverified.show_op_log(task_id)).id == task_id
