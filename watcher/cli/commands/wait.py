"""`cbr-watcher wait ID...` (see docs/wait.md): watch tasks in the foreground until they end.

The same engine, client and credentials as `run`, with no state file, no listener and no
webhooks. Exit codes: 0 every task `success`; 3 any other end (also not found and
expired); 124 `--timeout` ran out; 1 credentials rejected again right after a reload; 130
Ctrl-C (143 SIGTERM), after a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from rich.console import Console

from watcher.cli.commands.wait_output import (
    STOP_AUTH,
    STOP_INTERRUPTED,
    STOP_TERMINATED,
    STOP_TIMEOUT,
    JsonView,
    LiveView,
    PlainView,
    Summary,
    TaskLine,
    WaitView,
)
from watcher.cli.wiring import build_client, build_engine
from watcher.clock import Clock, RealClock
from watcher.config import Settings
from watcher.delivery.payloads import event_data
from watcher.engine.engine import Engine
from watcher.engine.events import TaskEvent

EXIT_OK = 0
EXIT_AUTH = 1
EXIT_NOT_ALL_SUCCEEDED = 3
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

TICK = 0.1
"""Seconds between looks at the task table (view refresh, timeout, credential check)."""

_STOP_EXIT_CODES = {
    STOP_AUTH: EXIT_AUTH,
    STOP_TIMEOUT: EXIT_TIMEOUT,
    STOP_INTERRUPTED: EXIT_INTERRUPTED,
    STOP_TERMINATED: EXIT_TERMINATED,
}


class LateStderr(io.TextIOBase):
    """Writes to whatever `sys.stderr` is at the time, so log lines go through rich's
    redirection while the bars are drawn instead of tearing them."""

    def write(self, text: str) -> int:
        """Write to the current stderr."""
        return sys.stderr.write(text)

    def flush(self) -> None:
        """Flush the current stderr."""
        sys.stderr.flush()

    def isatty(self) -> bool:
        """Whether the current stderr is a terminal."""
        return sys.stderr.isatty()


def late_stderr() -> TextIO:
    """A `LateStderr`, typed as the text stream `configure_logging` takes."""
    return cast(TextIO, LateStderr())


def make_view(*, json_output: bool, out: TextIO, err: TextIO, tty: bool | None = None) -> WaitView:
    """JSON with `--json`; live bars when `out` is a terminal that can draw them (or `tty`);
    plain lines else."""
    if json_output:
        return JsonView(out, err)
    is_tty = out.isatty() and os.environ.get("TERM") != "dumb" if tty is None else tty
    if is_tty:
        return LiveView(Console(file=out, force_terminal=True, highlight=False))
    return PlainView(out)


class Waiter:
    """One `wait`: the engine, the view, and why it stopped."""

    def __init__(
        self,
        settings: Settings,
        task_ids: Sequence[str],
        view: WaitView,
        *,
        timeout: float | None,
        clock: Clock,
        err: TextIO,
    ) -> None:
        self.settings = settings
        self.task_ids = list(dict.fromkeys(task_ids))
        self.view = view
        self.timeout = timeout
        self.clock = clock
        self.err = err
        self.stop_reason: str | None = None
        self.ended: dict[str, TaskLine] = {}
        self.engine: Engine | None = None

    def stop(self, reason: str) -> None:
        """Stop watching (the first reason given wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.engine is not None:
            self.engine.stop()

    async def on_event(self, event: TaskEvent) -> None:
        """The engine's event sink: progress to the view, ends to the view and the tally."""
        engine = self.engine
        task = engine.tasks.get(event.task_id) if engine is not None else None
        if task is None:
            return
        if not event.ends_watch:
            self.view.update(TaskLine.of_task(task))
            return
        data = event_data(event, project_id=self.settings.cbr.project_id)
        line = TaskLine.of_end(data, task.end_reason or "unknown", event.detail)
        self.ended[event.task_id] = line
        self.view.finished(line, data)

    async def run(self) -> int:
        """Watch until every task ended or something stops the wait; the exit code."""
        clock = self.clock
        async with build_client(self.settings, clock) as client:
            engine = build_engine(self.settings, client, clock, on_event=self.on_event)
            engine.exit_when_done = True
            self.engine = engine
            for task_id in self.task_ids:
                engine.add(task_id, source="wait")
            if self.stop_reason is not None:  # a signal came while connecting
                engine.stop()
            self.view.start(self.task_ids)
            summary: Summary | None = None
            try:
                ticking = asyncio.create_task(self._tick(engine), name="wait ticks")
                try:
                    await engine.run()
                finally:
                    ticking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticking
                code = self._exit_code(engine)
                if self.stop_reason != STOP_AUTH:
                    summary = self._summary(engine, code)
            finally:
                self.view.close(summary)
        if self.stop_reason == STOP_AUTH:
            self._report_auth(engine)
        return code

    async def _tick(self, engine: Engine) -> None:
        deadline = None if self.timeout is None else self.clock.monotonic() + self.timeout
        while True:
            if engine.auth_failed_after_reload:
                self.stop(STOP_AUTH)
                return
            if deadline is not None and self.clock.monotonic() >= deadline:
                self.stop(STOP_TIMEOUT)
                return
            for task_id in self.task_ids:
                task = engine.tasks.get(task_id)
                if task is not None and not task.ended:
                    self.view.update(TaskLine.of_task(task))
            delay = TICK if deadline is None else min(TICK, deadline - self.clock.monotonic())
            await self.clock.sleep(max(0.0, delay))

    def _exit_code(self, engine: Engine) -> int:
        if self.stop_reason is not None:
            return _STOP_EXIT_CODES[self.stop_reason]
        ok = all(engine.outcome(task_id) == "success" for task_id in self.task_ids)
        return EXIT_OK if ok else EXIT_NOT_ALL_SUCCEEDED

    def _summary(self, engine: Engine, code: int) -> Summary:
        lines = []
        for task_id in self.task_ids:
            line = self.ended.get(task_id)
            if line is None:
                task = engine.tasks.get(task_id)
                line = TaskLine.of_task(task) if task is not None else TaskLine(task_id=task_id)
            lines.append(line)
        return Summary(lines, self.stop_reason, self.timeout, code)

    def _report_auth(self, engine: Engine) -> None:
        error = engine.last_auth_error
        code = (error.error_code or error.code_label) if error is not None else "401"
        self.err.write(
            f"cbr-watcher: auth.method={self.settings.auth.method}: "
            f"CBR rejected the credentials ({code}) after a reload\n"
        )
        self.err.flush()


async def wait_for_tasks(
    settings: Settings,
    task_ids: Sequence[str],
    *,
    give_up_after: float | None = None,
    json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    tty: bool | None = None,
    clock: Clock | None = None,
    install_signal_handlers: bool = True,
) -> int:
    """Watch `task_ids` in the foreground until each ended; returns the exit code.

    `give_up_after` is `--timeout` in seconds (None: wait as long as `watch.deadline`);
    `out` defaults to stdout and `err` to stderr; `tty` forces (or rules out) the live bars.
    With `install_signal_handlers`, SIGINT stops cleanly with 130 and SIGTERM with 143.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    view = make_view(json_output=json_output, out=out, err=err, tty=tty)
    waiter = Waiter(
        settings, task_ids, view, timeout=give_up_after, clock=clock or RealClock(), err=err
    )
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        loop.add_signal_handler(signal.SIGINT, waiter.stop, STOP_INTERRUPTED)
        loop.add_signal_handler(signal.SIGTERM, waiter.stop, STOP_TERMINATED)
    try:
        return await waiter.run()
    finally:
        if install_signal_handlers:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
