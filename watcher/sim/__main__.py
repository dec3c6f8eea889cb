"""`python -m watcher.sim [--listen HOST:PORT] [--scenario FILE] [--dialect NAME]`: the
simulator alone."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from watcher.sim.dialects import PRESETS, preset
from watcher.sim.simulator import DEFAULT_LISTEN, run_simulator

EX_CONFIG = 78


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until SIGINT/SIGTERM; exit 78 for a bad scenario or address."""
    parser = argparse.ArgumentParser(
        prog="python -m watcher.sim", description="Run the CBR operation-log API simulator."
    )
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
    parser.add_argument("--scenario", type=Path, help="scenario TOML file (default: built-in demo)")
    parser.add_argument(
        "--dialect",
        choices=PRESETS,
        help="answer the API reference's open questions this way (replaces the scenario's)",
    )
    args = parser.parse_args(argv)
    dialect = preset(args.dialect) if args.dialect else None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_simulator(args.listen, args.scenario, stop, dialect=dialect)

    try:
        asyncio.run(serve())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EX_CONFIG
    except OSError as error:
        print(f"error: cannot listen on {args.listen}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
