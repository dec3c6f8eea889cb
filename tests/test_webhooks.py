"""Webhook delivery to a real receiver on 127.0.0.1, with the outbox in SQLite, on a fake clock."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import standardwebhooks

from tests.daemon_process import run_cli
from tests.support import TestReceiver
from watcher.cbr.models import OperationLog
from watcher.cli.wiring import build_outbox
from watcher.config import WebhookSettings
from watcher.delivery.outbox import Outbox
from watcher.delivery.signing import parse_whsec, sign, verify
from watcher.delivery.webhooks import Deliverer, DeliveryObserver, NullObserver, Receiver
from watcher.engine.events import TaskEvent
from watcher.state.sqlite import Store
from watcher.testing import FakeClock, drive_until

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"an older secret, being rotated..").decode()
PROJECT = "04f1829c788037ac2fb8c01eb2b04b95"

RAW_LOG: dict[str, Any] = {
    "id": "task-1",
    "status": "success",
    "operation_type": "backup",
    "project_id": PROJECT,
    "vault_id": "v-1",
    "vault_name": "vault-one",
    "started_at": "2026-01-01T00:00:00Z",
    "ended_at": "2026-01-01T00:10:00.500+00:00",
    "error_info": {"code": "", "message": ""},
    "extra_info": {
        "resource": {"id": "r-1", "name": "web-01", "type": "OS::Nova::Server"},
        "common": {"progress": 100},
        "brand_new_section": {"x": 1},
    },
    "unknown_top_level": True,
}


def make_event(
    task_id: str = "task-1", event_type: str = "task.succeeded", *, at: float, progress: int = 100
) -> TaskEvent:
    """An event as the engine would produce it."""
    raw = {**RAW_LOG, "id": task_id}
    return TaskEvent(
        type=event_type,
        task_id=task_id,
        occurred_at=at,
        status="success" if event_type == "task.succeeded" else "running",
        previous_status="running",
        progress=progress,
        labels={"team": "web"},
        operation_log=OperationLog.from_raw(raw),
    )


class RecordingObserver(NullObserver):
    """Keeps the attempt results and final outcomes the deliverer reports."""

    def __init__(self) -> None:
        self.results: list[str] = []
        self.outcomes: list[str] = []

    def webhook_attempt(self, receiver: str, result: str) -> None:
        """Record one attempt."""
        self.results.append(result)

    def webhook_delivered(self, receiver: str, outcome: str, latency: float) -> None:
        """Record one outcome."""
        self.outcomes.append(outcome)


@dataclass
class Setup:
    """A deliverer on a fake clock, its store and its receiver."""

    clock: FakeClock
    store: Store
    receiver: TestReceiver
    make: Callable[..., Deliverer]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    """A fake clock, an in-memory store and a receiver on a real socket."""
    # standardwebhooks checks timestamps against the real clock: start the fake one at now.
    clock = FakeClock(start_wall=time.time())
    store = await Store.open(":memory:")
    async with TestReceiver() as receiver:

        def make(observer: DeliveryObserver | None = None, **receiver_options: Any) -> Deliverer:
            options: dict[str, Any] = {"name": "ops", "url": receiver.url, "secret": SECRET}
            options.update(receiver_options)
            settings = WebhookSettings.model_validate(options)
            return Deliverer(
                store=store,
                receivers=[Receiver(settings)],
                clock=clock,
                observer=observer,
            )

        yield Setup(clock, store, receiver, make)
    await store.close()


async def deliver(
    s: Setup, deliverer: Deliverer, done: Callable[[], bool], max_seconds: float = 86_400 * 3
) -> None:
    """Run the deliverer on the fake clock until `done()`; then stop it."""
    runner = asyncio.create_task(deliverer.run())
    try:
        await drive_until(
            s.clock, done, busy=lambda: deliverer.in_flight > 0, max_seconds=max_seconds
        )
    finally:
        await deliverer.stop(grace=0.5)
        await runner


def outbox_of(deliverer: Deliverer) -> Outbox:
    """The outbox that routes to the deliverer's receivers, as the daemon builds it."""
    settings = [receiver.settings for receiver in deliverer.receivers.values()]
    return build_outbox(settings, project_id=PROJECT)


