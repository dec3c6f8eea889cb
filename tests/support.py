"""Test helpers shared by the engine, daemon and demo tests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.cli.daemon import DaemonHandle, run_daemon
from watcher.clock import Clock
from watcher.config import Settings
from watcher.engine.engine import Engine
from watcher.engine.events import TaskEvent
from watcher.engine.schedule import Policy
from watcher.sim import Simulator
from watcher.sim.dialects import DEFAULT_DIALECT, Dialect
from watcher.testing import FakeClock, drive_until


def fake_clock_now() -> FakeClock:
    """A FakeClock that starts at the real time, for a simulator serving a real daemon.

    The daemon runs on real time and compares the simulator's timestamps with its own wall
    clock; the tasks still move only when the test advances this clock.
    """
    return FakeClock(start_wall=time.time(), start_monotonic=time.monotonic())


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Events:
    """An EventSink that keeps every event, for assertions."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []

    async def __call__(self, event: TaskEvent) -> None:
        """Keep `event`."""
        self.events.append(event)

    def of(self, task_id: str) -> list[str]:
        """The types of `task_id`'s events, in order."""
        return [e.type for e in self.events if e.task_id == task_id]


@dataclass
class World:
    """A fake clock, a simulator on a real socket, and a client pointed at it."""

    clock: FakeClock
    sim: Simulator
    base_url: str
    client: CbrClient
    token_file: Path


@contextlib.asynccontextmanager
async def open_world(
    tmp: Path, *, seed: int = 11, dialect: Dialect = DEFAULT_DIALECT
) -> AsyncIterator[World]:
    """A World on a new FakeClock; the client reads its token from `tmp/token`, which tests
    rotate. The `world` fixture; hypothesis examples, which cannot take it, enter this."""
    clock = FakeClock()
    sim = Simulator(clock, tokens=["token-1"], seed=seed, dialect=dialect)
    token_file = tmp / "token"
    token_file.write_text("token-1\n")
    async with sim.running() as base_url:
        client = CbrClient(
            endpoint=base_url,
            project_id=sim.project_id,
            auth=TokenAuthenticator(token_file=token_file),
            clock=clock,
        )
        async with client:
            yield World(clock, sim, base_url, client, token_file)


def make_engine(world: World, **overrides: Any) -> Engine:
    """An engine on the world's clock and client, with test-friendly defaults."""
    options: dict[str, Any] = {
        "policy": Policy(interval_min=5, interval_max=60, deadline=6 * 3600, not_found_grace=120),
        "max_concurrency": 32,
        "max_requests_per_second": 50,
        "rng": random.Random(5),
    }
    options.update(overrides)
    options.setdefault("client", world.client)
    return Engine(clock=world.clock, **options)


class Running:
    """An engine running in the background on the world's fake clock."""

    def __init__(self, world: World, engine: Engine) -> None:
        self.world = world
        self.engine = engine
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.engine.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        self.engine.stop()
        await drive_until(self.world.clock, self.task.done, busy=self._busy)
        await self.task

    def _busy(self) -> bool:
        return self.engine.in_flight > 0

    async def until(
        self, done: Callable[[], bool], *, max_seconds: float = 86_400, settle_real: float = 0.05
    ) -> None:
        """Advance the fake clock whenever the engine is idle, until `done()`. `settle_real`:
        how long (real seconds) a request in flight may hold the clock (see `drive_until`);
        tests that count requests per fake second on the simulator raise it, so a slow page
        on a loaded machine cannot land in a later second than the budget counted it in."""
        task = self.task
        assert task is not None
        await drive_until(
            self.world.clock,
            lambda: done() or task.done(),
            busy=self._busy,
            max_seconds=max_seconds,
            settle_real=settle_real,
        )
        if task.done():
            task.result()


async def run_until(
    world: World,
    engine: Engine,
    done: Callable[[], bool],
    *,
    max_seconds: float = 86_400,
    settle_real: float = 0.05,
) -> None:
    """Run the engine on the fake clock until `done()`, then stop it and wait for it."""
    async with Running(world, engine) as running:
        await running.until(done, max_seconds=max_seconds, settle_real=settle_real)


@dataclass
class ReceivedHook:
    """One request a TestReceiver got."""

    headers: dict[str, str]
    body: bytes
    answered: int | None


class TestReceiver:
    """A real webhook receiver on 127.0.0.1 that answers from a script, then 200."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.script: list[int | str | tuple[int, dict[str, str]]] = []
        """Answers for the next requests: a status, (status, headers), or "hang"."""
        self.received: list[ReceivedHook] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        step = self.script.pop(0) if self.script else 200
        hook = ReceivedHook({k.lower(): v for k, v in request.headers.items()}, body, None)
        self.received.append(hook)
        if step == "hang":
            await self.release.wait()
            step = 200
        status: int
        headers: dict[str, str]
        if isinstance(step, int):
            status, headers = step, {}
        elif isinstance(step, tuple):
            status, headers = step
        else:
            raise AssertionError(f"unknown receiver step {step!r}")
        hook.answered = status
        if 300 <= status < 400:
            headers = {"Location": self.url + "/elsewhere", **headers}
        return web.Response(status=status, headers=headers)

    @property
    def delivered(self) -> list[ReceivedHook]:
        """Requests answered with a 2xx."""
        return [h for h in self.received if h.answered is not None and 200 <= h.answered < 300]

    async def __aenter__(self) -> TestReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        app.router.add_post("/hook/elsewhere", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


START_TIMEOUT = 30.0


async def start_daemon(
    settings: Settings, *, clock: Clock | None = None
) -> tuple[asyncio.Task[int], DaemonHandle]:
    """`run_daemon` in this event loop (no signal handlers) until it is started: (the task
    that returns its exit code, its handle). Stop it with `handle.engine.stop()`. If it ends
    or does not start within START_TIMEOUT real seconds, it is cancelled and the test fails."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[DaemonHandle] = loop.create_future()

    def on_started(handle: DaemonHandle) -> None:
        if not started.done():
            started.set_result(handle)

    daemon = asyncio.create_task(
        run_daemon(settings, clock=clock, install_signal_handlers=False, started=on_started)
    )
    try:
        waiting: set[asyncio.Future[Any]] = {daemon, started}
        await asyncio.wait(waiting, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED")
        if started.done():
            return daemon, started.result()
        if daemon.done():
            raise AssertionError(f"the daemon ended before it started: {daemon.result()!r}")
        raise AssertionError(f"the daemon did not start within {START_TIMEOUT:g} s")
    except BaseException:
        daemon.cancel()
        with contextlib.suppress(BaseException):
            await daemon
        raise


LISTING_DIALECTS = ("default", "examples", "page-count", "capped", "worst-case", "oldest-first")
"""The simulator's guesses about what the real list API does (`watcher.sim.dialects`) that a
listing must survive: `count` per page, pages capped at 100, zoneless times and nulls, the
oldest task first. A test
module marked `every_dialect` runs each test that takes `world` once per dialect."""
