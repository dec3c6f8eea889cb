"""The heartbeat (docs/coverage.md#heartbeat): a real receiver on 127.0.0.1 records the pings,
and everything runs on a fake clock, so an hour of pings takes milliseconds.

What a user notices: the checker gets a POST every interval while the watcher is healthy and a
POST to `<url>/fail` saying why while it is not; a checker that is down, slow or odd is logged
once per streak and changes nothing else; the URL's token is never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.support import free_port, start_daemon
from watcher import __version__
from watcher.config import REDACTED, HeartbeatSettings, load_settings
from watcher.delivery.heartbeat import (
    PING_TIMEOUT,
    Heartbeat,
    PushUrl,
    fail_url,
    span,
    watcher_health,
)
from watcher.observe.metrics import Metrics
from watcher.sim import SimTaskSpec, Simulator
from watcher.testing import FakeClock, drive_until

INTERVAL = 60.0
STALL_AFTER = 15.0
TOKEN = "5f1c0a7e-TOKEN-SECRET-9b2d"


@dataclass
class Answer:
    """How the receiver answers one ping."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"OK"
    delay: float = 0.0
    """Fake seconds before answering; math.inf: never."""
    reset: bool = False
    """Drop the connection instead of answering."""


@dataclass
class Ping:
    """One request the receiver got."""

    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]
    at: float
    """Fake monotonic time it arrived."""


