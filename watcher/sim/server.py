"""Running the simulator alone (`cbr-watcher simulate`, `python -m watcher.sim`).

`serve` and `SimServer` live in `watcher.sim.serving` (re-exported here): this module loads
scenarios, which build the public `Simulator`, so `Simulator.running` cannot depend on it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from watcher.clock import Clock, RealClock
from watcher.net.listener import parse_listen
from watcher.sim.scenario import builtin_scenario, load_scenario
from watcher.sim.serving import SHUTDOWN_TIMEOUT, SimServer, serve

DEFAULT_LISTEN = "127.0.0.1:9473"

__all__ = ["DEFAULT_LISTEN", "SHUTDOWN_TIMEOUT", "SimServer", "run_simulator", "serve"]


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
