"""The task API (see docs/task-api.md) on `server.api_listen`: register, list and drop
watches over HTTP.

    GET    /v1/tasks            every task in the table
    GET    /v1/tasks/{id}       one task
    PUT    /v1/tasks/{id}       watch it (body optional: {"labels": {...}}); 201 new, 200 known
    DELETE /v1/tasks/{id}       stop watching; 204

Tasks added here are written to the state store before the answer, so they survive restarts.

Every answer of the application that is not a success is `{"error": {"code": ..., "message":
...}}`: a 4xx for anything the client got wrong (a bad ID; a body that is not JSON, nested too
deep or not UTF-8; a Content-Encoding other than identity, 415; a body over MAX_BODY, 413; an
unknown route or method) and a 500 with code "internal" (and one log line, never a traceback)
for a bug on our side. A request aiohttp's HTTP parser refuses (a broken request line, a path
or header over its limits) gets aiohttp's own plain-text 400 and one log line, no traceback.

The handlers are here; `watcher.sources.task_api.body` reads and checks request bodies, and
`watcher.sources.task_api.errors` shapes the error answers and aiohttp's own error reports.
"""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from watcher.cbr.ids import TASK_ID_RULE, is_valid_task_id
from watcher.delivery.payloads import rfc3339
from watcher.engine.engine import Engine, StoreUnavailableError, WatchedTask
from watcher.net.listener import HttpListener
from watcher.sources.task_api.body import MAX_BODY, read_labels
from watcher.sources.task_api.errors import Handler, error_response, json_errors, server_logger

__all__ = [
    "MAX_BODY",
    "SHUTDOWN_TIMEOUT",
    "delete_task",
    "get_task",
    "list_tasks",
    "make_task_api",
    "put_task",
    "start_task_api",
    "task_api_runner",
    "task_json",
]

log = structlog.get_logger("watcher.task_api")

SHUTDOWN_TIMEOUT = 2.0
"""Seconds open requests get when the listener closes."""

ENGINE_KEY = web.AppKey("engine", Engine)


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


def _bearer_guard(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Header values come decoded with surrogateescape; encoding them back cannot fail.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            response = error_response(
                401, "unauthorized", "a valid 'Authorization: Bearer' is required"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="cbr-watcher"'
            return response
        return await handler(request)

    return guard


def _task_id(request: web.Request) -> str | web.Response:
    task_id = request.match_info["task_id"]
    if not is_valid_task_id(task_id):
        return error_response(400, "invalid_task_id", f"invalid task ID: expected {TASK_ID_RULE}")
    return task_id


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
        return error_response(404, "not_found", "this task is not watched")
    return web.json_response(task_json(task))


async def put_task(request: web.Request) -> web.Response:
    """PUT /v1/tasks/{id}: idempotent; labels, when given, replace the task's labels."""
    task_id = _task_id(request)
    if isinstance(task_id, web.Response):
        return task_id
    labels = await read_labels(request)
    if isinstance(labels, web.Response):
        return labels
    engine = request.app[ENGINE_KEY]
    try:
        created, task = await engine.put(task_id, labels, source="api")
    except StoreUnavailableError:
        return error_response(503, "store_unavailable", "the state store is failing; retry")
    if task is None:
        return error_response(409, "already_ended", "this task already ended in an earlier run")
    return web.json_response(task_json(task), status=201 if created else 200)


async def delete_task(request: web.Request) -> web.Response:
    """DELETE /v1/tasks/{id}: stop watching it."""
    task_id = _task_id(request)
    if isinstance(task_id, web.Response):
        return task_id
    try:
        removed = await request.app[ENGINE_KEY].delete(task_id)
    except StoreUnavailableError:
        return error_response(503, "store_unavailable", "the state store is failing; retry")
    if not removed:
        return error_response(404, "not_found", "this task is not watched")
    return web.Response(status=204)


def make_task_api(engine: Engine, *, api_token: str = "") -> web.Application:
    """The task API application; with `api_token`, every request needs the bearer token.

    Serve it with `task_api_runner` (as `start_task_api` does).
    """
    middlewares: list[Middleware] = [json_errors]
    if api_token:
        middlewares.append(_bearer_guard(api_token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[ENGINE_KEY] = engine
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_put("/v1/tasks/{task_id}", put_task)
    app.router.add_delete("/v1/tasks/{task_id}", delete_task)
    return app


def task_api_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """aiohttp's AppRunner for the task API app, with two of its documented options set.

    `auto_decompress=False`: aiohttp would otherwise decompress a gzip or deflate body while
    it arrives, before any handler can refuse it; the API answers any Content-Encoding but
    identity with a 415 instead. `logger`: aiohttp reports the requests it answers itself
    there, and `server_logger` makes each report one log line without a traceback.
    """
    return web.AppRunner(app, auto_decompress=False, logger=server_logger(), **kwargs)


async def start_task_api(engine: Engine, *, listen: str, api_token: str = "") -> HttpListener:
    """Serve the task API on `listen` (HOST:PORT); returns the listener (close it to stop).

    ValueError for a bad `listen`; OSError (e.g. address in use) leaves nothing running.
    """
    listener = HttpListener(
        make_task_api(engine, api_token=api_token),
        listen,
        name="task_api",
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        runner_factory=task_api_runner,
    )
    await listener.start()
    log.info("task_api.listening", url=listener.url, authenticated=bool(api_token))
    return listener
