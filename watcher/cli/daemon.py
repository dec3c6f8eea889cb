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

from watcher.cbr.client import CbrClient
from watcher.cli.gc_tuning import GcTuner
from watcher.cli.outcome import RunScope, give_up_on_auth, log_outcomes
from watcher.cli.restore import restore
from watcher.cli.wiring import build_client, build_engine, build_outbox
from watcher.clock import Clock, RealClock
from watcher.config import Settings
from watcher.coverage.coverage import Coverage
from watcher.delivery.heartbeat import Heartbeat, watcher_health
from watcher.delivery.recorder import StateRecorder
from watcher.delivery.webhooks import Deliverer, Receiver
from watcher.engine.engine import Engine
from watcher.engine.events import EventSink, discard_events
from watcher.observe.metrics import Metrics
from watcher.observe.server import Health, start_metrics_listener
from watcher.observe.systemd import SystemdNotifier
from watcher.sources.discovery import Discovery
from watcher.sources.task_api.handlers import start_task_api
from watcher.sources.task_file import TaskFileSource
from watcher.state.sqlite import Store

log = structlog.get_logger("watcher.daemon")

EXIT_DRAIN_TIMEOUT = 30.0
"""With --exit-when-done, how long to wait for webhooks before exiting (the rest stay queued)."""


@dataclass(frozen=True)
class DaemonHandle:
    """What `run_daemon(started=...)` hands over once everything listens."""

    engine: Engine
    metrics: Metrics
    health: Health
    metrics_url: str
    """Where /metrics, /healthz and /readyz are served, e.g. http://127.0.0.1:9471."""
    coverage: Coverage | None = None
    """The inventory and missed-backup checks, with `coverage.enabled`."""


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
    scope = RunScope(only_tasks)
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
        coverage = _coverage(settings, client, engine, clock, metrics, recorder, store)
        health.watch_loop(engine)
        health.check("store", lambda: engine.store_failing_since is None)

        await _restore_state(engine, store, metrics, coverage, now=clock.wall())
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
        if coverage is not None:
            _background(stack, coverage.run(), "coverage")
        if engine.exit_when_done and not engine.tasks:
            log.warning("daemon.nothing_to_watch")
        if engine.exit_when_done:
            scope.stop_if_done()
            _background(stack, give_up_on_auth(engine, clock, settings, scope), "auth timeout")
        log.info(
            "daemon.started",
            tasks=len(engine.tasks),
            endpoint=settings.cbr.effective_endpoint,
            max_requests_per_second=settings.watch.max_requests_per_second,
        )
        if started is not None:
            started(DaemonHandle(engine, metrics, health, metrics_listener.url, coverage))

        # The task table built so far is long-lived: keep full collections off it.
        gc_tuner.after_startup()
        _background(stack, gc_tuner.follow(lambda: len(engine.tasks), clock), "gc tuning")
        # READY=1 only now: configuration, restored state and listeners are all in place.
        notifier.ready()
        _background(stack, notifier.run(), "systemd notify")
        stack.callback(notifier.stopping)
        stop_heartbeat = _start_heartbeat(stack, settings, engine, health, clock, metrics)
        await engine.run()
        stop_heartbeat()  # a watcher that stopped watching is not healthy: stay silent
        finished = engine.all_done() or scope.done()
        if deliverer is not None and engine.exit_when_done and finished:
            await deliverer.wait_drained(EXIT_DRAIN_TIMEOUT)
        outcomes = await scope.outcomes(settings, store) if engine.exit_when_done else []
    _log_summary(engine)
    if not engine.exit_when_done:
        return 0
    code = scope.exit_code(outcomes)
    log_outcomes(outcomes, code)
    return code


async def _restore_state(
    engine: Engine, store: Store, metrics: Metrics, coverage: Coverage | None, *, now: float
) -> None:
    """Tasks, the restart-proof metrics and coverage's progress, from the state file."""
    await restore(engine, store, now=now)
    for operation_type, ended in (await store.last_successes()).items():
        metrics.restore_last_success(operation_type, ended)
    metrics.restore_resources(await store.resource_statuses())
    if coverage is not None:
        await coverage.restore()


def _coverage(
    settings: Settings,
    client: CbrClient,
    engine: Engine,
    clock: Clock,
    metrics: Metrics,
    recorder: StateRecorder,
    store: Store,
) -> Coverage | None:
    """With `coverage.enabled`: coverage wired to the engine's events and the metrics."""
    if not settings.coverage.enabled:
        return None
    coverage = Coverage(
        api=client,
        engine=engine,
        clock=clock,
        settings=settings.coverage,
        observer=metrics,
        record_missed=recorder.record_missed,
        store=store,
        max_series=settings.metrics.max_task_series,
    )
    engine.subscribe(coverage.on_event)
    metrics.attach_coverage(coverage)
    return coverage


def _background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> asyncio.Task[None]:
    """Run `work` as a task that the exit stack cancels and awaits."""
    task = asyncio.create_task(work, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)
    return task


def _start_heartbeat(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    engine: Engine,
    health: Health,
    clock: Clock,
    metrics: Metrics,
) -> Callable[[], object]:
    """Ping `[heartbeat]`'s URL in the background, if set (docs/coverage.md#heartbeat);
    returns what stops it."""
    if not settings.heartbeat.enabled:
        return lambda: None
    probe = watcher_health(
        engine, clock, interval=settings.heartbeat.interval, stall_after=health.stall_after
    )
    heartbeat = Heartbeat.from_settings(
        settings.heartbeat, health=probe, clock=clock, observer=metrics
    )
    return _background(stack, heartbeat.run(), "heartbeat").cancel


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
