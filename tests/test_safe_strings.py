"""Every string that leaves the process is safe: metrics, SQLite and webhook bodies never fail
on a value CBR (or a user) sent, lone surrogates included (see watcher.safetext)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from watcher.cbr.models import OperationLog
from watcher.delivery.payloads import event_body
from watcher.engine.engine import WatchedTask
from watcher.engine.events import TaskEvent
from watcher.observe.metrics import Metrics
from watcher.safetext import clean, json_bytes
from watcher.state.rows import TaskRecord
from watcher.state.sqlite import Store
from watcher.testing import FakeClock

# Any code point, lone surrogates included (hypothesis leaves them out unless asked).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=20,
)


def raw_log(status: str, extra: dict[str, Any]) -> dict[str, Any]:
    """An operation log as CBR might send it, with hostile strings anywhere."""
    return {**extra, "id": "t-1", "status": status}


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_json_bytes_round_trips_every_json_value(value: object) -> None:
    """The body encoder writes valid UTF-8 that decodes to exactly the value it was given."""
    body = json_bytes(value)
    assert json.loads(body.decode("utf-8")) == value


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT)
def test_clean_text_always_encodes(text: str) -> None:
    """Cleaned text is UTF-8-encodable, and text that already was is unchanged."""
    cleaned = clean(text)
    cleaned.encode("utf-8")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert "\ufffd" in cleaned
    else:
        assert cleaned == text


@settings(max_examples=200, deadline=None)
@given(status=ANY_TEXT, extra=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=5))
def test_webhook_body_forwards_the_raw_log_faithfully(status: str, extra: dict[str, Any]) -> None:
    """The webhook body is valid UTF-8 JSON and carries the raw log exactly as CBR sent it."""
    raw = raw_log(status or "running", extra)
    operation_log = OperationLog.from_raw(raw)
    event = TaskEvent(
        type="task.succeeded",
        task_id="t-1",
        occurred_at=1_767_225_600.0,
        status=operation_log.status,
        previous_status="running",
        progress=None,
        labels={"team": "x\ud800y"},
        operation_log=operation_log,
    )
    body = json.loads(event_body(event, project_id="p").decode("utf-8"))
    assert body["data"]["operation_log"] == raw
    assert body["data"]["labels"] == {"team": "x\ud800y"}


def _task(task_id: str, status: str, labels: dict[str, str], info: str) -> WatchedTask:
    raw = {
        "id": task_id,
        "status": status,
        "operation_type": info,
        "vault_name": info,
        "extra_info": {"resource": {"name": info, "type": info}, "common": {"progress": 5}},
    }
    operation_log = OperationLog.from_raw(raw)
    return WatchedTask(
        task_id=task_id,
        labels=labels,
        source="api",
        added_wall=1_767_225_600.0,
        operation_log=operation_log,
        status=operation_log.status,
        progress=5,
    )


class Table:
    """A task table for the collector."""

    def __init__(self, tasks: list[WatchedTask]) -> None:
        self.tasks = {task.task_id: task for task in tasks}


@settings(max_examples=200, deadline=None)
@given(
    status=ANY_TEXT.filter(bool),
    info=ANY_TEXT,
    label=ANY_TEXT,
)
def test_metrics_render_whatever_the_strings(status: str, info: str, label: str) -> None:
    """Both renderers produce parseable UTF-8 exposition for any status, info or label."""
    metrics = Metrics(clock=FakeClock(), process_metrics=False)
    metrics.attach(Table([_task("t-1", status, {"team": label}, info)]))
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        body, _ = metrics.render(accept)
        text = body.decode("utf-8")
        if not accept:
            families = {family.name for family in text_string_to_metric_families(text)}
            assert "cbr_watcher_task_status" in families


@settings(max_examples=100, deadline=None)
@given(status=ANY_TEXT, label=ANY_TEXT, extra=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3))
def test_store_saves_whatever_cbr_sent(status: str, label: str, extra: dict[str, Any]) -> None:
    """A state write never fails on text; the raw log comes back exactly, text columns clean."""
    raw = raw_log(status, extra)

    async def scenario() -> TaskRecord:
        store = await Store.open(":memory:")
        try:
            await store.save(
                TaskRecord(
                    task_id="t-1",
                    labels={"team": label},
                    source="api",
                    status=status,
                    progress=None,
                    raw_json=json_bytes(raw),
                    first_seen=1.0,
                    started=None,
                    last_change=None,
                    last_progress=None,
                    ended=2.0,
                    end_reason=status,
                )
            )
            (loaded,) = await store.load_tasks()
            return loaded
        finally:
            await store.close()

    loaded = asyncio.run(scenario())
    assert loaded.raw == raw
    assert loaded.labels == {"team": label}
    assert loaded.status == clean(status)
    assert loaded.end_reason == clean(status)