class PingReceiver:
    """A push-URL receiver on a real socket that answers from a script (then 200 "OK")."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.script: list[Answer] = []
        self.pings: list[Ping] = []
        self.arrived = asyncio.Event()
        self.base = ""
        self._runner: web.AppRunner | None = None

    def reset(self, clock: FakeClock, script: list[Answer] | None = None) -> None:
        """Start over with another clock and script."""
        self.clock, self.script, self.pings = clock, list(script or []), []
        self.arrived.clear()

    @property
    def url(self) -> str:
        """A Healthchecks-style ping URL with a token in its path."""
        return f"{self.base}/ping/{TOKEN}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        ping = Ping(
            request.method,
            request.path,
            request.query_string,
            body,
            headers,
            self.clock.monotonic(),
        )
        self.pings.append(ping)
        self.arrived.set()
        answer = self.script.pop(0) if self.script else Answer()
        if answer.delay == math.inf:
            await asyncio.Event().wait()
        elif answer.delay:
            await self.clock.sleep(answer.delay)
        if answer.reset and request.transport is not None:
            request.transport.abort()
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    async def __aenter__(self) -> PingReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[PingReceiver]:
    async with PingReceiver() as running:
        yield running


@dataclass
class FakeWatcher:
    """Stands in for the engine: what the heartbeat judges health by."""

    clock: FakeClock
    stalled_at: float | None = None
    store_failing_since: float | None = None
    upstream_failing_since: float | None = None

    @property
    def last_turn(self) -> float:
        """Now, unless the scheduler stalled."""
        return self.stalled_at if self.stalled_at is not None else self.clock.monotonic()


class RecordingObserver:
    """Keeps every ping result; `after` runs a step after the ping it names (0-based)."""

    def __init__(self) -> None:
        self.results: list[str] = []
        self.after: dict[int, Callable[[], object]] = {}

    def heartbeat_configured(self) -> None:
        """Nothing to set up."""

    def heartbeat_pinged(self, result: str, at: float) -> None:
        """Record one ping; run the step planned after it."""
        self.results.append(result)
        step = self.after.get(len(self.results) - 1)
        if step is not None:
            step()


@dataclass
class Rig:
    clock: FakeClock
    watcher: FakeWatcher
    observer: RecordingObserver
    heartbeat: Heartbeat


def rig(
    url: str,
    *,
    clock: FakeClock | None = None,
    url_file: str = "",
    observer: Any = None,
) -> Rig:
    """A heartbeat pinging `url` (or `url_file`) every INTERVAL, judging a FakeWatcher."""
    clock = clock or FakeClock()
    watcher = FakeWatcher(clock)
    recorder = RecordingObserver()
    settings_ = HeartbeatSettings.model_validate(
        {"url_file": url_file} if url_file else {"url": url, "interval": INTERVAL}
    )
    heartbeat = Heartbeat(
        url=PushUrl(settings_),
        interval=INTERVAL,
        health=watcher_health(watcher, clock, interval=INTERVAL, stall_after=STALL_AFTER),
        clock=clock,
        observer=observer or recorder,
    )
    return Rig(clock, watcher, recorder, heartbeat)


async def beat_until(r: Rig, done: Callable[[], bool], max_seconds: float = 86_400.0) -> None:
    """Run the heartbeat on the fake clock until `done()`, then cancel it."""
    runner = asyncio.create_task(r.heartbeat.run())
    try:
        await drive_until(
            r.clock, done, busy=lambda: r.heartbeat.in_flight, max_seconds=max_seconds
        )
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def pings_done(r: Rig, count: int) -> Callable[[], bool]:
    return lambda: len(r.observer.results) >= count


def kinds(receiver: PingReceiver) -> list[str]:
    """Each ping as "url" or "fail"."""
    paths = {f"/ping/{TOKEN}": "url", f"/ping/{TOKEN}/fail": "fail"}
    return [paths[ping.path] for ping in receiver.pings]


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == name]


# --- a healthy watcher -------------------------------------------------------------------------


async def test_a_healthy_watcher_posts_an_empty_body_every_interval(
    receiver: PingReceiver,
) -> None:
    r = rig(receiver.url)
    receiver.reset(r.clock)
    start = r.clock.monotonic()
    await beat_until(r, pings_done(r, 4))
    assert kinds(receiver) == ["url"] * 4
    assert [ping.at - start for ping in receiver.pings] == [0, 60, 120, 180]
    assert {ping.method for ping in receiver.pings} == {"POST"}
    assert {ping.body for ping in receiver.pings} == {b""}
    assert receiver.pings[0].headers["user-agent"] == f"cbr-watcher/{__version__}"
    assert r.observer.results == ["ok"] * 4


async def test_metrics_count_pings_and_the_last_success(receiver: PingReceiver) -> None:
    """The two heartbeat families appear once a heartbeat exists, counters from 0."""
    clock = FakeClock()
    metrics = Metrics(clock=clock, process_metrics=False)
    assert b"heartbeat" not in metrics.render()[0]
    r = rig(receiver.url, clock=clock, observer=metrics)
    receiver.reset(clock, [Answer(status=500)])

    def series() -> dict[str, float]:
        text = metrics.render()[0].decode()
        return {
            f"{s.name}{s.labels.get('result', '')}": s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("cbr_watcher_heartbeat") and not s.name.endswith("_created")
        }

    assert series() == {
        "cbr_watcher_heartbeat_pings_totalok": 0,
        "cbr_watcher_heartbeat_pings_totalfail_sent": 0,
        "cbr_watcher_heartbeat_pings_totalerror": 0,
        "cbr_watcher_heartbeat_last_success_timestamp_seconds": 0,
    }
    r.watcher.store_failing_since = clock.monotonic()
    await beat_until(r, lambda: len(receiver.pings) >= 2 and not r.heartbeat.in_flight)
    r.watcher.store_failing_since = None
    await beat_until(r, lambda: len(receiver.pings) >= 3 and not r.heartbeat.in_flight)
    assert series() == {
        "cbr_watcher_heartbeat_pings_totalok": 1,
        "cbr_watcher_heartbeat_pings_totalfail_sent": 1,
        "cbr_watcher_heartbeat_pings_totalerror": 1,
        "cbr_watcher_heartbeat_last_success_timestamp_seconds": clock.wall(),
    }


# --- an unhealthy watcher ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trouble", "expected", "reason"),
    [
        pytest.param("store", ["fail"] * 6, "state store failing writes", id="store-failing"),
        pytest.param(
            "scheduler", ["url"] + ["fail"] * 5, "scheduler stalled", id="scheduler-stalled"
        ),
        # 5 × interval without an answer: the sixth ping (at 300 s) is the first /fail.
        pytest.param("api", ["url"] * 5 + ["fail"], "CBR API failing", id="api-silent"),
    ],
)
async def test_an_unhealthy_watcher_posts_to_fail_saying_why(
    receiver: PingReceiver, trouble: str, expected: list[str], reason: str
) -> None:
    r = rig(receiver.url)
    receiver.reset(r.clock)
    now = r.clock.monotonic()
    if trouble == "store":
        r.watcher.store_failing_since = now
    elif trouble == "scheduler":
        r.watcher.stalled_at = now
    else:
        r.watcher.upstream_failing_since = now
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 6))
    assert kinds(receiver) == expected
    first_fail = receiver.pings[expected.index("fail")]
    assert first_fail.body.decode().startswith(f"cbr-watcher is unhealthy: {reason}")
    assert first_fail.headers["content-type"].startswith("text/plain")
    assert len(first_fail.body) <= 512
    assert r.observer.results == ["ok" if kind == "url" else "fail_sent" for kind in expected]
    [unhealthy] = events(logs, "heartbeat.unhealthy")
    assert reason in unhealthy["reasons"][0]
    assert unhealthy["log_level"] == "warning"


async def test_api_failures_shorter_than_five_intervals_stay_healthy(
    receiver: PingReceiver,
) -> None:
    """A failing streak that ends before 5 × interval never turns a ping into /fail, and a
    watcher that asks the API nothing is healthy however long it is idle."""
    r = rig(receiver.url)
    receiver.reset(r.clock)
    r.watcher.upstream_failing_since = r.clock.monotonic()
    r.observer.after = {3: lambda: setattr(r.watcher, "upstream_failing_since", None)}
    await beat_until(r, pings_done(r, 12))
    assert kinds(receiver) == ["url"] * 12


async def test_recovery_goes_back_to_the_url_and_is_logged_once(receiver: PingReceiver) -> None:
    r = rig(receiver.url)
    receiver.reset(r.clock)

    def store(failing: bool) -> Callable[[], None]:
        return lambda: setattr(
            r.watcher, "store_failing_since", r.clock.monotonic() if failing else None
        )

    r.observer.after = {0: store(True), 2: store(False), 3: store(True), 4: store(False)}
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 6))
    assert kinds(receiver) == ["url", "fail", "fail", "url", "fail", "url"]
    names = [line["event"] for line in logs]
    assert names.count("heartbeat.unhealthy") == 2  # once per streak, not per ping
    assert names.count("heartbeat.healthy") == 2
    assert events(logs, "heartbeat.healthy")[0]["unhealthy_seconds"] == 120


async def test_a_broken_health_check_reports_itself_as_unhealthy(
    receiver: PingReceiver,
) -> None:
    """A bug in judging health is a /fail (and one error line), not a silent heartbeat."""
    r = rig(receiver.url)
    receiver.reset(r.clock)

    def broken() -> list[str]:
        raise RuntimeError("boom")

    r.heartbeat = Heartbeat(
        url=PushUrl(HeartbeatSettings.model_validate({"url": receiver.url})),
        interval=INTERVAL,
        health=broken,
        clock=r.clock,
        observer=r.observer,
    )
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 2))
    assert kinds(receiver) == ["fail", "fail"]
    assert receiver.pings[0].body == b"cbr-watcher is unhealthy: health check failed (RuntimeError)"
    assert len(events(logs, "heartbeat.health_check_failed")) == 1


# --- a checker in trouble ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trouble", "result"),
    [
        pytest.param(Answer(status=500), "http_error", id="500"),
        pytest.param(Answer(status=404), "http_error", id="404"),
        pytest.param(Answer(status=302, headers={"Location": "/elsewhere"}), "redirect", id="302"),
        pytest.param(Answer(delay=PING_TIMEOUT + 5), "timeout", id="slow"),
        pytest.param(Answer(reset=True), "connection_error", id="reset"),
    ],
)
async def test_a_checker_in_trouble_is_logged_once_per_streak(
    receiver: PingReceiver, trouble: Answer, result: str
) -> None:
    """Three bad answers, then a good one: one warning, one recovery line, pings on rhythm,
    and no redirect followed."""
    r = rig(receiver.url)
    receiver.reset(r.clock, [trouble] * 3)
    start = r.clock.monotonic()
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 5))
    assert r.observer.results == ["error"] * 3 + ["ok"] * 2
    assert [ping.at - start for ping in receiver.pings] == [0, 60, 120, 180, 240]
    assert kinds(receiver) == ["url"] * 5  # a Location is never followed
    [failing] = events(logs, "heartbeat.failing")
    assert failing["result"] == result
    assert failing["log_level"] == "warning"
    [recovered] = events(logs, "heartbeat.recovered")
    assert recovered["failed_pings"] == 3
    assert TOKEN not in str(logs)


async def test_a_checker_that_is_down_never_stops_the_pings() -> None:
    """Nothing listens: every ping fails at once, one warning in all, the rhythm holds."""
    port = free_port()
    r = rig(f"http://127.0.0.1:{port}/ping/{TOKEN}")
    walls: list[float] = []
    r.observer.after = {n: (lambda: walls.append(r.clock.wall())) for n in range(10)}
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 10))
    assert r.observer.results == ["error"] * 10
    assert [round(b - a) for a, b in itertools.pairwise(walls)] == [60] * 9
    [failing] = events(logs, "heartbeat.failing")
    assert failing["result"] == "connection_error"
    assert failing["url"] == f"http://127.0.0.1:{port}/{REDACTED}"
    assert TOKEN not in str(logs)
    assert not events(logs, "heartbeat.recovered")


async def test_stopping_cancels_a_ping_in_flight_at_once(receiver: PingReceiver) -> None:
    """A checker that never answers cannot hold up a stopping daemon."""
    r = rig(receiver.url)
    receiver.reset(r.clock, [Answer(delay=math.inf)])
    runner = asyncio.create_task(r.heartbeat.run())
    async with asyncio.timeout(10):
        await receiver.arrived.wait()
    assert r.heartbeat.in_flight
    began = time.monotonic()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    assert time.monotonic() - began < 1.0
    assert runner.cancelled()


# --- the URL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hc-ping.com/uuid", "https://hc-ping.com/uuid/fail"),
        ("https://hc-ping.com/uuid/", "https://hc-ping.com/uuid/fail"),
        (
            "https://hc.example.com/ping/key/slug?create=1",
            "https://hc.example.com/ping/key/slug/fail?create=1",
        ),
        ("https://checks.example.com", "https://checks.example.com/fail"),
        (
            "https://kuma.example.com/api/push/tok?status=up&msg=OK&ping=",
            "https://kuma.example.com/api/push/tok/fail?status=up&msg=OK&ping=",
        ),
    ],
)
def test_fail_url_adds_one_segment(url: str, expected: str) -> None:
    assert fail_url(url) == expected


async def test_url_file_is_reread_when_it_changes(receiver: PingReceiver, tmp_path: Path) -> None:
    """A rotated URL is used from the next ping on; a missing file is one warning naming the
    key, and the pings resume once it is back."""
    url_file = tmp_path / "heartbeat-url"
    url_file.write_text(receiver.url + "\n", encoding="utf-8")
    r = rig("", url_file=str(url_file))
    receiver.reset(r.clock)
    rotated = f"{receiver.base}/ping/rotated-{TOKEN}"
    r.observer.after = {
        0: lambda: url_file.write_text(rotated, encoding="utf-8"),
        1: url_file.unlink,
        3: lambda: url_file.write_text(receiver.url, encoding="utf-8"),
    }
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 5))
    assert [ping.path for ping in receiver.pings] == [
        f"/ping/{TOKEN}",
        f"/ping/rotated-{TOKEN}",
        f"/ping/{TOKEN}",
    ]
    assert r.observer.results == ["ok", "ok", "error", "error", "ok"]
    [failing] = events(logs, "heartbeat.failing")
    assert failing["result"] == "url_unusable"
    assert "heartbeat.url_file" in failing["error"]
    assert TOKEN not in str(logs)


async def test_a_url_file_that_holds_no_url_is_never_shown(tmp_path: Path) -> None:
    url_file = tmp_path / "heartbeat-url"
    url_file.write_text("https://hc-ping.com/ok", encoding="utf-8")
    r = rig("", url_file=str(url_file))
    url_file.write_text(f"hc-ping.com/{TOKEN}", encoding="utf-8")
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 2))
    assert r.observer.results == ["error", "error"]
    [failing] = events(logs, "heartbeat.failing")
    assert "holds no http(s) URL" in failing["error"]
    assert TOKEN not in str(logs)


def test_span_reads_like_a_duration() -> None:
    assert [span(s) for s in (0, 0.4, 42, 60, 312.9, 3600, 7385, -1, math.inf)] == [
        "0s",
        "0s",
        "42s",
        "1m0s",
        "5m12s",
        "1h0m",
        "2h3m",
        "0s",
        "0s",
    ]


# --- whatever the checker answers ----------------------------------------------------------------

HEADER_NAMES = ["Retry-After", "Location", "Content-Type", "X-Odd", "Connection", "Set-Cookie"]
ANSWERS = st.builds(
    Answer,
    status=st.integers(min_value=200, max_value=599),
    headers=st.dictionaries(
        st.sampled_from(HEADER_NAMES),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
        max_size=3,
    ),
    body=st.binary(max_size=64) | st.sampled_from([b"", b"OK", b"x" * 200_000]),
    delay=st.sampled_from([0.0, 0.0, 0.5, 9.5, PING_TIMEOUT + 0.5, 45.0, math.inf]),
    reset=st.sampled_from([False, False, False, True]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answers=st.lists(ANSWERS, min_size=1, max_size=3), unhealthy=st.booleans())
async def test_any_answer_leaves_the_heartbeat_beating(
    receiver: PingReceiver, answers: list[Answer], unhealthy: bool
) -> None:
    """Any status, headers, body or delay: one bounded result per ping, never a crash, and the
    next ping on time."""
    r = rig(receiver.url)
    receiver.reset(r.clock, answers)
    if unhealthy:
        r.watcher.store_failing_since = r.clock.monotonic()
    start = r.clock.monotonic()
    await beat_until(r, pings_done(r, len(answers) + 1))
    sent = "fail_sent" if unhealthy else "ok"
    for answer, result in zip(answers, r.observer.results, strict=False):
        accepted = 200 <= answer.status < 300 and answer.delay < PING_TIMEOUT and not answer.reset
        assert result == (sent if accepted else "error"), answer
    assert r.observer.results[-1] == sent
    assert [ping.at - start for ping in receiver.pings] == [
        INTERVAL * n for n in range(len(answers) + 1)
    ]


# --- in the daemon -------------------------------------------------------------------------------


async def test_the_daemon_pings_fail_while_the_cbr_api_refuses_it(
    receiver: PingReceiver,
) -> None:
    """`run` with `[heartbeat]` against the simulator, all on one fake clock: pings while
    CBR answers, /fail once every request has failed for 5 × interval, pings again once it
    answers; the metrics say so, and stopping the daemon stops the pings."""
    clock = FakeClock()
    receiver.reset(clock)
    sim = Simulator(clock, tokens=["good-token"], seed=5)
    task_id = sim.add_task(SimTaskSpec(id="long-backup", waiting=5, running=6 * 3600))
    async with sim.running() as base_url:
        settings_ = load_settings(
            overrides={
                "cbr": {"endpoint": base_url, "project_id": sim.project_id},
                "auth": {"method": "token", "token": "good-token"},
                "watch": {"tasks": [task_id], "poll_interval_max": "60s"},
                "heartbeat": {"url": receiver.url, "interval": "1m"},
                "state": {"path": ":memory:"},
                "server": {"listen": "127.0.0.1:0", "api_listen": ""},
            },
            environ={},
            secrets_dirs=[],
        )
        with capture_logs() as logs:
            daemon, handle = await start_daemon(settings_, clock=clock)
            started = clock.monotonic()

            def pings_sent() -> float:
                [family] = handle.metrics.heartbeat_pings.collect()
                return sum(s.value for s in family.samples if s.name.endswith("_total"))

            def busy() -> bool:
                due = math.floor((clock.monotonic() - started) / INTERVAL) + 1
                return handle.engine.in_flight > 0 or pings_sent() < due

            async def until(done: Callable[[], bool]) -> None:
                await drive_until(clock, done, busy=busy, max_seconds=3600)

            try:
                await until(lambda: len(receiver.pings) >= 2)
                sim.set_tokens(["another-token"])  # every request fails from now on
                await until(lambda: "fail" in kinds(receiver))
                sim.set_tokens(["good-token"])
                await until(lambda: kinds(receiver)[-1] == "url")
            finally:
                handle.engine.stop()
                await drive_until(clock, daemon.done, busy=busy)
            assert daemon.result() == 0
    seen = kinds(receiver)
    first_fail = seen.index("fail")
    assert seen == ["url"] * first_fail + ["fail"] * (len(seen) - first_fail - 1) + ["url"]
    assert first_fail >= 6  # revoked after the second ping, then 5 intervals of failures
    assert b"CBR API failing every request" in receiver.pings[first_fail].body
    assert [p.at - started for p in receiver.pings] == [INTERVAL * n for n in range(len(seen))]
    [family] = handle.metrics.heartbeat_pings.collect()
    counts = {s.labels["result"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counts == {"ok": first_fail + 1, "fail_sent": len(seen) - first_fail - 1, "error": 0}
    assert len(events(logs, "heartbeat.unhealthy")) == 1
    assert len(events(logs, "heartbeat.healthy")) == 1
    assert TOKEN not in str(logs)


async def test_a_bug_after_a_ping_is_logged_once_and_the_pings_go_on(
    receiver: PingReceiver,
) -> None:
    """Whatever raises around a ping (here: the metrics), the next ping is still sent."""

    class BrokenObserver(RecordingObserver):
        def heartbeat_pinged(self, result: str, at: float) -> None:
            super().heartbeat_pinged(result, at)
            raise RuntimeError("metrics broke")

    observer = BrokenObserver()
    r = rig(receiver.url, observer=observer)
    r.observer = observer
    receiver.reset(r.clock)
    with capture_logs() as logs:
        await beat_until(r, pings_done(r, 3))
    assert kinds(receiver) == ["url"] * 3
    assert len(events(logs, "heartbeat.internal_error")) == 1
