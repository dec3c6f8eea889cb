"""The simulator's HTTP face: ShowOpLog and ListOpLogs as CBR serves them, plus /_sim/ control.

Every CBR API request passes one middleware, in this order: log it, add latency (on the
simulator's clock), reject unknown paths (404 `APIGW.0101`), authenticate (401 `APIGW.0301`),
check the project and, when the dialect refuses listing, the permission to list (403
`APIGW.0302`), inject a scripted or random fault, and finally answer. Requests that fail
authentication or permission therefore do not consume a task's scripted faults.

The middleware also notes whether a request came on a kept-alive connection that already
carried one (for the "reset:reused" fault); hostile body faults come from
`watcher.sim.hostile`.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web

from watcher.sim import bodies, hostile
from watcher.sim.core import SimCore, SimRequest
from watcher.sim.dialects import Dialect, dialect_from_mapping
from watcher.sim.faults import Fault
from watcher.sim.iam import TOKENS_PATH, http_date
from watcher.sim.inventory import add_routes as add_inventory_routes
from watcher.sim.listing import parse_list_query, select
from watcher.sim.responses import add_from_body, json_response, raw_response
from watcher.sim.signature import SignedCall
from watcher.sim.specs import policy_from_mapping, spec_from_mapping
from watcher.sim.tasks import task_state

API_PREFIX = "/v3/"
SHOW_PATH = "/v3/{project_id}/operation-logs/{operation_log_id}"
LIST_PATH = "/v3/{project_id}/operation-logs"
LIST_ROUTE = "ListOpLogs"
BODY_FAULTS = frozenset({"deep_json", "oversized", "far_date", "surrogate", "progress"})
CHUNK_BYTES = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(sim: SimCore) -> web.Application:
    """The full application: the two CBR endpoints, IAM's token endpoint, the control API."""
    api = _CbrApi(sim)
    control = _ControlApi(sim)
    app = web.Application(middlewares=[api.middleware])
    app.router.add_post(TOKENS_PATH, sim.iam.create_token)
    app.router.add_get(LIST_PATH, api.list_logs, name=LIST_ROUTE)
    app.router.add_get(SHOW_PATH, api.show_log, name="ShowOpLog")
    app.router.add_post("/_sim/tasks", control.add_tasks)
    app.router.add_get("/_sim/tasks", control.list_tasks)
    app.router.add_get("/_sim/tasks/{task_id}/requests", control.task_requests)
    app.router.add_post("/_sim/policies", control.add_policies)
    app.router.add_get("/_sim/policies", control.list_policies)
    app.router.add_get("/_sim/stats", control.stats)
    app.router.add_put("/_sim/auth", control.set_auth)
    app.router.add_get("/_sim/dialect", control.dialect)
    app.router.add_put("/_sim/dialect", control.set_dialect)
    add_inventory_routes(app, sim)
    return app


