"""Metrics (docs/metrics.md): names, types and labels, the per-task collector, retention and
the cap.

The engine runs against the simulator on a fake clock; scrapes are parsed with
prometheus_client's own parsers, so assertions are on what Prometheus would store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Running, World, make_engine, start_daemon
from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.cbr.models import OperationLog
from watcher.config import load_settings
from watcher.coverage.freshness import ResourceKey, ResourceStatus
from watcher.engine.engine import Engine, WatchedTask
from watcher.engine.events import (
    TASK_FAILED,
    TASK_PROGRESS,
    TASK_SKIPPED,
    TASK_SUCCEEDED,
    TASK_TIMED_OUT,
    WATCH_EXPIRED,
    WATCH_NOT_FOUND,
    TaskEvent,
)
from watcher.engine.schedule import Policy
from watcher.observe.metrics import (
    AGGREGATE_STATUSES,
    DURATION_BUCKETS,
    TASK_STATUSES,
    Metrics,
)
from watcher.sim import SimTaskSpec
from watcher.testing import FakeClock, drive_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str, *, openmetrics: bool = False) -> Series:
    """Every sample of a scrape (text 0.0.4, or OpenMetrics), keyed by (name, labels), as
    prometheus_client's parser of that format reads it."""
    parser = parse_openmetrics if openmetrics else text_string_to_metric_families
    series: Series = {}
    for family in parser(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in series, f"duplicate series {key}"
            series[key] = sample.value
    return series


def scrape(metrics: Metrics, accept: str = "") -> Series:
    """What a Prometheus scrape of `metrics` sees (text 0.0.4)."""
    body, content_type = metrics.render(accept)
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(body.decode())


def value(series: Series, name: str, **labels: str) -> float | None:
    """The value of one series, or None when it is absent."""
    return series.get((name, frozenset(labels.items())))


def names_with(series: Series, name: str) -> list[dict[str, str]]:
    """The label sets of every series called `name`."""
    return [dict(labels) for (n, labels) in series if n == name]


@dataclass
class Table:
    """A task table without an engine, for collector-only tests."""

    tasks: dict[str, WatchedTask] = field(default_factory=dict)

    def put(self, task: WatchedTask) -> WatchedTask:
        self.tasks[task.task_id] = task
        return task


def watched(
    task_id: str,
    *,
    status: str | None = "running",
    progress: int | None = 40,
    ended_wall: float | None = None,
    end_reason: str | None = None,
    raw: dict[str, object] | None = None,
    wall: float = 1_767_225_600.0,
) -> WatchedTask:
    """A task-table row as the engine would leave it."""
    operation_log = None
    if status is not None:
        body: dict[str, object] = {
            "id": task_id,
            "status": status,
            "operation_type": "backup",
            "vault_id": "vault-1",
            "vault_name": "vault-prod",
            "started_at": "2026-01-01T00:00:00Z",
            "extra_info": {
                "common": {"progress": progress},
                "resource": {"id": "res-1", "name": "ecs-web-01", "type": "OS::Nova::Server"},
            },
        }
        body.update(raw or {})
        operation_log = OperationLog.from_raw(body)
    return WatchedTask(
        task_id=task_id,
        labels={},
        source="config",
        added_wall=wall,
        status=status,
        progress=progress,
        operation_log=operation_log,
        started_wall=wall,
        last_progress_wall=wall + 30,
        ended_wall=ended_wall,
        end_reason=end_reason,
    )


def test_low_cardinality_counters_start_at_zero() -> None:
    """Before anything happened every aggregate series exists, at 0 (so increase() works)."""
    metrics = Metrics(clock=FakeClock(), version="1.2.3")
    metrics.register_receivers(["ops"])
    series = scrape(metrics)
    for status in ("success", "failed", "skipped", "timeout", "expired"):
        for op_type in ("backup", "replication", "restore"):
            labels = {"status": status, "operation_type": op_type}
            assert value(series, "cbr_watcher_tasks_finished_total", **labels) == 0
    assert (
        value(
            series, "cbr_watcher_tasks_finished_total", status="not_found", operation_type="unknown"
        )
        == 0
    )
    for code in ("200", "404", "429", "500", "timeout", "connection"):
        assert (
            value(series, "cbr_watcher_api_requests_total", operation="show_op_log", code=code) == 0
        )
    assert (
        value(series, "cbr_watcher_api_request_duration_seconds_count", operation="show_op_log")
        == 0
    )
    assert value(series, "cbr_watcher_api_throttled_total") == 0
    assert value(series, "cbr_watcher_task_series_dropped_total") == 0
    assert value(series, "cbr_watcher_detection_delay_seconds_count") == 0
    assert value(series, "cbr_watcher_task_duration_seconds_count", operation_type="backup") == 0
    for status in AGGREGATE_STATUSES:
        assert value(series, "cbr_watcher_tasks", status=status) == 0
    for outcome in ("delivered", "dead_lettered"):
        assert (
            value(series, "cbr_watcher_webhook_deliveries_total", receiver="ops", outcome=outcome)
            == 0
        )
    for result in ("success", "server_error", "timeout", "gone"):
        assert (
            value(series, "cbr_watcher_webhook_attempts_total", receiver="ops", result=result) == 0
        )
    assert value(series, "cbr_watcher_webhook_delivery_latency_seconds_count", receiver="ops") == 0
    assert value(series, "cbr_watcher_webhook_queue_depth", receiver="ops") == 0
    assert value(series, "cbr_watcher_webhook_receiver_disabled", receiver="ops") == 0
    assert value(series, "cbr_watcher_auth_token_expiry_timestamp_seconds") == 0
    assert value(series, "cbr_watcher_build_info", version="1.2.3") == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in series)
    assert any(name == "python_info" for name, _ in series)
    # Unknown until a task succeeds (or the state store restores it): the alert uses absent().
    assert names_with(series, "cbr_watcher_last_success_timestamp_seconds") == []


