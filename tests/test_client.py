"""The CBR client against the simulator: every failure becomes one of five kinds."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import World
from watcher.cbr.aksk import AkSkAuthenticator
from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.cbr.errors import (
    AuthError,
    CbrError,
    FatalError,
    InternalError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from watcher.cbr.ids import InvalidTaskIdError
from watcher.clock import RealClock
from watcher.net.client import parse_retry_after
from watcher.safetext import has_surrogates
from watcher.sim import SimTaskSpec, Simulator
from watcher.testing import FakeClock, drive_until


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
    """Retry-After may be an HTTP date, measured from the injected wall clock."""
    now = 1_767_225_600.0
    when = datetime.fromtimestamp(now, UTC) + timedelta(seconds=120)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == 120.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None


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
    """A reset surfaces as a transient connection error, after exactly one attempt."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-reset", faults=["reset"] * 3))
    error = await show_error(world, task_id)
    assert isinstance(error, TransientError)
    assert error.code_label == "connection"
    assert world.sim.request_count(task_id) == 1


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
        endpoint="http://127.0.0.1:9",
        project_id="p",
        auth=TokenAuthenticator(token="t"),
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
            SimTaskSpec(
                id=f"l-{n}",
                operation_type="backup" if n % 2 else "restore",
                waiting=0,
                running=1000,
            )
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
        endpoint=world.base_url,
        project_id=world.sim.project_id,
        auth=TokenAuthenticator(token="token-1"),
        clock=world.clock,
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
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
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
            endpoint=url,
            project_id=sim.project_id,
            auth=TokenAuthenticator(token="tok"),
            clock=RealClock(),
            **tls,  # type: ignore[arg-type]
        )

    async with client(ca_file=str(cert)) as trusted:
        assert (await trusted.show_op_log(task_id)).id == task_id
    async with client() as untrusting:
        with pytest.raises(FatalError) as caught:
            await untrusting.show_op_log(task_id)
        assert caught.value.code_label == "tls"
    async with client(verify_tls=False) as unverified:
        assert (await unverified.show_op_log(task_id)).id == task_id


# -- hostile upstreams: every failure is still one of the kinds ------------------------------


class KeepAliveDropper:
    """A raw HTTP server: answers the first request on a connection, then drops it once the
    next request has been read. Counts every request received, on any connection."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveDropper:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
                % (len(self.body), self.body)
            )
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()


async def test_a_dropped_keepalive_request_is_not_resent_by_aiohttp() -> None:
    """One call is one request on the wire: aiohttp's own re-send after a disconnect on a
    reused connection would bypass the request budget. Fails if aiohttp brings it back."""
    body = b'{"operation_log": {"id": "t1", "status": "running"}}'
    async with KeepAliveDropper(body) as server:
        client = CbrClient(
            endpoint=f"http://127.0.0.1:{server.port}",
            project_id="p",
            auth=TokenAuthenticator(token="t"),
            clock=RealClock(),
        )
        async with client:
            assert (await client.show_op_log("t1")).status == "running"
            with pytest.raises(TransientError) as caught:
                await client.show_op_log("t1")
    assert caught.value.code_label == "connection"
    assert (server.requests, server.connections) == (2, 1)


async def test_the_simulators_reused_connection_reset(world: World) -> None:
    """`reset:reused` waits for a kept-alive connection; the client then sees one reset."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-reuse", faults=["reset:reused"]))
    assert (await world.client.show_op_log(task_id)).id == task_id
    error = await show_error(world, task_id)
    assert (type(error), error.code_label) == (TransientError, "connection")
    assert (await world.client.show_op_log(task_id)).id == task_id
    log = [(r.reused, r.fault, r.status) for r in world.sim.request_log]
    assert log == [(False, None, 200), (True, "reset:reused", None), (False, None, 200)]


