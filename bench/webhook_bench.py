"""Webhook delivery benchmark: N events through the SQLite outbox to one local receiver.

    .venv/bin/python bench/webhook_bench.py --events 1000

Measures deliveries per second and latency from detection (the event's timestamp, when the
engine committed it) to the receiver having the request, on real time. The receiver runs in
a separate process so its CPU does not count against the deliverer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from watcher.cli.wiring import build_outbox
from watcher.clock import RealClock
from watcher.config import WebhookSettings
from watcher.delivery.webhooks import Deliverer, Receiver
from watcher.engine.events import TaskEvent
from watcher.observe.logs import configure_logging
from watcher.state.sqlite import Store

SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-32-bytes-long!!").decode()

RECEIVER = """
import asyncio, json, sys, time
from aiohttp import web

received = []

async def hook(request):
    await request.read()
    received.append((request.headers["webhook-id"], time.time()))
    return web.Response(status=204)

async def dump(request):
    return web.json_response(received)

async def main():
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/received", dump)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def fetch_received(port: int) -> list[tuple[str, float]]:
    """What the receiver process got: (webhook-id, arrival time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /received HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    body = raw.split(b"\r\n\r\n", 1)[1]
    return [(str(a), float(b)) for a, b in json.loads(body)]


async def run(events: int, concurrency: int, rate: float) -> dict[str, Any]:
    """Enqueue `events` task events as the engine would, deliver them, and measure."""
    configure_logging(level="warning", fmt="json", stream=sys.stderr)
    port = free_port()
    receiver_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, str(port), stdout=subprocess.PIPE
    )
    assert receiver_proc.stdout is not None
    await receiver_proc.stdout.readline()
    clock = RealClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(str(Path(tmp) / "bench.db"))
        settings = WebhookSettings.model_validate(
            {"name": "bench", "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}
        )
        deliverer = Deliverer(
            store=store,
            receivers=[Receiver(settings)],
            clock=clock,
            concurrency=concurrency,
        )
        outbox = build_outbox([settings], project_id="p")
        runner = asyncio.create_task(deliverer.run())
        created: dict[str, float] = {}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for n in range(events):
            event = TaskEvent(
                type="task.succeeded",
                task_id=f"task-{n:05d}",
                occurred_at=clock.wall(),
                status="success",
                previous_status="running",
                progress=100,
            )
            entries = outbox.entries(event)
            await store.enqueue(entries)
            deliverer.wake()
            created[entries[0].event_id] = event.occurred_at
            if rate:
                await asyncio.sleep(1 / rate)
        await deliverer.wait_drained(600)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        await deliverer.stop()
        await runner
        await store.close()
    received = await fetch_received(port)
    receiver_proc.terminate()
    await receiver_proc.wait()
    latencies = [arrived - created[eid] for eid, arrived in received if eid in created]
    return {
        "events": events,
        "delivered": len({eid for eid, _ in received}),
        "duplicates": len(received) - len({eid for eid, _ in received}),
        "per_receiver_concurrency": concurrency,
        "offered_rate": rate or "burst",
        "wall_seconds": round(wall, 3),
        "deliveries_per_second": round(events / wall, 1),
        "cpu_seconds": round(cpu, 3),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    """Parse flags, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4, help="in flight per receiver")
    parser.add_argument("--rate", type=float, default=0, help="events per second (0: burst)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.events, args.concurrency, args.rate)), indent=2))


if __name__ == "__main__":
    main()