async def enqueue(deliverer: Deliverer, store: Store, *events: TaskEvent) -> None:
    """Commit events to the outbox, as the engine's recorder does."""
    await store.enqueue(outbox_of(deliverer).entries_for(events))
    deliverer.wake()


async def test_signature_verifies_with_standardwebhooks(setup: Setup) -> None:
    """The independent library accepts what we send: headers, signature, the exact bytes."""
    deliverer = setup.make()
    await enqueue(deliverer, setup.store, make_event(at=setup.clock.wall()))
    await deliver(setup, deliverer, lambda: len(setup.receiver.delivered) == 1)
    hook = setup.receiver.delivered[0]
    verifier = standardwebhooks.Webhook(SECRET)
    payload = verifier.verify(hook.body, hook.headers)
    assert payload["type"] == "task.succeeded"
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["user-agent"].startswith("cbr-watcher/")
    assert hook.headers["webhook-id"].startswith("evt_")


def test_rotation_signs_with_every_secret() -> None:
    """During rotation both secrets sign; a receiver holding either one verifies."""
    keys = parse_whsec(f"{SECRET} {OLD_SECRET}")
    body = b'{"type":"test.ping"}'
    now = int(time.time())
    header = sign(keys, "evt_1", now, body)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now), "webhook-signature": header}
    for secret in (SECRET, OLD_SECRET):
        assert standardwebhooks.Webhook(secret).verify(body, headers) == {"type": "test.ping"}
        verify(
            parse_whsec(secret),
            msg_id="evt_1",
            timestamp=str(now),
            signature_header=header,
            body=body,
            now=now,
        )
    rotating = WebhookSettings.model_validate(
        {"name": "r", "url": "https://example.com/", "secret": f"{SECRET} {OLD_SECRET}"}
    )
    assert Receiver(rotating).keys() == keys
    stranger = standardwebhooks.Webhook("whsec_" + base64.b64encode(b"not the secret").decode())
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        stranger.verify(body, headers)


async def test_body_schema(setup: Setup) -> None:
    """SPEC §5: type, RFC 3339 timestamp and the data fields, with the raw log forwarded as-is."""
    deliverer = setup.make()
    await enqueue(deliverer, setup.store, make_event(at=1_767_225_600.25))
    await deliver(setup, deliverer, lambda: len(setup.receiver.delivered) == 1)
    body = json.loads(setup.receiver.delivered[0].body)
    assert body["type"] == "task.succeeded"
    assert body["timestamp"] == "2026-01-01T00:10:00.500Z"  # CBR's ended_at, not when seen
    data = body["data"]
    assert set(data) == {
        "task_id",
        "status",
        "previous_status",
        "progress",
        "operation_type",
        "project_id",
        "vault_id",
        "vault_name",
        "resource",
        "started_at",
        "ended_at",
        "duration_seconds",
        "error",
        "labels",
        "operation_log",
    }
    assert data["resource"] == {"id": "r-1", "name": "web-01", "type": "OS::Nova::Server"}
    assert data["duration_seconds"] == 600.5
    assert data["started_at"] == "2026-01-01T00:00:00.000Z"
    assert data["error"] is None
    assert data["labels"] == {"team": "web"}
    assert data["operation_log"] == {**RAW_LOG, "id": "task-1"}