@pytest.mark.parametrize("fault", ["deep_json", "oversized", "oversized:chunked"])
async def test_bodies_too_deep_or_too_big_are_malformed(world: World, fault: str) -> None:
    """Bounded input: 100,000 levels or 9 MiB are refused as malformed, then polling goes on."""
    seen: list[str] = []
    client = CbrClient(
        endpoint=world.base_url,
        project_id=world.sim.project_id,
        auth=TokenAuthenticator(token="token-1"),
        clock=world.clock,
        observe=lambda _op, code, _duration: seen.append(code),
    )
    task_id = world.sim.add_task(SimTaskSpec(id="t-big", faults=[fault]))
    async with client:
        with pytest.raises(TransientError) as caught:
            await client.show_op_log(task_id)
        assert (await client.show_op_log(task_id)).id == task_id
    assert caught.value.code_label == "malformed"
    assert seen == ["malformed", "200"]


async def test_moderate_nesting_over_the_limit_is_malformed(world: World) -> None:
    """Depth the JSON parser accepts but the client does not: the iterative check refuses it."""
    task_id = world.sim.add_task(
        SimTaskSpec(id="t-nest", extra={"junk": json.loads("[" * 200 + "]" * 200)})
    )
    error = await show_error(world, task_id)
    assert (type(error), error.code_label) == (TransientError, "malformed")
    assert "nested deeper than 64" in str(error)


async def test_wrong_shape_is_labelled_malformed_for_the_observer(world: World) -> None:
    """A 200 of the wrong shape is counted as `malformed`, not `200`."""
    seen: list[str] = []
    client = CbrClient(
        endpoint=world.base_url,
        project_id=world.sim.project_id,
        auth=TokenAuthenticator(token="token-1"),
        clock=world.clock,
        observe=lambda _op, code, _duration: seen.append(code),
    )
    task_id = world.sim.add_task(SimTaskSpec(id="t-shape", faults=["malformed:shape"]))
    async with client:
        with pytest.raises(TransientError):
            await client.show_op_log(task_id)
    assert seen == ["malformed"]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("Infinity", None),
        ("-Infinity", None),
        ("NaN", None),
        ("1e999", None),
        ("huge", 100),
        ("superscript", None),
    ],
)
async def test_hostile_progress_reads_as_unknown(
    world: World, variant: str, expected: int | None
) -> None:
    """Progress that is not a finite number is unknown, a huge integer is clamped; the task's
    status still comes through."""
    task_id = world.sim.add_task(
        SimTaskSpec(id="t-prog", waiting=0, faults=[f"progress:{variant}"])
    )
    world.clock.advance(10)
    log = await world.client.show_op_log(task_id)
    assert (log.status, log.progress) == ("running", expected)
    assert (await world.client.show_op_log(task_id)).progress is not None


@pytest.mark.parametrize("fault", ["far_date", "far_date:past"])
async def test_far_dates_read_as_unknown_times(world: World, fault: str) -> None:
    """Timestamps beyond what UTC can hold are None; the raw body keeps them."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-far", waiting=0, faults=[fault]))
    log = await world.client.show_op_log(task_id)
    assert (log.created_at, log.started_at, log.updated_at) == (None, None, None)
    assert log.raw["created_at"].startswith(("9999-", "0001-"))
    assert log.status == "running"


async def test_lone_surrogates_never_reach_typed_fields(world: World) -> None:
    """Typed text is cleaned (U+FFFD); the raw body keeps exactly what was sent."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-sur", faults=["surrogate", "surrogate:status"]))
    log = await world.client.show_op_log(task_id)
    texts = [
        log.operation_type,
        log.vault_name,
        log.resource.name,
        log.resource.type,
        log.error_info.message if log.error_info else None,
    ]
    assert all(text is not None and "\ufffd" in text for text in texts)
    assert all(text is not None and not has_surrogates(text) for text in texts)
    assert has_surrogates(log.raw["vault_name"])
    odd = await world.client.show_op_log(task_id)
    assert odd.status == "waiting\ufffd"
    assert not odd.is_known_status


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("minus0000", 0.0),
        ("superscript", None),
        ("huge", 3600.0),
        ("garbage", None),
        ("rfc850", 60.0),
        ("asctime", 60.0),
    ],
)
async def test_odd_retry_after_headers(world: World, variant: str, expected: float | None) -> None:
    """Every odd Retry-After is read, ignored or clamped; none raises."""
    task_id = world.sim.add_task(SimTaskSpec(id="t-ra", faults=[f"throttle_odd:{variant}"]))
    error = await show_error(world, task_id)
    assert isinstance(error, ThrottledError)
    assert error.retry_after == expected


