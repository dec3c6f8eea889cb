"""Fuzzing the task API on a real socket: client garbage is never a 5xx nor a traceback, and
every error the API's own handlers answer is JSON.

The API runs in its own thread and event loop (the real `task_api_runner` on 127.0.0.1, port
0) for the whole module, so hypothesis drives it with plain blocking clients: `http.client`
for well-framed requests with arbitrary bodies, IDs, content types and encodings, and a raw
socket for byte soup the HTTP parser has to refuse. What aiohttp's parser refuses never reaches
the application and gets aiohttp's own plain-text 4xx; a test-only outermost middleware marks
every answer that went through the application, so each answer is judged by who gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import logging
import random
import socket
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from watcher.cbr.models import OperationLog, OpLogPage
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.sources.task_api.handlers import make_task_api, task_api_runner
from watcher.state.sqlite import Store
from watcher.testing import FakeClock

API_TOKEN = "fuzz-token"
AUTH = f"Bearer {API_TOKEN}"
TIMEOUT = float(__import__("os").environ.get("FUZZ_TIMEOUT", "30"))
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # nothing written into the working tree; failures print their example
    # `api` only checks the logs after each test: nothing in it needs resetting per example.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


class NoCloud:
    """The engine never runs here; a poll would be a bug in the test."""

    async def show_op_log(self, task_id: str) -> OperationLog:
        """Never called."""
        raise AssertionError(f"unexpected poll of {task_id}")

    async def list_op_logs(self, **query: object) -> OpLogPage:
        """Never called."""
        raise AssertionError(f"unexpected listing {query}")

    async def reload_credentials(self) -> None:
        """Never called."""
        raise AssertionError("unexpected credential reload")


class Collect(logging.Handler):
    """Keeps every stdlib log record that reaches the root logger (aiohttp's, asyncio's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Store the record."""
        self.records.append(record)


@dataclass
class ServedApi:
    """The API's address, its engine, and what it logged."""

    host: str
    port: int
    engine: Engine
    records: Collect
    structured: list[MutableMapping[str, Any]] = field(default_factory=list)

    def connection(self) -> http.client.HTTPConnection:
        """A fresh connection (the server closes it after some errors)."""
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApi]:
    """The real task API on 127.0.0.1 in a background event loop, for the whole module."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="task-api", daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, Store, Engine]:
        store = await Store.open(":memory:")
        engine = Engine(
            client=NoCloud(),
            clock=FakeClock(),
            policy=Policy(interval_min=5, interval_max=60, deadline=3600, not_found_grace=120),
            rng=random.Random(3),
        )
        app = make_task_api(engine, api_token=API_TOKEN)
        app.middlewares.insert(0, mark_application_answers)
        runner = task_api_runner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, store, engine

    async def stop(runner: web.AppRunner, store: Store) -> None:
        await runner.cleanup()
        await store.close()

    records = Collect()
    root = logging.getLogger()
    root.addHandler(records)
    runner, store, engine = asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
    try:
        host, port = runner.addresses[0][:2]
        yield ServedApi(str(host), int(port), engine, records)
    finally:
        asyncio.run_coroutine_threadsafe(stop(runner, store), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()
        root.removeHandler(records)


@pytest.fixture
def api(served: ServedApi) -> Iterator[ServedApi]:
    """The served API, with structlog captured for this test and checked afterwards."""
    with structlog.testing.capture_logs() as logs:
        yield served
    served.structured.extend(logs)
    problems = [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    assert problems == [], problems
    tracebacks = [r.getMessage() for r in served.records.records if r.exc_info]
    assert tracebacks == []
    errors = [r.getMessage() for r in served.records.records if r.levelno >= logging.ERROR]
    assert errors == []


APPLICATION_MARK = "X-Fuzz-Application"


@web.middleware
async def mark_application_answers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Test-only, outermost: marks every answer that went through the application."""
    response = await handler(request)
    response.headers[APPLICATION_MARK] = "1"
    return response


def check_answer(
    status: int, headers: Mapping[str, str], payload: bytes, *, head: bool = False
) -> Any:
    """The contract: never a 5xx for client garbage, never a traceback; every answer of the
    application is JSON (an error object for a 4xx), and what aiohttp answers itself is a 4xx."""
    assert status < 500, (status, payload[:300])
    assert b"Traceback" not in payload
    if APPLICATION_MARK not in headers:
        assert 400 <= status < 500, (status, payload[:300])
        return None
    if head or status in (204, 304):
        return None
    content_type = headers.get("Content-Type", "")
    assert content_type.split(";")[0].strip() == "application/json", (status, content_type)
    body = json.loads(payload)
    if status >= 400:
        assert isinstance(body["error"]["code"], str)
        assert body["error"]["code"]
        assert isinstance(body["error"]["message"], str)
    return body