def test_duration_buckets_reach_two_days() -> None:
    """Hours-long backups land in a real bucket, up to the 48 h default deadline."""
    assert DURATION_BUCKETS[-1] == 48 * 3600
    metrics = Metrics(clock=FakeClock())
    metrics.task_duration.labels("backup").observe(30 * 3600)
    series = scrape(metrics)
    buckets = {
        float(dict(labels)["le"]): v
        for (name, labels), v in series.items()
        if name == "cbr_watcher_task_duration_seconds_bucket"
        and dict(labels)["operation_type"] == "backup"
    }
    assert buckets[24 * 3600] == 0
    assert buckets[36 * 3600] == 1


async def test_engine_run_feeds_every_metric(world: World) -> None:
    """A backup that succeeds, a restore that fails and a mistyped ID, watched to the end."""
    sim, clock = world.sim, world.clock
    ok = sim.add_task(
        SimTaskSpec(
            id="ok-backup", waiting=30, running=600, vault_name="vault-a", resource_name="ecs-a"
        )
    )
    bad = sim.add_task(
        SimTaskSpec(
            id="bad-restore", operation_type="restore", outcome="failed", waiting=10, running=300
        )
    )
    metrics = Metrics(clock=clock, retention=900)
    client = CbrClient(
        endpoint=world.base_url,
        project_id=sim.project_id,
        auth=TokenAuthenticator(token_file=world.token_file),
        clock=clock,
        observe=metrics.observe_request,
    )
    async with client:
        engine = Engine(
            client=client,
            clock=clock,
            policy=Policy(interval_min=5, interval_max=60, deadline=6 * 3600, not_found_grace=120),
            rng=random.Random(5),
            on_event=metrics.on_event,
        )
        metrics.attach(engine)
        for task_id in (ok, bad, "typo-id"):
            engine.add(task_id)
        async with Running(world, engine) as running:
            await running.until(
                lambda: (
                    (engine.tasks[ok].progress or 0) >= 50 and engine.tasks[ok].status == "running"
                )
            )
            task = engine.tasks[ok]
            series = scrape(metrics)
            assert value(series, "cbr_watcher_task_progress_ratio", task_id=ok) == pytest.approx(
                (task.progress or 0) / 100
            )
            assert value(series, "cbr_watcher_task_status", task_id=ok, status="running") == 1
            assert value(series, "cbr_watcher_task_status", task_id=ok, status="waiting") == 0
            assert (
                value(series, "cbr_watcher_task_last_progress_timestamp_seconds", task_id=ok)
                == task.last_progress_wall
            )
            assert (value(series, "cbr_watcher_tasks", status="running") or 0) >= 1
            await running.until(engine.all_done)
        ended_ok = engine.tasks[ok].operation_log
        assert ended_ok is not None
        assert ended_ok.ended_at is not None

    series = scrape(metrics)
    finished = "cbr_watcher_tasks_finished_total"
    assert value(series, finished, status="success", operation_type="backup") == 1
    assert value(series, finished, status="failed", operation_type="restore") == 1
    assert value(series, finished, status="not_found", operation_type="unknown") == 1
    assert value(series, finished, status="failed", operation_type="backup") == 0
    # CBR's own started_at → ended_at: the running phase of the simulated backup.
    assert value(series, "cbr_watcher_task_duration_seconds_count", operation_type="backup") == 1
    assert value(
        series, "cbr_watcher_task_duration_seconds_sum", operation_type="backup"
    ) == pytest.approx(600, abs=1)
    assert value(series, "cbr_watcher_detection_delay_seconds_count") == 2
    assert value(
        series, "cbr_watcher_last_success_timestamp_seconds", operation_type="backup"
    ) == pytest.approx(ended_ok.ended_at.timestamp())
    # Every request the simulator answered was counted with its code.
    answered_200 = value(
        series, "cbr_watcher_api_requests_total", operation="show_op_log", code="200"
    )
    answered_404 = value(
        series, "cbr_watcher_api_requests_total", operation="show_op_log", code="404"
    )
    assert answered_200 is not None
    assert answered_404 is not None
    assert answered_200 + answered_404 == sum(sim.request_count(t) for t in (ok, bad, "typo-id"))
    assert answered_404 >= sim.request_count("typo-id")
    # Per-task series stay for the retention after the end; the final status is 1.
    assert value(series, "cbr_watcher_task_status", task_id=ok, status="success") == 1
    assert value(series, "cbr_watcher_task_status", task_id=ok, status="running") == 0
    assert value(series, "cbr_watcher_task_status", task_id=bad, status="failed") == 1
    assert value(series, "cbr_watcher_task_status", task_id="typo-id", status="not_found") == 1
    assert value(series, "cbr_watcher_task_progress_ratio", task_id=ok) == 1.0
    [info] = [x for x in names_with(series, "cbr_watcher_task_info") if x["task_id"] == ok]
    assert info == {
        "task_id": ok,
        "operation_type": "backup",
        "vault_id": sim.tasks[ok].vault_id,
        "vault_name": "vault-a",
        "resource_id": sim.tasks[ok].resource_id,
        "resource_name": "ecs-a",
        "resource_type": "OS::Nova::Server",
    }
    assert value(series, "cbr_watcher_tasks", status="success") == 1
    assert value(series, "cbr_watcher_tasks", status="not_found") == 1
    # Per resource: the backup's resource succeeded, the restore's resource failed.
    ok_resource = {
        "resource_id": sim.tasks[ok].resource_id,
        "resource_name": "ecs-a",
        "resource_type": "OS::Nova::Server",
        "vault_id": sim.tasks[ok].vault_id,
        "operation_type": "backup",
    }
    assert value(series, "cbr_watcher_resource_last_status", **ok_resource) == 1
    assert value(
        series, "cbr_watcher_resource_last_success_timestamp_seconds", **ok_resource
    ) == pytest.approx(ended_ok.ended_at.timestamp())
    [bad_resource] = [
        labels
        for labels in names_with(series, "cbr_watcher_resource_last_status")
        if labels["resource_id"] == sim.tasks[bad].resource_id
    ]
    assert bad_resource["operation_type"] == "restore"
    assert value(series, "cbr_watcher_resource_last_status", **bad_resource) == 0
    assert len(names_with(series, "cbr_watcher_resource_last_status")) == 2


