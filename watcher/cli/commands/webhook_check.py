"""`cbr-watcher webhook-test NAME`: one signed test.ping to one receiver, and what it answered."""

from __future__ import annotations

import sys

import aiohttp

from watcher.clock import RealClock
from watcher.config import Settings
from watcher.delivery.payloads import ping
from watcher.delivery.webhooks import Receiver, post_once
from watcher.net.client import USER_AGENT

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


async def run_webhook_test_command(settings: Settings, name: str) -> int:
    """Send the ping; 0 when the receiver answered 2xx, 1 otherwise, 2 for an unknown name."""
    by_name = {receiver.name: receiver for receiver in settings.webhooks}
    if name not in by_name:
        known = ", ".join(sorted(by_name)) or "none configured"
        print(f"cbr-watcher: no receiver named {name!r} (receivers: {known})", file=sys.stderr)
        return EXIT_USAGE
    receiver = Receiver(by_name[name])
    clock = RealClock()
    msg_id, body = ping(clock.wall(), receiver=name)
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as s:
        result = await post_once(s, receiver, msg_id, body, clock=clock)
    signed = "signed" if receiver.keys() else "unsigned"
    answer = f"HTTP {result.status}" if result.status is not None else result.error
    print(f"{name}: {answer} in {result.elapsed:.3f}s (test.ping, webhook-id {msg_id}, {signed})")
    if not result.ok and result.status is not None:
        print(f"{name}: {result.result}: {result.error}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED
