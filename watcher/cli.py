"""The command line (SPEC §3): subcommands and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher import __version__
from watcher.config import ConfigError, Settings, load_settings, render_effective, require_runnable
from watcher.logs import configure_logging
from watcher.store import StoreError
from watcher.task_ids import InvalidTaskIdError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_ALL_SUCCEEDED = 3
EXIT_CONFIG = 78
MAX_DEMO_SPEED = 1000.0


def demo_speed(text: str) -> float:
    """argparse `type=` for `demo --speed`: a number greater than 0, at most MAX_DEMO_SPEED."""
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    # Far beyond the maximum, simulated timeouts shrink below what a real loop can meet.
    if not 0 < speed <= MAX_DEMO_SPEED:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"expected a number greater than 0 and at most {MAX_DEMO_SPEED:g}, "
            f"such as 20 (got {text!r})"
        )
    return speed


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="cbr-watcher",
        description="Watch Huawei Cloud CBR tasks until they finish.",
    )
    parser.add_argument("--version", action="version", version=f"cbr-watcher {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the watcher daemon")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="ID",
        help="a task ID to watch (repeatable; replaces watch.tasks)",
    )
    run.add_argument(
        "--exit-when-done",
        action="store_true",
        default=None,
        help="exit when every task has ended: 0 if all succeeded, 3 otherwise",
    )

    demo = commands.add_parser("demo", help="simulator + watcher on fast time, about 20 seconds")
    demo.add_argument(
        "--speed", type=demo_speed, default=20.0, help="time acceleration (default 20)"
    )

    simulate = commands.add_parser("simulate", help="run the CBR simulator alone")
    simulate.add_argument("--listen", default="127.0.0.1:9473", metavar="HOST:PORT")
    simulate.add_argument("--scenario", type=Path, help="scenario TOML file")

    hook = commands.add_parser("webhook-test", help="send a signed test.ping to a receiver")
    hook.add_argument("name", metavar="NAME", help="the receiver's name in [[webhooks]]")
    hook.add_argument("--config", type=Path, help="TOML configuration file")

    check = commands.add_parser("check-config", help="validate and print the effective settings")
    check.add_argument("--config", type=Path, help="TOML configuration file")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    watch: dict[str, Any] = {}
    if getattr(args, "task", None):
        watch["tasks"] = list(args.task)
    if getattr(args, "exit_when_done", None):
        watch["exit_when_done"] = True
    return {"watch": watch} if watch else {}


def _load(args: argparse.Namespace) -> Settings:
    settings = load_settings(config_file=args.config, overrides=_overrides(args))
    require_runnable(settings)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cbr-watcher` and `python -m watcher`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, InvalidTaskIdError) as error:
        print(f"cbr-watcher: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as error:
        print(f"cbr-watcher: state error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(f"cbr-watcher: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        settings = _load(args)
        print(render_effective(settings), end="")
        return EXIT_OK
    if args.command == "run":
        from watcher.daemon import run_daemon

        settings = _load(args)
        configure_logging(level=settings.log.level, fmt=settings.log.format)
        return asyncio.run(run_daemon(settings))
    if args.command == "webhook-test":
        from watcher.webhook_test import webhook_test

        settings = load_settings(config_file=args.config)
        return asyncio.run(webhook_test(settings, args.name))
    if args.command == "demo":
        from watcher.demo import run_demo

        return asyncio.run(run_demo(speed=args.speed))
    if args.command == "simulate":
        configure_logging(level="info", fmt="auto")
        try:
            return asyncio.run(_simulate(args.listen, args.scenario))
        except ValueError as error:
            print(f"cbr-watcher: configuration error: {error}", file=sys.stderr)
            return EXIT_CONFIG
    raise AssertionError(f"unhandled command {args.command!r}")


async def _simulate(listen: str, scenario: Path | None) -> int:
    from watcher.sim.server import run_simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_simulator(listen, scenario, stop)
    return EXIT_OK
