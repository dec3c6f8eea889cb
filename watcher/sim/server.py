"""Running the simulator on a real socket, alone (`cbr-watcher simulate`) or inside tests."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from aiohttp import web

from watcher.clock import Clock, RealClock
from watcher.config import parse_listen
from watcher.sim.scenario import builtin_scenario, load_scenario
from watcher.sim.simulator import Simulator

DEFAULT_LISTEN = "127.0.0.1:9473"
# Seconds the runner waits for handlers at shutdown; hung requests are released before that.
SHUTDOWN_TIMEOUT = 1.0


class SimServer:
    """A simulator bound to a socket. `base_url` has no trailing slash."""

    def __init__(self, sim: Simulator, runner: web.AppRunner, base_url: str) -> None:
        self.sim = sim
        self.runner = runner
        self.base_url = base_url

    async def close(self) -> None:
        """Release hanging requests, stop listening and close every connection."""
        self.sim.closing.set()
        await self.runner.cleanup()


async def serve(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """Start serving `sim` on host:port (port 0 picks a free one) and return the server."""
    # A fresh event per run: an asyncio.Event belongs to the loop it is first awaited in.
    sim.closing = asyncio.Event()
    # handler_cancellation: a client that gives up on a hung request releases its handler.
    runner = web.AppRunner(
        sim.make_app(),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    return SimServer(sim, runner, f"http://{shown_host}:{bound_port}")


async def run_simulator(
    listen: str,
    scenario: Path | None,
    stop: asyncio.Event,
    clock: Clock | None = None,
    *,
    out: TextIO | None = None,
) -> None:
    """Serve a scenario (the built-in demo when None) until `stop` is set.

    Prints one line with the base URL, project ID and token to use once listening.
    Raises ValueError for a bad listen address or scenario, OSError if the port is taken.
    """
    try:
        host, port = parse_listen(listen.strip(), default_host="127.0.0.1")
    except ValueError as error:
        raise ValueError(f"invalid listen address {listen!r}: {error}") from None
    loaded = load_scenario(scenario) if scenario is not None else builtin_scenario("demo")
    sim = loaded.build(clock or RealClock())
    async with sim.running(host, port) as base_url:
        token = loaded.tokens[0] if loaded.tokens else "(none accepted)"
        print(
            f"CBR simulator listening: endpoint={base_url} project_id={sim.project_id} "
            f"token={token} tasks={len(sim.tasks)} control={base_url}/_sim/",
            file=out or sys.stdout,
            flush=True,
        )
        await stop.wait()
