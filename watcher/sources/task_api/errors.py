"""The task API's error answers: `{"error": {"code": ..., "message": ...}}`, whoever refuses.

A handler answers with `error_response`; `json_errors` (the outermost middleware) turns every
HTTPException aiohttp raises (unknown route or method, body too large) and every unexpected
exception (a JSON 500 and one log line, never a traceback) into the same shape; and
`TaskApiRunner` does it for the requests aiohttp's parser refuses before any middleware runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from watcher.safetext import clean

log = structlog.get_logger("watcher.task_api")

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


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error answer: `{"error": {"code": code, "message": message}}`."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def shown(value: object) -> str:
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
    return error_response(status, code, _short(message) or phrase)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        return error_response(
            400, "invalid_body", f"the body could not be read: {_short(_describe(exc))}"
        )
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:  # the point: a bug is a JSON 500, not a traceback
        log.error(
            "task_api.internal_error",
            method=clean(request.method),
            path=_short(request.path),
            error=_short(f"{type(exc).__name__}: {exc}"),
        )
        return error_response(500, "internal", "internal error; the daemon's log has the details")


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
