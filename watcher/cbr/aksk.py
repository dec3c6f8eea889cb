"""`auth.method = "aksk"`: every request signed with an access key and secret key.

`AkSkAuthenticator` signs with `watcher.cbr.signer`, adds `X-Project-Id` and, for temporary
credentials, `X-Security-Token`; it watches how its requests are answered (the client calls
`observe_response`) so that a wrong key costs a handful of rejections rather than getting the
key locked by the cloud, and warns when the local clock drifts from the server's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import structlog
from yarl import URL

from watcher.cbr import signer
from watcher.cbr.auth import (
    CredentialsUnavailableError,
    SecretSource,
    check_header_value,
)
from watcher.clock import Clock
from watcher.net.client import parse_http_date
from watcher.redaction import redact_text

log = structlog.get_logger("watcher.auth")

LOCKOUT_FAILURES = 3
"""Consecutive AK/SK rejections after which nothing is signed for a while. The cloud locks an
access key for 5 minutes after more than 5, for every user of that key (see
docs/configuration.md, "Authentication")."""
LOCKOUT_PAUSES = (300.0, 900.0, 3600.0)
"""The pause after the first lockout, the second, and every later one; each pause ends with a
single probe, so a key that stays wrong costs 5 rejections in the first 80 minutes, then one
an hour."""
PROBE_WAIT_SECONDS = 60.0
"""How long requests wait for the verdict on a probe before one of them probes instead."""
SKEW_WARNING_SECONDS = 300.0
"""Warn when the server's `Date` is this far off; signatures are refused beyond 15 minutes."""
SKEW_LIMIT_SECONDS = 900.0


