"""`Metrics`: every cbr-watcher metric of one daemon, and the methods that feed them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from watcher import __version__
from watcher.clock import Clock
from watcher.coverage.freshness import ResourceStatus, from_event
from watcher.coverage.view import CoverageView
from watcher.engine.events import TaskEvent
from watcher.engine.schedule import Reason
from watcher.engine.stats import INTERNAL_COMPONENTS, LIST_COMPONENTS
from watcher.observe.metrics.accounting import account_finished
from watcher.observe.metrics.collectors import EngineCounter
from watcher.observe.metrics.constants import (
    EOF,
    HEARTBEAT_RESULTS,
    PREFIX,
    WEBHOOK_OUTCOMES,
    WEBHOOK_RESULTS,
)
from watcher.observe.metrics.coverage import CoverageRenderer
from watcher.observe.metrics.instruments import Instruments
from watcher.observe.metrics.resources import ResourceBook, ResourceRenderer
from watcher.observe.metrics.task_render import TaskRenderer
from watcher.observe.metrics.task_rows import TaskSelector, TaskSnapshot, TaskTable
from watcher.safetext import clean

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class CoverageSource(Protocol):
    """What the coverage families are read from (`watcher.coverage.coverage.Coverage`)."""

    def view(self, now: float) -> CoverageView:
        """The coverage rows at `now`."""
        ...


class Metrics(Instruments):
    """Every cbr-watcher metric, in a registry of its own (one per daemon, so tests can build
    several). `attach` the engine before the first scrape."""

    def __init__(
        self,
        *,
        clock: Clock,
        retention: float = 900.0,
        max_task_series: int = 10_000,
        version: str = __version__,
        process_metrics: bool = True,
    ) -> None:
        self._clock = clock
        self._table: TaskTable | None = None
        self._last_success: dict[str, float] = {}
        self._heartbeat_registered = False
        self._base = CollectorRegistry()
        super().__init__(self._base, version=version, process_metrics=process_metrics)
        self._selector = TaskSelector(
            retention=retention, max_series=max_task_series, on_dropped=self.task_series_dropped.inc
        )
        self._resources = ResourceBook(
            max_series=max_task_series, on_dropped=self.resource_series_dropped.inc
        )
        self._base.register(
            EngineCounter(
                self,
                name=PREFIX + "internal_errors",
                documentation="Unexpected exceptions cbr-watcher survived, by component (poll, "
                "store, events, engine): each one was logged and its work retried.",
                label="component",
                keys=INTERNAL_COMPONENTS,
                read=lambda stats: stats.internal_errors,
            )
        )
        self._base.register(
            EngineCounter(
                self,
                name=PREFIX + "polls",
                documentation="Looks scheduled, by the reason for their delay (progress, "
                "estimate, approach, near_end, overdue, stalled, changed, unchanged, error, "
                "throttled, retry_after, auth_retry, not_found, deadline, first, sweep, "
                "handed_back).",
                label="reason",
                keys=map(str, Reason),
                read=lambda stats: stats.poll_reasons,
            )
        )
        self._base.register(
            EngineCounter(
                self,
                name=PREFIX + "list_refused",
                documentation="ListOpLogs calls the cloud refused with 403 (the credentials may "
                "not list), by who listed: refresh (tasks fall back to one ShowOpLog each) or "
                "discovery (no new tasks are found). Retried hourly.",
                label="component",
                keys=LIST_COMPONENTS,
                read=lambda stats: stats.list_refused,
            )
        )
        self._base.register(
            EngineCounter(
                self,
                name=PREFIX + "list_entries_unreadable",
                documentation="ListOpLogs entries that could not be read, by who listed; each "
                "spoils only its own entry (that task is confirmed with a ShowOpLog).",
                label="component",
                keys=LIST_COMPONENTS,
                read=lambda stats: stats.list_malformed,
            )
        )
        self._task_renderer = TaskRenderer()
        self._resource_renderer = ResourceRenderer()
        self._coverage: CoverageSource | None = None
        self._coverage_renderer = CoverageRenderer()

    @property
    def retention(self) -> float:
        """Seconds a task's series stay after it ended."""
        return self._selector.retention

    @property
    def max_task_series(self) -> int:
        """The cap on exported tasks, and on exported resources."""
        return self._selector.max_series

    # ---- the task table ----------------------------------------------------------------------

    def attach(self, table: TaskTable) -> None:
        """Read per-task series from `table` (the engine) from now on."""
        self._table = table

    @property
    def table(self) -> TaskTable | None:
        """The attached engine, if any."""
        return self._table

    def attach_coverage(self, source: CoverageSource) -> None:
        """Export the coverage families from `source` from now on."""
        self._coverage = source

    def snapshot(self) -> TaskSnapshot:
        """Copy what one scrape exports out of the task table, the resource rows and the
        coverage view. Call it on the event loop: that is where they change, so the copy is
        consistent."""
        wall = self._clock.wall()
        coverage = self._coverage.view(wall) if self._coverage is not None else None
        return self._selector.capture(self._table, wall, self._resources.rows(), coverage)

    def render(self, accept: str = "", snapshot: TaskSnapshot | None = None) -> tuple[bytes, str]:
        """(body, content type) for an `Accept` header: OpenMetrics when asked, else text 0.0.4.

        With `snapshot` this is safe in a worker thread; without, call it on the loop.
        """
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        if snapshot is None:
            snapshot = self.snapshot()
        snapshot = self._selector.prepare(snapshot)
        tasks = self._task_renderer.render(snapshot, openmetrics=openmetrics)
        resources = self._resource_renderer.render(snapshot.resources, openmetrics=openmetrics)
        coverage = self._coverage_renderer.render(
            snapshot.coverage, snapshot.resources, openmetrics=openmetrics
        )
        rest = encoder(self._base)
        if openmetrics:
            rest = rest.removesuffix(EOF)
            return b"".join((rest, tasks, resources, coverage, EOF)), content_type
        return b"".join((rest, tasks, resources, coverage)), content_type

    # ---- engine events ------------------------------------------------------------------------

    async def on_event(self, event: TaskEvent) -> None:
        """An EventSink for `Engine.subscribe`: `record_event`."""
        self.record_event(event)

    def record_event(self, event: TaskEvent) -> None:
        """Account for one engine event: a watch that ended is counted, its duration and
        detection delay observed, and its resource's freshness updated."""
        success = account_finished(self, event)
        if success is not None:
            self.restore_last_success(success.operation_type, success.ended)
        freshness = from_event(event)
        if freshness is not None:
            self._resources.record(freshness)

    def restore_last_success(self, operation_type: str, timestamp: float) -> None:
        """Seed `cbr_watcher_last_success_timestamp_seconds` (e.g. from the state database at
        start-up); it only ever moves forward."""
        operation_type = clean(operation_type)
        if timestamp > self._last_success.get(operation_type, float("-inf")):
            self._last_success[operation_type] = timestamp
            self.last_success.labels(operation_type).set(timestamp)

    def restore_resources(self, rows: Iterable[ResourceStatus]) -> None:
        """Seed the per-resource freshness series (from the state database at start-up).
        Merged with what is known by the same rules as finished tasks, so the order of
        restoring and recording does not matter."""
        self._resources.restore(rows)

    # ---- coverage (a `watcher.coverage.coverage.CoverageObserver`) ---------------------------

    def seed_resource(self, status: ResourceStatus) -> None:
        """A resource's last success, learned from its newest backup (no last status)."""
        self._resources.record(status)

    def retain_resources(self, keep: Callable[[ResourceStatus], bool]) -> list[str]:
        """Drop the freshness rows `keep` refuses; returns their resource IDs."""
        return self._resources.retain(keep)

    def count_inventory_skipped(self, kind: str) -> None:
        """One inventory entry left out, of `kind`."""
        self.inventory_skipped.labels(kind).inc()

    def count_resources_dropped(self, count: int) -> None:
        """Protected resources newly left out of the coverage series by the cap."""
        self.resource_series_dropped.inc(count)

    # ---- CBR client -------------------------------------------------------------------------

    def observe_request(self, operation: str, code: str, duration: float) -> None:
        """A `watcher.cbr.client.RequestObserver`: count and time one CBR request."""
        self.api_requests.labels(operation, code).inc()
        self.api_request_duration.labels(operation).observe(max(0.0, duration))
        if code == "429":
            self.api_throttled.inc()

    # ---- webhook deliverer (a `watcher.delivery.webhooks.DeliveryObserver`) -----------------

    def register_receivers(self, names: Iterable[str]) -> None:
        """Create every webhook series of these receivers at 0."""
        for name in names:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhook_deliveries.labels(name, outcome)
            for result in WEBHOOK_RESULTS:
                self.webhook_attempts.labels(name, result)
            self.webhook_latency.labels(name)
            self.webhook_queue_depth.labels(name).set(0)
            self.webhook_receiver_disabled.labels(name).set(0)

    def webhook_attempt(self, receiver: str, result: str) -> None:
        """One HTTP attempt to `receiver` finished with `result` (see WEBHOOK_RESULTS)."""
        if result not in WEBHOOK_RESULTS:
            result = "other"
        self.webhook_attempts.labels(receiver, result).inc()

    def webhook_delivered(self, receiver: str, outcome: str, latency: float) -> None:
        """An event left the outbox: outcome "delivered" (latency observed) or "dead_lettered"."""
        self.webhook_deliveries.labels(receiver, outcome).inc()
        if outcome == "delivered":
            self.webhook_latency.labels(receiver).observe(max(0.0, latency))

    def set_queue_depth(self, receiver: str, depth: int) -> None:
        """Events waiting in the outbox for `receiver`."""
        self.webhook_queue_depth.labels(receiver).set(depth)

    def set_receiver_disabled(self, receiver: str, disabled: bool) -> None:
        """Whether `receiver` was disabled (410 Gone)."""
        self.webhook_receiver_disabled.labels(receiver).set(1 if disabled else 0)

    # ---- heartbeat (a `watcher.delivery.heartbeat.HeartbeatObserver`) -----------------------

    def heartbeat_configured(self) -> None:
        """Export the heartbeat metrics, counters at 0: only a daemon with a heartbeat has them."""
        if self._heartbeat_registered:
            return
        self._heartbeat_registered = True
        self._base.register(self.heartbeat_pings)
        self._base.register(self.heartbeat_last_success)
        for result in HEARTBEAT_RESULTS:
            self.heartbeat_pings.labels(result)

    def heartbeat_pinged(self, result: str, at: float) -> None:
        """One ping ended with `result` (see HEARTBEAT_RESULTS) at `at` (epoch seconds)."""
        self.heartbeat_pings.labels(result if result in HEARTBEAT_RESULTS else "error").inc()
        if result == "ok":
            self.heartbeat_last_success.set(at)

    # ---- authentication ---------------------------------------------------------------------

    def set_token_expiry(self, timestamp: float | None) -> None:
        """When the current IAM token expires (epoch seconds); None when unknown."""
        self.token_expiry.set(timestamp or 0.0)