async def _discard(event: TaskEvent) -> None:
    """The sink behind the metrics tee."""


def test_series_disappear_after_retention_on_the_fake_clock() -> None:
    """A task's series are scraped until `retention` after it ended, then never again."""
    clock = FakeClock()
    table = Table()
    metrics = Metrics(clock=clock, retention=900)
    metrics.attach(table)
    now = clock.wall()
    table.put(watched("done", status="success", progress=100, ended_wall=now, end_reason="success"))
    table.put(watched("busy"))
    clock.advance(899)
    series = scrape(metrics)
    assert value(series, "cbr_watcher_task_status", task_id="done", status="success") == 1
    assert value(series, "cbr_watcher_tasks", status="success") == 1
    clock.advance(2)
    series = scrape(metrics)
    assert not [
        labels
        for labels in names_with(series, "cbr_watcher_task_status")
        if labels["task_id"] == "done"
    ]
    assert value(series, "cbr_watcher_task_progress_ratio", task_id="done") is None
    assert value(series, "cbr_watcher_tasks", status="success") == 0
    # A task that has not ended is never retired, however old.
    assert value(series, "cbr_watcher_task_status", task_id="busy", status="running") == 1


async def test_engine_forgets_and_metrics_agree(world: World) -> None:
    """With the engine's own retention, ended tasks leave the scrape after `retention`."""
    world.sim.add_task(SimTaskSpec(id="quick", waiting=5, running=20))
    metrics = Metrics(clock=world.clock, retention=600)
    engine = make_engine(world, retention=600, on_event=metrics.on_event)
    metrics.attach(engine)
    engine.add("quick")
    async with Running(world, engine) as running:
        await running.until(engine.all_done)
        ended = engine.tasks["quick"].ended_wall
        assert ended is not None
        assert (
            value(scrape(metrics), "cbr_watcher_task_status", task_id="quick", status="success")
            == 1
        )
        await running.until(lambda: world.clock.wall() > ended + 601)
        assert (
            value(scrape(metrics), "cbr_watcher_task_status", task_id="quick", status="success")
            is None
        )


def test_series_cap_prefers_unfinished_tasks_and_counts_each_dropped_task_once() -> None:
    """Over `max_task_series`, unfinished and recently ended tasks win; the rest are counted."""
    clock = FakeClock()
    now = clock.wall()
    table = Table()
    metrics = Metrics(clock=clock, max_task_series=3)
    metrics.attach(table)
    table.put(watched("old-end", status="success", ended_wall=now - 300, end_reason="success"))
    table.put(watched("active-1"))
    table.put(watched("new-end", status="failed", ended_wall=now - 10, end_reason="failed"))
    table.put(watched("mid-end", status="success", ended_wall=now - 100, end_reason="success"))
    table.put(watched("active-2", status="waiting", progress=0))
    for _ in range(3):  # scraping again does not count the same tasks again
        series = scrape(metrics)
        exported = {labels["task_id"] for labels in names_with(series, "cbr_watcher_task_status")}
        assert exported == {"active-1", "active-2", "new-end"}
        assert value(series, "cbr_watcher_task_series_dropped_total") == 2
    # The aggregate gauge still counts every task.
    assert value(series, "cbr_watcher_tasks", status="success") == 2
    assert value(series, "cbr_watcher_tasks", status="running") == 1
    table.put(watched("active-3"))
    series = scrape(metrics)
    exported = {labels["task_id"] for labels in names_with(series, "cbr_watcher_task_status")}
    assert exported == {"active-1", "active-2", "active-3"}
    assert value(series, "cbr_watcher_task_series_dropped_total") == 3  # new-end, once


def test_max_task_series_zero_exports_no_task_series() -> None:
    """`metrics.max_task_series = 0` turns per-task series off; aggregates stay."""
    clock = FakeClock()
    table = Table()
    table.put(watched("a"))
    metrics = Metrics(clock=clock, max_task_series=0)
    metrics.attach(table)
    series = scrape(metrics)
    assert names_with(series, "cbr_watcher_task_status") == []
    assert value(series, "cbr_watcher_tasks", status="running") == 1


