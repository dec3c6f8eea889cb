"""`cbr-watcher simulate`: the CBR simulator alone, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from watcher.sim.dialects import preset
from watcher.sim.simulator import run_simulator

EXIT_OK = 0


async def run_simulate_command(
    listen: str, scenario: Path | None, dialect: str | None = None
) -> int:
    """Serve `scenario` (the built-in demo when None) on `listen` until a stop signal; 0.

    `dialect` names a preset that replaces the scenario's dialect. Raises ValueError for a
    bad listen address, scenario or dialect name, OSError if the port is taken.
    """
    chosen = preset(dialect) if dialect is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_simulator(listen, scenario, stop, dialect=chosen)
    return EXIT_OK