class Exploding:
    """An authenticator that fails in a way nobody foresaw."""

    def __init__(self, where: str) -> None:
        self.where = where

    async def apply(self, method: str, url: object, headers: dict[str, str], body: bytes) -> None:
        if self.where == "apply":
            raise KeyError("surprise")
        headers["X-Auth-Token"] = "token-1" if self.where != "header" else "bad\r\nvalue"

    async def reload(self) -> None:
        return None

    def observe_response(self, status: int | None, headers: object) -> None:
        if self.where == "observe":
            raise ZeroDivisionError("observed")


@pytest.mark.parametrize("where", ["apply", "observe", "header"])
async def test_unexpected_exceptions_become_internal_errors(world: World, where: str) -> None:
    """Anything unforeseen leaves as InternalError, counted as code "internal"."""
    seen: list[str] = []
    client = CbrClient(
        endpoint=world.base_url,
        project_id=world.sim.project_id,
        auth=Exploding(where),
        clock=world.clock,
        observe=lambda _op, code, _duration: seen.append(code),
    )
    async with client:
        with pytest.raises(InternalError) as caught:
            await client.show_op_log("t-int")
    assert caught.value.kind == "internal"
    assert caught.value.code_label == "internal"
    assert seen == ["internal"]


@pytest.mark.parametrize("value", ["tok\nen", "tok\ren", "tok\x00en", "tok\x7fen", "tok\ten"])
async def test_a_token_with_control_characters_is_a_credentials_error(
    world: World, value: str
) -> None:
    """A token no header can carry fails as auth "credentials", naming the key, not the value."""
    for auth, key in (
        (TokenAuthenticator(token=value), "auth.token "),
        (TokenAuthenticator(token_file=world.token_file), "auth.token_file"),
    ):
        world.token_file.write_text(value)
        client = CbrClient(
            endpoint=world.base_url,
            project_id=world.sim.project_id,
            auth=auth,
            clock=world.clock,
        )
        async with client:
            with pytest.raises(AuthError) as caught:
                await client.show_op_log("t-cc")
        assert caught.value.code_label == "credentials"
        assert f"{key.strip()} holds a control character" in str(caught.value)
        assert value not in str(caught.value)
    assert world.sim.request_log == []


@pytest.mark.parametrize("field", ["access_key", "secret_key", "security_token"])
async def test_aksk_credentials_with_control_characters(world: World, field: str) -> None:
    """AK, SK and security token are checked the same way, before anything is signed."""
    values = {"access_key": "AK1", "secret_key": "SK1", "security_token": "ST1"}
    values[field] = "bad\r\nvalue"
    auth = AkSkAuthenticator(
        access_key=values["access_key"],
        secret_key=values["secret_key"],
        security_token=values["security_token"],
        project_id=world.sim.project_id,
        clock=world.clock,
    )
    client = CbrClient(
        endpoint=world.base_url, project_id=world.sim.project_id, auth=auth, clock=world.clock
    )
    async with client:
        with pytest.raises(AuthError) as caught:
            await client.show_op_log("t-ak")
    assert str(caught.value) == f"auth.{field} holds a control character"
    assert world.sim.request_log == []


def test_user_agent_and_ssl_context_are_shared() -> None:
    """The client re-exports make_ssl_context (older imports keep working)."""
    from watcher.cbr import client as client_module
    from watcher.net.client import USER_AGENT, make_ssl_context

    assert client_module.make_ssl_context is make_ssl_context
    assert USER_AGENT.startswith("cbr-watcher/")
