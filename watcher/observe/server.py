"""HTTP on `server.listen`: /metrics, /healthz and /readyz (see docs/metrics.md).

The app is served by `watcher.net.listener.HttpListener` (re-exported here); the task API on
`server.api_listen` is a second app on a second listener.

A scrape snapshots the task table on the event loop (references to its immutable rows, which
is cheap) and selects, renders and compresses in a worker thread, so the loop keeps polling
meanwhile.
No access-log line is written per request.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import structlog
from aiohttp import hdrs, web

from watcher.clock import Clock
from watcher.net.listener import HttpListener
from watcher.observe.metrics import Metrics, TaskSnapshot

log = structlog.get_logger("watcher.server")

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "STALL_AFTER",
    "Health",
    "HttpListener",
    "LoopTurns",
    "MetricsEndpoints",
    "make_metrics_app",
    "start_metrics_listener",
]

STALL_AFTER = 15.0
"""/healthz fails when the scheduler loop has not turned for this many seconds (it turns at
least once a second)."""
SHUTDOWN_TIMEOUT = 3.0
"""Seconds open requests get when the listener closes."""
GZIP_LEVEL = 1
"""Level 1: exposition text is repetitive enough that more effort buys little size for much
more time, and the render thread holds the GIL while it compresses (measured: bench/README.md)."""


class LoopTurns(Protocol):
    """What /healthz watches: the engine's `last_turn` (monotonic seconds)."""

    @property
    def last_turn(self) -> float:
        """When the scheduler loop last turned, on the clock's monotonic scale."""
        ...


class Health:
    """Liveness (the scheduler loop turns) and readiness (named start-up conditions are met).

    Readiness never depends on the cloud API. `run_daemon` requires "config", "tasks" and
    "listener"; whoever adds a start-up step (e.g. restoring state) calls `require` before and
    `mark` after it.
    """

    def __init__(self, clock: Clock, *, stall_after: float = STALL_AFTER) -> None:
        self._clock = clock
        self.stall_after = stall_after
        self._loop: LoopTurns | None = None
        self._conditions: dict[str, bool] = {}
        self._checks: dict[str, Callable[[], bool]] = {}

    def watch_loop(self, loop: LoopTurns) -> None:
        """Judge liveness by `loop.last_turn` from now on."""
        self._loop = loop

    def require(self, *names: str) -> None:
        """Not ready until each of `names` is marked."""
        for name in names:
            self._conditions.setdefault(name, False)

    def mark(self, name: str, ready: bool = True) -> None:
        """Condition `name` is met (or, with ready=False, no longer met)."""
        self._conditions[name] = ready

    def check(self, name: str, healthy: Callable[[], bool]) -> None:
        """A condition judged at every readiness probe (e.g. "store": state writes succeed)."""
        self._checks[name] = healthy

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """(ready, every condition with its state)."""
        conditions = dict(self._conditions)
        for name, healthy in self._checks.items():
            conditions[name] = bool(healthy())
        return bool(conditions) and all(conditions.values()), conditions

    def liveness(self) -> tuple[bool, float | None]:
        """(alive, seconds since the loop last turned); not alive before `watch_loop`."""
        if self._loop is None:
            return False, None
        since = self._clock.monotonic() - self._loop.last_turn
        return since <= self.stall_after, since


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip()
            return not (quality.startswith("q=") and _q(quality[2:]) == 0)
    return False


def _q(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


def _render(
    metrics: Metrics, accept: str, snapshot: TaskSnapshot, compress: bool
) -> tuple[bytes, str]:
    body, content_type = metrics.render(accept, snapshot)
    if compress:
        body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    return body, content_type


class MetricsEndpoints:
    """The handlers of the metrics app, with the worker thread that renders scrapes."""

    def __init__(self, metrics: Metrics, health: Health) -> None:
        self.metrics = metrics
        self.health = health
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-render")

    async def metrics_handler(self, request: web.Request) -> web.Response:
        """GET /metrics: text 0.0.4, or OpenMetrics when `Accept` asks; gzip when accepted."""
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        compress = _accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
        snapshot = self.metrics.snapshot()  # on the loop: the table only changes here
        loop = asyncio.get_running_loop()
        body, content_type = await loop.run_in_executor(
            self._executor, _render, self.metrics, accept, snapshot, compress
        )
        headers = {hdrs.CONTENT_TYPE: content_type, hdrs.VARY: hdrs.ACCEPT_ENCODING}
        if compress:
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: 200 while the scheduler loop turns, 503 when it stalled."""
        alive, since = self.health.liveness()
        body = {
            "status": "ok" if alive else "stalled",
            "seconds_since_loop_turned": None if since is None else round(since, 3),
            "stall_after_seconds": self.health.stall_after,
        }
        return web.json_response(body, status=200 if alive else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        """GET /readyz: 200 once every start-up condition is met, else 503 naming them."""
        ready, conditions = self.health.readiness()
        body = {"status": "ready" if ready else "not_ready", "conditions": conditions}
        return web.json_response(body, status=200 if ready else 503)

    async def close(self) -> None:
        """Stop the render thread (after the listener closed)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def make_metrics_app(metrics: Metrics, health: Health) -> web.Application:
    """The app served on `server.listen`."""
    endpoints = MetricsEndpoints(metrics, health)
    app = web.Application()
    app.router.add_get("/metrics", endpoints.metrics_handler)
    app.router.add_get("/healthz", endpoints.healthz)
    app.router.add_get("/readyz", endpoints.readyz)

    async def close_endpoints(_app: web.Application) -> None:
        await endpoints.close()

    app.on_cleanup.append(close_endpoints)
    return app


async def start_metrics_listener(metrics: Metrics, health: Health, listen: str) -> HttpListener:
    """Serve /metrics, /healthz and /readyz on `listen`; marks the "listener" condition."""
    listener = HttpListener(
        make_metrics_app(metrics, health), listen, name="metrics", shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await listener.start()
    log.info("server.listening", app=listener.name, url=listener.url, urls=listener.urls)
    health.mark("listener")
    return listener