def test_status_state_set_has_one_series_per_status() -> None:
    """Six known statuses always; an unknown CBR status or a watch outcome gets its own."""
    clock = FakeClock()
    table = Table()
    table.put(watched("known"))
    table.put(watched("odd", status="paused"))
    table.put(watched("fresh", status=None, progress=None))
    table.put(
        watched("gone", status=None, progress=None, ended_wall=clock.wall(), end_reason="not_found")
    )
    table.put(watched("late", status="running", ended_wall=clock.wall(), end_reason="expired"))
    metrics = Metrics(clock=clock)
    metrics.attach(table)
    series = scrape(metrics)
    expected = {
        "known": "running",
        "odd": "paused",
        "fresh": "unknown",
        "gone": "not_found",
        "late": "expired",
    }
    for task_id, current in expected.items():
        statuses = {
            labels["status"]: value(series, "cbr_watcher_task_status", **labels)
            for labels in names_with(series, "cbr_watcher_task_status")
            if labels["task_id"] == task_id
        }
        assert set(TASK_STATUSES) <= set(statuses)
        assert {s for s, v in statuses.items() if v == 1} == {current}
        assert len(statuses) == len(TASK_STATUSES) + (current not in TASK_STATUSES)
    # No answer yet: nothing is known about the task beyond its status.
    assert value(series, "cbr_watcher_task_progress_ratio", task_id="fresh") is None
    assert not [x for x in names_with(series, "cbr_watcher_task_info") if x["task_id"] == "fresh"]
    assert value(series, "cbr_watcher_tasks", status="paused") == 1


def test_last_progress_is_never_before_the_start() -> None:
    """A task whose progress last moved while waiting reports its start as the last change."""
    clock = FakeClock()
    table = Table()
    task = watched("t", raw={"started_at": "2026-01-01T01:00:00Z"})
    table.put(replace(task, last_progress_wall=1_767_225_600.0 + 60))  # 00:01, before started_at
    metrics = Metrics(clock=clock)
    metrics.attach(table)
    series = scrape(metrics)
    started = 1_767_225_600.0 + 3600
    assert value(series, "cbr_watcher_task_started_timestamp_seconds", task_id="t") == started
    assert value(series, "cbr_watcher_task_last_progress_timestamp_seconds", task_id="t") == started


def _odd_table(clock: FakeClock, count: int = 60) -> Table:
    """Tasks in every state, with label values that need escaping."""
    rng = random.Random(7)
    table = Table()
    names = ["plain", 'quote"d', "back\\slash", "new\nline", "ünïcode ✓", ""]
    for n in range(count):
        status = rng.choice([*TASK_STATUSES, "paused", None])
        ended = rng.random() < 0.3
        table.put(
            watched(
                f"task-{n}",
                status=status,
                progress=rng.choice([None, 0, 37, 100]),
                ended_wall=clock.wall() - rng.uniform(0, 800) if ended else None,
                end_reason=(status if status in ("success", "failed") else "expired")
                if ended
                else None,
                raw={
                    "vault_name": rng.choice(names),
                    "extra_info": {
                        "resource": {"name": rng.choice(names), "type": "OS::Nova::Server"},
                        "common": {"progress": 5},
                    },
                },
            )
        )
    return table


HAND_WRITTEN = (
    "cbr_watcher_tasks",
    "cbr_watcher_task_progress_ratio",
    "cbr_watcher_task_status",
    "cbr_watcher_task_info",
    "cbr_watcher_task_started_timestamp_seconds",
    "cbr_watcher_task_last_progress_timestamp_seconds",
    "cbr_watcher_task_estimated_end_timestamp_seconds",
    "cbr_watcher_resource_last_success_timestamp_seconds",
    "cbr_watcher_resource_last_status",
)
"""The families `render` writes itself, rather than through prometheus_client's encoder."""


def without_created(series: Series) -> Series:
    """`series` without the `_created` samples (the two formats type them differently)."""
    return {key: v for key, v in series.items() if not key[0].endswith("_created")}


def expected_task_samples(table: Table) -> Series:
    """What the task families must say about `table`, every task exported, derived from the
    tasks themselves."""
    expected: Series = {}
    counts = dict.fromkeys(AGGREGATE_STATUSES, 0)

    def put(name: str, number: float, **labels: str) -> None:
        expected[(name, frozenset(labels.items()))] = number

    for task in table.tasks.values():
        task_id = task.task_id
        current = "expired" if task.end_reason == "expired" else task.status or "unknown"
        counts[current] = counts.get(current, 0) + 1
        for status in {*TASK_STATUSES, current}:
            put(
                "cbr_watcher_task_status",
                1 if status == current else 0,
                task_id=task_id,
                status=status,
            )
        if task.progress is not None:
            put("cbr_watcher_task_progress_ratio", task.progress / 100, task_id=task_id)
        put("cbr_watcher_task_started_timestamp_seconds", JAN_1, task_id=task_id)
        put("cbr_watcher_task_last_progress_timestamp_seconds", JAN_1 + 30, task_id=task_id)
        log = task.operation_log
        if log is not None:
            put(
                "cbr_watcher_task_info",
                1,
                task_id=task_id,
                operation_type="backup",
                vault_id="vault-1",
                vault_name=log.vault_name or "",
                resource_id="",
                resource_name=log.resource.name or "",
                resource_type="OS::Nova::Server",
            )
    for status, count in counts.items():
        put("cbr_watcher_tasks", count, status=status)
    return expected


