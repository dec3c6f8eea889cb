"""The fixed vocabulary of the metrics (see docs/metrics.md): name prefix, label values that
always exist, and histogram buckets."""

from __future__ import annotations

from watcher.cbr.client import LIST, SHOW
from watcher.cbr.models import TERMINAL_STATUSES

PREFIX = "cbr_watcher_"
EOF = b"# EOF\n"

TASK_STATUSES = ("waiting", "running", "success", "failed", "skipped", "timeout")
"""Every per-task status series exists for these; another status gets a series of its own."""
UNKNOWN = "unknown"
"""Status of a task not answered yet; operation type when CBR did not say."""
NOT_FOUND = "not_found"
EXPIRED = "expired"
"""Statuses of watches that ended without a CBR terminal status (watch.* events)."""
AGGREGATE_STATUSES = (*TASK_STATUSES, UNKNOWN, NOT_FOUND, EXPIRED)
"""`cbr_watcher_tasks{status}` always has these, at 0 when no task is in that state."""

PRECREATED_OPERATION_TYPES = ("backup", "replication", "restore")
"""Operation types whose finished counters and duration histograms start at 0."""
FINISHED_STATUSES = (*sorted(TERMINAL_STATUSES), EXPIRED)

API_OPERATIONS = (SHOW, LIST)
API_CODES = (
    "200",
    "401",
    "403",
    "404",
    "429",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "connection",
    "malformed",
    "internal",
)
"""Request outcomes pre-created at 0; other HTTP codes appear when they first happen."""

WEBHOOK_OUTCOMES = ("delivered", "dead_lettered")
WEBHOOK_RESULTS = (
    "success",
    "redirect",
    "client_error",
    "gone",
    "throttled",
    "server_error",
    "timeout",
    "connection_error",
    "other",
)
"""`result` of one webhook attempt; anything else is counted as "other"."""

HEARTBEAT_RESULTS = ("ok", "fail_sent", "error")
"""`result` of one heartbeat ping: accepted while healthy, accepted at `<url>/fail`, or not
accepted (no answer, a non-2xx, a redirect, an unreadable url_file)."""

HOUR = 3600.0
DURATION_BUCKETS = (
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    4 * HOUR,
    6 * HOUR,
    8 * HOUR,
    12 * HOUR,
    16 * HOUR,
    24 * HOUR,
    36 * HOUR,
    48 * HOUR,
)
"""Task durations: seconds to two days (hours-long backups, the 48 h default deadline)."""
DETECTION_DELAY_BUCKETS = (
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    HOUR,
)
API_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WEBHOOK_LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    HOUR,
    4 * HOUR,
    12 * HOUR,
    24 * HOUR,
    72 * HOUR,
)
"""Event created → acknowledged, retries included (a receiver may be down for hours)."""

INFO_LABELS = (
    "operation_type",
    "vault_id",
    "vault_name",
    "resource_id",
    "resource_name",
    "resource_type",
)
"""Labels of `cbr_watcher_task_info` besides task_id, in the order `TaskRow.info` has them."""
RESOURCE_LABELS = ("resource_id", "resource_name", "resource_type", "vault_id", "operation_type")
"""Labels of the per-resource freshness families."""
