"""The task API: in-process for the HTTP contract, and end to end through a real daemon."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import signal
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from tests.daemon_process import DaemonProcess
from tests.support import TestReceiver, World, make_engine
from tests.test_crash import env_for
from tests.test_prometheus import eventually
from tests.test_server import assert_port_released
from watcher.clock import RealClock
from watcher.delivery.recorder import StateRecorder
from watcher.sim import SimTaskSpec, Simulator
from watcher.sources.task_api.handlers import MAX_BODY, start_task_api
from watcher.state.sqlite import Store

API_TOKEN = "api-token-for-tests"


@pytest.fixture
async def api(world: World) -> AsyncIterator[tuple[str, Store, World]]:
    """The task API over an engine on the world's fake clock, served as the daemon serves it."""
    store = await Store.open(":memory:")
    recorder = StateRecorder(store)
    engine = make_engine(world, record=recorder, forget=recorder.forget)
    listener = await start_task_api(engine, listen="127.0.0.1:0", api_token=API_TOKEN)
    world.engine = engine  # type: ignore[attr-defined]
    try:
        yield listener.url, store, world
    finally:
        await listener.close()
        await store.close()


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_put_is_idempotent_and_persisted(api: tuple[str, Store, World]) -> None:
    """PUT creates (201), repeats (200), replaces labels, and the row is in the store at once."""
    url, store, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        first = await http.put(f"{url}/v1/tasks/t-1", json={"labels": {"team": "db"}})
        assert first.status == 201
        assert (await first.json())["labels"] == {"team": "db"}
        again = await http.put(f"{url}/v1/tasks/t-1")
        assert again.status == 200
        relabel = await http.put(f"{url}/v1/tasks/t-1", json={"labels": {"team": "web"}})
        assert (await relabel.json())["labels"] == {"team": "web"}
        listing = await (await http.get(f"{url}/v1/tasks")).json()
        assert [t["task_id"] for t in listing["tasks"]] == ["t-1"]
        one = await http.get(f"{url}/v1/tasks/t-1")
        assert (await one.json())["watching"] is True
    stored = await store.load_tasks()
    assert [(r.task_id, r.labels, r.source) for r in stored] == [("t-1", {"team": "web"}, "api")]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/v1/tasks/bad%2Fid", None, 400, "invalid_task_id"),
        ("PUT", "/v1/tasks/-dash", None, 400, "invalid_task_id"),
        ("GET", "/v1/tasks/" + "x" * 129, None, 400, "invalid_task_id"),
        ("PUT", "/v1/tasks/ok", b"not json", 400, "invalid_body"),
        ("PUT", "/v1/tasks/ok", b'{"labels": ["a"]}', 400, "invalid_labels"),
        ("PUT", "/v1/tasks/ok", b'{"labels": {"bad key": "v"}}', 400, "invalid_labels"),
        ("PUT", "/v1/tasks/ok", b'{"labels": {"k": 1}}', 400, "invalid_labels"),
        ("PUT", "/v1/tasks/ok", b'{"other": 1}', 400, "invalid_body"),
        ("GET", "/v1/tasks/unknown", None, 404, "not_found"),
        ("DELETE", "/v1/tasks/unknown", None, 404, "not_found"),
    ],
)
async def test_bad_requests_get_json_errors(
    api: tuple[str, Store, World],
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    """Bad IDs and bodies are 400, unknown IDs 404, always with a JSON error."""
    url, _, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        response = await http.request(method, url + path, data=body)
        assert response.status == status
        assert (await response.json())["error"]["code"] == code


DEEP = b"[" * 20_000 + b"]" * 20_000
LABELS = b'{"labels": {"team": "db"}}'


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        pytest.param("PUT", "/v1/tasks/ok", DEEP, {}, 400, "invalid_body", id="deep-nesting"),
        pytest.param(
            "PUT", "/v1/tasks/ok", b'{"labels":' * 5000, {}, 400, "invalid_body", id="deep-open"
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            gzip.compress(LABELS),
            {"Content-Encoding": "gzip"},
            415,
            "unsupported_encoding",
            id="gzip",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            b"not gzip",
            {"Content-Encoding": "gzip"},
            415,
            "unsupported_encoding",
            id="not-gzip",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            zlib.compress(LABELS),
            {"Content-Encoding": "deflate"},
            415,
            "unsupported_encoding",
            id="deflate",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            gzip.compress(gzip.compress(LABELS)),
            {"Content-Encoding": "gzip, gzip"},
            415,
            "unsupported_encoding",
            id="stacked",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            b"x",
            {"Content-Encoding": "br"},
            415,
            "unsupported_encoding",
            id="br",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            gzip.compress(b'{"labels": {"k": "' + b"v" * (2 * MAX_BODY) + b'"}}'),
            {"Content-Encoding": "gzip"},
            415,
            "unsupported_encoding",
            id="gzip-bomb",
        ),
        pytest.param("PUT", "/v1/tasks/" + "y" * 5_000, None, {}, 400, "invalid_task_id", id="5k"),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            b'{"labels": {"k": "\xff"}}',
            {},
            400,
            "invalid_body",
            id="latin1",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            '{"labels": {"k": "caf\u00e9"}}'.encode("utf-16"),
            {},
            400,
            "invalid_body",
            id="utf16",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            b'{"labels": {"k": "\\ud800"}}',
            {},
            400,
            "invalid_labels",
            id="lone-surrogate",
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            b'{"labels": {"\\udfff": "v"}}',
            {},
            400,
            "invalid_labels",
            id="surrogate-key",
        ),
        pytest.param("PUT", "/v1/tasks/ok", b"42", {}, 400, "invalid_body", id="number"),
        pytest.param("PUT", "/v1/tasks/ok", b"[1, 2]", {}, 400, "invalid_body", id="array"),
        pytest.param("PUT", "/v1/tasks/ok", b'"labels"', {}, 400, "invalid_body", id="string"),
        pytest.param("PUT", "/v1/tasks/ok", b"null", {}, 400, "invalid_body", id="null"),
        pytest.param("PUT", "/v1/tasks/ok", b"NaN", {}, 400, "invalid_body", id="nan"),
        pytest.param(
            "PUT", "/v1/tasks/ok", b'{"labels": null}', {}, 400, "invalid_labels", id="null-labels"
        ),
        pytest.param(
            "PUT", "/v1/tasks/ok", b'{"labels": 7}', {}, 400, "invalid_labels", id="number-labels"
        ),
        pytest.param(
            "PUT",
            "/v1/tasks/ok",
            b'{"labels": {"k": "' + b"v" * MAX_BODY + b'"}}',
            {},
            413,
            "body_too_large",
            id="oversized",
        ),
        pytest.param("PATCH", "/v1/tasks/ok", None, {}, 405, "method_not_allowed", id="patch"),
        pytest.param("POST", "/v1/tasks", None, {}, 405, "method_not_allowed", id="post"),
        pytest.param("GET", "/v2/elsewhere", None, {}, 404, "not_found", id="unknown-route"),
    ],
)
async def test_garbage_is_a_4xx_json_error_without_traceback(
    api: tuple[str, Store, World],
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    """Bodies, IDs, encodings and methods the API cannot use: a 4xx JSON error, the same shape
    as every other error, nothing created, and nothing logged with a traceback."""
    url, store, world = api
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession(headers=AUTH, auto_decompress=False) as http:
        response = await http.request(
            method, url + path, data=body, headers=headers, skip_auto_headers=["Content-Encoding"]
        )
        assert response.status == status
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
        assert error["code"] == code
        assert isinstance(error["message"], str)
        assert error["message"]
        if status == 415:
            assert response.headers["Accept-Encoding"] == "identity"
        # The API still works afterwards (on a new connection if this one was closed).
        assert (await http.get(f"{url}/v1/tasks")).status == 200
    assert [r for r in caplog.records if r.exc_info] == []
    assert await store.load_tasks() == []
    assert world.engine.tasks == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param("GET", "/v1/tasks/" + "x" * 10_000, {}, id="10k-path"),
        pytest.param("FROB", "/v1/tasks/ok", {}, id="unknown-method"),
        pytest.param("GET", "/v1/tasks", {"X-Huge": "h" * 20_000}, id="huge-header"),
        pytest.param(
            "GET", "/v1/tasks", {f"X-Many-{n}": "v" for n in range(200)}, id="many-headers"
        ),
    ],
)
async def test_requests_the_http_parser_refuses_are_a_4xx_without_traceback(
    api: tuple[str, Store, World],
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    """A request line or headers aiohttp's parser refuses never reach the API: aiohttp answers
    with its own 4xx (plain text, not our JSON). Neither the answer nor the log has a
    traceback, nothing is logged as an error, and the API keeps working."""
    url, store, world = api
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            response = await http.request(method, url + path, headers=headers)
            assert 400 <= response.status < 500
            assert "Traceback" not in await response.text()
            assert (await http.get(f"{url}/v1/tasks")).status == 200
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
    assert await store.load_tasks() == []
    assert world.engine.tasks == {}  # type: ignore[attr-defined]


async def test_an_identity_content_encoding_is_accepted(api: tuple[str, Store, World]) -> None:
    """`Content-Encoding: identity` (or an empty one) is an uncompressed body: taken as sent."""
    url, _, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for task_id, coding in (("t-1", "identity"), ("t-2", "")):
            response = await http.put(
                f"{url}/v1/tasks/{task_id}", data=LABELS, headers={"Content-Encoding": coding}
            )
            assert response.status == 201
            assert (await response.json())["labels"] == {"team": "db"}


async def test_a_client_gone_mid_body_is_one_debug_line(
    api: tuple[str, Store, World], caplog: pytest.LogCaptureFixture
) -> None:
    """A PUT whose client hangs up before its body is complete creates nothing and leaves one
    debug line: no error, no traceback (aiohttp reports it with one on the stdlib logger)."""
    url, store, world = api
    caplog.set_level(logging.DEBUG)
    host, port = url.removeprefix("http://").split(":")
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"PUT /v1/tasks/t-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
            "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        # "100 Continue" comes from the request's own handling: it has started, and its body
        # read is what the hang-up interrupts.
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        writer.write(b'{"labels": {')
        await writer.drain()
        writer.transport.abort()

        async def reported() -> bool:
            return any(entry["event"] == "task_api.client_gone" for entry in logs)

        await eventually(reported, "the hang-up's log line")
    assert [(e["event"], e["log_level"]) for e in logs] == [("task_api.client_gone", "debug")]
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    assert await store.load_tasks() == []
    assert world.engine.tasks == {}  # type: ignore[attr-defined]


async def test_an_unexpected_error_is_a_json_500_and_one_log_line(
    api: tuple[str, Store, World],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug behind a route answers 500 {"error": {"code": "internal"}}: no traceback in the
    answer or the log, one structured error line naming the exception."""
    url, _, world = api

    async def broken_put(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(world.engine, "put", broken_put)  # type: ignore[attr-defined]
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            response = await http.put(f"{url}/v1/tasks/t-1")
            assert response.status == 500
            body = await response.json()
    assert body["error"]["code"] == "internal"
    assert "Traceback" not in json.dumps(body)
    assert "disk on fire" not in json.dumps(body)
    [line] = [entry for entry in logs if entry["event"] == "task_api.internal_error"]
    assert line["error"] == "RuntimeError: disk on fire"
    assert line["path"] == "/v1/tasks/t-1"
    assert "exc_info" not in line
    assert [r for r in caplog.records if r.exc_info] == []


async def test_a_failing_store_is_503_and_changes_nothing(
    api: tuple[str, Store, World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the state store cannot write, PUT answers 503 and the task is not watched (a
    watch that a restart would forget is not created); the next PUT after recovery works."""
    url, store, world = api
    real_save = store.save

    async def failing_save(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "save", failing_save)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        response = await http.put(f"{url}/v1/tasks/t-1", json={"labels": {"a": "b"}})
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "store_unavailable"
        assert "t-1" not in world.engine.tasks  # type: ignore[attr-defined]
        monkeypatch.setattr(store, "save", real_save)
        assert (await http.put(f"{url}/v1/tasks/t-1")).status == 201
    assert [r.task_id for r in await store.load_tasks()] == ["t-1"]


async def test_a_delete_the_store_cannot_record_is_503_and_keeps_the_watch(
    api: tuple[str, Store, World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DELETE whose removal cannot be written answers 503 and the task stays watched (else
    a restart would resume it unannounced); once the store recovers, DELETE works."""
    url, store, world = api
    real_delete = store.delete_task

    async def failing_delete(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    async with aiohttp.ClientSession(headers=AUTH) as http:
        assert (await http.put(f"{url}/v1/tasks/t-1")).status == 201
        monkeypatch.setattr(store, "delete_task", failing_delete)
        response = await http.delete(f"{url}/v1/tasks/t-1")
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "store_unavailable"
        assert (await http.get(f"{url}/v1/tasks/t-1")).status == 200
        assert [r.task_id for r in await store.load_tasks()] == ["t-1"]
        monkeypatch.setattr(store, "delete_task", real_delete)
        assert (await http.delete(f"{url}/v1/tasks/t-1")).status == 204
        assert (await http.get(f"{url}/v1/tasks/t-1")).status == 404
    assert await store.load_tasks() == []
    assert await store.tombstones() == {"t-1"}
    assert "t-1" not in world.engine.tasks  # type: ignore[attr-defined]


async def test_a_non_utf8_authorization_header_is_401_not_500(
    api: tuple[str, Store, World],
) -> None:
    """Header bytes that are not UTF-8 reach the token check intact and simply do not match."""
    url, _, _ = api
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert json.loads(payload)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {API_TOKEN}"])
async def test_bearer_token_is_required(api: tuple[str, Store, World], header: str | None) -> None:
    """Without the right bearer token every route answers 401 and changes nothing."""
    url, store, _ = api
    headers = {"Authorization": header} if header else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        response = await http.put(f"{url}/v1/tasks/t-1")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await http.get(f"{url}/v1/tasks")).status == 401
    assert await store.load_tasks() == []


async def test_delete_stops_the_watch(api: tuple[str, Store, World]) -> None:
    """DELETE → 204, the task leaves the table and the store."""
    url, store, world = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        assert (await http.put(f"{url}/v1/tasks/t-9")).status == 201
        assert (await http.delete(f"{url}/v1/tasks/t-9")).status == 204
        assert (await http.get(f"{url}/v1/tasks/t-9")).status == 404
    assert "t-9" not in world.engine.tasks  # type: ignore[attr-defined]
    assert await store.load_tasks() == []


SECRET = "whsec_" + base64.b64encode(b"task-api-end-to-end-secret-32by!").decode()


async def test_end_to_end_labels_restart_delete(tmp_path: Path) -> None:
    """Through a real daemon: labels reach the webhook, a restart keeps the watch, DELETE ends
    polling, a bad token is 401 and a bad ID 400."""
    sim = Simulator(RealClock(), tokens=["crash-test-token"], seed=4)
    sim.add_task(SimTaskSpec(id="api-quick", waiting=0.1, running=0.4))
    sim.add_task(SimTaskSpec(id="api-long", waiting=0.1, running=3600))
    sim.add_task(SimTaskSpec(id="api-other", waiting=0.1, running=3600))
    async with sim.running() as base_url, TestReceiver() as receiver:
        env = env_for(base_url, sim.project_id, tmp_path / "state.db", receiver.url)
        env["CBR_WATCHER_WATCH__TASKS"] = "[]"
        env["CBR_WATCHER_SERVER__API_TOKEN"] = API_TOKEN
        env["CBR_WATCHER_LOG__LEVEL"] = "info"

        async with DaemonProcess(env) as first:
            url = await first.url("task_api.listening")
            async with aiohttp.ClientSession() as http:
                assert (await http.put(f"{url}/v1/tasks/api-quick")).status == 401
                bad = await http.put(f"{url}/v1/tasks/a%2Fb", headers=AUTH)
                assert bad.status == 400
                for task_id in ("api-quick", "api-long"):
                    response = await http.put(
                        f"{url}/v1/tasks/{task_id}",
                        headers=AUTH,
                        json={"labels": {"app": "billing", "job": task_id}},
                    )
                    assert response.status == 201
            await first.wait_for(
                lambda: any(
                    json.loads(h.body)["type"] == "task.succeeded" for h in receiver.delivered
                ),
                "the quick task's webhook",
            )
            succeeded = next(
                json.loads(h.body)
                for h in receiver.delivered
                if json.loads(h.body)["type"] == "task.succeeded"
            )
            assert succeeded["data"]["labels"] == {"app": "billing", "job": "api-quick"}
            assert await first.kill(signal.SIGTERM) == 0

        polls_before_restart = sim.request_count("api-long")
        async with DaemonProcess(env) as second:
            url = await second.url("task_api.listening")
            await second.wait_for(
                lambda: second.logged("task.resumed", task_id="api-long"), "api-long resumed"
            )
            metrics_url = await second.url("server.listening")
            async with aiohttp.ClientSession(headers=AUTH) as http:
                watched = await (await http.get(f"{url}/v1/tasks/api-long")).json()
                assert watched["labels"] == {"app": "billing", "job": "api-long"}
                await second.wait_for(
                    lambda: sim.request_count("api-long") > polls_before_restart,
                    "a poll of api-long after restart",
                )
                exposition = await (await http.get(f"{metrics_url}/metrics")).text()
                [info] = [
                    line
                    for line in exposition.splitlines()
                    if line.startswith("cbr_watcher_task_info") and 'task_id="api-long"' in line
                ]
                assert 'label_app="billing"' in info
                assert 'label_job="api-long"' in info
                assert (await http.delete(f"{url}/v1/tasks/api-long")).status == 204
                polls = sim.request_count("api-long")
                assert (await http.put(f"{url}/v1/tasks/api-other")).status == 201
            # Another task polled five times shows the daemon kept going; the deleted one
            # stayed put.
            await second.wait_for(lambda: sim.request_count("api-other") >= 5, "polls of api-other")
            # At most the one request that was already on the wire when DELETE answered.
            assert sim.request_count("api-long") <= polls + 1
            assert await second.kill(signal.SIGTERM) == 0


async def test_the_task_api_listener_binds_serves_refuses_a_taken_port_and_frees_it(
    world: World,
) -> None:
    """start_task_api serves on the shared listener: a second one on the same port fails and
    leaves the first serving; close stops serving, frees the port and is safe twice."""
    store = await Store.open(":memory:")
    recorder = StateRecorder(store)
    engine = make_engine(world, record=recorder, forget=recorder.forget)
    listener = await start_task_api(engine, listen="127.0.0.1:0", api_token=API_TOKEN)
    try:
        assert listener.url == f"http://127.0.0.1:{listener.port}"
        with pytest.raises(OSError, match="address already in use"):
            await start_task_api(engine, listen=f"127.0.0.1:{listener.port}")
        async with aiohttp.ClientSession(headers=AUTH) as http:
            assert (await http.put(f"{listener.url}/v1/tasks/t-1")).status == 201
            listing = await (await http.get(f"{listener.url}/v1/tasks")).json()
        assert [task["task_id"] for task in listing["tasks"]] == ["t-1"]
    finally:
        await listener.close()
        await listener.close()
        await store.close()
    await assert_port_released(listener.port)
