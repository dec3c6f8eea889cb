"""Webhook delivery from the outbox: at least once, signed, per-receiver, never blocking polls.

The deliverer only reads due rows, signs, POSTs, classifies the answer and reschedules: which
receiver gets which event, in which bytes, was decided when the row was written (see
`watcher.delivery.outbox`). Each receiver has its own loop and its own bound on requests in
flight, so a
slow or dead receiver delays nobody else. Events for one task reach a receiver in the order they
were created (the store only offers a task's oldest undelivered event). A 2xx deletes the row; a
410 disables the receiver until restart; 429/502/503/504 honour Retry-After; anything else
backs off with full jitter until `max_age`, then the event becomes a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog

from watcher.backoff import full_jitter
from watcher.clock import Clock
from watcher.config import WebhookSettings
from watcher.delivery.signing import parse_whsec, sign
from watcher.filevalue import FileValue
from watcher.net.client import USER_AGENT, parse_retry_after
from watcher.state.rows import PendingDelivery
from watcher.state.sqlite import Store

log = structlog.get_logger("watcher.webhooks")

RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_FLOOR = 1.0
BACKOFF_BASE = 2.0
BACKOFF_CAP = 900.0
PER_RECEIVER_CONCURRENCY = 4
IDLE_RECHECK = 30.0
LOOP_FAILURE_PAUSE = 5.0
"""After an unexpected failure in a receiver's loop (e.g. the state store), wait this long."""


class DeliveryObserver(Protocol):
    """Where delivery metrics go (the metrics module implements it)."""

    def webhook_attempt(self, receiver: str, result: str) -> None:
        """One HTTP attempt finished with `result`."""
        ...

    def webhook_delivered(self, receiver: str, outcome: str, latency: float) -> None:
        """An event left the outbox: "delivered" or "dead_lettered"."""
        ...

    def set_queue_depth(self, receiver: str, depth: int) -> None:
        """Undelivered events for `receiver`."""
        ...

    def set_receiver_disabled(self, receiver: str, disabled: bool) -> None:
        """Whether `receiver` was disabled by a 410."""
        ...


class NullObserver:
    """A DeliveryObserver that records nothing."""

    def webhook_attempt(self, receiver: str, result: str) -> None:
        """Ignore."""

    def webhook_delivered(self, receiver: str, outcome: str, latency: float) -> None:
        """Ignore."""

    def set_queue_depth(self, receiver: str, depth: int) -> None:
        """Ignore."""

    def set_receiver_disabled(self, receiver: str, disabled: bool) -> None:
        """Ignore."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST produced."""

    ok: bool
    result: str
    """A bounded label: success, redirect, client_error, gone, throttled, server_error,
    timeout, connection_error."""
    status: int | None
    retry_after: float | None
    error: str
    elapsed: float