def send(
    api: ServedApi,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDict[str], bytes]:
    """One request over a fresh connection; (status, headers, body)."""
    connection = api.connection()
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {"Authorization": AUTH, **(headers or {})}.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, CIMultiDict(response.getheaders()), response.read()
    finally:
        connection.close()


# ---- strategies --------------------------------------------------------------------------------

valid_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z")
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
label_keys = st.one_of(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.-]{0,10}\Z"), st.text(max_size=12))
label_values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
    st.text(min_size=250, max_size=260),
    json_scalars,
)
label_bodies = st.one_of(
    st.dictionaries(label_keys, label_values, max_size=40).map(lambda labels: {"labels": labels}),
    st.dictionaries(st.sampled_from(["labels", "other"]), json_values, max_size=2),
    json_values,
)


def _json_bytes(value: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \\udXXX escapes: valid JSON text the API must judge.
    return json.dumps(value).encode()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


raw_bodies = st.one_of(
    label_bodies.map(_json_bytes),
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(min_value=1, max_value=60_000).map(_nested),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"labels":' * n),
    st.sampled_from([b"NaN", b"-Infinity", b"{}", b"[]", b"null", b"\xef\xbb\xbf{}", b" "]),
    st.integers(min_value=60_000, max_value=70_000).map(lambda n: b"x" * n),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset=nonsense",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
            ";;;",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
ENCODINGS = ["identity", "gzip", "deflate", "br", "zstd", "compress", "gzip, gzip", "bogus", ""]


@st.composite
def encoded_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body and a Content-Encoding that may or may not describe it."""
    raw = draw(raw_bodies)
    encoding = draw(st.one_of(st.none(), st.sampled_from(ENCODINGS)))
    if encoding in ("gzip", "deflate") and draw(st.booleans()):
        raw = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    return raw, encoding


SEGMENT_SAFE = "ABCxyz019_-.~!$&'()*+,;=:@"
percent_bytes = st.binary(min_size=1, max_size=4).map(lambda b: "".join(f"%{x:02X}" for x in b))
segments = st.one_of(
    valid_ids,
    st.text(max_size=40).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.lists(st.one_of(st.sampled_from(SEGMENT_SAFE), percent_bytes), max_size=30).map("".join),
    st.sampled_from(["", ".", "..", "%", "%zz", "%2F", "%00", "a%2Fb", "a/b", "%2e%2e", "?", "#"]),
    st.integers(min_value=100, max_value=12_000).map(lambda n: "x" * n),
)
methods = st.one_of(
    st.sampled_from(["GET", "PUT", "DELETE", "HEAD", "POST", "PATCH", "OPTIONS", "TRACE"]),
    st.from_regex(r"\A[A-Z]{1,10}\Z"),
)


# ---- the properties ----------------------------------------------------------------------------


@FUZZ
@given(task_id=valid_ids, body=encoded_bodies(), content_type=content_types)
def test_fuzz_bodies(
    api: ServedApi, task_id: str, body: tuple[bytes, str | None], content_type: str | None
) -> None:
    """PUT with arbitrary bodies, content types and encodings: a 2xx task or a 4xx JSON error;
    any Content-Encoding but identity is a 415; labels that get through are short strings
    UTF-8 can carry."""
    raw, encoding = body
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    status, answer_headers, payload = send(api, "PUT", f"/v1/tasks/{task_id}", raw, headers)
    event(f"HTTP {status}")
    answer = check_answer(status, answer_headers, payload)
    if status >= 400:
        event(f"code {answer['error']['code']}")
    codings = (encoding or "").split(",")
    if any(coding.strip() not in ("", "identity") for coding in codings):
        assert (status, answer["error"]["code"]) == (415, "unsupported_encoding")
    if status < 300:
        assert status in (200, 201)
        for key, value in answer["labels"].items():
            assert isinstance(value, str)
            assert len(value) <= 256
            value.encode()  # no lone surrogates
            key.encode()


@FUZZ
@given(method=methods, segment=segments, query=st.one_of(st.none(), st.text(max_size=20)))
def test_fuzz_paths_and_methods(
    api: ServedApi, method: str, segment: str, query: str | None
) -> None:
    """Any method on any (percent-encoded) task path: never a 5xx; a JSON error whenever the
    application answers, a 4xx when aiohttp's parser refuses the request line."""
    path = "/v1/tasks/" + segment
    if query is not None:
        path += "?" + quote(query.encode("utf-8", "surrogatepass"), safe="=&")
    status, headers, payload = send(api, method, path)
    event(f"HTTP {status}" + ("" if APPLICATION_MARK in headers else " (aiohttp's own)"))
    check_answer(status, headers, payload, head=method == "HEAD")


FRAMING = [b"Content-Length", b"Transfer-Encoding"]
header_names = st.one_of(
    st.sampled_from(
        [b"Content-Encoding", b"Content-Type", b"Expect", b"Authorization", b"Host", b"X-Big"]
    ),
    st.binary(min_size=1, max_size=20),
)
header_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"chunked", b"gzip", b"100-continue", b"-1", b"99999999999", b"close"]),
    st.integers(min_value=8000, max_value=20_000).map(lambda n: b"v" * n),
)
framing_values = st.one_of(
    st.sampled_from([b"chunked", b"-1", b"99999999999", b"0x10", b"5, 5", b"gzip, chunked"]),
    st.binary(max_size=12),
)


