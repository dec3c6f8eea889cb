"""Prometheus metrics (see docs/metrics.md): collectors over the task table and the resource
rows, plus the daemon's own counters.

Per-task series (`cbr_watcher_task_*`) and the `cbr_watcher_tasks{status}` gauge are built on
every scrape from one snapshot of the engine's task table: no per-task label children to create
or delete, and a task's series disappear by themselves `metrics.retention` after it ended. The
snapshot is taken on the event loop (cheap: references, or one cached tuple per task); turning
it into text runs in a worker thread (see `watcher.observe.server`), because 10,000 tasks make
~100,000 lines. `Metrics.render` writes those families itself, reusing each task's lines until
the task changes, and leaves the rest to prometheus_client's encoder. The per-resource
freshness series (`cbr_watcher_resource_*`) work the same way.

Everything else is directly instrumented and fed from three places: the engine's events
(`on_event`, subscribed to the engine, or `record_event`), the CBR client's request observer
(`observe_request`), and small methods that the webhook deliverer, the authenticator and the
state store call (`webhook_*`, `set_queue_depth`, `set_receiver_disabled`, `register_receivers`,
`set_token_expiry`, `restore_last_success`, `restore_resources`).

Modules: `constants` (label values, buckets), `text` (escaping, headers), `instruments` (the
fed metrics), `accounting` (what an ended watch adds), `task_rows` (which tasks a scrape
exports), `task_render` and `resources` (the hand-written families), `collectors`
(prometheus_client collectors that read at scrape time), `exporter` (`Metrics`).
"""

from watcher.observe.metrics.constants import (
    AGGREGATE_STATUSES,
    API_CODES,
    DURATION_BUCKETS,
    EXPIRED,
    FINISHED_STATUSES,
    INFO_LABELS,
    NOT_FOUND,
    PREFIX,
    RESOURCE_LABELS,
    TASK_STATUSES,
    UNKNOWN,
    WEBHOOK_OUTCOMES,
    WEBHOOK_RESULTS,
)
from watcher.observe.metrics.exporter import Metrics
from watcher.observe.metrics.resources import ResourceBook
from watcher.observe.metrics.task_rows import (
    TaskRow,
    TaskSnapshot,
    TaskTable,
    TaskView,
    task_status_label,
)
from watcher.observe.metrics.text import info_labels

__all__ = [
    "AGGREGATE_STATUSES",
    "API_CODES",
    "DURATION_BUCKETS",
    "EXPIRED",
    "FINISHED_STATUSES",
    "INFO_LABELS",
    "NOT_FOUND",
    "PREFIX",
    "RESOURCE_LABELS",
    "TASK_STATUSES",
    "UNKNOWN",
    "WEBHOOK_OUTCOMES",
    "WEBHOOK_RESULTS",
    "Metrics",
    "ResourceBook",
    "TaskRow",
    "TaskSnapshot",
    "TaskTable",
    "TaskView",
    "info_labels",
    "task_status_label",
]
