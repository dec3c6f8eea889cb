"""The public Simulator: the simulator's state (`SimCore`) plus ways to serve it over HTTP.

This is the top of the simulator's own modules: it imports the state (`watcher.sim.core`), the
HTTP app (`watcher.sim.app`) and the socket server (`watcher.sim.serving`), none of which
imports it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from watcher.sim.app import make_app
from watcher.sim.core import DEFAULT_PROJECT_ID, DEFAULT_TOKENS, SimCore, SimRequest
from watcher.sim.serving import serve

__all__ = ["DEFAULT_PROJECT_ID", "DEFAULT_TOKENS", "SimRequest", "Simulator"]


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
