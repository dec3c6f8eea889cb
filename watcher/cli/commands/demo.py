"""`cbr-watcher demo`: the simulator and the daemon in one process, on accelerated time.

Ten simulated CBR tasks (backups, a restore, a replication, a sync, deletions) with every
terminal status, a task that is not visible at first, a mistyped ID, and injected 5xx, 429 and
malformed answers; plus a backup policy that starts backups of two servers nobody names, which
discovery finds through ListOpLogs. Coverage is on: the scenario's vaults hold a server no
policy protects and that was never backed up, and a daily policy (its RRULE names the minute
after the start) that skips one server, which the daemon reports as `backup.missed`. The demo
prints each event as the engine emits it and ends with a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from watcher.cli.daemon import DaemonHandle, run_daemon
from watcher.clock import ScaledClock
from watcher.config import load_settings
from watcher.delivery.receiver import DemoReceiver
from watcher.engine.engine import Engine
from watcher.engine.events import TASK_FAILED, TASK_PROGRESS, TaskEvent
from watcher.observe.logs import configure_logging
from watcher.sim import PolicySpec, Simulator
from watcher.sim.policies import PolicySkip
from watcher.sim.scenario import builtin_scenario

MISTYPED_TASK_ID = "backup-ecs-0O11"
"""Not in the scenario: shows how a wrong ID ends (watch.not_found after the grace)."""
POLICY = PolicySpec(
    id="policy-nightly",
    resources=2,
    every=86_400.0,
    first=20.0,
    spread=40.0,
    duration=150.0,
    duration_sigma=0.0,
    waiting=5.0,
    runs=1,
)
"""A backup policy: its backups are started by CBR, and only discovery can find them."""
COVERAGE_GRACE = 120.0
"""`coverage.schedule_grace` in the demo: a start is missed two simulated minutes after it."""
SKIPPED_RESOURCE = "app-02"


def coverage_policy(start_wall: float) -> PolicySpec:
    """A daily backup of the scenario's `vault-app` at the first whole minute at least 45 s
    after the start (UTC), whose first run skips SKIPPED_RESOURCE: a missed backup."""
    at = datetime.fromtimestamp(math.ceil((start_wall + 45) / 60) * 60, UTC)
    return PolicySpec(
        id="policy-app-daily",
        name="app daily",
        pattern=(f"FREQ=DAILY;BYHOUR={at.hour};BYMINUTE={at.minute}",),
        vaults=("vault-app",),
        skip=(PolicySkip(SKIPPED_RESOURCE, run=0),),
        duration=90.0,
        duration_sigma=0.0,
        waiting=5.0,
    )


@dataclass
class DemoReport:
    """What the demo saw, for the live lines and the final summary."""

    clock: ScaledClock
    start_wall: float
    out: TextIO
    events: list[TaskEvent] = field(default_factory=list)
    receiver: DemoReceiver | None = None
    progress: dict[str, int | None] = field(default_factory=dict)

    def since_start(self, wall: float) -> str:
        """mm:ss of simulated time since the demo began."""
        seconds = max(0, round(wall - self.start_wall))
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    async def on_event(self, event: TaskEvent) -> None:
        """Print a line for every event except progress, which `progress_line` summarises."""
        self.events.append(event)
        if event.type == TASK_PROGRESS:
            self.progress[event.task_id] = event.progress
            return
        if event.ends_watch:
            self.progress.pop(event.task_id, None)
        elif event.progress is not None:
            self.progress[event.task_id] = event.progress
        progress = "" if event.progress is None else f"{event.progress:3d}%"
        detail = ""
        if event.type == TASK_FAILED and event.operation_log and event.operation_log.error:
            detail = "  " + ": ".join(event.operation_log.error)
        elif event.detail:
            detail = f"  ({event.detail})"
        self.out.write(
            f"  {self.since_start(event.occurred_at)}  {event.task_id:<18} "
            f"{event.type:<16} {event.status or '-':<8} {progress}{detail}\n"
        )
        self.out.flush()

    def progress_line(self) -> None:
        """One line with the progress of every running task."""
        running = [
            f"{task_id} {progress}%" for task_id, progress in self.progress.items() if progress
        ]
        if running:
            self.out.write(
                f"  {self.since_start(self.clock.wall())}  running: {', '.join(running)}\n"
            )
            self.out.flush()

    async def follow_progress(self, every: float) -> None:
        """Print `progress_line` every `every` simulated seconds, forever."""
        while True:
            await self.clock.sleep(every)
            self.progress_line()


async def run_demo(*, speed: float = 20.0, out: TextIO | None = None) -> int:
    """Run the demo to completion and print its summary; returns 0."""
    stream = out or sys.stdout
    # The event lines tell the story; log lines would repeat them.
    configure_logging(level="error", fmt="console", stream=sys.stderr)
    clock = ScaledClock(speed)
    scenario = builtin_scenario("demo")
    sim = scenario.build(clock)
    report = DemoReport(clock=clock, start_wall=clock.wall(), out=stream)
    task_ids = [*sim.tasks, MISTYPED_TASK_ID]
    sim.add_policy(POLICY)
    sim.add_policy(coverage_policy(clock.wall()))
    handles: list[DaemonHandle] = []

    def on_started(handle: DaemonHandle) -> None:
        handles.append(handle)
        stream.write(f"  metrics: {handle.metrics_url}/metrics  (health: /healthz, /readyz)\n\n")
        stream.flush()

    async with sim.running() as base_url, DemoReceiver(clock) as receiver:
        report.receiver = receiver
        settings = load_settings(
            overrides={
                "cbr": {"endpoint": base_url, "project_id": sim.project_id},
                "auth": {"method": "token", "token": scenario.tokens[0]},
                "watch": {
                    "tasks": task_ids,
                    "not_found_grace": "2m",
                    "deadline": "1h",
                    "exit_when_done": True,
                    "discover": [
                        {"operation_type": ["backup"], "labels": {"found_by": "discovery"}}
                    ],
                    "discover_interval": "15s",
                },
                "coverage": {
                    "enabled": True,
                    "interval": "1m",
                    "schedule_grace": f"{COVERAGE_GRACE:g}s",
                },
                "log": {"level": "error", "format": "console"},
                "state": {"path": ":memory:"},
                "server": {"listen": "127.0.0.1:0", "api_listen": ""},
                "webhooks": [
                    {
                        "name": "demo-receiver",
                        "url": receiver.url,
                        "secret": receiver.secret,
                        "events": ["task.*", "watch.*", "backup.*"],
                        # Simulated time runs fast; keep a slow real answer from looking lost.
                        "timeout": f"{max(15.0, speed * 2):g}s",
                    }
                ],
            },
            environ={},
            secrets_dirs=[],
        )
        stream.write(
            f"cbr-watcher demo: {len(task_ids)} named tasks and a backup policy nobody named, "
            f"simulated CBR at {base_url}, time running {speed:g}x faster "
            "(times below are simulated mm:ss)\n"
        )
        ticker = asyncio.create_task(report.follow_progress(30.0))
        try:
            await run_daemon(settings, clock=clock, on_event=report.on_event, started=on_started)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    _print_summary(report, sim, handles[0].engine)
    _print_coverage(report, handles[0])
    _print_metrics(report.out, handles[0])
    return 0


def _print_summary(report: DemoReport, sim: Simulator, engine: Engine) -> None:
    out = report.out
    by_task = {e.task_id: e for e in report.events if e.ends_watch}
    width = max([20, *(len(task_id) for task_id in engine.tasks)])
    out.write("\nSummary\n")
    out.write(
        f"  {'task':<{width}} {'type':<13} {'outcome':<16} {'CBR ended':>9} {'detected':>9} "
        f"{'delay':>6} {'polls':>6} {'webhooks':>9}\n"
    )
    hooks: dict[str, list[bool]] = {}
    for hook in report.receiver.received if report.receiver else []:
        hooks.setdefault(hook.task_id or "", []).append(hook.verified)
    for task_id, task in engine.tasks.items():
        event = by_task.get(task_id)
        log = task.operation_log
        op_type = (log.operation_type if log else None) or "-"
        outcome = event.type if event else "unfinished"
        ended = log.ended_at.timestamp() if log is not None and log.ended_at else None
        detected = event.occurred_at if event else None
        delay = f"{detected - ended:.0f}s" if detected is not None and ended is not None else "-"
        out.write(
            f"  {task_id:<{width}} {op_type:<13} {outcome:<16} "
            f"{report.since_start(ended) if ended else '-':>9} "
            f"{report.since_start(detected) if detected else '-':>9} "
            f"{delay:>6} {sim.request_count(task_id):>6} {_hooks_cell(hooks.get(task_id, [])):>9}\n"
        )
    stats = engine.stats
    lags = sorted(stats.lag_samples)
    p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
    out.write(
        f"\n  {stats.polls_started} polls ({stats.polls_failed} answered with an error and "
        f"retried) and {stats.list_pages} list pages that refreshed {stats.list_refreshed} "
        f"task answers; budget {engine.budget.rate:g} requests per simulated second; "
        f"p99 scheduling lag {p99:.2f} simulated s\n"
    )
    found = {tid: task for tid, task in engine.tasks.items() if task.source == "discover"}
    policies = sorted(
        {str(t.operation_log.raw.get("policy_id")) for t in found.values() if t.operation_log}
    )
    out.write(
        f"  Discovery found {len(found)} task(s) nobody named, started by backup policies "
        f"{', '.join(map(repr, policies)) or 'none'}: {', '.join(found) or 'none'} "
        "(labels found_by=discovery).\n"
    )
    if report.receiver is not None:
        received = report.receiver.received
        events = {hook.webhook_id for hook in received}
        good = {hook.webhook_id for hook in received if hook.verified}
        out.write(
            f"  Webhooks: the local receiver at {report.receiver.url} got {len(events)} "
            f"events, {len(good)} with a valid Standard Webhooks signature (HMAC-SHA256)"
            + (
                f", {report.receiver.duplicates} duplicate(s) dropped by webhook-id"
                if report.receiver.duplicates
                else ""
            )
            + ".\n"
        )
    out.write(
        "  Failed tasks show CBR's error in the task.failed event; watch.not_found is the "
        f"mistyped ID {MISTYPED_TASK_ID!r}.\n"
    )
    out.flush()


def _print_coverage(report: DemoReport, handle: DaemonHandle) -> None:
    """What the inventory showed: protected resources, never backed up, missed backups."""
    coverage = handle.coverage
    if coverage is None or coverage.inventory is None:
        report.out.write("  Coverage: no inventory completed.\n")
        return
    body, _ = handle.metrics.render()
    never: list[str] = []
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "cbr_watcher_resource_never_backed_up" and sample.value == 1:
                never.append(sample.labels["resource_id"])
    inventory = coverage.inventory
    names = {r.id: r.name or r.id for r in inventory.resources.values()}
    hooks = [h for h in (report.receiver.received if report.receiver else [])]
    missed_hooks = {h.webhook_id for h in hooks if h.event_type == "backup.missed"}
    missed = sorted(coverage.announced, key=lambda key: key[1])
    missed_text = ", ".join(
        f"{names.get(resource_id, resource_id)} (scheduled {report.since_start(at)})"
        for resource_id, at in missed
    )
    report.out.write(
        f"  Coverage: {len(inventory.resources)} protected resources in "
        f"{len(inventory.vault_ids)} vaults, {coverage.inventories} inventories; never backed "
        f"up: {', '.join(sorted(names.get(r, r) for r in never)) or 'none'}; missed backups: "
        f"{missed_text or 'none'} (backup.missed, {len(missed_hooks)} webhook(s) received).\n"
    )
    report.out.flush()


def _print_metrics(out: TextIO, handle: DaemonHandle) -> None:
    """Where metrics were served, and what the last scrape said about finished tasks."""
    body, _ = handle.metrics.render()
    series = 0
    finished: dict[str, int] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            series += 1
            if sample.name == "cbr_watcher_tasks_finished_total" and sample.value:
                status = sample.labels["status"]
                finished[status] = finished.get(status, 0) + int(sample.value)
    counts = ", ".join(f"{status} {count}" for status, count in sorted(finished.items()))
    out.write(
        f"  Metrics were served at {handle.metrics_url}/metrics ({series} series at the end); "
        f"cbr_watcher_tasks_finished_total by status: {counts or 'none'}.\n"
    )
    out.flush()


def _hooks_cell(verified: list[bool]) -> str:
    """'2 signed' when every signature checked out, else how many did."""
    if not verified:
        return "-"
    good = sum(verified)
    return f"{good} signed" if good == len(verified) else f"{good}/{len(verified)} ok"