@pytest.mark.parametrize(
    ("globs", "event_type", "wanted"),
    [
        (["task.*", "watch.*"], "task.failed", True),
        (["task.*", "watch.*"], "task.progress", False),
        (["task.progress"], "task.progress", True),
        (["task.failed", "task.timed_out"], "task.succeeded", False),
        (["watch.*"], "watch.expired", True),
        (["*"], "task.progress", False),
    ],
)
async def test_event_filters(setup: Setup, globs: list[str], event_type: str, wanted: bool) -> None:
    """Globs select event types; task.progress only when named exactly."""
    deliverer = setup.make(events=globs)
    entries = outbox_of(deliverer).entries(make_event(event_type=event_type, at=0))
    assert bool(entries) is wanted


async def test_fails_n_times_then_one_success(setup: Setup) -> None:
    """Four failures, then success: exactly one 2xx per event ID, same ID on every attempt."""
    setup.receiver.script = [500, 503, "hang", 400]
    deliverer = setup.make(timeout="10s")
    await enqueue(deliverer, setup.store, make_event(at=setup.clock.wall()))
    await deliver(setup, deliverer, lambda: len(setup.receiver.delivered) == 1)
    ids = [h.headers["webhook-id"] for h in setup.receiver.received]
    assert len(ids) == 5
    assert len(set(ids)) == 1
    timestamps = [h.headers["webhook-timestamp"] for h in setup.receiver.received]
    assert len(set(timestamps)) == 5  # a fresh timestamp (and signature) per attempt
    assert len(setup.receiver.delivered) == 1
    assert await setup.store.queue_depths() == {}


async def test_410_disables_the_receiver(setup: Setup) -> None:
    """410 Gone: no further attempts until restart; the event stays queued."""
    setup.receiver.script = [410]
    deliverer = setup.make()
    await enqueue(
        deliverer,
        setup.store,
        make_event("a", at=setup.clock.wall()),
        make_event("b", at=setup.clock.wall()),
    )
    await deliver(setup, deliverer, lambda: deliverer.receivers["ops"].disabled)
    seen = len(setup.receiver.received)
    deliverer.wake()
    setup.clock.advance(3600)
    await asyncio.sleep(0.05)
    assert len(setup.receiver.received) == seen
    assert (await setup.store.queue_depths())["ops"] >= 1


async def test_retry_after_is_honoured(setup: Setup) -> None:
    """503 with Retry-After: 600 → the next attempt is not before 600 s later."""
    setup.receiver.script = [(503, {"Retry-After": "600"})]
    deliverer = setup.make()
    start = setup.clock.wall()
    await enqueue(deliverer, setup.store, make_event(at=start))
    times: list[float] = []
    original = deliverer.post

    async def timed_post(*args: Any, **kwargs: Any) -> Any:
        times.append(setup.clock.wall())
        return await original(*args, **kwargs)

    deliverer.post = timed_post  # type: ignore[method-assign]
    await deliver(setup, deliverer, lambda: len(setup.receiver.delivered) == 1)
    assert times[1] - times[0] >= 600


async def test_redirects_are_not_followed(setup: Setup) -> None:
    """A 3xx is a failed attempt; the Location is never requested."""
    setup.receiver.script = [302, 302]
    deliverer = setup.make()
    await enqueue(deliverer, setup.store, make_event(at=setup.clock.wall()))
    await deliver(setup, deliverer, lambda: len(setup.receiver.delivered) == 1)
    assert [h.answered for h in setup.receiver.received] == [302, 302, 200]


async def test_max_age_dead_letters(setup: Setup) -> None:
    """A receiver that never accepts: after max_age the event is a dead letter, kept."""
    setup.receiver.script = [500] * 1000
    observer = RecordingObserver()
    deliverer = setup.make(observer=observer, max_age="1h")
    start = setup.clock.wall()
    await enqueue(deliverer, setup.store, make_event(at=start))
    await deliver(setup, deliverer, lambda: "dead_lettered" in observer.outcomes)
    letters = await setup.store.dead_letters()
    assert [(receiver, reason) for _, receiver, reason, _ in letters] == [("ops", "max_age")]
    assert await setup.store.queue_depths() == {}
    assert setup.clock.wall() - start == pytest.approx(3600, abs=1)
    assert 3 <= len(setup.receiver.received) <= 40
    assert observer.results.count("server_error") == len(setup.receiver.received)


