"""The command line (see docs/cli.md): subcommands and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher import __version__
from watcher.cbr.ids import TASK_ID_RULE, InvalidTaskIdError, is_valid_task_id
from watcher.config import (
    ConfigError,
    Settings,
    load_settings,
    render_effective,
    require_runnable,
)
from watcher.config.durations import parse_duration
from watcher.net.listener import parse_listen
from watcher.observe.logs import configure_logging
from watcher.state.connection import StoreError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_ALL_SUCCEEDED = 3
EXIT_CONFIG = 78
MAX_DEMO_SPEED = 1000.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


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


def listen_address(text: str) -> str:
    """argparse `type=` for `--listen`: HOST:PORT, as `server.listen` takes it."""
    try:
        parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (got {text!r})") from None
    return text


def duration(text: str) -> float:
    """argparse `type=` for `--timeout`: "90s", "10m", "2h", "1d" or seconds, more than 0."""
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (got {text!r})") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration greater than 0 (got {text!r})")
    return seconds


def task_id(text: str) -> str:
    """argparse `type=` for a task ID argument (`watcher.cbr.ids` has the rule)."""
    if not is_valid_task_id(text):
        raise argparse.ArgumentTypeError(f"invalid task ID {text!r}: expected {TASK_ID_RULE}")
    return text


def label(text: str) -> tuple[str, str]:
    """argparse `type=` for `--label K=V`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (got {text!r})")
    return key, value


def dialect_name(text: str) -> str:
    """argparse `type=` for `simulate --dialect`: the name of a simulator dialect preset."""
    # Imported here: the simulator is only loaded by the commands that run it.
    from watcher.sim.dialects import PRESETS

    if text not in PRESETS:
        raise argparse.ArgumentTypeError(
            f"unknown dialect {text!r}: expected one of {', '.join(PRESETS)}"
        )
    return text


