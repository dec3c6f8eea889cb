"""The heartbeat: a dead man's switch for the watcher itself (docs/coverage.md#heartbeat).

Every `interval` one POST: an empty body to the URL while the watcher is healthy, a short
text saying why to `<url>/fail` while it is not. The checker (Healthchecks, Cronitor, Uptime
Kuma, ...) alerts when the pings stop or fail. A ping is never retried (the next one is the
retry), nothing here can stop or slow the daemon, and every failure is logged once per streak.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from watcher.clock import Clock
from watcher.config import HeartbeatSettings
from watcher.config.types import CONTROL, is_http_url
from watcher.filevalue import FileValue
from watcher.net.client import USER_AGENT
from watcher.redaction import redact_text, redact_token_url

log = structlog.get_logger("watcher.heartbeat")

API_SILENCE_INTERVALS = 5
"""The CBR API counts as silent once every request has failed for this many intervals."""
PING_TIMEOUT = 10.0
"""The longest one ping may take (never longer than the interval)."""
BODY_LIMIT = 512
"""The /fail body is cut to this many bytes."""
_DRAIN_LIMIT = 64 * 1024
"""Read at most this much of an answer (enough for keep-alive; a huge one is not read)."""
_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SHORTEST_HIDDEN_PATH = 8
"""A path this long or longer is cut out of error texts even where it appears alone."""

HealthProbe = Callable[[], Sequence[str]]
"""Why the watcher is unhealthy right now; empty when it is healthy."""


class WatcherState(Protocol):
    """What the heartbeat judges the watcher by (the engine has all three)."""

    @property
    def last_turn(self) -> float:
        """When the scheduler loop last turned (monotonic seconds)."""
        ...

    @property
    def store_failing_since(self) -> float | None:
        """Monotonic time the current streak of failed state writes began, or None."""
        ...

    @property
    def upstream_failing_since(self) -> float | None:
        """Monotonic time the current streak of failed CBR requests began, or None."""
        ...


class HeartbeatObserver(Protocol):
    """Where heartbeat metrics go (the metrics module implements it)."""

    def heartbeat_configured(self) -> None:
        """A heartbeat exists: its series start at 0."""
        ...

    def heartbeat_pinged(self, result: str, at: float) -> None:
        """One ping ended: "ok", "fail_sent" or "error"; `at` in epoch seconds."""
        ...


class _NullObserver:
    def heartbeat_configured(self) -> None:
        """Ignore."""

    def heartbeat_pinged(self, result: str, at: float) -> None:
        """Ignore."""


def watcher_health(
    state: WatcherState, clock: Clock, *, interval: float, stall_after: float
) -> HealthProbe:
    """The heartbeat's health rule: the scheduler turned within `stall_after` seconds, the
    state store takes writes, and the CBR API has not failed every request for
    API_SILENCE_INTERVALS × `interval` (a watcher that asks nothing of it is not unhealthy)."""
    api_silence = API_SILENCE_INTERVALS * interval

    def reasons() -> list[str]:
        now = clock.monotonic()
        found = []
        stalled = now - state.last_turn
        if stalled > stall_after:
            found.append(f"scheduler stalled for {span(stalled)}")
        store = state.store_failing_since
        if store is not None:
            found.append(f"state store failing writes for {span(now - store)}")
        upstream = state.upstream_failing_since
        if upstream is not None and now - upstream >= api_silence:
            found.append(f"CBR API failing every request for {span(now - upstream)}")
        return found

    return reasons


def span(seconds: float) -> str:
    """A duration for people, to the second: "42s", "5m12s", "3h0m"."""
    whole = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def fail_url(url: str) -> str:
    """`<url>/fail`: one more path segment (a trailing slash is not doubled), query kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/fail"))


def new_session() -> aiohttp.ClientSession:
    """The heartbeat's HTTP session: our User-Agent, the system's CAs, and no timeout of its
    own (each ping has one on the injected clock)."""
    return aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT}, timeout=aiohttp.ClientTimeout(total=None)
    )


@dataclass(frozen=True, slots=True)
class PingOutcome:
    """What one ping produced."""

    ok: bool
    kind: str
    """success, redirect, http_error, timeout, connection_error, url_unusable or other."""
    status: int | None = None
    error: str = ""


