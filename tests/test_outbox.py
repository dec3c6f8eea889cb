"""The outbox seam: which receiver gets which event, the exact body bytes and the webhook-id."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from tests.test_webhooks import PROJECT, RAW_LOG, make_event
from watcher.cbr.models import OperationLog
from watcher.cli.wiring import build_outbox
from watcher.config import Settings
from watcher.delivery.outbox import Outbox, Route, receiver_wants
from watcher.engine.events import EVENT_TYPES, TASK_PROGRESS, TaskEvent

SUCCEEDED_BODY = (
    b'{"type":"task.succeeded","timestamp":"2026-01-01T00:10:00.500Z","data":{"task_id":"task-1",'
    b'"status":"success","previous_status":"running","progress":100,"operation_type":"backup",'
    b'"project_id":"04f1829c788037ac2fb8c01eb2b04b95","vault_id":"v-1","vault_name":"vault-one",'
    b'"resource":{"id":"r-1","name":"web-01","type":"OS::Nova::Server"},'
    b'"started_at":"2026-01-01T00:00:00.000Z","ended_at":"2026-01-01T00:10:00.500Z",'
    b'"duration_seconds":600.5,"error":null,"labels":{"team":"web"},"operation_log":{"id":"task-1",'
    b'"status":"success","operation_type":"backup","project_id":"04f1829c788037ac2fb8c01eb2b04b95",'
    b'"vault_id":"v-1","vault_name":"vault-one","started_at":"2026-01-01T00:00:00Z",'
    b'"ended_at":"2026-01-01T00:10:00.500+00:00","error_info":{"code":"","message":""},'
    b'"extra_info":{"resource":{"id":"r-1","name":"web-01","type":"OS::Nova::Server"},'
    b'"common":{"progress":100},"brand_new_section":{"x":1}},"unknown_top_level":true}}}'
)
"""The bytes sent for `make_event(at=AT)`: those of the code before the outbox seam, except
`timestamp`, which is CBR's `ended_at` since replicas must agree on it (issue 23)."""

AT = 1767225600.25

# (webhook-id, sha256 of the body) the code before the outbox seam produced; the bodies of
# task.succeeded and task.started changed once since, when `timestamp` became CBR's time.
GOLDEN = {
    "task.succeeded": (
        "evt_2c7c84d8eb15c302ceb52401abbe0b9f",
        "7273aa9260161907747fba25218e059902f97561a95acdef4f9f9cba14b71352",
    ),
    "task.progress": (
        "evt_1736397d24c25e178226c9a67a417cde",
        "b08bf37594a1f1067ee44acbe302e6710a1248350f76313dc272acfbc1f31366",
    ),
    "task.started": (
        "evt_b9c2e83210bf81c0b3ab69f055cd476c",
        "47d74b555f11725271ac38640384cfb25eaee572ed7e2f7ac3581a02f16396a4",
    ),
    "watch.not_found": (
        "evt_a5cdc1ad16155e03df643752833418fb",
        "e824dfdb3fed93943e5a53478d4c837da0deecc5cfdd20a80b5e2e53116c0db7",
    ),
}


def everyone() -> Outbox:
    """One receiver per kind of subscription."""
    return Outbox([Route("all", ("*",)), Route("progress", (TASK_PROGRESS,))], project_id=PROJECT)


def test_bodies_and_ids_are_byte_identical_to_before() -> None:
    """Receivers verify signatures over these exact bytes: nothing changes them by accident."""
    (entry,) = everyone().entries(make_event(at=AT))
    assert entry.body == SUCCEEDED_BODY
    assert (entry.event_id, entry.receiver, entry.task_id) == (
        GOLDEN["task.succeeded"][0],
        "all",
        "task-1",
    )
    assert (entry.event_type, entry.created) == ("task.succeeded", AT)
    not_found = TaskEvent(
        type="watch.not_found",
        task_id="gone-1",
        occurred_at=1767225600.0,
        status=None,
        previous_status=None,
        progress=None,
        detail="CBR answered 404 for 2m",
    )
    task_events = [make_event(event_type=t, at=AT, progress=42) for t in GOLDEN if "task" in t]
    for event in [*task_events, not_found]:
        outbox = Outbox([Route("exact", (event.type,))], project_id=PROJECT)
        (entry,) = outbox.entries(event)
        assert (entry.event_id, hashlib.sha256(entry.body).hexdigest()) == GOLDEN[event.type]


def test_every_receiver_gets_the_same_bytes_and_id() -> None:
    """One event, several receivers: one row each, all with the same body and webhook-id."""
    outbox = Outbox(
        [Route("a", ("task.*",)), Route("b", ("task.succeeded",)), Route("c", ("watch.*",))],
        project_id=PROJECT,
    )
    entries = outbox.entries(make_event(at=AT))
    assert [e.receiver for e in entries] == ["a", "b"]
    assert len({(e.event_id, e.body) for e in entries}) == 1


