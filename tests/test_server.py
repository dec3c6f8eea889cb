"""The metrics listener (docs/metrics.md, "Endpoints"): /metrics negotiation and gzip, /healthz,
/readyz, no access log.

Real sockets on 127.0.0.1 with port 0; liveness is judged on a fake clock, so a "stalled"
loop is a clock moved forward, not a real wait.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Running, World, free_port, make_engine, start_daemon
from watcher.clock import RealClock
from watcher.config import load_settings
from watcher.observe.metrics import Metrics
from watcher.observe.server import STALL_AFTER, Health, HttpListener, start_metrics_listener
from watcher.sim import SimTaskSpec, Simulator
from watcher.testing import FakeClock

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2.42 sends when it scrapes."""


@dataclass
class Loop:
    """Stands in for the engine: only `last_turn` matters to /healthz."""

    last_turn: float


@dataclass
class Served:
    clock: FakeClock
    metrics: Metrics
    health: Health
    loop: Loop
    url: str
    session: aiohttp.ClientSession


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    health = Health(clock)
    loop = Loop(clock.monotonic())
    health.watch_loop(loop)
    health.require("config", "tasks", "listener")
    listener = await start_metrics_listener(metrics, health, "127.0.0.1:0")
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Served(clock, metrics, health, loop, listener.url, session)
    finally:
        await listener.close()


async def test_listener_on_port_zero_reports_its_url(served: Served) -> None:
    """The bound address is known (port 0 picks a free one)."""
    assert served.url.startswith("http://127.0.0.1:")
    assert not served.url.endswith(":0")


