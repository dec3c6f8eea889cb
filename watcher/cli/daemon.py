"""`cbr-watcher run`: wire configuration, client and engine together and run until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from watcher.cbr.ids import InvalidTaskIdError, parse_task_file
from watcher.cli.gc_tuning import GcTuner
from watcher.cli.restore import restore
from watcher.cli.wiring import build_client, build_engine, build_outbox
from watcher.clock import Clock, RealClock
from watcher.config import Settings
from watcher.delivery.payloads import rfc3339
from watcher.delivery.recorder import StateRecorder
from watcher.delivery.webhooks import Deliverer, Receiver
from watcher.engine.engine import Engine
from watcher.engine.events import EventSink, TaskEvent, discard_events
from watcher.observe.metrics import Metrics
from watcher.observe.server import Health, start_metrics_listener
from watcher.observe.systemd import SystemdNotifier
from watcher.sources.discovery import Discovery
from watcher.sources.task_api.handlers import start_task_api
from watcher.sources.task_file import TaskFileSource
from watcher.state.records import to_watched
from watcher.state.sqlite import Store

log = structlog.get_logger("watcher.daemon")

EXIT_DRAIN_TIMEOUT = 30.0
"""With --exit-when-done, how long to wait for webhooks before exiting (the rest stay queued)."""
AUTH_CHECK_INTERVAL = 1.0
"""With --exit-when-done, how often to look whether credentials have failed for too long."""


@dataclass(frozen=True)
class DaemonHandle:
    """What `run_daemon(started=...)` hands over once everything listens."""

    engine: Engine
    metrics: Metrics
    health: Health
    metrics_url: str
    """Where /metrics, /healthz and /readyz are served, e.g. http://127.0.0.1:9471."""


async def run_daemon(
    settings: Settings,
    *,
    clock: Clock | None = None,
    on_event: EventSink = discard_events,
    install_signal_handlers: bool = True,
    started: Callable[[DaemonHandle], None] | None = None,
    only_tasks: Collection[str] | None = None,
) -> int:
    """Run the watcher until SIGTERM/SIGINT (exit 0) or, with exit_when_done, until all ended.

    With exit_when_done the exit code covers every task the run was asked for (also those
    that ended in an earlier run on the same state file), or only `only_tasks` (`--task`)
    when given: the run then ends once those ended, whatever else it watches. Credentials
    rejected for `watch.auth_failure_timeout` end such a run with exit 1.

    Start-up order: configuration → state restored → tasks loaded → listeners bound →
    READY=1. Everything started is stopped in reverse order, also when start-up fails.
    """
    clock = clock or RealClock()
    scope = _ExitScope(only_tasks)
    metrics = Metrics(
        clock=clock,
        retention=settings.metrics.retention,
        max_task_series=settings.metrics.max_task_series,
    )
    metrics.register_receivers(receiver.name for receiver in settings.webhooks)
    health = Health(clock)
    health.require("config", "state", "tasks", "listener")
    health.mark("config")
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(settings.state.effective_path())
        stack.push_async_callback(store.close)
        client = await stack.enter_async_context(
            build_client(
                settings, clock, observe=metrics.observe_request, on_token=metrics.set_token_expiry
            )
        )
        receivers = [Receiver(receiver) for receiver in settings.webhooks]
        deliverer = (
            Deliverer(
                store=store,
                receivers=receivers,
                clock=clock,
                observer=metrics,
            )
            if receivers
            else None
        )
        recorder = StateRecorder(
            store,
            build_outbox(settings.webhooks, project_id=settings.cbr.project_id),
            wake=deliverer.wake if deliverer is not None else None,
        )
        engine = build_engine(
            settings,
            client,
            clock,
            on_event=metrics.on_event,
            record=recorder,
            forget=recorder.forget,
        )
        scope.engine = engine
        metrics.attach(engine)
        engine.subscribe(scope.wrap(on_event))
        health.watch_loop(engine)
        health.check("store", lambda: engine.store_failing_since is None)

        await restore(engine, store, now=clock.wall())
        for operation_type, ended in (await store.last_successes()).items():
            metrics.restore_last_success(operation_type, ended)
        metrics.restore_resources(await store.resource_statuses())
        health.mark("state")

        for task_id in settings.watch.tasks:
            engine.add(task_id, source="config")
        gc_tuner = GcTuner()
        task_file = (
            TaskFileSource(Path(settings.watch.task_file), engine, on_added=gc_tuner.note_added)
            if settings.watch.task_file
            else None
        )
        if task_file is not None:
            await task_file.load()
        health.mark("tasks")

        metrics_listener = await start_metrics_listener(metrics, health, settings.server.listen)
        stack.push_async_callback(metrics_listener.close)
        if settings.server.api_listen:
            api_listener = await start_task_api(
                engine,
                listen=settings.server.api_listen,
                api_token=settings.server.api_token.get_secret_value(),
            )
            stack.push_async_callback(api_listener.close)

        notifier = SystemdNotifier(engine, clock)
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            _install_signal_handlers(loop, engine, task_file, notifier)
            stack.callback(_remove_signal_handlers, loop)
        if deliverer is not None:
            delivering = asyncio.create_task(deliverer.run(), name="webhooks")
            stack.push_async_callback(_stop_deliverer, deliverer, delivering)
        if task_file is not None:
            _background(stack, task_file.follow(clock), "task file")
        if settings.watch.discover:
            discovery = Discovery(
                client=client,
                engine=engine,
                clock=clock,
                blocks=settings.watch.discover,
                interval=settings.watch.discover_interval,
                lookback=settings.watch.discover_lookback,
                cursors=store,
            )
            _background(stack, discovery.run(), "discovery")
        if engine.exit_when_done and not engine.tasks:
            log.warning("daemon.nothing_to_watch")
        if engine.exit_when_done:
            scope.stop_if_done()
            _background(stack, _give_up_on_auth(engine, clock, settings, scope), "auth timeout")
        log.info(
            "daemon.started",
            tasks=len(engine.tasks),
            endpoint=settings.cbr.effective_endpoint,
            max_requests_per_second=settings.watch.max_requests_per_second,
        )
        if started is not None:
            started(DaemonHandle(engine, metrics, health, metrics_listener.url))

        # The task table built so far is long-lived: keep full collections off it.
        gc_tuner.after_startup()
        _background(stack, gc_tuner.follow(lambda: len(engine.tasks), clock), "gc tuning")
        # READY=1 only now: configuration, restored state and listeners are all in place.
        notifier.ready()
        _background(stack, notifier.run(), "systemd notify")
        stack.callback(notifier.stopping)
        await engine.run()
        finished = engine.all_done() or scope.done()
        if deliverer is not None and engine.exit_when_done and finished:
            await deliverer.wait_drained(EXIT_DRAIN_TIMEOUT)
        outcomes = await scope.outcomes(settings, store) if engine.exit_when_done else []
    _log_summary(engine)
    if not engine.exit_when_done:
        return 0
    code = 1 if scope.auth_gave_up else engine.exit_code(task_id for task_id, _, _ in outcomes)
    _log_outcomes(outcomes, code)
    return code