def test_webhook_id_is_stable_from_task_and_type() -> None:
    """A restart re-derives the same ID; another type, task or progress value gets another."""
    outbox = everyone()

    def webhook_id(event: TaskEvent) -> str:
        return outbox.entries(event)[0].event_id

    first = webhook_id(make_event(at=AT))
    assert webhook_id(make_event(at=AT + 3600)) == first
    assert webhook_id(make_event("task-2", at=AT)) != first
    assert webhook_id(make_event(event_type="task.failed", at=AT)) != first
    progress = [make_event(event_type=TASK_PROGRESS, at=AT, progress=p) for p in (10, 10, 20)]
    assert len({webhook_id(event) for event in progress}) == 2


def test_started_and_terminal_bodies_do_not_depend_on_when_the_watcher_noticed() -> None:
    """Two replicas notice one event at different moments: task.started and the terminal
    events carry CBR's started_at / ended_at as `timestamp`, so their bytes are the same;
    progress and watch.* events (no CBR time of their own) keep when the watcher noticed."""
    outbox = everyone()

    def body(event: TaskEvent) -> bytes:
        return outbox.entries(event)[0].body

    for event_type, when in (
        ("task.started", "2026-01-01T00:00:00.000Z"),
        ("task.succeeded", "2026-01-01T00:10:00.500Z"),
        ("task.failed", "2026-01-01T00:10:00.500Z"),
    ):
        first, later = (make_event(event_type=event_type, at=AT + lag) for lag in (0.0, 7.5))
        assert body(first) == body(later)
        assert json.loads(body(first))["timestamp"] == when
    progress = [make_event(event_type=TASK_PROGRESS, at=AT + lag, progress=42) for lag in (0, 7.5)]
    assert [json.loads(body(event))["timestamp"] for event in progress] == [
        "2026-01-01T00:00:00.250Z",
        "2026-01-01T00:00:07.750Z",
    ]
    # No ended_at from CBR: the time the watcher saw the end is all there is.
    raw = {**RAW_LOG}
    del raw["ended_at"]
    event = replace(make_event(at=AT), operation_log=OperationLog.from_raw(raw))
    assert json.loads(body(event))["timestamp"] == "2026-01-01T00:00:00.250Z"


def test_default_receivers_get_every_task_and_watch_event_but_progress() -> None:
    """The default `events` of a [[webhooks]] entry, as configured: `backup.missed` (coverage)
    only when a receiver asks for it."""
    (receiver,) = Settings(webhooks=[{"name": "ops", "url": "https://x.example"}]).webhooks
    outbox = build_outbox([receiver], project_id=PROJECT)
    routed = {t for t in EVENT_TYPES if outbox.receivers_for(t)}
    assert routed == set(EVENT_TYPES) - {TASK_PROGRESS, "test.ping", "backup.missed"}


def test_no_receiver_no_rows() -> None:
    """Without receivers nothing is written to the outbox."""
    assert Outbox([], project_id=PROJECT).entries_for([make_event(at=AT)]) == []


PATTERN_PARTS = st.sampled_from(["task", "watch", "test", ".", "*", "?", "[a-s]", "progress"])
PATTERNS = st.lists(PATTERN_PARTS, min_size=1, max_size=4).map("".join)
EVENT_TYPE = st.one_of(
    st.sampled_from(EVENT_TYPES),
    st.from_regex(r"(task|watch|other)\.[a-z_]{1,10}", fullmatch=True),
)


def selected(pattern: str, event_type: str) -> bool:
    """SPEC §5, stated independently: a glob selects a type, task.progress only by name."""
    if event_type == TASK_PROGRESS:
        return pattern == TASK_PROGRESS
    return fnmatch.fnmatchcase(event_type, pattern)


RECEIVERS = st.lists(
    st.lists(st.one_of(PATTERNS, st.sampled_from(EVENT_TYPES)), min_size=1, max_size=3),
    min_size=1,
    max_size=4,
)


@given(event_type=EVENT_TYPE, receivers=RECEIVERS)
def test_routed_iff_a_pattern_selects_the_type(event_type: str, receivers: list[list[str]]) -> None:
    """For any event type and receiver globs: a receiver gets a row iff one of its patterns
    selects the type."""
    routes = [Route(f"r{n}", tuple(patterns)) for n, patterns in enumerate(receivers)]
    outbox = Outbox(routes, project_id=PROJECT)
    expected = [r.receiver for r in routes if any(selected(p, event_type) for p in r.events)]
    assert outbox.receivers_for(event_type) == expected
    for route in routes:
        assert receiver_wants(route.events, event_type) is (route.receiver in expected)
    entries = outbox.entries(make_event(event_type=event_type, at=AT))
    assert [entry.receiver for entry in entries] == expected


@given(receivers=RECEIVERS)
def test_progress_goes_only_to_receivers_naming_it(receivers: list[list[str]]) -> None:
    """task.progress reaches exactly the receivers whose patterns include "task.progress"
    itself; no glob (`*`, `task.*`, `task.p*`, ...) selects it."""
    routes = [Route(f"r{n}", tuple(patterns)) for n, patterns in enumerate(receivers)]
    named = [r.receiver for r in routes if TASK_PROGRESS in r.events]
    event = make_event(event_type=TASK_PROGRESS, at=AT, progress=50)
    assert [e.receiver for e in Outbox(routes, project_id=PROJECT).entries(event)] == named
