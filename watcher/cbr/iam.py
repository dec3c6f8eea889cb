"""`auth.method = "password"`: a project-scoped IAM user token, fetched and refreshed here.

`POST {iam_endpoint}/v3/auth/tokens` with the user's domain, name and password, scoped to the
project by ID; the token comes back in `X-Subject-Token`, its expiry in
`token.expires_at`. `PasswordAuthenticator` caches it, refreshes it ahead of expiry (an hour
before, or a quarter of its lifetime when that is shorter) and after a 401, shares one fetch
between concurrent requests, and backs off between failed fetches: a rejected password waits
5 minutes, doubling to an hour (IAM locks users after repeated wrong passwords); an
unreachable IAM waits 5 seconds, doubling to 5 minutes. A changed `auth.password_file` is
tried at once.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from yarl import URL

from watcher.backoff import capped_exponential
from watcher.cbr.auth import CredentialsUnavailableError, SecretSource
from watcher.clock import Clock
from watcher.net.client import USER_AGENT
from watcher.redaction import redact_text

log = structlog.get_logger("watcher.auth")

TOKENS_PATH = "/v3/auth/tokens"
REFRESH_MARGIN = 3600.0
RELOAD_MIN_AGE = 60.0
"""A token younger than this is not thrown away on a 401: the 401 has another cause."""
REJECTED_BACKOFF = (300.0, 3600.0)
UNAVAILABLE_BACKOFF = (5.0, 300.0)

TokenListener = Callable[[float], None]
"""Called with the new token's `expires_at` (Unix seconds) whenever a token is issued."""


class IamError(CredentialsUnavailableError):
    """A failed token request. `rejected`: IAM refused the credentials or the request (4xx),
    so retrying soon will not help; otherwise IAM could not be reached or answered oddly."""

    def __init__(self, message: str, *, rejected: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.status = status


@dataclass(frozen=True)
class IssuedToken:
    """A token from IAM. `expires_at`/`issued_at` are IAM's Unix times."""

    value: str = field(repr=False)
    expires_at: float
    issued_at: float | None


def token_request_body(
    *, domain_name: str, user_name: str, password: str, project_id: str
) -> dict[str, Any]:
    """The password-method request body, scoped to the project by ID."""
    user = {"name": user_name, "password": password, "domain": {"name": domain_name}}
    return {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": {"id": project_id}},
        }
    }


