"""What `cbr-watcher wait` shows: live bars on a TTY, plain lines elsewhere, or JSON objects.

Every view gets the same calls: `update` with a pending task's latest state (from the engine's
events and from sampling its table), `finished` once per task with its end, and `close` with
the summary. Text that came from CBR (error messages, operation types) is stripped of control
characters before it is shown, so a hostile body can neither move the cursor nor fake lines.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TextIO

from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.progress_bar import ProgressBar
from rich.text import Text

from watcher.config.durations import format_duration
from watcher.delivery.payloads import rfc3339
from watcher.engine.engine import WatchedTask
from watcher.safetext import json_text

OUTCOME_STYLES: Mapping[str, str] = {
    "success": "green",
    "failed": "red",
    "timeout": "red",
    "skipped": "yellow",
    "not_found": "yellow",
    "expired": "yellow",
}
"""The colour of a finished task's line, by outcome."""
PENDING_STYLE = "cyan"

STOP_TIMEOUT = "timeout"
STOP_INTERRUPTED = "interrupted"
STOP_TERMINATED = "terminated"
STOP_AUTH = "auth"


def printable(text: str | None) -> str:
    """`text` with every control, format or surrogate character shown as a `\\x..` escape."""
    if text is None:
        return ""
    if text.isprintable():
        return text
    return "".join(_escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        return ch
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def human_duration(seconds: float | None) -> str:
    """A short duration for people: "12s", "4m10s", "2h05m", "3d04h"; "-" when unknown."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@dataclass(frozen=True, slots=True)
class TaskLine:
    """One task as the views show it."""

    task_id: str
    operation_type: str | None = None
    status: str | None = None
    progress: int | None = None
    started: float | None = None
    """Wall seconds CBR started (or created) the task, for the elapsed time."""
    estimated_end: float | None = None
    """Wall seconds the engine expects the task to end, when it has an estimate."""
    outcome: str | None = None
    """Set once the watch ended: the task's `end_reason`."""
    ended_at: str | None = None
    """CBR's `ended_at` (RFC 3339), for finished tasks."""
    ended: float | None = None
    duration: float | None = None
    error: tuple[str, str] | None = None
    detail: str | None = None
    not_found_yet: bool = False
    """CBR answered 404 so far (the task may appear later, within `watch.not_found_grace`)."""

    @classmethod
    def of_task(cls, task: WatchedTask) -> TaskLine:
        """The line of a task-table row."""
        log = task.operation_log
        moment = (log.started_at or log.created_at) if log is not None else None
        estimate = getattr(task.poll_state, "estimated_end", None)
        return cls(
            task_id=task.task_id,
            operation_type=log.operation_type if log is not None else None,
            status=task.status,
            progress=task.progress,
            started=moment.timestamp() if moment is not None else None,
            estimated_end=float(estimate) if isinstance(estimate, int | float) else None,
            not_found_yet=task.status is None and task.poll_state.not_found_since is not None,
        )

    @classmethod
    def of_end(cls, data: Mapping[str, Any], outcome: str, detail: str | None) -> TaskLine:
        """The line of a finished task, from its webhook-shaped `data` (`event_data`)."""
        error = data.get("error")
        started = _timestamp(data.get("started_at"))
        ended = _timestamp(data.get("ended_at"))
        return cls(
            task_id=str(data["task_id"]),
            operation_type=data.get("operation_type"),
            status=data.get("status"),
            progress=data.get("progress"),
            started=started,
            outcome=outcome,
            ended_at=data.get("ended_at"),
            ended=ended,
            duration=data.get("duration_seconds"),
            error=(str(error["code"]), str(error["message"])) if error else None,
            detail=detail,
        )

    @property
    def style(self) -> str:
        """The rich style of this line's status."""
        return OUTCOME_STYLES.get(self.outcome, "yellow") if self.outcome else PENDING_STYLE

    @property
    def shown_status(self) -> str:
        """The status word: the outcome once ended, else CBR's status."""
        if self.outcome is None and self.status is None:
            return "not found yet" if self.not_found_yet else "-"
        return printable(self.outcome or self.status)


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Summary:
    """How the wait ended, for the summary lines."""

    lines: Sequence[TaskLine]
    stop_reason: str | None
    """None when every task ended; else one of the STOP_* constants."""
    timeout: float | None
    exit_code: int


def summary_lines(summary: Summary) -> list[tuple[str, str]]:
    """(text, rich style) per line of the summary: one per task, then one overall."""
    width = max((len(line.task_id) for line in summary.lines), default=0)
    rows: list[tuple[str, str]] = []
    for line in summary.lines:
        status = line.shown_status if line.outcome is not None else "pending"
        parts = [line.task_id.ljust(width), status.ljust(9)]
        if line.outcome is not None:
            if line.ended_at:
                parts.append(f"ended {printable(line.ended_at)}")
            if line.duration is not None:
                parts.append(f"took {human_duration(line.duration)}")
            if line.error is not None:
                parts.append(f"{printable(line.error[0])}: {printable(line.error[1])}")
            elif line.outcome != "success" and line.detail:
                parts.append(printable(line.detail))
        else:
            state = printable(line.status) or (
                "not found yet" if line.not_found_yet else "not seen yet"
            )
            if line.progress is not None:
                state += f" at {line.progress}%"
            parts.append(f"still pending ({state})")
        rows.append(("  ".join(parts), line.style))
    rows.append((_overall(summary), "bold"))
    return rows


def _overall(summary: Summary) -> str:
    counts: dict[str, int] = {}
    for line in summary.lines:
        key = line.outcome or "pending"
        counts[key] = counts.get(key, 0) + 1
    text = ", ".join(f"{count} {key}" for key, count in counts.items())
    reason = {
        STOP_TIMEOUT: f"; --timeout {format_duration(summary.timeout or 0)} ran out",
        STOP_INTERRUPTED: "; interrupted",
        STOP_TERMINATED: "; terminated",
        STOP_AUTH: "; credentials rejected",
    }.get(summary.stop_reason or "", "")
    return f"wait: {text}{reason} (exit {summary.exit_code})"


class WaitView(Protocol):
    """Where `wait` reports to."""

    def start(self, task_ids: Sequence[str]) -> None:
        """The wait begins with these tasks."""

    def update(self, line: TaskLine) -> None:
        """A pending task's latest state (called often; unchanged states are ignored)."""

    def finished(self, line: TaskLine, data: Mapping[str, Any]) -> None:
        """A task's watch ended; `data` is its webhook-shaped data object."""

    def close(self, summary: Summary | None) -> None:
        """The wait is over: show `summary` (None: show nothing more)."""


class PlainView:
    """CI logs: one line per status change and per 10 % of progress, no control characters."""

    def __init__(self, out: TextIO, *, now: Callable[[], float] = time.time) -> None:
        self._out = out
        self._now = now
        self._shown: dict[str, tuple[str | None, int | None]] = {}

    def start(self, task_ids: Sequence[str]) -> None:
        """Say what is waited for."""
        self._print(f"waiting for {len(task_ids)} task(s): {', '.join(task_ids)}")

    def update(self, line: TaskLine) -> None:
        """Print when the status changed or progress entered a new tenth."""
        decile = None if line.progress is None else line.progress // 10
        previous = self._shown.get(line.task_id)
        if previous is not None:
            status, shown_decile = previous
            moved = decile is not None and (shown_decile is None or decile > shown_decile)
            if line.status == status and not moved:
                return
        elif line.status is None:
            return
        self._shown[line.task_id] = (line.status, decile)
        self._print(self._describe(line))

    def finished(self, line: TaskLine, data: Mapping[str, Any]) -> None:
        """Print the task's end."""
        self._shown[line.task_id] = (line.status, 10)
        self._print(self._describe(line))

    def close(self, summary: Summary | None) -> None:
        """Print the summary."""
        if summary is None:
            return
        for text, _ in summary_lines(summary):
            self._out.write(text + "\n")
        self._out.flush()

    def _describe(self, line: TaskLine) -> str:
        text = f"{line.task_id} {printable(line.operation_type or '-')}: {line.shown_status}"
        if line.progress is not None:
            text += f" {line.progress}%"
        if line.outcome is not None and line.error is not None:
            text += f" ({printable(line.error[0])})"
        return text

    def _print(self, text: str) -> None:
        self._out.write(f"{rfc3339(self._now())} {text}\n")
        self._out.flush()


class JsonView:
    """`--json`: one webhook-shaped data object per task on `out` when it ends; the summary
    goes to `err`, so `out` stays one JSON object per line."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = out
        self._err = err

    def start(self, task_ids: Sequence[str]) -> None:
        """Nothing to show yet."""

    def update(self, line: TaskLine) -> None:
        """Progress is not reported in JSON."""

    def finished(self, line: TaskLine, data: Mapping[str, Any]) -> None:
        """One line of JSON."""
        self._out.write(json_text(dict(data)) + "\n")
        self._out.flush()

    def close(self, summary: Summary | None) -> None:
        """The summary, on `err`."""
        if summary is None:
            return
        for text, _ in summary_lines(summary):
            self._err.write(text + "\n")
        self._err.flush()


class _Column(ProgressColumn):
    """A column drawn from the task's TaskLine (`fields["line"]`)."""

    def __init__(self, draw: Callable[[TaskLine, float], RenderableType]) -> None:
        super().__init__()
        self._draw = draw

    def render(self, task: Task) -> RenderableType:
        """This column's cell for `task`."""
        return self._draw(task.fields["line"], time.time())


def _bar(line: TaskLine, _now: float) -> RenderableType:
    style = line.style
    done = 100 if line.outcome == "success" else (line.progress or 0)
    return ProgressBar(
        total=100,
        completed=done,
        width=30,
        pulse=line.outcome is None and line.progress is None,
        complete_style=style,
        finished_style=style,
    )


def _percent(line: TaskLine, _now: float) -> RenderableType:
    shown = "  -" if line.progress is None else f"{line.progress:>3d}"
    return Text(f"{shown}%")


def _elapsed(line: TaskLine, now: float) -> RenderableType:
    if line.started is None:
        return Text("")
    end = line.ended if line.outcome is not None and line.ended is not None else now
    return Text(f"elapsed {human_duration(end - line.started)}", style="dim")


def _remaining(line: TaskLine, now: float) -> RenderableType:
    if line.outcome is not None or line.estimated_end is None:
        return Text("")
    return Text(f"eta {human_duration(max(0.0, line.estimated_end - now))}", style="dim")


class LiveView:
    """A TTY: one live progress bar per task; a finished task's line stays, coloured by outcome."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress = Progress(
            _Column(lambda line, _: Text(line.task_id, style="bold")),
            _Column(lambda line, _: Text(printable(line.operation_type or "-"))),
            _Column(lambda line, _: Text(line.shown_status, style=line.style)),
            _Column(_bar),
            _Column(_percent),
            _Column(_elapsed),
            _Column(_remaining),
            console=console,
            refresh_per_second=4,
        )
        self._rows: dict[str, TaskID] = {}
        self._lines: dict[str, TaskLine] = {}

    def start(self, task_ids: Sequence[str]) -> None:
        """Draw a row per task and start refreshing."""
        for task_id in task_ids:
            line = TaskLine(task_id=task_id)
            self._lines[task_id] = line
            self._rows[task_id] = self._progress.add_task(task_id, total=100, line=line)
        self._progress.start()

    def update(self, line: TaskLine) -> None:
        """Redraw a pending task's row (keeping what an earlier look knew)."""
        known = self._lines.get(line.task_id)
        if known is None or known.outcome is not None:
            return
        merged = replace(
            line,
            operation_type=line.operation_type or known.operation_type,
            progress=line.progress if line.progress is not None else known.progress,
            started=line.started if line.started is not None else known.started,
        )
        self._set(merged)

    def finished(self, line: TaskLine, data: Mapping[str, Any]) -> None:
        """Freeze the task's row in its final state."""
        self._set(line)

    def close(self, summary: Summary | None) -> None:
        """Draw the final state, stop refreshing, print the summary below the bars."""
        self._progress.refresh()
        self._progress.stop()
        if summary is None:
            return
        for text, style in summary_lines(summary):
            self.console.print(Text(text, style=style), highlight=False, soft_wrap=True)

    def _set(self, line: TaskLine) -> None:
        self._lines[line.task_id] = line
        completed = 100 if line.outcome == "success" else (line.progress or 0)
        self._progress.update(self._rows[line.task_id], completed=completed, line=line)