def _background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> None:
    """Run `work` as a task that the exit stack cancels and awaits."""
    task = asyncio.create_task(work, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)


async def _stop_deliverer(deliverer: Deliverer, delivering: asyncio.Task[None]) -> None:
    await deliverer.stop()
    await delivering


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop,
    engine: Engine,
    task_file: TaskFileSource | None,
    notifier: SystemdNotifier,
) -> None:
    def on_stop(signame: str) -> None:
        # Stop first: a stop signal must stop even if telling anyone about it fails.
        engine.stop()
        notifier.stopping()
        log.info("daemon.stopping", signal=signame)

    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        if task_file is None:
            log.info("daemon.sighup", detail="no watch.task_file configured")
            return
        # Read and parsed off the loop; the task is kept referenced until it finishes.
        reloading = loop.create_task(task_file.reload(force=True), name="task file reload")
        reloads.add(reloading)
        reloading.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(signum)


def _log_summary(engine: Engine) -> None:
    outcomes: dict[str, int] = {}
    for task in engine.tasks.values():
        key = task.end_reason or "unfinished"
        outcomes[key] = outcomes.get(key, 0) + 1
    log.info(
        "daemon.stopped",
        polls=engine.stats.polls_started,
        failed_polls=engine.stats.polls_failed,
        **{f"tasks_{key}": count for key, count in sorted(outcomes.items())},
    )


class _ExitScope:
    """The tasks an `--exit-when-done` run answers for, and when it is done with them."""

    def __init__(self, only_tasks: Collection[str] | None) -> None:
        self.only = list(dict.fromkeys(only_tasks)) if only_tasks else None
        self.engine: Engine | None = None
        self.ended_here: dict[str, None] = {}
        """Tasks whose watch ended in this run (ordered), also once the table forgot them."""
        self.auth_gave_up = False

    def wrap(self, sink: EventSink) -> EventSink:
        """`sink`, after noting the outcome of every watch that ends."""

        async def noting(event: TaskEvent) -> None:
            engine = self.engine
            task = engine.tasks.get(event.task_id) if engine is not None else None
            if engine is not None and task is not None and task.ended:
                # Remembered beyond the table's retention, which may drop it before the end.
                engine.mark_ended({task.task_id: task.end_reason})
                self.ended_here[task.task_id] = None
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


async def _give_up_on_auth(
    engine: Engine, clock: Clock, settings: Settings, scope: _ExitScope
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


def _log_outcomes(outcomes: list[tuple[str, str | None, str | None]], code: int) -> None:
    counts: dict[str, int] = {}
    for task_id, outcome, ended_at in outcomes:
        shown = outcome or "unfinished"
        counts[shown] = counts.get(shown, 0) + 1
        report = log.info if outcome == "success" else log.warning
        report("run.task_outcome", task_id=task_id, outcome=shown, ended_at=ended_at)
    report = log.info if code == 0 else log.warning
    report("run.outcome", exit_code=code, tasks=len(outcomes), **dict(sorted(counts.items())))