async def test_long_outage_then_everything_in_order(setup: Setup) -> None:
    """Receiver down for six hours: afterwards every event arrives, in creation order per task."""
    deliverer = setup.make(events=["task.*"])
    setup.receiver.script = [503] * 10_000
    start = setup.clock.wall()
    events = []
    for step, event_type in enumerate(["task.started", "task.progress", "task.succeeded"]):
        for task in ("t1", "t2", "t3"):
            events.append(make_event(task, event_type, at=start + step, progress=10 * step))
    # task.progress is exact-only: the receiver asked for task.*, so it gets 6 of the 9.
    await enqueue(deliverer, setup.store, *events)
    runner = asyncio.create_task(deliverer.run())
    try:
        await drive_until(
            setup.clock,
            lambda: setup.clock.wall() > start + 6 * 3600,
            busy=lambda: deliverer.in_flight > 0,
        )
        setup.receiver.script = []
        await drive_until(
            setup.clock,
            lambda: len(setup.receiver.delivered) == 6,
            busy=lambda: deliverer.in_flight > 0,
        )
    finally:
        await deliverer.stop(grace=0.5)
        await runner
    order: dict[str, list[str]] = {}
    for hook in setup.receiver.delivered:
        body = json.loads(hook.body)
        order.setdefault(body["data"]["task_id"], []).append(body["type"])
    assert order == {t: ["task.started", "task.succeeded"] for t in ("t1", "t2", "t3")}


async def test_a_dead_receiver_does_not_delay_another(setup: Setup) -> None:
    """One receiver hangs; the other still gets its events at once."""
    async with TestReceiver() as healthy:
        setup.receiver.script = ["hang"] * 10
        receivers = [
            Receiver(
                WebhookSettings.model_validate(
                    {"name": "slow", "url": setup.receiver.url, "timeout": "1h"}
                )
            ),
            Receiver(WebhookSettings.model_validate({"name": "fast", "url": healthy.url})),
        ]
        deliverer = Deliverer(store=setup.store, receivers=receivers, clock=setup.clock)
        await enqueue(
            deliverer, setup.store, *[make_event(f"t{n}", at=setup.clock.wall()) for n in range(5)]
        )
        runner = asyncio.create_task(deliverer.run())
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            # Real time on purpose: the slow receiver's requests really are hanging.
            while len(healthy.delivered) < 5 and loop.time() - started < 10:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            await deliverer.stop(grace=0.1)
            await runner
        assert len(healthy.delivered) == 5
        assert setup.receiver.delivered == []


async def run_webhook_test(name: str, receiver_url: str) -> tuple[int, str, str]:
    """`cbr-watcher webhook-test NAME` with one receiver configured through the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_WATCHER_")}
    env["CBR_WATCHER_WEBHOOKS"] = json.dumps(
        [{"name": "ops", "url": receiver_url, "secret": SECRET}]
    )
    return await run_cli("webhook-test", name, env=env)


async def test_webhook_test_command() -> None:
    """webhook-test sends one signed test.ping and reports the answer with an exit code."""
    async with TestReceiver() as receiver:
        code, out, _ = await run_webhook_test("ops", receiver.url)
        assert code == 0
        assert "ops: HTTP 200" in out
        hook = receiver.received[0]
        assert standardwebhooks.Webhook(SECRET).verify(hook.body, hook.headers)["type"] == (
            "test.ping"
        )
        receiver.script = [500]
        code, out, err = await run_webhook_test("ops", receiver.url)
        assert code == 1
        assert "HTTP 500" in out
        code, _, err = await run_webhook_test("nobody", receiver.url)
        assert code == 2
        assert "ops" in err