@pytest.mark.parametrize("accept", ["", OPENMETRICS])
def test_hand_written_families_parse_back_to_what_the_tasks_say(accept: str) -> None:
    """Label values that need escaping (quotes, backslashes, newlines, non-ASCII, empty, a lone
    surrogate) come back from prometheus_client's parser exactly as the tasks and resources
    had them; rendering again from the cached lines gives the same exposition."""
    clock = FakeClock()
    metrics = Metrics(clock=clock, process_metrics=False)
    table = _odd_table(clock)
    metrics.attach(table)
    names = ['quote"d', "back\\slash", "new\nline", "ünïcode ✓", "", "lone \udc80"]
    expected = expected_task_samples(table)
    for n, name in enumerate(names):
        status = ("success", "failed", "timeout", "skipped")[n % 4]
        metrics.record_event(
            finished(f"r{n}", status, ended_minute=n, resource_id=f"res-{n}", resource_name=name)
        )
        named = {"resource_name": name.replace("\udc80", "\ufffd")} if name else {}
        labels = resource_labels(f"res-{n}", **named)  # `finished` names a nameless one
        expected[(LAST_STATUS, frozenset(labels.items()))] = 1 if status == "success" else 0
        if status == "success":
            expected[(LAST_SUCCESS, frozenset(labels.items()))] = JAN_1 + n * 60
    cold, content_type = metrics.render(accept)
    warm, _ = metrics.render(accept)
    assert warm == cold
    openmetrics = bool(accept)
    assert content_type.startswith("application/openmetrics-text" if openmetrics else "text/")
    series = parse(warm.decode(), openmetrics=openmetrics)
    assert {key: v for key, v in series.items() if key[0] in HAND_WRITTEN} == expected
    other, _ = metrics.render("" if openmetrics else OPENMETRICS)
    assert without_created(parse(other.decode(), openmetrics=not openmetrics)) == without_created(
        series
    )


def test_openmetrics_exposition_is_valid_and_ends_once() -> None:
    """OpenMetrics: parses strictly, one `# EOF` at the very end, counters with _total."""
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    metrics.attach(_odd_table(clock, 10))
    body, content_type = metrics.render(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    )
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    parsed = parse_openmetrics(text)  # type: ignore[no-untyped-call]
    families = {family.name: family.type for family in parsed}
    assert families["cbr_watcher_tasks_finished"] == "counter"
    assert families["cbr_watcher_task"] == "info"
    assert families["cbr_watcher_task_status"] == "gauge"
    assert families["cbr_watcher_task_duration_seconds"] == "histogram"


def test_last_success_only_moves_forward_and_can_be_restored() -> None:
    """The state store seeds it at start-up; an older value never wins."""
    metrics = Metrics(clock=FakeClock())
    metrics.restore_last_success("backup", 1000.0)
    metrics.restore_last_success("backup", 900.0)
    metrics.restore_last_success("restore", 50.0)
    series = scrape(metrics)
    name = "cbr_watcher_last_success_timestamp_seconds"
    assert value(series, name, operation_type="backup") == 1000.0
    assert value(series, name, operation_type="restore") == 50.0
    operation_log = OperationLog.from_raw(
        {
            "id": "t",
            "status": "success",
            "operation_type": "backup",
            "started_at": "2026-01-01T00:00:00Z",
            "ended_at": "2026-01-01T02:00:00Z",
        }
    )
    metrics.record_event(
        TaskEvent(
            type=TASK_SUCCEEDED,
            task_id="t",
            occurred_at=1_767_232_830.0,
            status="success",
            previous_status="running",
            progress=100,
            operation_log=operation_log,
        )
    )
    series = scrape(metrics)
    assert value(series, name, operation_type="backup") == 1_767_232_800.0  # ended_at
    assert value(series, "cbr_watcher_detection_delay_seconds_sum") == 30.0
    assert value(series, "cbr_watcher_task_duration_seconds_sum", operation_type="backup") == 7200


def test_request_observer_counts_codes_and_throttling() -> None:
    """429 counts as a request and as throttled; an unseen code gets its own series."""
    metrics = Metrics(clock=FakeClock())
    for code in ("200", "200", "429", "418"):
        metrics.observe_request("show_op_log", code, 0.2)
    series = scrape(metrics)
    requests = "cbr_watcher_api_requests_total"
    assert value(series, requests, operation="show_op_log", code="200") == 2
    assert value(series, requests, operation="show_op_log", code="429") == 1
    assert value(series, requests, operation="show_op_log", code="418") == 1
    assert value(series, "cbr_watcher_api_throttled_total") == 1
    assert (
        value(series, "cbr_watcher_api_request_duration_seconds_count", operation="show_op_log")
        == 4
    )