class AkSkAuthenticator:
    """Signs every request with an access key / secret key pair (`SDK-HMAC-SHA256`).

    Adds `X-Project-Id` and, for temporary credentials, `X-Security-Token` (both signed).
    Until a request signed with the current credentials has been accepted, only one request
    at a time is signed (a probe); the others wait for its verdict. After `max_failures`
    consecutive 401s it refuses to sign for a pause (`pauses`: 5 minutes, then 15, then an
    hour; an `auth.locked_out` error the first time, a warning later), then lets a single probe
    through, which locks again if rejected. A change of the secret key or security token (files
    are re-read when they change) ends the lockout at once.
    """

    def __init__(
        self,
        *,
        access_key: str,
        project_id: str,
        clock: Clock,
        secret_key: str = "",
        secret_key_file: Path | None = None,
        security_token: str = "",
        security_token_file: Path | None = None,
        max_failures: int = LOCKOUT_FAILURES,
        pauses: tuple[float, ...] = LOCKOUT_PAUSES,
    ) -> None:
        if not access_key:
            raise ValueError("an access key is required")
        if not secret_key and secret_key_file is None:
            raise ValueError("a secret key or a secret key file is required")
        self._access_key = access_key
        self._project_id = project_id
        self._clock = clock
        self._secret = SecretSource("auth.secret_key", secret_key, secret_key_file, header=True)
        self._token = SecretSource(
            "auth.security_token", security_token, security_token_file, header=True
        )
        self._max_failures = max(1, max_failures)
        self._pauses = pauses
        self._lockouts = 0
        self._versions: tuple[int, int] | None = None
        self._failures = 0  # toward the next lock; set to max - 1 after a pause
        self._rejected = 0  # 401s in a row with these credentials, for messages
        self._locked_until: float | None = None
        self._trusted = False
        self._probe: asyncio.Event | None = None
        self._skew = SkewWatch(clock)

    @property
    def locked_until(self) -> float | None:
        """Monotonic time until which nothing is signed, or None."""
        return self._locked_until

    @property
    def clock_skew(self) -> float | None:
        """Local wall clock minus the server's `Date`, from the last answer that had one."""
        return self._skew.skew

    async def apply(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        """Add `X-Project-Id`, `X-Security-Token` (when configured), `X-Sdk-Date`, `Host` and
        `Authorization`; CredentialsUnavailableError while locked out or a file is unreadable."""
        check_header_value(self._access_key, "auth.access_key")
        while True:
            secret, token = self._credentials()
            self._check_lockout()
            probe = self._probe
            if self._trusted or probe is None:
                break
            try:
                async with self._clock.timeout(PROBE_WAIT_SECONDS):
                    await probe.wait()
            except TimeoutError:
                if self._probe is probe:  # its answer never came: let another request try
                    self._end_probe()
        if not self._trusted:
            self._probe = asyncio.Event()
        headers[signer.PROJECT_HEADER] = self._project_id
        if token:
            headers[signer.SECURITY_TOKEN_HEADER] = token
        signer.sign(
            method,
            url,
            headers,
            body,
            access_key=self._access_key,
            secret_key=secret,
            now=self._clock.wall(),
        )

    def observe_response(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Count consecutive 401s, end a probe, and compare the server's clock with ours."""
        self._skew.observe(headers.get("Date"))
        if status == 401:
            self._trusted = False
            self._failures += 1
            self._rejected += 1
            if self._failures >= self._max_failures and self._locked_until is None:
                self._lock()
        elif status is not None:
            self._trusted = True
            self._failures = self._rejected = self._lockouts = 0
        self._end_probe()

    async def reload(self) -> None:
        """Re-read the secret files on the next request, changed or not."""
        self._secret.forget()
        self._token.forget()

    def redact(self, text: str) -> str:
        """`text` without the secret key, the security token or the access key."""
        text = self._token.redact(self._secret.redact(text))
        return redact_text(text, [self._access_key])

    def _credentials(self) -> tuple[str, str]:
        secret = self._secret.current()
        token = self._token.current() if self._token.configured else ""
        versions = (self._secret.version, self._token.version)
        if versions != self._versions:
            if self._versions is not None:
                locked = self._locked_until is not None
                log.info("auth.credentials_changed", method="aksk", was_locked_out=locked)
            self._versions = versions
            self._failures = self._rejected = self._lockouts = 0
            self._locked_until = None
            self._trusted = False
            self._end_probe()
        return secret, token

    def _check_lockout(self) -> None:
        if self._locked_until is None:
            return
        remaining = self._locked_until - self._clock.monotonic()
        if remaining > 0:
            raise CredentialsUnavailableError(
                f"AK/SK signatures were rejected {self._rejected} times in a row; not signing "
                f"for another {remaining:.0f}s, so the cloud does not lock the access key "
                "(check auth.access_key, auth.secret_key and the system clock)"
            )
        self._locked_until = None
        # One probe after the pause: if it fails too, lock again at once.
        self._failures = self._max_failures - 1
        log.info("auth.lockout_ended", method="aksk")

    def _lock(self) -> None:
        pause = self._pauses[min(self._lockouts, len(self._pauses) - 1)]
        self._lockouts += 1
        self._locked_until = self._clock.monotonic() + pause
        skew = self._skew.skew
        # Loud the first time; a key that stays wrong then re-locks quietly, at most hourly.
        report = log.error if self._lockouts == 1 else log.warning
        report(
            "auth.locked_out",
            method="aksk",
            rejected_in_a_row=self._rejected,
            lockouts=self._lockouts,
            pause_seconds=pause,
            clock_skew_seconds=None if skew is None else round(skew),
            detail="the cloud rejected the AK/SK signature repeatedly; check auth.access_key, "
            "auth.secret_key, auth.security_token and the system clock",
        )

    def _end_probe(self) -> None:
        if self._probe is not None:
            self._probe.set()
            self._probe = None


class SkewWatch:
    """Compares the server's `Date` header with the local wall clock; warns once per episode."""

    def __init__(self, clock: Clock, *, warn_after: float = SKEW_WARNING_SECONDS) -> None:
        self._clock = clock
        self._warn_after = warn_after
        self._warned = False
        self.skew: float | None = None

    def observe(self, date: str | None) -> None:
        """Take one `Date` header value (ignored when absent or unparsable)."""
        server = parse_http_date(date)
        if server is None:
            return
        self.skew = self._clock.wall() - server
        off = abs(self.skew) > self._warn_after
        if off and not self._warned:
            log.warning(
                "auth.clock_skew",
                skew_seconds=round(self.skew),
                limit_seconds=SKEW_LIMIT_SECONDS,
                detail="the local clock is far from the server's; AK/SK signatures are refused "
                "beyond 15 minutes of difference (check NTP)",
            )
        elif not off and self._warned:
            log.info("auth.clock_skew_resolved", skew_seconds=round(self.skew))
        self._warned = off
