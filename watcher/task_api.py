"""The task API (SPEC §6) on `server.api_listen`: register, list and drop watches over HTTP.

    GET    /v1/tasks            every task in the table
    GET    /v1/tasks/{id}       one task
    PUT    /v1/tasks/{id}       watch it (body optional: {"labels": {...}}); 201 new, 200 known
    DELETE /v1/tasks/{id}       stop watching; 204

Tasks added here are written to the state store before the answer, so they survive restarts.

Every answer that is not a success is `{"error": {"code": ..., "message": ...}}` with a 4xx
status for anything the client got wrong — a body that is not JSON, nested too deep, not
UTF-8 or not gzip despite `Content-Encoding: gzip`, a path or header too long for the HTTP
parser, an unknown route or method — and a 500 with code "internal" (and one log line, never
a traceback) for a bug on our side.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import zlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

from watcher.engine import Engine, WatchedTask
from watcher.payloads import rfc3339
from watcher.persistence import snapshot
from watcher.safetext import clean, has_surrogates
from watcher.store import Store
from watcher.task_ids import TASK_ID_RULE, is_valid_task_id

log = structlog.get_logger("watcher.task_api")

LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_BODY = 64 * 1024

ENGINE_KEY = web.AppKey("engine", Engine)
STORE_KEY = web.AppKey("store", Store)


def task_json(task: WatchedTask) -> dict[str, Any]:
    """The API's view of a task-table row."""
    log_ = task.operation_log
    return {
        "task_id": task.task_id,
        "status": task.status,
        "progress": task.progress,
        "labels": dict(task.labels),
        "source": task.source,
        "operation_type": log_.operation_type if log_ else None,
        "watching": not task.ended,
        "end_reason": task.end_reason,
        "first_seen": rfc3339(task.added_wall),
        "ended_at": rfc3339(task.ended_wall),
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes for the statuses aiohttp itself answers with (routing, parsing, size limits).
_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
    504: "timeout",
}
_MESSAGE_LIMIT = 200


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _shown(value: object) -> str:
    """A client-supplied value for an error message: repr'd, shortened, surrogate-free."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return clean(text)


def _short(text: str) -> str:
    """The first line of `text`, at most _MESSAGE_LIMIT characters, surrogate-free."""
    line = clean(text.strip().splitlines()[0] if text.strip() else "")
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 3] + "..."


def _describe(exc: BaseException) -> str:
    """What went wrong, in one line: aiohttp's `message` (also of a wrapped cause) or str()."""
    seen: BaseException | None = exc
    while seen is not None:
        message = getattr(seen, "message", None)
        if isinstance(message, str) and message.strip():
            return " ".join(message.split())
        seen = seen.__cause__
    return " ".join(str(exc).split())


