"""The CBR HTTP client: ShowOpLog and ListOpLogs over aiohttp.

Every failure leaves this module as one of the CbrError kinds (auth, not found, throttled,
transient, fatal); the engine never sees an aiohttp exception.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from watcher import __version__
from watcher.cbr.auth import Authenticator, CredentialsUnavailableError
from watcher.cbr.errors import (
    AuthError,
    CbrError,
    FatalError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from watcher.cbr.models import (
    MalformedBodyError,
    OperationLog,
    OpLogPage,
    parse_list_body,
    parse_show_body,
)
from watcher.cbr.signer import encode_query
from watcher.clock import Clock
from watcher.task_ids import validate_task_id

RequestObserver = Callable[[str, str, float], None]
"""Called after every request with (operation, code label, duration in seconds)."""

SHOW = "show_op_log"
LIST = "list_op_logs"
_TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})


def make_ssl_context(*, verify: bool, ca_file: str = "") -> ssl.SSLContext | bool:
    """The TLS setting for aiohttp: a context with an extra CA, the default, or no checks."""
    if not verify:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


class CbrClient:
    """Talks to one CBR endpoint for one project."""

    def __init__(
        self,
        *,
        endpoint: str,
        project_id: str,
        auth: Authenticator,
        clock: Clock,
        request_timeout: float = 10.0,
        verify_tls: bool = True,
        ca_file: str = "",
        max_connections: int = 32,
        observe: RequestObserver | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base = URL(endpoint.rstrip("/"))
        self._project_id = project_id
        self._auth = auth
        self._clock = clock
        self._timeout = request_timeout
        self._ssl = make_ssl_context(verify=verify_tls, ca_file=ca_file)
        self._max_connections = max_connections
        self._observe = observe
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> CbrClient:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": f"cbr-watcher/{__version__}"},
                # A real-time safety net; the clock-driven timeout below is the one that decides.
                timeout=aiohttp.ClientTimeout(total=self._timeout * 3 + 5),
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def reload_credentials(self) -> None:
        """Tell the authenticator its credentials were rejected."""
        await self._auth.reload()

    async def show_op_log(self, task_id: str) -> OperationLog:
        """GET /v3/{project_id}/operation-logs/{id} → the task."""
        validate_task_id(task_id)
        url = self._base / "v3" / self._project_id / "operation-logs" / task_id
        body = await self._get(SHOW, url)
        try:
            return parse_show_body(body)
        except MalformedBodyError as error:
            raise TransientError(f"malformed ShowOpLog body: {error}", label="malformed") from None

    async def list_op_logs(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        vault_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OpLogPage:
        """GET /v3/{project_id}/operation-logs with filters → one page of tasks."""
        query: dict[str, str] = {}
        for key, value in (
            ("status", status),
            ("operation_type", operation_type),
            ("vault_id", vault_id),
            ("limit", limit),
            ("offset", offset),
        ):
            if value is not None:
                query[key] = str(value)
        query.update(extra or {})
        url = self._base / "v3" / self._project_id / "operation-logs"
        if query:
            # Sent exactly as AK/SK signing canonicalises it (yarl would leave ':' bare).
            url = URL(f"{url}?{encode_query(query.items())}", encoded=True)
        body = await self._get(LIST, url)
        try:
            return parse_list_body(body)
        except MalformedBodyError as error:
            raise TransientError(f"malformed ListOpLogs body: {error}", label="malformed") from None

    async def _get(self, operation: str, url: URL) -> Any:
        if self._session is None:
            raise RuntimeError("CbrClient used outside 'async with'")
        started = self._clock.monotonic()
        label = "error"
        try:
            headers = {"Content-Type": "application/json"}
            try:
                await self._auth.apply("GET", url, headers, b"")
            except CredentialsUnavailableError as error:
                raise AuthError(str(error), label="credentials") from None
            answered: list[int] = []
            try:
                async with self._clock.timeout(self._timeout):
                    body, label = await self._exchange(url, headers, answered)
            finally:
                if not answered:
                    self._tell_auth(None, {})
            return body
        except CbrError as error:
            label = error.code_label
            raise
        except TimeoutError:
            label = "timeout"
            raise TransientError(
                f"no answer within {self._timeout:g}s", label="timeout"
            ) from None
        except aiohttp.ClientConnectorCertificateError as error:
            label = "tls"
            raise FatalError(
                f"TLS certificate verification failed: {_describe(error)}", label=label
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            label = "connection"
            raise TransientError(f"connection failed: {_describe(error)}", label=label) from None
        finally:
            if self._observe is not None:
                self._observe(operation, label, self._clock.monotonic() - started)

    def _tell_auth(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Hand the answer (None: no answer) to an authenticator that wants to see it."""
        observe = getattr(self._auth, "observe_response", None)
        if observe is not None:
            observe(status, headers)

    async def _exchange(
        self, url: URL, headers: dict[str, str], answered: list[int]
    ) -> tuple[Any, str]:
        assert self._session is not None
        async with self._session.get(
            url, headers=headers, allow_redirects=False, ssl=self._ssl
        ) as response:
            status = response.status
            answered.append(status)
            self._tell_auth(status, response.headers)
            raw = await response.read()
            if status == 200:
                try:
                    return json.loads(raw), "200"
                except ValueError:
                    raise TransientError(
                        "malformed body: not JSON", http_status=200, label="malformed"
                    ) from None
            redact = getattr(self._auth, "redact", None)
            if redact is not None:
                # A rejected signature's message echoes signed headers (X-Security-Token).
                raw = redact(raw.decode("utf-8", "replace")).encode()
            raise _error_for(status, raw, response.headers)


def _error_for(status: int, raw: bytes, headers: Mapping[str, str]) -> CbrError:
    code, message = _error_fields(raw)
    request_id = headers.get("X-Request-Id")
    text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    kw: dict[str, Any] = {"http_status": status, "error_code": code, "request_id": request_id}
    if status == 401:
        return AuthError(text, **kw)
    if status == 404:
        return NotFoundError(text, **kw)
    if status == 429:
        return ThrottledError(text, retry_after=parse_retry_after(headers.get("Retry-After")), **kw)
    if status in _TRANSIENT_STATUSES or status >= 500 or 300 <= status < 400:
        return TransientError(text, **kw)
    return FatalError(text, **kw)


def _error_fields(raw: bytes) -> tuple[str | None, str | None]:
    """error_code / error_msg from any of the shapes Huawei services use."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None, None
    candidates = [body]
    if isinstance(body, dict):
        candidates += [v for v in body.values() if isinstance(v, dict)]
    for item in candidates:
        if not isinstance(item, dict):
            continue
        for code_key, msg_key in (
            ("error_code", "error_msg"),
            ("errorCode", "errorMsg"),
            ("code", "message"),
        ):
            if code_key in item or msg_key in item:
                code, msg = item.get(code_key), item.get(msg_key)
                return (str(code) if code else None), (str(msg)[:300] if msg else None)
    return None, None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds from delta-seconds or an HTTP date; None when absent or garbled."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:200]