@dataclass(frozen=True)
class RawRequest:
    """Bytes for the socket; `framed` when Content-Length says exactly where they end."""

    data: bytes
    framed: bool


@st.composite
def raw_requests(draw: st.DrawFn) -> RawRequest:
    """Bytes that look more or less like an HTTP/1.1 request."""
    method: bytes = draw(st.one_of(methods.map(str.encode), st.binary(max_size=8)))
    target = draw(
        st.one_of(
            segments.map(lambda s: ("/v1/tasks/" + s).encode()),
            st.binary(max_size=60),
            st.sampled_from([b"*", b"http://x/v1/tasks/a", b"http://[::1/v1/tasks", b"//v1"]),
        )
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b""]))
    head = [
        method + b" " + target + b" " + version,
        b"Host: fuzz",
        b"Authorization: " + AUTH.encode(),
        b"Connection: close",
    ]
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=6)):
        head.append(name + b": " + value)
    body = draw(st.binary(max_size=200))
    # Mostly honest framing, so the server can answer at once; sometimes framing garbage.
    framed = draw(st.integers(min_value=0, max_value=4)) > 0
    if framed:
        head.append(b"Content-Length: " + str(len(body)).encode())
    else:
        head.append(draw(st.sampled_from(FRAMING)) + b": " + draw(framing_values))
    separator = draw(st.sampled_from([b"\r\n", b"\n"]))
    return RawRequest(separator.join(head) + separator + separator + body, framed)


UNFRAMED_WAIT = 2.0
"""Real seconds to wait for an answer to a request whose end the server cannot know."""


def _raw_exchange(api: ServedApi, request: RawRequest) -> bytes:
    with socket.create_connection((api.host, api.port), timeout=TIMEOUT) as sock:
        # The server may refuse and close before reading everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request.data)
        chunks = []
        if not request.framed:
            # The server may still be waiting for body bytes. aiohttp does not answer after a
            # half-close, so wait a little for an answer first; no answer means "incomplete".
            sock.settimeout(UNFRAMED_WAIT)
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            if not chunks:
                return b""
    return b"".join(chunks)


@FUZZ
@given(request=raw_requests())
def test_fuzz_raw_requests(api: ServedApi, request: RawRequest) -> None:
    """Byte soup on the socket: no answer at all (the request never completed), or one whose
    status is not 5xx, without a traceback, and JSON when the application gave it."""
    answer = _raw_exchange(api, request)
    while answer.startswith(b"HTTP/1.1 100 "):
        answer = answer.partition(b"\r\n\r\n")[2]  # "Expect: 100-continue" was honoured
    if not answer:
        event("no answer (framed)" if request.framed else "no answer (unframed)")
        assert not request.framed, "a complete request got no answer at all"
        return
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split()[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, colon, value = line.decode("latin-1").partition(": ")
        if colon:
            headers.add(name, value)
    event(f"HTTP {status}" + ("" if APPLICATION_MARK in headers else " (aiohttp's own)"))
    if headers.get("Transfer-Encoding") == "chunked":
        event("a chunked answer (not judged)")
        return  # a task listing (GET /v1/tasks); only errors are judged here
    length = int(headers.get("Content-Length", "0"))
    check_answer(status, headers, payload[:length], head=request.data.upper().startswith(b"HEAD"))


def test_fuzzing_left_the_api_working(served: ServedApi) -> None:
    """After all that, the API still answers and its table only holds valid tasks."""
    status, headers, payload = send(served, "GET", "/v1/tasks")
    body = check_answer(status, headers, payload)
    assert status == 200
    assert all(task["watching"] for task in body["tasks"])
