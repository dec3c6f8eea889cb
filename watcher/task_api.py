"""The task API (SPEC §6) on `server.api_listen`: register, list and drop watches over HTTP.

    GET    /v1/tasks            every task in the table
    GET    /v1/tasks/{id}       one task
    PUT    /v1/tasks/{id}       watch it (body optional: {"labels": {...}}); 201 new, 200 known
    DELETE /v1/tasks/{id}       stop watching; 204

Tasks added here are written to the state store before the answer, so they survive restarts.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from watcher.engine import Engine, WatchedTask
from watcher.payloads import rfc3339
from watcher.persistence import snapshot
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


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _bearer_guard(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
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


async def _labels(request: web.Request) -> dict[str, str] | web.Response | None:
    """The optional {"labels": {...}} body; None when absent."""
    if not request.can_read_body:
        return None
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return _error(413, "body_too_large", f"the body is limited to {MAX_BODY} bytes")
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
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
                400, "invalid_labels", f"label {key!r}: expected [A-Za-z_][A-Za-z0-9_.-]*"
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            return _error(
                400, "invalid_labels", f"label {key!r}: expected a string of <= 256 characters"
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
    """The task API application; with `api_token`, every request needs the bearer token."""
    app = web.Application(
        middlewares=[_bearer_guard(api_token)] if api_token else [],
        client_max_size=MAX_BODY,
    )
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
    runner = web.AppRunner(
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