def _add_client_commands(commands: Any) -> None:
    """The `wait`, `tasks` and `dead-letters` subcommands."""
    wait = commands.add_parser(
        "wait", help="wait in the foreground for tasks to end, with progress and an exit code"
    )
    wait.add_argument("ids", nargs="+", type=task_id, metavar="ID", help="task IDs to wait for")
    wait.add_argument(
        "--timeout", type=duration, metavar="DURATION", help="give up after this long (exit 124)"
    )
    wait.add_argument(
        "--json", action="store_true", help="print one JSON object per task when it ends"
    )
    wait.add_argument("--config", type=Path, help="TOML configuration file")

    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, help="TOML configuration file")
    api = argparse.ArgumentParser(add_help=False, parents=[config])
    api.add_argument(
        "--url", metavar="URL", help="the task API's base URL (default: from server.api_listen)"
    )
    tasks = commands.add_parser("tasks", help="list, add or remove tasks of a running daemon")
    actions = tasks.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[api], help="the tasks the daemon watches")
    add = actions.add_parser("add", parents=[api], help="watch a task")
    add.add_argument("task_id", type=task_id, metavar="ID")
    add.add_argument(
        "--label",
        type=label,
        action="append",
        default=[],
        metavar="K=V",
        help="a label for the task's events and metrics (repeatable)",
    )
    remove = actions.add_parser("remove", parents=[api], help="stop watching a task")
    remove.add_argument("task_id", type=task_id, metavar="ID")

    dead = commands.add_parser("dead-letters", help="webhook events that ran out of max_age")
    dead_actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    dead_actions.add_parser("list", parents=[config], help="show every dead letter")
    replay = dead_actions.add_parser(
        "replay", parents=[config], help="re-queue one dead letter (or all) for delivery"
    )
    replay.add_argument("event_id", nargs="?", metavar="EVENT_ID", help="default: every one")


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
    run.add_argument("--log-level", choices=LOG_LEVELS, help="log.level (default info)")
    run.add_argument("--log-format", choices=LOG_FORMATS, help="log.format (default auto)")
    run.add_argument(
        "--listen",
        type=listen_address,
        metavar="HOST:PORT",
        help="server.listen: where /metrics, /healthz and /readyz are served",
    )

    demo = commands.add_parser("demo", help="simulator + watcher on fast time, about 20 seconds")
    demo.add_argument(
        "--speed", type=demo_speed, default=20.0, help="time acceleration (default 20)"
    )

    simulate = commands.add_parser("simulate", help="run the CBR simulator alone")
    simulate.add_argument("--listen", default="127.0.0.1:9473", metavar="HOST:PORT")
    simulate.add_argument("--scenario", type=Path, help="scenario TOML file")
    simulate.add_argument(
        "--dialect",
        type=dialect_name,
        metavar="NAME",
        help="a preset answer to what the CBR API reference leaves open, such as examples or "
        "worst-case (replaces the scenario's; an unknown name lists them)",
    )

    hook = commands.add_parser("webhook-test", help="send a signed test.ping to a receiver")
    hook.add_argument("name", metavar="NAME", help="the receiver's name in [[webhooks]]")
    hook.add_argument("--config", type=Path, help="TOML configuration file")

    check = commands.add_parser("check-config", help="validate and print the effective settings")
    check.add_argument("--config", type=Path, help="TOML configuration file")
    _add_client_commands(commands)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    watch: dict[str, Any] = {}
    if getattr(args, "task", None):
        watch["tasks"] = list(args.task)
    if getattr(args, "exit_when_done", None):
        watch["exit_when_done"] = True
    overrides: dict[str, Any] = {"watch": watch} if watch else {}
    log = {"level": getattr(args, "log_level", None), "format": getattr(args, "log_format", None)}
    if any(log.values()):
        overrides["log"] = log  # None values are ignored by load_settings
    if getattr(args, "listen", None):
        overrides["server"] = {"listen": args.listen}
    return overrides


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
        from watcher.cli.daemon import run_daemon

        settings = _load(args)
        configure_logging(level=settings.log.level, fmt=settings.log.format)
        return asyncio.run(run_daemon(settings, only_tasks=args.task or None))
    if args.command == "wait":
        return _wait(args)
    if args.command == "tasks":
        from watcher.cli.commands.tasks import run_tasks_command

        settings = load_settings(config_file=args.config)
        return asyncio.run(
            run_tasks_command(
                settings,
                args.action,
                task_id=getattr(args, "task_id", None),
                labels=dict(getattr(args, "label", [])),
                url=args.url,
            )
        )
    if args.command == "dead-letters":
        from watcher.cli.commands.dead_letters import run_dead_letters_command

        settings = load_settings(config_file=args.config)
        return asyncio.run(
            run_dead_letters_command(
                settings, args.action, event_id=getattr(args, "event_id", None)
            )
        )
    if args.command == "webhook-test":
        from watcher.cli.commands.webhook_check import run_webhook_test_command

        settings = load_settings(config_file=args.config)
        return asyncio.run(run_webhook_test_command(settings, args.name))
    if args.command == "demo":
        from watcher.cli.commands.demo import run_demo

        return asyncio.run(run_demo(speed=args.speed))
    if args.command == "simulate":
        from watcher.cli.commands.simulate import run_simulate_command

        configure_logging(level="info", fmt="auto")
        try:
            return asyncio.run(run_simulate_command(args.listen, args.scenario, args.dialect))
        except ValueError as error:
            print(f"cbr-watcher: configuration error: {error}", file=sys.stderr)
            return EXIT_CONFIG
    raise AssertionError(f"unhandled command {args.command!r}")


def _wait(args: argparse.Namespace) -> int:
    from watcher.cli.commands.wait import EXIT_INTERRUPTED, late_stderr, wait_for_tasks

    settings = load_settings(config_file=args.config)
    require_runnable(settings)
    # stdout is the waiter's; logs go to stderr, and only what needs a human's attention.
    level = "error" if settings.log.level == "error" else "warning"
    configure_logging(level=level, fmt=settings.log.format, stream=late_stderr())
    try:
        return asyncio.run(
            wait_for_tasks(settings, args.ids, give_up_after=args.timeout, json_output=args.json)
        )
    except KeyboardInterrupt:  # before the signal handler was in place
        return EXIT_INTERRUPTED