def _status_error(status: int, message: str = "") -> web.Response:
    """The JSON error for an HTTP status aiohttp chose (404, 405, 413, a parse error's 400)."""
    code = _STATUS_CODES.get(status, "internal" if status >= 500 else "bad_request")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return _error(status, code, _short(message) or phrase)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: every HTTPException and every unexpected error becomes JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _status_error(exc.status, exc.text or exc.reason)
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # A body aiohttp could not decode (bad gzip/deflate, broken chunked framing).
        return _error(400, "invalid_body", f"the body could not be read: {_short(_describe(exc))}")
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:  # the point: a bug is a JSON 500, not a traceback
        log.error(
            "task_api.internal_error",
            method=clean(request.method),
            path=_short(request.path),
            error=_short(f"{type(exc).__name__}: {exc}"),
        )
        return _error(500, "internal", "internal error; the daemon's log has the details")


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with JSON answers for requests the parser refused.

    A request line or header over the size limit, too many headers, an unknown method or
    broken framing never reaches the application (and so no middleware); aiohttp answers it
    from `handle_error`, in plain text and with a traceback in the log. This answers the same
    status as JSON and logs one line.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The error response for a request aiohttp could not parse or handle."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response was partly sent; the connection is closed")
        detail = message if isinstance(message, str) else ""
        if exc is not None and not detail:
            detail = _describe(exc)
        if isinstance(exc, ConnectionError):
            # The client went away mid-request: nobody is left to answer, nothing is broken.
            log.debug("task_api.client_gone", error=_short(_describe(exc)))
            detail = ""
        elif status >= 500:
            error = f"{type(exc).__name__}: {exc}" if exc is not None else ""
            log.error("task_api.internal_error", status=status, error=_short(error))
            detail = ""
        else:
            log.debug("task_api.bad_request", status=status, error=_short(detail))
        response = _status_error(status, detail)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's error reports, as one log line without a traceback."""
        exc = kw.get("exc_info")
        error = f"{type(exc).__name__}: {_describe(exc)}" if isinstance(exc, BaseException) else ""
        try:
            detail = str(args[0]) % args[1:] if args else ""
        except (TypeError, ValueError):
            detail = str(args[0]) if args else ""
        # aiohttp re-reports a body it could not decode once the answer is sent: the
        # client's mistake, already answered with a 400.
        client_side = isinstance(exc, (web.RequestPayloadError, HttpProcessingError))
        report = log.debug if client_side else log.warning
        report("task_api.connection_error", detail=_short(detail), error=_short(error))


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class TaskApiRunner(web.AppRunner):
    """The runner the task API needs: JSON errors even for requests aiohttp cannot parse, and
    no automatic decompression — the handlers decode `Content-Encoding` themselves, bounded.

    aiohttp's own decompression can leave a connection hanging (a raw-deflate body whose end
    is wrong is reported as a parse error after its request has already started, and that
    request's body never ends), and it happens before any middleware can answer.
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs["auto_decompress"] = False
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _JsonErrorServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


def _bearer_guard(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Header values come decoded with surrogateescape; encoding them back cannot fail.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            response = _error(401, "unauthorized", "a valid 'Authorization: Bearer' is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="cbr-watcher"'
            return response
        return await handler(request)

    return guard


def _task_id(request: web.Request) -> str | web.Response:
    task_id = request.match_info["task_id"]
    if not is_valid_task_id(task_id):
        return _error(400, "invalid_task_id", f"invalid task ID: expected {TASK_ID_RULE}")
    return task_id


async def _read_body(request: web.Request) -> bytes | web.Response:
    """The whole body as sent (still content-encoded), or a 413 once it passes MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        # read(n) returns what has arrived (up to n bytes); b"" only at the end.
        chunk = await request.content.read(MAX_BODY + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return _error(413, "body_too_large", f"the body is limited to {MAX_BODY} bytes")


_GZIP_WBITS = 16 + zlib.MAX_WBITS


def _decompress(data: bytes, coding: str) -> bytes | web.Response:
    """One content coding undone, never to more than MAX_BODY bytes (a zip bomb is a 413)."""
    if coding == "deflate" and data and data[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header: common, tolerated
    else:
        wbits = _GZIP_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(data, MAX_BODY + 1)
    except zlib.error:
        return _error(400, "invalid_body", f"the body is not valid {coding} data")
    if len(out) > MAX_BODY or decoder.unconsumed_tail:
        return _error(413, "body_too_large", f"the decoded body is limited to {MAX_BODY} bytes")
    if not decoder.eof or decoder.unused_data:
        return _error(400, "invalid_body", f"the body is not valid {coding} data")
    return out


def _decode_body(raw: bytes, content_encoding: str) -> bytes | web.Response:
    """Undo `Content-Encoding` (identity, gzip, x-gzip, deflate; applied last first).

    The server does not decompress for us (see TaskApiRunner), so a body that is not what
    its header says is answered here, like any other bad body.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    unsupported = [c for c in codings if c not in ("identity", "gzip", "x-gzip", "deflate")]
    if unsupported:
        return _error(
            415,
            "unsupported_encoding",
            f"Content-Encoding {_shown(unsupported[0])} is not supported: "
            "use gzip, deflate or none",
        )
    if len(codings) > 2:
        return _error(415, "unsupported_encoding", "at most two content codings are supported")
    data = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoded = _decompress(data, coding)
        if isinstance(decoded, web.Response):
            return decoded
        data = decoded
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes) -> Any:
    """The JSON value in `raw`; ValueError for anything RFC 8259 does not allow."""
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


async def _labels(request: web.Request) -> dict[str, str] | web.Response | None:
    """The optional {"labels": {...}} body; None when absent."""
    if not request.can_read_body:
        return None
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    raw = _decode_body(raw, request.headers.get("Content-Encoding", ""))
    if isinstance(raw, web.Response):
        return raw
    if not raw.strip():
        return None
    try:
        body = _parse_json(raw)
    except UnicodeDecodeError:
        return _error(400, "invalid_body", "the body is not UTF-8 encoded JSON")
    except ValueError:
        return _error(400, "invalid_body", "the body is not JSON")
    if not isinstance(body, dict) or set(body) - {"labels"}:
        return _error(400, "invalid_body", 'expected an object like {"labels": {"key": "value"}}')
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        return _error(400, "invalid_labels", f"labels: expected an object of at most {MAX_LABELS}")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            return _error(
                400, "invalid_labels", f"label {_shown(key)}: expected [A-Za-z_][A-Za-z0-9_.-]*"
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            return _error(
                400,
                "invalid_labels",
                f"label {_shown(key)}: expected a string of <= {MAX_LABEL_VALUE} characters",
            )
        if has_surrogates(value):
            # Labels become metric labels and webhook fields: only text UTF-8 can carry.
            return _error(
                400, "invalid_labels", f"label {_shown(key)}: the value is not valid Unicode"
            )
    return labels


async def list_tasks(request: web.Request) -> web.Response:
    """GET /v1/tasks."""
    engine = request.app[ENGINE_KEY]
    return web.json_response({"tasks": [task_json(t) for t in engine.tasks.values()]})


async def get_task(request: web.Request) -> web.Response:
    """GET /v1/tasks/{id}."""
    task_id = _task_id(request)
    if isinstance(task_id, web.Response):
        return task_id
    task = request.app[ENGINE_KEY].tasks.get(task_id)
    if task is None:
        return _error(404, "not_found", "this task is not watched")
    return web.json_response(task_json(task))


async def put_task(request: web.Request) -> web.Response:
    """PUT /v1/tasks/{id}: idempotent; labels, when given, replace the task's labels."""
    task_id = _task_id(request)
    if isinstance(task_id, web.Response):
        return task_id
    labels = await _labels(request)
    if isinstance(labels, web.Response):
        return labels
    engine, store = request.app[ENGINE_KEY], request.app[STORE_KEY]
    task = engine.tasks.get(task_id)
    if task is not None:
        if labels is not None and labels != task.labels:
            task.labels = dict(labels)
            await store.save(snapshot(task))
        return web.json_response(task_json(task), status=200)
    if not engine.add(task_id, labels or {}, source="api"):
        return _error(409, "already_ended", "this task already ended in an earlier run")
    task = engine.tasks[task_id]
    await store.save(snapshot(task))
    return web.json_response(task_json(task), status=201)


async def delete_task(request: web.Request) -> web.Response:
    """DELETE /v1/tasks/{id}: stop watching it."""
    task_id = _task_id(request)
    if isinstance(task_id, web.Response):
        return task_id
    engine, store = request.app[ENGINE_KEY], request.app[STORE_KEY]
    if not engine.remove(task_id):
        return _error(404, "not_found", "this task is not watched")
    await store.delete_task(task_id)
    return web.Response(status=204)


def make_task_api(engine: Engine, store: Store, *, api_token: str = "") -> web.Application:
    """The task API application; with `api_token`, every request needs the bearer token.

    Serve it with TaskApiRunner (as `start_task_api` does): it decodes request bodies itself.
    """
    middlewares: list[Middleware] = [_json_errors]
    if api_token:
        middlewares.append(_bearer_guard(api_token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[ENGINE_KEY] = engine
    app[STORE_KEY] = store
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_put("/v1/tasks/{task_id}", put_task)
    app.router.add_delete("/v1/tasks/{task_id}", delete_task)
    return app


async def start_task_api(
    engine: Engine, store: Store, *, host: str, port: int, api_token: str = ""
) -> tuple[web.AppRunner, str]:
    """Serve the task API; returns the runner (for cleanup) and its base URL."""
    runner = TaskApiRunner(
        make_task_api(engine, store, api_token=api_token), access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host or None, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
    url = f"http://{shown}:{bound_port}"
    log.info("task_api.listening", url=url, authenticated=bool(api_token))
    return runner, url
