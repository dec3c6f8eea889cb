"""The directly instrumented metrics: counters, gauges and histograms the daemon feeds."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from watcher.coverage.inventory import PROBLEM_KINDS
from watcher.observe.metrics.constants import (
    API_CODES,
    API_DURATION_BUCKETS,
    API_OPERATIONS,
    DETECTION_DELAY_BUCKETS,
    DURATION_BUCKETS,
    FINISHED_STATUSES,
    NOT_FOUND,
    PRECREATED_OPERATION_TYPES,
    PREFIX,
    UNKNOWN,
    WEBHOOK_LATENCY_BUCKETS,
)


class Instruments:
    """Every fed metric, registered in `registry`; counters and histograms with a small label
    set start at 0."""

    def __init__(self, registry: CollectorRegistry, *, version: str, process_metrics: bool) -> None:
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

        self.build_info = Info(
            PREFIX + "build", "The running cbr-watcher version; always 1.", registry=registry
        )
        self.build_info.info({"version": version})

        self.tasks_finished = Counter(
            PREFIX + "tasks_finished",
            "Watches ended, by final status (CBR's, or not_found/expired when the watcher gave "
            "up) and operation type.",
            ["status", "operation_type"],
            registry=registry,
        )
        self.task_duration = Histogram(
            PREFIX + "task_duration_seconds",
            "How long finished tasks ran: CBR's started_at to ended_at, else what the watcher saw.",
            ["operation_type"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.detection_delay = Histogram(
            PREFIX + "detection_delay_seconds",
            "Seconds from CBR's ended_at to the watcher noticing the terminal status.",
            buckets=DETECTION_DELAY_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "When a task of this operation type last ended in success, in seconds since the "
            "epoch (restored from the state database at start-up).",
            ["operation_type"],
            registry=registry,
        )
        self.api_requests = Counter(
            PREFIX + "api_requests",
            "Requests to the CBR API by operation and outcome (HTTP status, or timeout, "
            "connection, malformed, tls, credentials).",
            ["operation", "code"],
            registry=registry,
        )
        self.api_request_duration = Histogram(
            PREFIX + "api_request_duration_seconds",
            "Duration of requests to the CBR API.",
            ["operation"],
            buckets=API_DURATION_BUCKETS,
            registry=registry,
        )
        self.api_throttled = Counter(
            PREFIX + "api_throttled",
            "Requests the CBR API answered with 429 (throttled).",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            PREFIX + "webhook_deliveries",
            "Events that left the webhook outbox, by receiver and outcome (delivered, "
            "dead_lettered).",
            ["receiver", "outcome"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            PREFIX + "webhook_attempts",
            "Webhook HTTP attempts by receiver and result (success, redirect, client_error, "
            "gone, throttled, server_error, timeout, connection_error, other).",
            ["receiver", "result"],
            registry=registry,
        )
        self.webhook_latency = Histogram(
            PREFIX + "webhook_delivery_latency_seconds",
            "Seconds from an event's creation to its delivery, retries included.",
            ["receiver"],
            buckets=WEBHOOK_LATENCY_BUCKETS,
            registry=registry,
        )
        self.webhook_queue_depth = Gauge(
            PREFIX + "webhook_queue_depth",
            "Events waiting in the outbox for this receiver.",
            ["receiver"],
            registry=registry,
        )
        self.webhook_receiver_disabled = Gauge(
            PREFIX + "webhook_receiver_disabled",
            "1 when the receiver answered 410 Gone and is disabled until restart.",
            ["receiver"],
            registry=registry,
        )
        # Registered only by a daemon with a heartbeat: see `Metrics.heartbeat_configured`.
        self.heartbeat_pings = Counter(
            PREFIX + "heartbeat_pings",
            "Heartbeat pings by result: ok (the URL accepted a healthy ping), fail_sent "
            "(<url>/fail accepted an unhealthy one), error (no 2xx answer).",
            ["result"],
            registry=None,
        )
        self.heartbeat_last_success = Gauge(
            PREFIX + "heartbeat_last_success_timestamp_seconds",
            "When the heartbeat URL last accepted a healthy ping, in seconds since the epoch; "
            "0 until it first did.",
            registry=None,
        )
        self.token_expiry = Gauge(
            PREFIX + "auth_token_expiry_timestamp_seconds",
            "When the current IAM token expires, in seconds since the epoch; 0 when unknown "
            "(a static token).",
            registry=registry,
        )
        self.task_series_dropped = Counter(
            PREFIX + "task_series_dropped",
            "Tasks left out of the per-task series because metrics.max_task_series was reached "
            "(each task counted once).",
            registry=registry,
        )
        self.resource_series_dropped = Counter(
            PREFIX + "resource_series_dropped",
            "Resources left out of the per-resource series because metrics.max_task_series "
            "resources already have series (each resource counted once).",
            registry=registry,
        )
        self.inventory_skipped = Counter(
            PREFIX + "inventory_entries_skipped",
            "Inventory entries left out because they could not be read or used, by kind "
            "(vault, resource, policy, schedule, backup); each counted once.",
            ["kind"],
            registry=registry,
        )
        self._precreate()

    def _precreate(self) -> None:
        for kind in PROBLEM_KINDS:
            self.inventory_skipped.labels(kind)
        for op_type in PRECREATED_OPERATION_TYPES:
            for status in FINISHED_STATUSES:
                self.tasks_finished.labels(status, op_type)
            self.task_duration.labels(op_type)
        self.tasks_finished.labels(NOT_FOUND, UNKNOWN)
        for operation in API_OPERATIONS:
            for code in API_CODES:
                self.api_requests.labels(operation, code)
            self.api_request_duration.labels(operation)