def test_webhook_and_auth_api() -> None:
    """What the webhook deliverer and the authenticator call."""
    metrics = Metrics(clock=FakeClock())
    metrics.register_receivers(["ops"])
    metrics.webhook_attempt("ops", "server_error")
    metrics.webhook_attempt("ops", "success")
    metrics.webhook_attempt("ops", "made-up")
    metrics.webhook_delivered("ops", "delivered", 2.0)
    metrics.webhook_delivered("ops", "dead_lettered", 90_000.0)
    metrics.set_queue_depth("ops", 7)
    metrics.set_receiver_disabled("ops", True)
    metrics.set_token_expiry(1_767_300_000.0)
    series = scrape(metrics)
    attempts = "cbr_watcher_webhook_attempts_total"
    assert value(series, attempts, receiver="ops", result="server_error") == 1
    assert value(series, attempts, receiver="ops", result="success") == 1
    assert value(series, attempts, receiver="ops", result="other") == 1
    assert value(series, attempts, receiver="ops", result="made-up") is None
    deliveries = "cbr_watcher_webhook_deliveries_total"
    assert value(series, deliveries, receiver="ops", outcome="delivered") == 1
    assert value(series, deliveries, receiver="ops", outcome="dead_lettered") == 1
    assert value(series, "cbr_watcher_webhook_delivery_latency_seconds_count", receiver="ops") == 1
    assert value(series, "cbr_watcher_webhook_queue_depth", receiver="ops") == 7
    assert value(series, "cbr_watcher_webhook_receiver_disabled", receiver="ops") == 1
    assert value(series, "cbr_watcher_auth_token_expiry_timestamp_seconds") == 1_767_300_000.0
    metrics.set_receiver_disabled("ops", False)
    metrics.set_token_expiry(None)
    series = scrape(metrics)
    assert value(series, "cbr_watcher_webhook_receiver_disabled", receiver="ops") == 0
    assert value(series, "cbr_watcher_auth_token_expiry_timestamp_seconds") == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two daemons in one process (tests) do not share series."""
    first, second = Metrics(clock=FakeClock()), Metrics(clock=FakeClock())
    first.observe_request("show_op_log", "200", 0.1)
    assert (
        value(scrape(second), "cbr_watcher_api_requests_total", operation="show_op_log", code="200")
        == 0
    )


# ---- per-resource freshness ---------------------------------------------------------------

LAST_SUCCESS = "cbr_watcher_resource_last_success_timestamp_seconds"
LAST_STATUS = "cbr_watcher_resource_last_status"
RESOURCE_DROPPED = "cbr_watcher_resource_series_dropped_total"
JAN_1 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def resource_labels(
    resource_id: str = "res-1", operation_type: str = "backup", **overrides: str
) -> dict[str, str]:
    """The label set of one resource's freshness series, as `finished` describes it."""
    labels = {
        "resource_id": resource_id,
        "resource_name": f"name-of-{resource_id}",
        "resource_type": "OS::Nova::Server",
        "vault_id": "vault-1",
        "operation_type": operation_type,
    }
    labels.update(overrides)
    return labels


def stored_row(
    resource_id: str, last_status: str, last_ended: float, last_success_ended: float | None
) -> ResourceStatus:
    """A backup resource's row as the state database keeps it, named as `finished` names it."""
    return ResourceStatus(
        key=ResourceKey(resource_id, "backup"),
        resource_name=f"name-of-{resource_id}",
        resource_type="OS::Nova::Server",
        vault_id="vault-1",
        last_status=last_status,
        last_ended=last_ended,
        last_success_ended=last_success_ended,
    )


def finished(
    task_id: str,
    status: str,
    *,
    ended_minute: int,
    resource_id: str = "res-1",
    operation_type: str = "backup",
    resource_name: str | None = None,
    seen_later: float = 30.0,
) -> TaskEvent:
    """The event of a task of `resource_id` that ended `status` at 2026-01-01 00:`ended_minute`."""
    operation_log = OperationLog.from_raw(
        {
            "id": task_id,
            "status": status,
            "operation_type": operation_type,
            "vault_id": "vault-1",
            "started_at": "2026-01-01T00:00:00Z",
            "ended_at": f"2026-01-01T{ended_minute // 60:02d}:{ended_minute % 60:02d}:00Z",
            "extra_info": {
                "resource": {
                    "id": resource_id,
                    "name": resource_name or f"name-of-{resource_id}",
                    "type": "OS::Nova::Server",
                }
            },
        }
    )
    event_type = {
        "success": TASK_SUCCEEDED,
        "failed": TASK_FAILED,
        "timeout": TASK_TIMED_OUT,
        "skipped": TASK_SKIPPED,
    }[status]
    return TaskEvent(
        type=event_type,
        task_id=task_id,
        occurred_at=JAN_1 + ended_minute * 60 + seen_later,
        status=status,
        previous_status="running",
        progress=100,
        operation_log=operation_log,
    )


def test_a_failure_after_a_success_sets_last_status_to_0_and_keeps_the_last_success() -> None:
    """The alert inputs: the newest task decides the status; the success time stays."""
    metrics = Metrics(clock=FakeClock())
    labels = resource_labels()
    assert names_with(scrape(metrics), LAST_STATUS) == []  # nothing known yet
    metrics.record_event(finished("t1", "success", ended_minute=10))
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **labels) == 1
    assert value(series, LAST_SUCCESS, **labels) == JAN_1 + 600  # CBR's ended_at
    metrics.record_event(finished("t2", "failed", ended_minute=70))
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **labels) == 0
    assert value(series, LAST_SUCCESS, **labels) == JAN_1 + 600
    for status in ("timeout", "skipped"):
        metrics.record_event(finished(f"t-{status}", status, ended_minute=80))
        assert value(scrape(metrics), LAST_STATUS, **labels) == 0
    metrics.record_event(finished("t3", "success", ended_minute=90))
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **labels) == 1
    assert value(series, LAST_SUCCESS, **labels) == JAN_1 + 90 * 60
    assert len(names_with(series, LAST_STATUS)) == 1


