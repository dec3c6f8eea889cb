"""The demo's local webhook receiver: checks every signature and remembers what arrived."""

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


class DemoReceiver:
    """An aiohttp receiver on 127.0.0.1 that verifies Standard Webhooks signatures."""

    def __init__(self, clock: Clock) -> None:
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self._keys = parse_whsec(self.secret)
        self._clock = clock
        self.received: list[ReceivedWebhook] = []
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
        self.received.append(
            ReceivedWebhook(headers.get("webhook-id", ""), event_type, task_id, verified, problem)
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
