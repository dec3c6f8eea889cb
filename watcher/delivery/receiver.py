"""The demo's local webhook receiver: checks every signature, deduplicates by `webhook-id` and
remembers what arrived.

What every receiver should do: delivery is at least once (a retry after a lost answer, a
restart, or a second replica sending the same event), and `webhook-id` is the same for every
copy of one event. So: verify, then act on an ID only the first time, and answer 2xx to a
duplicate too, so that its sender stops retrying it.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

from watcher.clock import Clock
from watcher.delivery.signing import SignatureError, parse_whsec, verify
from watcher.net.listener import HttpListener


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    """One POST the receiver got."""

    webhook_id: str
    event_type: str
    task_id: str | None
    verified: bool
    problem: str
    duplicate: bool = False
    """A verified copy of an event already received: a retry, or another replica's copy."""
    body: bytes = b""


class DemoReceiver:
    """An aiohttp receiver on 127.0.0.1 that verifies Standard Webhooks signatures."""

    def __init__(self, clock: Clock) -> None:
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self._keys = parse_whsec(self.secret)
        self._clock = clock
        self.received: list[ReceivedWebhook] = []
        """Every POST, duplicates and bad signatures included."""
        self.first: dict[str, bytes] = {}
        """The body of the first verified copy of each event, by `webhook-id`."""
        self.duplicates = 0
        """Verified copies of events already received (acknowledged, not acted on again)."""
        self.url = ""
        self._listener: HttpListener | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        try:
            verify(
                self._keys,
                msg_id=headers.get("webhook-id", ""),
                timestamp=headers.get("webhook-timestamp", ""),
                signature_header=headers.get("webhook-signature", ""),
                body=body,
                now=self._clock.wall(),
            )
            verified, problem = True, ""
        except SignatureError as error:
            verified, problem = False, str(error)
        try:
            payload = json.loads(body)
            event_type = str(payload.get("type"))
            task_id = payload.get("data", {}).get("task_id")
        except (ValueError, AttributeError):
            event_type, task_id = "?", None
        webhook_id = headers.get("webhook-id", "")
        # Only a verified ID counts: an unsigned request must not be able to mask a real event.
        duplicate = verified and webhook_id in self.first
        if duplicate:
            self.duplicates += 1
        elif verified:
            self.first[webhook_id] = body
        self.received.append(
            ReceivedWebhook(webhook_id, event_type, task_id, verified, problem, duplicate, body)
        )
        return web.Response(status=204 if verified else 401)

    async def __aenter__(self) -> DemoReceiver:
        """Listen on a free port of 127.0.0.1; `url` is the webhook URL to configure."""
        app = web.Application()
        app.router.add_post("/webhooks/cbr", self._handle)
        listener = HttpListener(app, "127.0.0.1:0", name="demo-receiver")
        await listener.start()
        self._listener = listener
        self.url = f"{listener.url}/webhooks/cbr"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