def test_an_older_task_reported_later_does_not_overwrite_the_newest() -> None:
    """Tasks end out of order (a slow poll): the one that ended last decides."""
    metrics = Metrics(clock=FakeClock())
    labels = resource_labels()
    metrics.record_event(finished("new-fail", "failed", ended_minute=120))
    metrics.record_event(finished("old-ok", "success", ended_minute=60, seen_later=7200))
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **labels) == 0
    assert value(series, LAST_SUCCESS, **labels) == JAN_1 + 3600  # a success, though older
    metrics.record_event(finished("older-fail", "failed", ended_minute=30, seen_later=9000))
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **labels) == 0
    assert value(series, LAST_SUCCESS, **labels) == JAN_1 + 3600


def test_resources_and_operation_types_have_series_of_their_own() -> None:
    """One series per resource and operation type; the newest task's names label it."""
    metrics = Metrics(clock=FakeClock())
    metrics.record_event(finished("a", "success", ended_minute=10, resource_id="res-a"))
    metrics.record_event(finished("b", "failed", ended_minute=10, resource_id="res-b"))
    metrics.record_event(
        finished("c", "failed", ended_minute=20, resource_id="res-a", operation_type="replication")
    )
    metrics.record_event(
        finished("d", "success", ended_minute=30, resource_id="res-a", resource_name="renamed")
    )
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **resource_labels("res-a", resource_name="renamed")) == 1
    assert value(series, LAST_STATUS, **resource_labels("res-b")) == 0
    assert value(series, LAST_SUCCESS, **resource_labels("res-b")) is None  # never succeeded
    assert value(series, LAST_STATUS, **resource_labels("res-a", "replication")) == 0
    assert len(names_with(series, LAST_STATUS)) == 3
    assert len(names_with(series, LAST_SUCCESS)) == 1


def test_watches_that_did_not_end_in_cbr_leave_no_resource_series() -> None:
    """Progress, not found and expired watches, and tasks without a resource, say nothing
    about freshness."""
    metrics = Metrics(clock=FakeClock())
    running = OperationLog.from_raw(
        {"id": "r", "status": "running", "extra_info": {"resource": {"id": "res-1"}}}
    )
    no_resource = OperationLog.from_raw({"id": "n", "status": "success", "operation_type": "sync"})
    for event in (
        TaskEvent(TASK_PROGRESS, "r", JAN_1, "running", "running", 50, operation_log=running),
        TaskEvent(WATCH_EXPIRED, "r", JAN_1, "running", "running", 50, operation_log=running),
        TaskEvent(WATCH_NOT_FOUND, "x", JAN_1, None, None, None),
        TaskEvent(TASK_SUCCEEDED, "n", JAN_1, "success", "running", 100, operation_log=no_resource),
    ):
        metrics.record_event(event)
    series = scrape(metrics)
    assert names_with(series, LAST_STATUS) == []
    assert names_with(series, LAST_SUCCESS) == []


def test_restored_rows_are_exported_and_merged_with_new_tasks() -> None:
    """At start-up the state database's rows come back; later tasks fold in by the same rules,
    whichever comes first."""
    metrics = Metrics(clock=FakeClock())
    failed_before_restart = finished("t-new", "failed", ended_minute=200)
    metrics.record_event(failed_before_restart)  # an event may beat the restore
    metrics.restore_resources(
        [
            stored_row("res-1", "success", JAN_1 + 100 * 60, JAN_1 + 100 * 60),
            stored_row("res-2", "timeout", JAN_1 + 20 * 60, None),
        ]
    )
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **resource_labels("res-1")) == 0  # the newer failure
    assert value(series, LAST_SUCCESS, **resource_labels("res-1")) == JAN_1 + 100 * 60
    assert value(series, LAST_STATUS, **resource_labels("res-2")) == 0
    assert value(series, LAST_SUCCESS, **resource_labels("res-2")) is None
    metrics.record_event(finished("t-ok", "success", ended_minute=10, resource_id="res-2"))
    series = scrape(metrics)
    assert value(series, LAST_STATUS, **resource_labels("res-2")) == 0  # older than the timeout
    assert value(series, LAST_SUCCESS, **resource_labels("res-2")) == JAN_1 + 600


def test_resource_series_are_capped_and_each_left_out_resource_counted_once() -> None:
    """`metrics.max_task_series` caps resources too: the first ones keep their series (and
    keep updating), later ones are left out and counted."""
    metrics = Metrics(clock=FakeClock(), max_task_series=2)
    assert value(scrape(metrics), RESOURCE_DROPPED) == 0
    for minute, resource_id in enumerate(("res-a", "res-b", "res-c", "res-c", "res-d")):
        metrics.record_event(
            finished(f"t-{minute}", "success", ended_minute=minute + 1, resource_id=resource_id)
        )
    metrics.record_event(finished("t-late", "failed", ended_minute=50, resource_id="res-a"))
    series = scrape(metrics)
    exported = {labels["resource_id"] for labels in names_with(series, LAST_STATUS)}
    assert exported == {"res-a", "res-b"}
    assert value(series, LAST_STATUS, **resource_labels("res-a")) == 0
    assert value(series, RESOURCE_DROPPED) == 2  # res-c once, res-d
    # Restoring more rows than the cap keeps the most recently ended ones.
    restored = Metrics(clock=FakeClock(), max_task_series=1)
    restored.restore_resources(
        stored_row(resource_id, "success", ended, ended)
        for resource_id, ended in (("res-old", JAN_1), ("res-new", JAN_1 + 60))
    )
    series = scrape(restored)
    assert [labels["resource_id"] for labels in names_with(series, LAST_STATUS)] == ["res-new"]
    assert value(series, RESOURCE_DROPPED) == 1