class PushUrl:
    """The configured URL, or the one in `url_file` (re-read when the file changes)."""

    def __init__(self, settings: HeartbeatSettings) -> None:
        self._value = settings.url.get_secret_value()
        self._file = (
            FileValue(settings.url_file, key="heartbeat.url_file") if settings.url_file else None
        )

    def current(self) -> str:
        """The URL to ping; OSError/ValueError (naming the key, never the content) when the
        file cannot be read or does not hold an http(s) URL."""
        if self._file is None:
            return self._value
        url = self._file.read()
        if not is_http_url(url) or CONTROL.search(url) or any(c.isspace() for c in url):
            raise ValueError(f"heartbeat.url_file {str(self._file.path)!r} holds no http(s) URL")
        return url

    @property
    def shown(self) -> str:
        """The URL as logs may show it: the host, nothing after it; or the file's path."""
        if self._file is not None:
            return f"url_file {str(self._file.path)!r}"
        return redact_token_url(self._value)


class Heartbeat:
    """Pings the push URL every `interval` until cancelled."""

    def __init__(
        self,
        *,
        url: PushUrl,
        interval: float,
        health: HealthProbe,
        clock: Clock,
        observer: HeartbeatObserver | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] = new_session,
        timeout: float = PING_TIMEOUT,
    ) -> None:
        self._url = url
        self.interval = interval
        self._health = health
        self._clock = clock
        self._observer: HeartbeatObserver = observer or _NullObserver()
        self._session_factory = session_factory
        self._timeout = min(timeout, interval)
        self._unhealthy_since: float | None = None
        self._failing_since: float | None = None
        self._failed_pings = 0
        self._probe_failed = False
        self.in_flight = False
        """Whether a ping is under way."""
        self._observer.heartbeat_configured()

    @classmethod
    def from_settings(
        cls,
        settings: HeartbeatSettings,
        *,
        health: HealthProbe,
        clock: Clock,
        observer: HeartbeatObserver | None = None,
    ) -> Heartbeat:
        """A heartbeat for `[heartbeat]`."""
        return cls(
            url=PushUrl(settings),
            interval=settings.interval,
            health=health,
            clock=clock,
            observer=observer,
        )

    async def run(self) -> None:
        """Ping now, then every `interval`, until cancelled; nothing else ends it.

        Cancelling it cancels a ping in flight at once: a stopping daemon never waits for one.
        """
        log.info("heartbeat.started", url=self._url.shown, interval_seconds=self.interval)
        async with self._session_factory() as session:
            next_at = self._clock.monotonic()
            broken = False
            while True:
                try:
                    await self.beat(session)
                    broken = False
                except Exception as error:
                    # `beat` handles every failure of a ping; this is a bug, and a bug must
                    # not end the heartbeat (nor surface at shutdown). Logged once per streak.
                    if not broken:
                        log.error(
                            "heartbeat.internal_error",
                            error_type=type(error).__name__,
                            error=_scrubbed(str(error), "")[:200],
                        )
                    broken = True
                now = self._clock.monotonic()
                # Keep the rhythm; a ping that overran its slot starts the next one at once.
                next_at = max(next_at + self.interval, now)
                await self._clock.sleep(next_at - now)

    async def beat(self, session: aiohttp.ClientSession) -> str:
        """Judge health, send one ping, log and count what happened; returns the result
        ("ok", "fail_sent" or "error"). Never raises, except when cancelled."""
        reasons = self._judge()
        try:
            url = self._url.current()
        except (OSError, ValueError) as error:
            outcome = PingOutcome(False, "url_unusable", error=str(error)[:200])
            target = ""
        else:
            target = fail_url(url) if reasons else url
            body = _fail_body(reasons) if reasons else b""
            outcome = await self._post(session, target, body)
        result = ("fail_sent" if reasons else "ok") if outcome.ok else "error"
        self._observer.heartbeat_pinged(result, self._clock.wall())
        self._note(outcome, target)
        return result

    def _judge(self) -> list[str]:
        now = self._clock.monotonic()
        try:
            reasons = [str(reason) for reason in self._health()]
        except Exception as error:
            # A broken probe must not silence the heartbeat: it reports itself instead.
            if not self._probe_failed:
                log.error(
                    "heartbeat.health_check_failed",
                    error_type=type(error).__name__,
                    error=str(error)[:200],
                )
            self._probe_failed = True
            reasons = [f"health check failed ({type(error).__name__})"]
        else:
            self._probe_failed = False
        if reasons and self._unhealthy_since is None:
            self._unhealthy_since = now
            log.warning(
                "heartbeat.unhealthy",
                reasons=reasons,
                detail="pinging <url>/fail until the watcher is healthy again",
            )
        elif not reasons and self._unhealthy_since is not None:
            log.info("heartbeat.healthy", unhealthy_seconds=round(now - self._unhealthy_since, 3))
            self._unhealthy_since = None
        return reasons

    async def _post(self, session: aiohttp.ClientSession, url: str, body: bytes) -> PingOutcome:
        """POST once, redirects not followed; never raises, except when cancelled."""
        status: int | None = None
        headers = {"User-Agent": USER_AGENT}
        if body:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        self.in_flight = True
        try:
            async with (
                self._clock.timeout(self._timeout),
                session.post(url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                status = response.status
                await _drain(response)
        except Exception as error:
            if status is not None:
                # Answered; an answer body cut short afterwards changes nothing.
                return _classify(status)
            if isinstance(error, TimeoutError):
                return PingOutcome(False, "timeout", error=f"no answer within {self._timeout:g}s")
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            text = _scrubbed(text, url)[:200]
            kind = (
                "connection_error"
                if isinstance(error, aiohttp.ClientError | OSError | ValueError)
                else "other"
            )
            return PingOutcome(False, kind, error=text)
        finally:
            self.in_flight = False
        return _classify(status)

    def _note(self, outcome: PingOutcome, target: str) -> None:
        """Log the first failure of a streak and the recovery, nothing in between."""
        now = self._clock.monotonic()
        if outcome.ok:
            if self._failing_since is not None:
                log.info(
                    "heartbeat.recovered",
                    failing_seconds=round(now - self._failing_since, 3),
                    failed_pings=self._failed_pings,
                )
                self._failing_since = None
            return
        if self._failing_since is None:
            self._failing_since = now
            self._failed_pings = 0
            log.warning(
                "heartbeat.failing",
                url=redact_token_url(target) if target else self._url.shown,
                result=outcome.kind,
                status=outcome.status,
                error=outcome.error,
                detail="the watcher goes on; the next ping is due in "
                f"{self.interval:g}s (logged once until a ping is accepted)",
            )
        self._failed_pings += 1


def _scrubbed(text: str, url: str) -> str:
    """`text` without the URL: aiohttp puts URLs into some messages, and this one is a
    credential (it may come back normalised, so every URL in the text is cut to its host)."""
    text = _ANY_URL.sub(lambda match: redact_token_url(match[0]), text)
    path = urlsplit(url).path.strip("/")
    return redact_text(text, [path] if len(path) >= _SHORTEST_HIDDEN_PATH else [])


def _fail_body(reasons: Sequence[str]) -> bytes:
    text = "cbr-watcher is unhealthy: " + "; ".join(reasons)
    return text.encode("utf-8")[:BODY_LIMIT]


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a small answer to its end (so the connection can be reused), a large one not."""
    seen = 0
    while seen <= _DRAIN_LIMIT:
        chunk = await response.content.readany()
        if not chunk:
            return
        seen += len(chunk)


def _classify(status: int) -> PingOutcome:
    if 200 <= status < 300:
        return PingOutcome(True, "success", status)
    kind = "redirect" if 300 <= status < 400 else "http_error"
    return PingOutcome(False, kind, status, f"HTTP {status}")


__all__ = [
    "API_SILENCE_INTERVALS",
    "PING_TIMEOUT",
    "Heartbeat",
    "HeartbeatObserver",
    "PingOutcome",
    "PushUrl",
    "WatcherState",
    "fail_url",
    "new_session",
    "span",
    "watcher_health",
]