class _CbrApi:
    """ShowOpLog, ListOpLogs and the middleware that makes them misbehave on demand."""

    def __init__(self, sim: SimCore) -> None:
        self.sim = sim
        # API requests seen per connection (keyed by transport, forgotten with it).
        self._served: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Log, delay, authenticate and fault-inject every request under /v3/."""
        if not request.path.startswith(API_PREFIX) or request.path == TOKENS_PATH:
            return await handler(request)
        task_id = request.match_info.get("operation_log_id")
        entry = self.sim.record(request.method, request.path, request.query_string, task_id)
        entry.reused = self._note_connection(request)
        request_id = self.sim.new_request_id()
        response = await self._answer(request, handler, entry, request_id)
        if entry.fault in ("hang", "reset", "reset:reused"):
            return response
        if response.prepared:  # streamed: its headers are already sent
            entry.status = response.status
            return response
        response.headers["X-Request-Id"] = request_id
        response.headers["Date"] = http_date(self.sim.clock.wall())
        entry.status = response.status
        return response

    def _note_connection(self, request: web.Request) -> bool:
        """Count this request on its connection; True when the connection carried one before."""
        transport = request.transport
        if transport is None:
            return False
        seen = self._served.get(transport, 0)
        self._served[transport] = seen + 1
        return seen > 0

    async def _answer(
        self, request: web.Request, handler: Handler, entry: SimRequest, request_id: str
    ) -> web.StreamResponse:
        sim = self.sim
        delay = sim.faults.latency()
        if delay > 0:
            await sim.clock.sleep(delay)
        if request.match_info.http_exception is not None:
            return json_response(404, bodies.unknown_api(request_id))
        call = SignedCall(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            request.headers,
            await request.read(),
        )
        reason = sim.auth.check(call)
        if reason is not None:
            return json_response(401, bodies.unauthorized(reason, request_id))
        if request.match_info["project_id"] != sim.project_id or (
            sim.dialect.list_forbidden and request.match_info.route.name == LIST_ROUTE
        ):
            return json_response(403, bodies.forbidden(request_id))
        fault = sim.faults.next_fault(entry.task_id, reused=entry.reused)
        if fault is None:
            return await handler(request)
        entry.fault = fault.name
        return await self._inject(fault, request, handler, request_id)

    async def _inject(
        self, fault: Fault, request: web.Request, handler: Handler, request_id: str
    ) -> web.StreamResponse:
        if fault.kind == "http":
            status = fault.status or 500
            return json_response(status, bodies.server_error(status, request_id))
        if fault.kind == "throttle":
            headers = {}
            retry_after = self._retry_after(fault, self.sim.dialect)
            if retry_after is not None:
                headers["Retry-After"] = f"{retry_after:g}"
            return json_response(429, bodies.throttled(request_id), headers)
        if fault.kind == "unauthorized":
            return json_response(401, bodies.unauthorized("decrypt token fail", request_id))
        if fault.kind == "not_found":
            return json_response(404, bodies.NOT_FOUND)
        if fault.kind == "throttle_odd":
            value = hostile.odd_retry_after(fault.variant, self.sim.clock.wall())
            return json_response(429, bodies.throttled(request_id), {"Retry-After": value})
        if fault.kind == "malformed":
            return await self._malformed(fault, request, handler)
        if fault.kind in BODY_FAULTS:
            return await self._hostile_body(fault, request, handler, request_id)
        if fault.kind == "hang":
            # Released when the client gives up (the runner cancels the handler) or the
            # simulator shuts down; either way no response is ever written.
            await self.sim.closing.wait()
        _abort(request)
        return web.Response(status=500)

    def _retry_after(self, fault: Fault, dialect: Dialect) -> float | None:
        """The seconds a throttle fault's `Retry-After` says, as the dialect has it (None: no
        header)."""
        if dialect.retry_after == "never":
            return None
        if dialect.retry_after == "always" and fault.retry_after is None:
            return self.sim.faults.profile.retry_after_seconds
        return fault.retry_after

    async def _malformed(
        self, fault: Fault, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        real = await handler(request)
        if fault.variant == "truncated" and isinstance(real, web.Response) and real.status == 200:
            data = real.body if isinstance(real.body, bytes) else b"{}"
            return raw_response(200, data[: max(1, len(data) * 2 // 3)])
        key = "operation_logs" if "operation_log_id" not in request.match_info else "operation_log"
        return json_response(200, {key: "oops"})

    async def _hostile_body(
        self, fault: Fault, request: web.Request, handler: Handler, request_id: str
    ) -> web.StreamResponse:
        """The real answer made hostile; anything but a 200 goes out unchanged."""
        real = await handler(request)
        if not (isinstance(real, web.Response) and real.status == 200):
            return real
        data = json.loads(real.body if isinstance(real.body, bytes) else b"{}")
        if fault.kind == "deep_json":
            key = next(iter(data), "operation_log")
            return raw_response(200, hostile.deep_body(key))
        body = hostile.mutated_body(fault.kind, fault.variant, data)
        if fault.kind == "oversized" and fault.variant == "chunked":
            return await self._stream(request, body, request_id)
        return raw_response(200, body)

    async def _stream(
        self, request: web.Request, body: bytes, request_id: str
    ) -> web.StreamResponse:
        """Send `body` chunked (no Content-Length); a client hanging up midway is fine."""
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": bodies.JSON_CONTENT_TYPE,
                "X-Request-Id": request_id,
                "Date": http_date(self.sim.clock.wall()),
            },
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for start in range(0, len(body), CHUNK_BYTES):
                await response.write(body[start : start + CHUNK_BYTES])
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading, as it should past its size limit
        return response

    async def show_log(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/{project_id}/operation-logs/{operation_log_id}."""
        now = self.sim.clock.wall()
        task = self.sim.tasks.get(request.match_info["operation_log_id"])
        if task is None or not task.visible(now):
            return json_response(404, bodies.NOT_FOUND)
        log = bodies.operation_log(
            task, task_state(task, now), self.sim.project_id, self.sim.dialect
        )
        return json_response(200, {"operation_log": log})

    async def list_logs(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/{project_id}/operation-logs: filters, time window, offset/limit paging
        (semantics in `watcher.sim.listing`)."""
        dialect = self.sim.dialect
        try:
            query = parse_list_query(request.query, dialect)
        except ValueError as error:
            return json_response(400, bodies.bad_parameter(str(error)))
        now = self.sim.clock.wall()
        count, page = select(self.sim.listing(), query, now, dialect)
        project_id = self.sim.project_id
        logs = [
            bodies.operation_log(task, task_state(task, now), project_id, dialect) for task in page
        ]
        return json_response(
            200,
            {"operation_logs": logs, "count": count, "limit": query.limit, "offset": query.offset},
        )


def _abort(request: web.Request) -> None:
    """Drop the connection without a response, like a reset from a load balancer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


class _ControlApi:
    """/_sim/: add tasks, read request counts, rotate tokens, switch the dialect. No auth: it
    is a test tool."""

    def __init__(self, sim: SimCore) -> None:
        self.sim = sim

    async def add_tasks(self, request: web.Request) -> web.StreamResponse:
        """POST /_sim/tasks: one spec object or a list of them → 201 {"ids": [...]}."""
        return await add_from_body(request, spec_from_mapping, self.sim.add_tasks, "task", "tasks")

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        """GET /_sim/tasks: every task with its current status and progress."""
        now = self.sim.clock.wall()
        tasks = []
        for task in self.sim.tasks.values():
            state = task_state(task, now)
            tasks.append(
                {
                    "id": task.id,
                    "operation_type": task.spec.operation_type,
                    "status": state.status,
                    "progress": state.progress,
                    "visible": task.visible(now),
                    "requests": self.sim.request_count(task.id),
                    "policy_id": task.spec.policy_id,
                    "resource_id": task.resource_id,
                }
            )
        return json_response(200, {"tasks": tasks})

    async def add_policies(self, request: web.Request) -> web.StreamResponse:
        """POST /_sim/policies: one policy object or a list, started now → 201 {"ids": [...]}."""
        return await add_from_body(
            request, policy_from_mapping, self.sim.add_policies, "policy", "policies"
        )

    async def list_policies(self, request: web.Request) -> web.StreamResponse:
        """GET /_sim/policies: every policy, with how many tasks it has created so far."""
        self.sim.materialize()
        return json_response(200, {"policies": [policy.summary() for policy in self.sim.policies]})

    async def task_requests(self, request: web.Request) -> web.StreamResponse:
        """GET /_sim/tasks/{id}/requests → {"task_id": ..., "requests": N}."""
        task_id = request.match_info["task_id"]
        return json_response(200, {"task_id": task_id, "requests": self.sim.request_count(task_id)})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """GET /_sim/stats → {"requests": total, "by_status": {"200": n, ...}}."""
        return json_response(200, self.sim.stats())

    async def set_auth(self, request: web.Request) -> web.StreamResponse:
        """PUT /_sim/auth: replace any of `tokens`, `users`, `access_keys`, `token_lifetime`
        and `iam_unavailable`; answers what is now set (counts for the lists)."""
        try:
            body = await request.json()
        except ValueError:
            return json_response(400, {"error": "body is not valid JSON"})
        try:
            answer = self.sim.auth.update(body)
        except ValueError as error:
            return json_response(400, {"error": str(error)})
        return json_response(200, answer)

    async def dialect(self, request: web.Request) -> web.StreamResponse:
        """GET /_sim/dialect: the dialect the API speaks now, every field."""
        return json_response(200, self.sim.dialect.as_json())

    async def set_dialect(self, request: web.Request) -> web.StreamResponse:
        """PUT /_sim/dialect: change the given fields of the current dialect (`preset`: start
        from that one instead), from the next request on; answers the whole new dialect."""
        try:
            body = await request.json()
        except ValueError:
            return json_response(400, {"error": "body is not valid JSON"})
        try:
            self.sim.dialect = dialect_from_mapping(body, "dialect", base=self.sim.dialect)
        except ValueError as error:
            return json_response(400, {"error": str(error)})
        return json_response(200, self.sim.dialect.as_json())
