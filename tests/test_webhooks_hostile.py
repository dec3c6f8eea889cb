"""Receivers answer anything: odd headers, failing state writes. A 2xx always ends the row, and
nothing turns into a tight re-send loop."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_webhooks import RecordingObserver, Setup, deliver, enqueue, make_event, setup
from watcher.config import WebhookSettings
from watcher.delivery.webhooks import Receiver, post_once
from watcher.testing import FakeClock

__all__ = ["setup"]  # the fixture, re-used from test_webhooks

ODD_DATES = [
    "Wed, 21 Oct 2015 07:28:00 -0000",
    "²",
    "99999999999",
    "Fri, 31 Dec 9999 23:59:59 -1200",
    "garbage; (nonsense)",
    "",
    "-5",
]


@pytest.mark.parametrize("retry_after", ODD_DATES)
async def test_a_2xx_with_odd_headers_is_delivered_once(setup: Setup, retry_after: str) -> None:
    """200 with a Retry-After or Date nobody can parse: delivered, the row is gone."""
    setup.receiver.script = [(200, {"Retry-After": retry_after, "Date": retry_after})]
    observer = RecordingObserver()
    deliverer = setup.make(observer=observer)
    await enqueue(deliverer, setup.store, make_event(at=setup.clock.wall()))
    await deliver(setup, deliverer, lambda: observer.outcomes == ["delivered"], max_seconds=600)
    assert len(setup.receiver.received) == 1
    assert (await setup.store.queue_depths()).get("ops", 0) == 0


@pytest.mark.parametrize("retry_after", ODD_DATES)
async def test_a_503_with_odd_retry_after_backs_off(setup: Setup, retry_after: str) -> None:
    """503 with a garbled Retry-After is a failed attempt with backoff, then delivered."""
    setup.receiver.script = [(503, {"Retry-After": retry_after})] * 3
    observer = RecordingObserver()
    deliverer = setup.make(observer=observer)
    start = setup.clock.wall()
    await enqueue(deliverer, setup.store, make_event(at=start))
    await deliver(setup, deliverer, lambda: observer.outcomes == ["delivered"])
    assert observer.results == ["server_error"] * 3 + ["success"]
    # Backoff, not a loop: at least the 1 s floor between attempts, at most the hour cap.
    assert setup.clock.wall() - start >= 3.0


async def test_a_failing_store_never_makes_a_resend_loop(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the state file refuses the 'delivered' write, the event is re-sent later, with
    backoff (at-least-once), not hundreds of times a second."""
    failures = {"left": 3}
    original = setup.store.delivered

    async def flaky_delivered(row_id: int) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        await original(row_id)

    monkeypatch.setattr(setup.store, "delivered", flaky_delivered)
    observer = RecordingObserver()
    deliverer = setup.make(observer=observer)
    start = setup.clock.wall()
    await enqueue(deliverer, setup.store, make_event(at=start))
    await deliver(setup, deliverer, lambda: observer.outcomes == ["delivered"])
    assert len(setup.receiver.received) == 4
    assert setup.clock.wall() - start >= 3.0
    assert (await setup.store.queue_depths()).get("ops", 0) == 0


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    status=st.integers(min_value=100, max_value=599),
    headers=st.dictionaries(
        st.sampled_from(["Retry-After", "Date", "Content-Type", "X-Odd"]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
        max_size=4,
    ),
)
async def test_post_once_classifies_any_answer(
    setup: Setup, status: int, headers: dict[str, str]
) -> None:
    """Whatever status and headers come back, one attempt yields one bounded result."""
    if 100 <= status < 200:
        status = 200  # aiohttp servers cannot send an informational final answer
    setup.receiver.script = [(status, headers)]
    settings_ = WebhookSettings.model_validate({"name": "ops", "url": setup.receiver.url})
    async with aiohttp.ClientSession() as session:
        result = await post_once(
            session, Receiver(settings_), "evt_1", b"{}", clock=FakeClock(start_wall=1e9)
        )
    assert result.ok == (200 <= status < 300)
    assert result.retry_after is None or 0 <= result.retry_after <= 3600
    expected: dict[Any, str] = {410: "gone", 429: "throttled"}
    if status in expected:
        assert result.result == expected[status]