class Receiver:
    """One configured `[[webhooks]]` entry, with its URL and secret re-read from files."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.disabled = False
        self._url_file = (
            FileValue(settings.url_file, key="webhooks.url_file") if (settings.url_file) else None
        )
        self._secret_file = (
            FileValue(settings.secret_file, key="webhooks.secret_file")
            if settings.secret_file
            else None
        )

    def url(self) -> str:
        """The URL to POST to."""
        return self._url_file.read() if self._url_file else str(self.settings.url)

    def keys(self) -> list[bytes]:
        """Signing keys; empty means unsigned."""
        if self._secret_file is not None:
            return parse_whsec(self._secret_file.read())
        secret = self.settings.secret.get_secret_value()
        return parse_whsec(secret) if secret else []

    def extra_headers(self) -> dict[str, str]:
        """The configured extra headers (e.g. Authorization)."""
        return {k: v.get_secret_value() for k, v in self.settings.headers.items()}


class Deliverer:
    """Delivers outbox rows to every receiver until stopped."""

    def __init__(
        self,
        *,
        store: Store,
        receivers: Sequence[Receiver],
        clock: Clock,
        observer: DeliveryObserver | None = None,
        concurrency: int = PER_RECEIVER_CONCURRENCY,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self.receivers = {receiver.name: receiver for receiver in receivers}
        self._clock = clock
        self._observer: DeliveryObserver = observer or NullObserver()
        self._concurrency = concurrency
        self._rng = rng or random.Random()
        self._wake = {name: asyncio.Event() for name in self.receivers}
        self._in_flight: dict[str, dict[str, asyncio.Task[None]]] = {
            name: {} for name in self.receivers
        }
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        for name in self.receivers:
            self._observer.set_receiver_disabled(name, False)

    @property
    def in_flight(self) -> int:
        """Delivery attempts under way, across receivers."""
        return sum(len(running) for running in self._in_flight.values())

    def wake(self, receivers: Iterable[str] | None = None) -> None:
        """New rows were committed: look at the outbox now."""
        for name in receivers if receivers is not None else self.receivers:
            if name in self._wake:
                self._wake[name].set()

    # ---- the loops --------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until `stop()`; one loop per receiver."""
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=None),
        )
        try:
            async with asyncio.TaskGroup() as group:
                for name in self.receivers:
                    group.create_task(self._receiver_loop(name), name=f"webhooks {name}")
        finally:
            await self._session.close()
            self._session = None

    async def stop(self, grace: float = 5.0) -> None:
        """Stop starting attempts; give in-flight ones `grace` seconds, then cancel them."""
        self._stopping = True
        for event in self._wake.values():
            event.set()
        pending = [t for running in self._in_flight.values() for t in running.values()]
        if not pending:
            return
        try:
            async with self._clock.timeout(grace):
                await asyncio.gather(*pending, return_exceptions=True)
        except TimeoutError:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def wait_drained(self, limit: float) -> bool:
        """Wait until no enabled receiver has queued events, at most `limit` seconds."""
        deadline = self._clock.monotonic() + limit
        while True:
            depths = await self._store.queue_depths()
            pending = [n for n, r in self.receivers.items() if not r.disabled and depths.get(n)]
            if not pending:
                return True
            if self._clock.monotonic() >= deadline:
                durable = self._store.path != ":memory:"
                log.warning(
                    "webhooks.undelivered_at_exit",
                    receivers=pending,
                    detail=(
                        "kept in the outbox for the next run"
                        if durable
                        else 'lost at exit: state.path is ":memory:", so nothing is kept'
                    ),
                )
                return False
            await self._clock.sleep(0.2)

    async def _receiver_loop(self, name: str) -> None:
        failing = False
        while not self._stopping:
            try:
                await self._deliver_until_stopped(name)
            except Exception as error:
                # The loop must outlive a failing state store or a bug: pause, then go on.
                if not failing:
                    log.error(
                        "webhooks.loop_failed",
                        receiver=name,
                        error_type=type(error).__name__,
                        error=str(error)[:200],
                        detail=f"retrying every {LOOP_FAILURE_PAUSE:g}s",
                    )
                failing = True
                await self._clock.sleep(LOOP_FAILURE_PAUSE)

    async def _deliver_until_stopped(self, name: str) -> None:
        receiver = self.receivers[name]
        wake = self._wake[name]
        running = self._in_flight[name]
        await self._publish_depth(name)
        while not self._stopping:
            wake.clear()
            delay = IDLE_RECHECK
            if not receiver.disabled:
                free = self._concurrency - len(running)
                now = self._clock.wall()
                if free > 0:
                    rows = await self._store.due(name, now, limit=free, exclude_tasks=running)
                    for row in rows:
                        task = asyncio.create_task(self._attempt(receiver, row))
                        running[row.task_id] = task
                        task.add_done_callback(functools.partial(self._done, name, row.task_id))
                next_at = await self._store.next_attempt_at(name, exclude_tasks=running)
                if next_at is not None and next_at > now:
                    delay = min(delay, next_at - now)
                elif next_at is not None and len(running) < self._concurrency:
                    delay = 0.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with self._clock.timeout(delay):
                        await wake.wait()
            else:
                await asyncio.sleep(0)

    def _done(self, name: str, task_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight[name].pop(task_id, None)
        self._wake[name].set()

    async def _publish_depth(self, name: str) -> None:
        depths = await self._store.queue_depths()
        self._observer.set_queue_depth(name, depths.get(name, 0))

    # ---- one attempt ------------------------------------------------------------------------

    async def _attempt(self, receiver: Receiver, row: PendingDelivery) -> None:
        try:
            await self._attempt_once(receiver, row)
        except Exception as error:
            # Whatever went wrong after the POST (the store, a bug), the row is not lost: it
            # stays in the outbox. Holding this task's slot for a backoff keeps it from being
            # offered again at once, so a failure can never turn into a tight re-send loop.
            log.error(
                "webhook.attempt_failed",
                receiver=receiver.name,
                event_id=row.event_id,
                error_type=type(error).__name__,
                error=str(error)[:200],
            )
            await self._clock.sleep(self._backoff(row.attempts))

    async def _attempt_once(self, receiver: Receiver, row: PendingDelivery) -> None:
        result = await self.post(receiver, row.event_id, row.body)
        name = receiver.name
        self._observer.webhook_attempt(name, result.result)
        now = self._clock.wall()
        if result.ok:
            await self._store.delivered(row.row_id)
            self._observer.webhook_delivered(name, "delivered", max(0.0, now - row.created))
            log.debug(
                "webhook.delivered", receiver=name, event_id=row.event_id, attempts=row.attempts + 1
            )
        elif result.result == "gone":
            receiver.disabled = True
            self._observer.set_receiver_disabled(name, True)
            await self._store.retry_later(row.row_id, next_attempt=now, error=result.error)
            log.error(
                "webhook.receiver_disabled",
                receiver=name,
                status=410,
                detail="the receiver answered 410 Gone; disabled until restart",
            )
        else:
            await self._failed(receiver, row, result, now)
        await self._publish_depth(name)

    async def _failed(
        self, receiver: Receiver, row: PendingDelivery, result: AttemptResult, now: float
    ) -> None:
        name, max_age = receiver.name, receiver.settings.max_age
        if now - row.created >= max_age:
            await self._store.dead_letter(row.row_id, now=now, reason="max_age", error=result.error)
            self._observer.webhook_delivered(name, "dead_lettered", now - row.created)
            log.error(
                "webhook.dead_lettered",
                receiver=name,
                event_id=row.event_id,
                event_type=row.event_type,
                task_id=row.task_id,
                attempts=row.attempts + 1,
                error=result.error,
            )
            return
        delay = self._backoff(row.attempts)
        if result.retry_after is not None and result.status in RETRY_AFTER_STATUSES:
            delay = max(delay, result.retry_after)
        # The last try lands exactly at max_age, so a receiver back in time still gets it.
        next_attempt = min(now + delay, row.created + max_age)
        await self._store.retry_later(row.row_id, next_attempt=next_attempt, error=result.error)
        log.info(
            "webhook.retry_scheduled",
            receiver=name,
            event_id=row.event_id,
            attempt=row.attempts + 1,
            result=result.result,
            status=result.status,
            error=result.error,
            retry_in=round(next_attempt - now, 3),
        )

    def _backoff(self, attempts: int) -> float:
        """Seconds before the next attempt of a row that failed `attempts` times before."""
        return full_jitter(
            attempts, base=BACKOFF_BASE, cap=BACKOFF_CAP, floor=BACKOFF_FLOOR, rng=self._rng
        )

    async def post(self, receiver: Receiver, msg_id: str, body: bytes) -> AttemptResult:
        """One signed attempt through the deliverer's session."""
        assert self._session is not None, "post() is used while run() is active"
        return await post_once(self._session, receiver, msg_id, body, clock=self._clock)


async def post_once(
    session: aiohttp.ClientSession, receiver: Receiver, msg_id: str, body: bytes, *, clock: Clock
) -> AttemptResult:
    """POST `body` once, signed with a fresh timestamp. Never raises: whatever happens is an
    AttemptResult, and an answer with a 2xx status is a success whatever else it holds."""
    started = clock.monotonic()

    def failed(result: str, error: str) -> AttemptResult:
        return AttemptResult(False, result, None, None, error, clock.monotonic() - started)

    status: int | None = None
    try:
        timestamp = int(clock.wall())
        headers = {
            **receiver.extra_headers(),
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        keys = receiver.keys()
        if keys:
            headers["webhook-signature"] = sign(keys, msg_id, timestamp, body)
        async with (
            clock.timeout(receiver.settings.timeout),
            session.post(
                receiver.url(), data=body, headers=headers, allow_redirects=False
            ) as response,
        ):
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=clock.wall())
            await response.read()
        return _classify(status, retry_after, clock.monotonic() - started)
    except Exception as error:
        if status is not None and 200 <= status < 300:
            # Accepted; a body cut short afterwards does not make it undelivered.
            return _classify(status, None, clock.monotonic() - started)
        if isinstance(error, TimeoutError):
            return failed("timeout", f"no answer within {receiver.settings.timeout:g}s")
        reason = (
            f"{type(error).__name__}: {str(error)[:200]}" if str(error) else type(error).__name__
        )
        if isinstance(error, aiohttp.ClientError | OSError | ValueError):
            return failed("connection_error", reason)
        return failed("other", reason)


def _classify(status: int, retry_after: float | None, elapsed: float) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult(True, "success", status, None, "", elapsed)
    if status == 410:
        result = "gone"
    elif status == 429:
        result = "throttled"
    elif 300 <= status < 400:
        result = "redirect"
    elif status >= 500:
        result = "server_error"
    else:
        result = "client_error"
    return AttemptResult(False, result, status, retry_after, f"HTTP {status}", elapsed)
