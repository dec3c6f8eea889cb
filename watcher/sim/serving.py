"""The simulator on a real socket: `serve` binds a `SimCore`'s HTTP app and returns the server."""

from __future__ import annotations

import asyncio

from watcher.net.listener import HttpListener, format_listen, http_url
from watcher.sim.app import make_app
from watcher.sim.core import SimCore

# Seconds the runner waits for handlers at shutdown; hung requests are released before that.
SHUTDOWN_TIMEOUT = 1.0


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