async def test_metrics_default_is_text_0_0_4(served: Served) -> None:
    """No Accept header: the classic text format, uncompressed."""
    async with served.session.get(
        served.url + "/metrics", headers={"Accept-Encoding": "identity"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "Content-Encoding" not in response.headers
        text = await response.text()
    assert "# TYPE cbr_watcher_tasks_finished_total counter" in text
    assert "# EOF" not in text


async def test_metrics_openmetrics_when_prometheus_asks(served: Served) -> None:
    """Prometheus's own Accept header gets OpenMetrics 1.0.0."""
    async with served.session.get(
        served.url + "/metrics",
        headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "identity"},
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0"
        )
        text = await response.text()
    assert text.endswith("# EOF\n")
    assert "# TYPE cbr_watcher_tasks_finished counter" in text


async def test_metrics_gzip_when_accepted(served: Served) -> None:
    """Accept-Encoding: gzip → a gzip body that decodes to the same exposition."""
    async with served.session.get(
        served.url + "/metrics", headers={"Accept-Encoding": "gzip, deflate"}
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in response.headers["Vary"]
        raw = await response.read()
    text = gzip.decompress(raw).decode()
    assert "cbr_watcher_api_throttled_total 0.0" in text
    async with served.session.get(
        served.url + "/metrics", headers={"Accept-Encoding": "gzip;q=0"}
    ) as response:
        assert "Content-Encoding" not in response.headers


async def test_healthz_fails_when_the_loop_stalls(served: Served) -> None:
    """Liveness follows the scheduler loop's last turn, on the daemon's clock."""
    async with served.session.get(served.url + "/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    served.clock.advance(STALL_AFTER + 1)
    async with served.session.get(served.url + "/healthz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["status"] == "stalled"
    assert body["seconds_since_loop_turned"] == pytest.approx(STALL_AFTER + 1)
    served.loop.last_turn = served.clock.monotonic()  # the loop turned again
    async with served.session.get(served.url + "/healthz") as response:
        assert response.status == 200


async def test_healthz_follows_a_real_engine(world: World) -> None:
    """Healthy while the engine runs (however far the fake clock moves); not after it stops."""
    world.sim.add_task(SimTaskSpec(id="long", waiting=5, running=3600))
    engine = make_engine(world)
    engine.add("long")
    health = Health(world.clock)
    health.watch_loop(engine)
    async with Running(world, engine) as running:
        await running.until(lambda: world.clock.wall() > engine.tasks["long"].added_wall + 600)
        alive, since = health.liveness()
        assert alive, since
    world.clock.advance(STALL_AFTER + 1)
    assert health.liveness()[0] is False


async def test_readyz_waits_for_every_condition(served: Served) -> None:
    """Ready once config, tasks and listener are in; a later start-up step can add its own."""
    async with served.session.get(served.url + "/readyz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["conditions"] == {"config": False, "tasks": False, "listener": True}
    served.health.mark("config")
    served.health.mark("tasks")
    async with served.session.get(served.url + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"
    served.health.require("state")  # e.g. the state store, restoring
    async with served.session.get(served.url + "/readyz") as response:
        assert response.status == 503


async def test_no_access_log_line_per_request(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Scrapes every few seconds must not flood the log."""
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        for path in ("/metrics", "/healthz", "/readyz"):
            async with served.session.get(served.url + path) as response:
                await response.read()
    assert [r for r in caplog.records if r.name.startswith("aiohttp.access")] == []


async def test_unknown_path_is_404(served: Served) -> None:
    async with served.session.get(served.url + "/nope") as response:
        assert response.status == 404


async def test_address_in_use_raises(served: Served) -> None:
    """A second listener on a taken port fails to start and leaves nothing behind."""
    port = served.url.rsplit(":", 1)[1]
    other = HttpListener(aiohttp.web.Application(), f"127.0.0.1:{port}", name="metrics")
    with pytest.raises(OSError, match="address already in use"):
        await other.start()
    await other.close()


async def assert_port_released(port: int) -> None:
    """Nothing answers on 127.0.0.1:`port` any more, and a new listener can bind it again."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"http://127.0.0.1:{port}/")
    again = HttpListener(aiohttp.web.Application(), f"127.0.0.1:{port}", name="again")
    await again.start()
    await again.close()


async def test_run_daemon_serves_metrics_health_and_readiness() -> None:
    """The wiring in run_daemon: listeners bound, ready, live, task series, API counters and
    the task API; once it stopped, both listeners' ports are free again."""
    sim = Simulator(RealClock(), tokens=["t0ken"], seed=2)
    task_id = sim.add_task(SimTaskSpec(id="wired", waiting=0.1, running=3600))
    api_port = free_port()
    api_auth = {"Authorization": "Bearer api-t0ken"}
    async with sim.running() as base_url:
        settings = load_settings(
            overrides={
                "cbr": {"endpoint": base_url, "project_id": sim.project_id},
                "auth": {"method": "token", "token": "t0ken"},
                "watch": {
                    "tasks": [task_id],
                    "poll_interval_min": "0.1s",
                    "poll_interval_max": "0.2s",
                },
                "state": {"path": ":memory:"},
                "server": {
                    "listen": "127.0.0.1:0",
                    "api_listen": f"127.0.0.1:{api_port}",
                    "api_token": "api-t0ken",
                },
                "webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}],
            },
            environ={},
            secrets_dirs=[],
        )
        daemon, handle = await start_daemon(settings)
        try:
            async with asyncio.timeout(30), aiohttp.ClientSession() as session:
                async with session.get(handle.metrics_url + "/readyz") as response:
                    assert response.status == 200
                    body = await response.json()
                assert body["conditions"] == {
                    "config": True,
                    "state": True,
                    "tasks": True,
                    "listener": True,
                    "store": True,
                }
                async with session.get(handle.metrics_url + "/healthz") as response:
                    assert response.status == 200
                series: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
                running = (
                    "cbr_watcher_task_status",
                    frozenset({("task_id", task_id), ("status", "running")}),
                )
                while series.get(running) != 1:
                    async with session.get(handle.metrics_url + "/metrics") as response:
                        text = await response.text()
                    series = {
                        (s.name, frozenset(s.labels.items())): s.value
                        for family in text_string_to_metric_families(text)
                        for s in family.samples
                    }
                    await asyncio.sleep(0.05)
                ok = (
                    "cbr_watcher_api_requests_total",
                    frozenset({("operation", "show_op_log"), ("code", "200")}),
                )
                assert series[ok] >= 2  # counted by the client's observer
                queue = ("cbr_watcher_webhook_queue_depth", frozenset({("receiver", "ops")}))
                assert queue in series
                api_url = f"http://127.0.0.1:{api_port}/v1/tasks/{task_id}"
                async with session.get(api_url, headers=api_auth) as response:
                    assert response.status == 200
                    assert (await response.json())["source"] == "config"
        finally:
            handle.engine.stop()
            assert await daemon == 0
    await assert_port_released(int(handle.metrics_url.rsplit(":", 1)[1]))
    await assert_port_released(api_port)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(handle.metrics_url):
            pass