def test_duration_comes_from_the_event_without_reading_the_task_table() -> None:
    """Without CBR's started_at the duration starts when the watcher saw the task running,
    as the event says; the metrics need no engine for it."""
    metrics = Metrics(clock=FakeClock())
    operation_log = OperationLog.from_raw(
        {"id": "t", "status": "success", "operation_type": "backup"}
    )
    metrics.record_event(
        TaskEvent(
            type=TASK_SUCCEEDED,
            task_id="t",
            occurred_at=JAN_1 + 500,
            status="success",
            previous_status="running",
            progress=100,
            operation_log=operation_log,
            started_at=JAN_1 + 200,
        )
    )
    series = scrape(metrics)
    assert value(series, "cbr_watcher_task_duration_seconds_sum", operation_type="backup") == 300
    assert value(series, "cbr_watcher_task_duration_seconds_count", operation_type="backup") == 1


@settings(max_examples=60, deadline=None)
@given(
    tasks=st.lists(
        st.tuples(st.sampled_from(["success", "failed", "timeout", "skipped"]), st.integers(0, 59)),
        min_size=1,
        max_size=8,
        unique_by=lambda task: task[1],
    ),
    order=st.randoms(use_true_random=False),
)
def test_freshness_does_not_depend_on_the_order_tasks_are_reported(
    tasks: list[tuple[str, int]], order: random.Random
) -> None:
    """However late each task's end is noticed, the scrape shows the status of the task that
    ended last and the end of the newest success."""
    metrics = Metrics(clock=FakeClock(), process_metrics=False)
    shuffled = list(tasks)
    order.shuffle(shuffled)
    for n, (status, minute) in enumerate(shuffled):
        metrics.record_event(finished(f"t{n}", status, ended_minute=minute))
    series = scrape(metrics)
    newest_status = max(tasks, key=lambda task: task[1])[0]
    successes = [minute for status, minute in tasks if status == "success"]
    labels = resource_labels()
    assert value(series, LAST_STATUS, **labels) == (1 if newest_status == "success" else 0)
    assert value(series, LAST_SUCCESS, **labels) == (
        JAN_1 + max(successes) * 60 if successes else None
    )


async def run_daemon_until_done(world: World, state: Path, tasks: list[str]) -> Series:
    """Run the daemon on the world's fake clock until `tasks` ended; its scrape then."""
    settings = load_settings(
        overrides={
            "cbr": {"endpoint": world.base_url, "project_id": world.sim.project_id},
            "auth": {"method": "token", "token": "token-1"},
            "watch": {"tasks": tasks, "poll_interval_min": "5s", "poll_interval_max": "60s"},
            "state": {"path": str(state)},
            "server": {"listen": "127.0.0.1:0", "api_listen": ""},
        },
        environ={},
        secrets_dirs=[],
    )
    daemon, handle = await start_daemon(settings, clock=world.clock)
    try:
        await drive_until(
            world.clock, handle.engine.all_done, busy=lambda: handle.engine.in_flight > 0
        )
        return scrape(handle.metrics)
    finally:
        handle.engine.stop()
        await drive_until(world.clock, daemon.done, busy=lambda: False)
        assert daemon.result() == 0


async def test_resource_series_survive_a_restart(world: World, tmp_path: Path) -> None:
    """A backup succeeds and a restore fails in one run; the next run, which watches nothing,
    exports both resources' freshness from the state file before any task ends."""
    sim = world.sim
    ok = sim.add_task(SimTaskSpec(id="fresh-ok", waiting=10, running=60, resource_name="ecs-a"))
    bad = sim.add_task(
        SimTaskSpec(id="fresh-bad", operation_type="restore", outcome="failed", running=30)
    )
    state = tmp_path / "state.db"
    first = await run_daemon_until_done(world, state, [ok, bad])
    second = await run_daemon_until_done(world, state, [])
    freshness = {LAST_STATUS, LAST_SUCCESS}
    assert {k: v for k, v in second.items() if k[0] in freshness} == {
        k: v for k, v in first.items() if k[0] in freshness
    }
    ok_labels = {
        "resource_id": sim.tasks[ok].resource_id,
        "resource_name": "ecs-a",
        "resource_type": "OS::Nova::Server",
        "vault_id": sim.tasks[ok].vault_id,
        "operation_type": "backup",
    }
    ended = sim.tasks[ok].end_wall
    assert ended is not None
    assert value(second, LAST_STATUS, **ok_labels) == 1
    assert value(second, LAST_SUCCESS, **ok_labels) == pytest.approx(ended, abs=1)
    statuses = {
        dict(labels)["operation_type"]: v for (n, labels), v in second.items() if n == LAST_STATUS
    }
    assert statuses == {"backup": 1, "restore": 0}
