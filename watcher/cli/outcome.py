"""How an `--exit-when-done` run ends: which tasks it answers for, when it is done with them,
and its exit code (see docs/configuration.md and the command table in the README).

The outcome covers every task the run was asked to watch, also those that ended in an earlier
run on the same state file; with `--task`, only the tasks named there. The engine keeps each
watch's end reason past its row's retention, so this module only reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from pathlib import Path

import structlog

from watcher.cbr.ids import InvalidTaskIdError, parse_task_file
from watcher.clock import Clock
from watcher.config import Settings
from watcher.delivery.payloads import rfc3339
from watcher.engine.engine import Engine
from watcher.engine.events import EventSink, TaskEvent
from watcher.state.records import to_watched
from watcher.state.sqlite import Store

log = structlog.get_logger("watcher.daemon")

EXIT_ALL_SUCCEEDED = 0
EXIT_AUTH_GAVE_UP = 1
EXIT_NOT_ALL_SUCCEEDED = 3
AUTH_CHECK_INTERVAL = 1.0
"""With --exit-when-done, how often to look whether credentials have failed for too long."""


class RunScope:
    """The tasks an `--exit-when-done` run answers for, and when it is done with them."""

    def __init__(self, only_tasks: Collection[str] | None) -> None:
        self.only = list(dict.fromkeys(only_tasks)) if only_tasks else None
        self.engine: Engine | None = None
        self.ended_here: dict[str, None] = {}
        """Tasks whose watch ended in this run (ordered), also once the table dropped their row."""
        self.auth_gave_up = False

    def wrap(self, sink: EventSink) -> EventSink:
        """`sink`, after noting the outcome of every watch that ends."""

        async def noting(event: TaskEvent) -> None:
            engine = self.engine
            if engine is not None and engine.outcome(event.task_id) is not None:
                self.ended_here[event.task_id] = None
            await sink(event)
            self.stop_if_done()

        return noting

    def done(self) -> bool:
        """Whether every task named with `--task` has an outcome (False without `--task`)."""
        engine = self.engine
        if self.only is None or engine is None:
            return False
        return all(engine.outcome(task_id) is not None for task_id in self.only)

    def stop_if_done(self) -> None:
        """With `--task`, stop the engine once those tasks ended (the rest need not)."""
        engine = self.engine
        if engine is not None and engine.exit_when_done and self.done():
            engine.stop()

    def asked(self, settings: Settings) -> list[str]:
        """The `--task` IDs; else every configured, task-file, watched or ended-here task."""
        if self.only is not None:
            return list(self.only)
        ids = dict.fromkeys(settings.watch.tasks)
        if settings.watch.task_file:
            with contextlib.suppress(OSError, InvalidTaskIdError):
                text = Path(settings.watch.task_file).read_text(encoding="utf-8")
                ids.update(dict.fromkeys(parse_task_file(text)))
        if self.engine is not None:
            ids.update(dict.fromkeys(self.engine.tasks))
        ids.update(self.ended_here)
        return list(ids)

    async def outcomes(
        self, settings: Settings, store: Store
    ) -> list[tuple[str, str | None, str | None]]:
        """(task ID, outcome or None, CBR's ended_at) of every task asked for."""
        engine = self.engine
        assert engine is not None
        result: list[tuple[str, str | None, str | None]] = []
        stored: dict[str, str | None] | None = None
        for task_id in self.asked(settings):
            task = engine.tasks.get(task_id)
            if task is None:
                if stored is None:
                    stored = await _stored_ended_at(store)
                ended_at = stored.get(task_id)
            else:
                log_ = task.operation_log
                ended_at = rfc3339(log_.ended_at) if log_ is not None else None
            result.append((task_id, engine.outcome(task_id), ended_at))
        return result

    def exit_code(self, outcomes: Sequence[tuple[str, str | None, str | None]]) -> int:
        """1 when the credentials were given up on; else 0 when every task asked for ended
        in success, 3 otherwise (a task that has not ended, or is unknown, is no success)."""
        if self.auth_gave_up:
            return EXIT_AUTH_GAVE_UP
        ok = all(outcome == "success" for _, outcome, _ in outcomes)
        return EXIT_ALL_SUCCEEDED if ok else EXIT_NOT_ALL_SUCCEEDED


async def _stored_ended_at(store: Store) -> dict[str, str | None]:
    """CBR's ended_at of every task in the store (empty when the store cannot answer)."""
    try:
        records = await store.load_tasks()
    except Exception as error:  # the summary must not hide the exit code
        log.warning("run.summary_incomplete", error=str(error)[:200])
        return {}
    ended: dict[str, str | None] = {}
    for record in records:
        log_ = to_watched(record).operation_log
        ended[record.task_id] = rfc3339(log_.ended_at) if log_ is not None else None
    return ended


async def give_up_on_auth(
    engine: Engine, clock: Clock, settings: Settings, scope: RunScope
) -> None:
    """Stop the engine once CBR has rejected the credentials for `watch.auth_failure_timeout`."""
    limit = settings.watch.auth_failure_timeout
    while True:
        since, now = engine.auth_failing_since, clock.monotonic()
        if since is not None and now - since >= limit:
            error = engine.last_auth_error
            log.error(
                "run.auth_failed",
                auth_method=settings.auth.method,
                error_code=(error.error_code or error.code_label) if error else None,
                failing_seconds=round(now - since, 3),
                detail="CBR kept rejecting the credentials for watch.auth_failure_timeout",
            )
            scope.auth_gave_up = True
            engine.stop()
            return
        await clock.sleep(min(AUTH_CHECK_INTERVAL, limit) if since is None else since + limit - now)


def log_outcomes(outcomes: list[tuple[str, str | None, str | None]], code: int) -> None:
    """One line per task asked for and one with the run's outcome and exit code."""
    counts: dict[str, int] = {}
    for task_id, outcome, ended_at in outcomes:
        shown = outcome or "unfinished"
        counts[shown] = counts.get(shown, 0) + 1
        report = log.info if outcome == "success" else log.warning
        report("run.task_outcome", task_id=task_id, outcome=shown, ended_at=ended_at)
    report = log.info if code == 0 else log.warning
    report("run.outcome", exit_code=code, tasks=len(outcomes), **dict(sorted(counts.items())))
