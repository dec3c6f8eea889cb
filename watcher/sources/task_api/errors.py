"""The task API's error answers: `{"error": {"code": ..., "message": ...}}`, whoever refuses.

A handler answers with `error_response`; `json_errors` (the outermost middleware) turns every
HTTPException aiohttp raises inside the application (unknown route or method, a body over
`client_max_size`) and every unexpected exception (a JSON 500 and one log line, never a
traceback) into the same shape.

A request aiohttp's HTTP parser refuses (a broken request line, headers over its limits)
never reaches the application: aiohttp answers it itself, with a plain-text 400, and reports it
on the logger the runner was given. `server_logger()` is that logger: each report becomes one
structured line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from aiohttp import web

from watcher.safetext import clean

log = structlog.get_logger("watcher.task_api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes for the statuses aiohttp raises inside the application (routing, the body limit).
_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
_MESSAGE_LIMIT = 200
_SERVER_LOGGER = "watcher.task_api.http"


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


def _status_error(status: int, message: str) -> web.Response:
    """The JSON error for an HTTP status aiohttp chose (404, 405, 413)."""
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
    except web.RequestPayloadError as exc:
        # A body whose framing is broken (a chunk size that is not hex, ...).
        return error_response(
            400, "invalid_body", f"the body could not be read: {_short(str(exc))}"
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


def _one_line(record: logging.LogRecord) -> bool:
    """aiohttp's report of a request it refused or lost, as one structured line; the record
    itself (with its traceback) is dropped."""
    exc = record.exc_info[1] if record.exc_info else None
    error = ""
    if exc is not None:
        # aiohttp's parse errors say what went wrong in the first line of `message`.
        message = getattr(exc, "message", None)
        error = _short(f"{type(exc).__name__}: {message if isinstance(message, str) else exc}")
    detail = _short(record.getMessage())
    status = getattr(exc, "code", None)
    if isinstance(exc, ConnectionError):
        log.debug("task_api.client_gone", detail=detail, error=error)
    elif isinstance(exc, web.RequestPayloadError) or (
        # aiohttp's parse errors carry the 4xx status they are answered with. A payload error
        # is also reported when aiohttp drains an unread broken body after our answer.
        isinstance(status, int) and 400 <= status < 500
    ):
        log.debug("task_api.bad_request", detail=detail, error=error)
    else:
        log.warning("task_api.server_error", detail=detail, error=error)
    return False


def server_logger() -> logging.Logger:
    """The logger for the task API's runner (AppRunner's documented `logger` argument).

    aiohttp reports there the requests it answers itself (those its parser refuses, a client
    gone mid-request), with a traceback; each report becomes one structlog line instead.
    """
    logger = logging.getLogger(_SERVER_LOGGER)
    logger.setLevel(logging.DEBUG)  # every report reaches the filter; structlog's level decides
    logger.addFilter(_one_line)  # adding the same filter again is a no-op
    return logger
