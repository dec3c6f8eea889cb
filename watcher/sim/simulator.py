"""The public Simulator and every way to serve it: in-process, on a socket, or alone.

`Simulator` is the simulator's state (`watcher.sim.core.SimCore`) plus its HTTP app
(`watcher.sim.app`); `serve` binds a simulator to a socket and returns the `SimServer`;
`run_simulator` is what `cbr-watcher simulate` and `python -m watcher.sim` run: a scenario
served until told to stop, announced with one line saying how to connect.

Of the simulator's own modules only `watcher.sim.scenario` imports this one (a scenario builds
a Simulator), so `run_simulator` imports scenarios when it runs, not when this module loads.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

from aiohttp import web

from watcher.clock import Clock, RealClock
from watcher.net.listener import HttpListener, format_listen, http_url, parse_listen
from watcher.sim.app import make_app
from watcher.sim.core import DEFAULT_PROJECT_ID, DEFAULT_TOKENS, SimCore, SimRequest
from watcher.sim.dialects import Dialect

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PROJECT_ID",
    "DEFAULT_TOKENS",
    "SHUTDOWN_TIMEOUT",
    "SimRequest",
    "SimServer",
    "Simulator",
    "run_simulator",
    "serve",
]

DEFAULT_LISTEN = "127.0.0.1:9473"
# Seconds the runner waits for handlers at shutdown; hung requests are released before that.
SHUTDOWN_TIMEOUT = 1.0


class Simulator(SimCore):
    """A faithful fake of the CBR operation-log API, driven by an injected clock.

    Tasks are lazy: their state is computed from their creation time whenever asked, so the
    simulator needs no timers and a FakeClock can jump freely.
    """

    # Built on first use of `app`; a class-level default keeps SimCore's __init__ the only one.
    _app: web.Application | None = None

    @property
    def app(self) -> web.Application:
        """The aiohttp application (CBR endpoints and the /_sim/ control API), built once.

        Served by something other than `running()`/`serve()`, a "hang" fault only ends when
        the client disconnects if the runner was made with `handler_cancellation=True`.
        """
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A fresh aiohttp application over this simulator."""
        return make_app(self)

    @asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on a real socket; yields the base URL, e.g. "http://127.0.0.1:41234"."""
        server = await serve(self, host, port)
        try:
            yield server.base_url
        finally:
            await server.close()


class SimServer:
    """A simulator bound to a socket. `base_url` has no trailing slash."""

    def __init__(self, sim: SimCore, listener: HttpListener, base_url: str) -> None:
        self.sim = sim
        self.listener = listener
        self.base_url = base_url

    async def close(self) -> None:
        """Release hanging requests, stop listening and close every connection."""
        self.sim.closing.set()
        await self.listener.close()


async def serve(sim: SimCore, host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """Start serving `sim` on host:port (port 0 picks a free one) and return the server.

    Raises OSError when the address cannot be bound; nothing is left running then.
    """
    # A fresh event per run: an asyncio.Event belongs to the loop it is first awaited in.
    sim.closing = asyncio.Event()
    # handler_cancellation: a client that gives up on a hung request releases its handler.
    listener = HttpListener(
        make_app(sim),
        format_listen(host, port),
        name="simulator",
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        handler_cancellation=True,
    )
    await listener.start()
    # The host as asked for (a name stays a name), not the address it resolved to.
    return SimServer(sim, listener, http_url(host, listener.port))


async def run_simulator(
    listen: str,
    scenario: Path | None,
    stop: asyncio.Event,
    clock: Clock | None = None,
    *,
    out: TextIO | None = None,
    dialect: Dialect | None = None,
) -> None:
    """Serve a scenario (the built-in demo when None) until `stop` is set.

    `dialect`, when given, replaces the scenario's own. Prints one line with the base URL,
    project ID, token and dialect once listening. Raises ValueError for a bad listen
    address or scenario, OSError if the port is taken.
    """
    from watcher.sim.scenario import builtin_scenario, load_scenario

    try:
        host, port = parse_listen(listen.strip(), default_host="127.0.0.1")
    except ValueError as error:
        raise ValueError(f"invalid listen address {listen!r}: {error}") from None
    loaded = load_scenario(scenario) if scenario is not None else builtin_scenario("demo")
    if dialect is not None:
        loaded.dialect = dialect
    sim = loaded.build(clock or RealClock())
    async with sim.running(host, port) as base_url:
        token = loaded.tokens[0] if loaded.tokens else "(none accepted)"
        print(
            f"CBR simulator listening: endpoint={base_url} project_id={sim.project_id} "
            f"token={token} tasks={len(sim.tasks)} control={base_url}/_sim/ "
            f"dialect={sim.dialect.summary()}",
            file=out or sys.stdout,
            flush=True,
        )
        await stop.wait()