def parse_iam_time(text: object) -> float:
    """`2020-01-04T09:05:22.701000Z` (or any ISO 8601 with an offset) → Unix seconds."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment.timestamp()


async def request_token(
    session: aiohttp.ClientSession,
    endpoint: str,
    body: dict[str, Any],
    *,
    who: str,
    ssl_setting: ssl.SSLContext | bool = True,
) -> IssuedToken:
    """POST the token request to `endpoint` (with or without a trailing `/v3`); IamError with
    a message fit for a log line otherwise.

    `who` names the user in messages (e.g. "user 'ops' in domain 'acme'"); the password is
    never part of any message.
    """
    # Terraform-style endpoints end in "/v3"; both spellings mean the same IAM.
    base = endpoint.rstrip("/").removesuffix("/v3")
    url = URL(base + TOKENS_PATH).with_query(nocatalog="true")
    async with session.post(url, json=body, ssl=ssl_setting, allow_redirects=False) as response:
        raw = await response.read()
        if 200 <= response.status < 300:
            return _issued(response.headers.get("X-Subject-Token"), raw)
        raise _rejection(response.status, raw, who)


def _issued(token: str | None, raw: bytes) -> IssuedToken:
    if not token:
        raise IamError("IAM answered without an X-Subject-Token header", rejected=False)
    try:
        data = json.loads(raw)["token"]
        expires_at = parse_iam_time(data["expires_at"])
    except (ValueError, KeyError, TypeError):
        raise IamError("IAM answered without a readable token.expires_at", rejected=False) from None
    try:
        issued_at: float | None = parse_iam_time(data.get("issued_at"))
    except ValueError:
        issued_at = None
    return IssuedToken(token, expires_at, issued_at)


def _rejection(status: int, raw: bytes, who: str) -> IamError:
    detail = _iam_message(raw)
    suffix = f" (HTTP {status}{': ' + detail if detail else ''})"
    if status == 401:
        return IamError(
            f"IAM rejected the password for {who}: wrong auth.domain_name, auth.user_name or "
            f"password, or the user is locked{suffix}",
            rejected=True,
            status=status,
        )
    if status == 403:
        return IamError(
            f"IAM refused a token to {who}: the user is disabled or may not use the project"
            f"{suffix}",
            rejected=True,
            status=status,
        )
    if 400 <= status < 500 and status not in (408, 429):
        return IamError(
            f"IAM rejected the token request for {who}: check auth.domain_name, cbr.project_id "
            f"and auth.iam_endpoint{suffix}",
            rejected=True,
            status=status,
        )
    return IamError(f"IAM is unavailable{suffix}", rejected=False, status=status)


def _iam_message(raw: bytes) -> str:
    """`error.message` (Keystone style) or `error_msg` (gateway style), cut short."""
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:200]
    if body.get("error_msg"):
        return str(body["error_msg"])[:200]
    return ""


class PasswordAuthenticator:
    """`X-Auth-Token` from IAM for a user name and password; see the module docstring.

    `expires_at` is the current token's expiry (IAM's Unix time) for the
    `cbr_watcher_auth_token_expiry_timestamp_seconds` gauge; `on_token` is called with it each
    time a token is issued.
    """

    def __init__(
        self,
        *,
        iam_endpoint: str,
        domain_name: str,
        user_name: str,
        project_id: str,
        clock: Clock,
        password: str = "",
        password_file: Path | None = None,
        request_timeout: float = 10.0,
        ssl_setting: ssl.SSLContext | bool = True,
        refresh_margin: float = REFRESH_MARGIN,
        on_token: TokenListener | None = None,
    ) -> None:
        if not password and password_file is None:
            raise ValueError("a password or a password file is required")
        self._endpoint = iam_endpoint
        self._domain_name = domain_name
        self._user_name = user_name
        self._project_id = project_id
        self._clock = clock
        self._password = SecretSource("auth.password", password, password_file)
        self._timeout = request_timeout
        self._ssl = ssl_setting
        self._margin = refresh_margin
        self.on_token = on_token
        self._lock = asyncio.Lock()
        self._token: IssuedToken | None = None
        self._refresh_at = 0.0  # local wall time
        self._valid_until = 0.0  # local wall time
        self._fetched_mono = 0.0
        self._backoff = _Backoff()
        self.fetches = 0

    @property
    def expires_at(self) -> float | None:
        """The current token's `expires_at` (Unix seconds), or None before the first one."""
        return self._token.expires_at if self._token is not None else None

    @property
    def who(self) -> str:
        """The user, for messages."""
        return f"user {self._user_name!r} in domain {self._domain_name!r}"

    async def apply(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        """Set `X-Auth-Token`, fetching a token first when there is none or it is due."""
        headers["X-Auth-Token"] = await self.current_token()

    async def current_token(self) -> str:
        """A usable token; CredentialsUnavailableError when none can be had right now."""
        if self._token is not None and self._clock.wall() < self._refresh_at:
            return self._token.value
        async with self._lock:
            now = self._clock.wall()
            if self._token is not None and now < self._refresh_at:
                return self._token.value  # another request refreshed it meanwhile
            password = self._password.current()
            wait = self._backoff.wait(self._clock.monotonic(), self._password.version)
            if wait is not None:
                return self._still_valid(now, wait)
            try:
                issued = _checked(await self._fetch(password), now)
            except IamError as error:
                return self._still_valid(now, self._failed(error))
            self._accept(issued)
            return issued.value

    async def reload(self) -> None:
        """After a 401: fetch a new token next time, unless this one is brand new."""
        self._password.forget()
        if self._token is None or self._clock.monotonic() - self._fetched_mono < RELOAD_MIN_AGE:
            return
        log.info("auth.token_rejected", method="password", detail="fetching a new token")
        self._token = None
        self._refresh_at = self._valid_until = 0.0

    def redact(self, text: str) -> str:
        """`text` without the password or the token."""
        text = self._password.redact(text)
        return redact_text(text, [self._token.value if self._token is not None else None])

    async def _fetch(self, password: str) -> IssuedToken:
        self.fetches += 1
        body = token_request_body(
            domain_name=self._domain_name,
            user_name=self._user_name,
            password=password,
            project_id=self._project_id,
        )
        try:
            async with (
                aiohttp.ClientSession(
                    headers={"User-Agent": USER_AGENT},
                    timeout=aiohttp.ClientTimeout(total=self._timeout * 3 + 5),
                ) as session,
                self._clock.timeout(self._timeout),
            ):
                return await request_token(
                    session, self._endpoint, body, who=self.who, ssl_setting=self._ssl
                )
        except TimeoutError:
            raise IamError(
                f"IAM did not answer within {self._timeout:g}s", rejected=False
            ) from None
        except aiohttp.ClientConnectorCertificateError as error:
            raise IamError(
                f"IAM TLS certificate verification failed: {str(error)[:200]}", rejected=False
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            text = (str(error) or type(error).__name__)[:200]
            raise IamError(f"IAM is unreachable: {text}", rejected=False) from None

    def _accept(self, issued: IssuedToken) -> None:
        now = self._clock.wall()
        # Measured from our own clock, so a skewed clock does not shift the refresh.
        lifetime = issued.expires_at - (issued.issued_at if issued.issued_at is not None else now)
        margin = min(self._margin, max(lifetime, 0.0) / 4)
        self._token = issued
        self._valid_until = now + lifetime
        self._refresh_at = self._valid_until - margin
        self._fetched_mono = self._clock.monotonic()
        recovered = self._backoff.failures > 0
        self._backoff.reset()
        log.info(
            "auth.token_issued",
            method="password",
            expires_at=datetime.fromtimestamp(issued.expires_at, UTC).isoformat(),
            refresh_in_seconds=round(self._refresh_at - now),
            recovered=recovered,
        )
        if self.on_token is not None:
            self.on_token(issued.expires_at)

    def _failed(self, error: IamError) -> float:
        delay = self._backoff.failed(self._clock.monotonic(), error, self._password.version)
        if self._backoff.first_of_kind:
            log.error(
                "auth.token_failed",
                method="password",
                error=str(error),
                rejected=error.rejected,
                http_status=error.status,
                retry_in_seconds=delay,
            )
        else:
            log.debug("auth.token_failed", error=str(error), retry_in_seconds=delay)
        return delay

    def _still_valid(self, now: float, wait: float | None) -> str:
        """The old token while it lasts (IAM failing during a refresh), else the last error."""
        if self._token is not None and now < self._valid_until:
            return self._token.value
        error = self._backoff.error
        message = str(error) if error is not None else "no IAM token yet"
        retry = f"; next IAM attempt in {wait:.0f}s" if wait else ""
        raise CredentialsUnavailableError(message + retry)


def _checked(issued: IssuedToken, now: float) -> IssuedToken:
    """Refuse a token that is dead on arrival, or every request would ask IAM again."""
    start = issued.issued_at if issued.issued_at is not None else now
    if issued.expires_at <= start:
        raise IamError(
            "IAM issued a token that has already expired (is the system clock right?)",
            rejected=False,
        )
    return issued


class _Backoff:
    """When the next token request may be made after failures."""

    def __init__(self) -> None:
        self.failures = 0
        self.error: IamError | None = None
        self.first_of_kind = False
        self._next = 0.0
        self._password_version = 0

    def wait(self, now: float, password_version: int) -> float | None:
        """Seconds to wait before the next attempt, or None when one may be made now.
        A changed password (file) may always be tried at once."""
        if self.failures == 0 or now >= self._next:
            return None
        if password_version != self._password_version:
            return None
        return self._next - now

    def failed(self, now: float, error: IamError, password_version: int) -> float:
        """Record a failure; returns the delay before the next attempt."""
        self.first_of_kind = self.error is None or str(self.error) != str(error)
        low, high = REJECTED_BACKOFF if error.rejected else UNAVAILABLE_BACKOFF
        same_kind = self.error is not None and self.error.rejected == error.rejected
        self.failures = self.failures + 1 if same_kind else 1
        delay = capped_exponential(self.failures - 1, base=low, cap=high)
        self.error = error
        self._next = now + delay
        self._password_version = password_version
        return delay

    def reset(self) -> None:
        """A token was issued."""
        self.failures = 0
        self.error = None
        self._next = 0.0
