"""The CBR HTTP client: ShowOpLog, ListOpLogs and the inventory (ListVaults, ListPolicies,
ListBackups) over aiohttp.

Every failure leaves this module as one of the CbrError kinds (auth, not found, throttled,
transient, fatal, internal); the engine never sees an aiohttp exception, nor any other one:
anything unforeseen while making or reading a call becomes `InternalError` (label
"internal").

What a 200 body may be, so no answer can exhaust memory or the stack:

* at most `MAX_BODY_BYTES` (8 MiB; a full ListOpLogs page of 1000 logs is about 2 MiB). A
  larger `Content-Length` is refused before reading; a body without one is read in chunks
  and refused as soon as it passes the limit. Error bodies are read up to
  `MAX_ERROR_BODY_BYTES` only, the rest is ignored;
* JSON nested at most `MAX_JSON_DEPTH` (64) levels deep (CBR's bodies use about 6).

Anything else (not JSON, too big, too deep, not the documented shape) is
`TransientError(label="malformed")`: retried, never a crash.

aiohttp re-sends an idempotent request once by itself when a connection drops; that second
attempt would bypass the engine's request budget, so the client's own session turns it off.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from watcher.cbr.auth import Authenticator, CredentialsUnavailableError
from watcher.cbr.errors import (
    AuthError,
    CbrError,
    FatalError,
    InternalError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from watcher.cbr.ids import validate_task_id
from watcher.cbr.inventory import (
    BackupPage,
    PolicyPage,
    VaultPage,
    parse_backups_body,
    parse_policies_body,
    parse_vaults_body,
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
from watcher.net.client import USER_AGENT, parse_retry_after
from watcher.net.client import make_ssl_context as make_ssl_context
from watcher.safetext import clean

RequestObserver = Callable[[str, str, float], None]
"""Called after every request with (operation, code label, duration in seconds)."""

SHOW = "show_op_log"
LIST = "list_op_logs"
LIST_VAULTS = "list_vaults"
LIST_POLICIES = "list_policies"
LIST_BACKUPS = "list_backups"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64
_TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})
_PARSE_ERRORS = (RecursionError, OverflowError, ValueError, TypeError)
T = TypeVar("T")


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
                headers={"User-Agent": USER_AGENT},
                # A real-time safety net; the clock-driven timeout below is the one that decides.
                timeout=aiohttp.ClientTimeout(total=self._timeout * 3 + 5),
            )
            disable_connection_retry(self._session)
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
        return await self._get(SHOW, url, parse_show_body)

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
        query = _query(
            status=status,
            operation_type=operation_type,
            vault_id=vault_id,
            limit=limit,
            offset=offset,
        )
        return await self._get(LIST, self._url("operation-logs", query, extra), parse_list_body)

    async def list_vaults(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        vault_id: str | None = None,
        name: str | None = None,
        policy_id: str | None = None,
        resource_ids: Iterable[str] | None = None,
        object_type: str | None = None,
        protect_type: str | None = None,
        enterprise_project_id: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> VaultPage:
        """GET /v3/{project_id}/vaults with filters → one page of vaults with their resources.

        `vault_id` is sent as `id`, `resource_ids` comma-separated; `extra` adds any other
        query parameter as given."""
        query = _query(
            limit=limit,
            offset=offset,
            id=vault_id,
            name=name,
            policy_id=policy_id,
            resource_ids=None if resource_ids is None else ",".join(resource_ids),
            object_type=object_type,
            protect_type=protect_type,
            enterprise_project_id=enterprise_project_id,
        )
        return await self._get(LIST_VAULTS, self._url("vaults", query, extra), parse_vaults_body)

    async def list_policies(
        self,
        *,
        operation_type: str | None = None,
        vault_id: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> PolicyPage:
        """GET /v3/{project_id}/policies → every matching policy, in one answer.

        ListPolicies takes no `limit` or `offset`: CBR answers the whole list at once."""
        query = _query(operation_type=operation_type, vault_id=vault_id)
        url = self._url("policies", query, extra)
        return await self._get(LIST_POLICIES, url, parse_policies_body)

    async def list_backups(
        self,
        *,
        resource_id: str | None = None,
        vault_id: str | None = None,
        status: str | Iterable[str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        resource_type: str | None = None,
        enterprise_project_id: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> BackupPage:
        """GET /v3/{project_id}/backups with filters → one page of backups.

        `status` may name several statuses (sent once each: any of them matches); `sort` is
        CBR's `key[:asc|desc],...`, e.g. `created_at:desc`."""
        statuses = [status] if isinstance(status, str) else list(status or ())
        query = _query(
            resource_id=resource_id,
            vault_id=vault_id,
            sort=sort,
            limit=limit,
            offset=offset,
            resource_type=resource_type,
            enterprise_project_id=enterprise_project_id,
        )
        query += [("status", item) for item in statuses]
        url = self._url("backups", query, extra)
        return await self._get(LIST_BACKUPS, url, parse_backups_body)

    def _url(
        self, collection: str, query: list[tuple[str, str]], extra: Mapping[str, str] | None
    ) -> URL:
        """/v3/{project_id}/{collection}?{query}; a key in `extra` replaces the query's. The
        query is sent exactly as AK/SK signing canonicalises it (yarl would leave ':' bare)."""
        url = self._base / "v3" / self._project_id / collection
        extra = extra or {}
        pairs = [(key, value) for key, value in query if key not in extra] + [*extra.items()]
        if not pairs:
            return url
        return URL(f"{url}?{encode_query(pairs)}", encoded=True)

    async def _get(self, operation: str, url: URL, parse: Callable[[Any], T]) -> T:
        if self._session is None:
            raise RuntimeError("CbrClient used outside 'async with'")
        started = self._clock.monotonic()
        label = "error"
        try:
            headers = {"Content-Type": "application/json"}
            try:
                await self._auth.apply("GET", url, headers, b"")
            except CredentialsUnavailableError as error:
                raise AuthError(clean(str(error)), label="credentials") from None
            answered: list[int] = []
            try:
                async with self._clock.timeout(self._timeout):
                    result = await self._exchange(operation, url, headers, answered, parse)
            finally:
                if not answered:
                    self._tell_auth(None, {})
            label = "200"
            return result
        except CbrError as error:
            label = error.code_label
            raise
        except TimeoutError:
            label = "timeout"
            raise TransientError(f"no answer within {self._timeout:g}s", label="timeout") from None
        except aiohttp.ClientConnectorCertificateError as error:
            label = "tls"
            raise FatalError(
                f"TLS certificate verification failed: {_describe(error)}", label=label
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            label = "connection"
            raise TransientError(f"connection failed: {_describe(error)}", label=label) from None
        except Exception as error:
            label = "internal"
            raise self._internal(error) from error
        finally:
            if self._observe is not None:
                self._observe(operation, label, self._clock.monotonic() - started)

    def _internal(self, error: Exception) -> InternalError:
        """`InternalError.wrap(error)`, with anything the authenticator knows as secret hidden."""
        wrapped = InternalError.wrap(error)
        text = self._redact(clean(wrapped.message))
        return wrapped if text == wrapped.message else InternalError(text)

    def _redact(self, text: str) -> str:
        redact = getattr(self._auth, "redact", None)
        return str(redact(text)) if redact is not None else text

    def _tell_auth(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Hand the answer (None: no answer) to an authenticator that wants to see it."""
        observe = getattr(self._auth, "observe_response", None)
        if observe is not None:
            observe(status, headers)

    async def _exchange(
        self,
        operation: str,
        url: URL,
        headers: dict[str, str],
        answered: list[int],
        parse: Callable[[Any], T],
    ) -> T:
        assert self._session is not None
        async with self._session.get(
            url, headers=headers, allow_redirects=False, ssl=self._ssl
        ) as response:
            status = response.status
            answered.append(status)
            self._tell_auth(status, response.headers)
            if status == 200:
                body = decode_json(await read_body(response))
                try:
                    return parse(body)
                except MalformedBodyError as error:
                    raise _malformed(f"{operation} body: {error}") from None
            raw = await read_body(response, limit=MAX_ERROR_BODY_BYTES, truncate=True)
            # A rejected signature's message echoes signed headers (X-Security-Token).
            raw = self._redact(raw.decode("utf-8", "replace")).encode()
            raise _error_for(status, raw, response.headers, now=self._clock.wall())


def _query(**params: str | int | None) -> list[tuple[str, str]]:
    """The parameters given (not None), as query pairs."""
    return [(key, str(value)) for key, value in params.items() if value is not None]


def disable_connection_retry(session: aiohttp.ClientSession) -> None:
    """Stop `session` re-sending an idempotent request after a dropped connection.

    aiohttp (3.9+) retries a GET once on a reset or server disconnect; that attempt is not
    counted by the engine's request budget, so it is turned off the way aiohttp's own test
    client does. tests/test_client.py fails if a new aiohttp version brings the retry back.
    """
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False


async def read_body(
    response: aiohttp.ClientResponse, *, limit: int = MAX_BODY_BYTES, truncate: bool = False
) -> bytes:
    """The body, read in chunks and never more than `limit` bytes of it.

    Past the limit: the first `limit` bytes when `truncate`, else a malformed TransientError
    (a larger Content-Length is refused before anything is read).
    """
    length = response.content_length
    if not truncate and length is not None and length > limit:
        raise _malformed(f"body of {length} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                return b"".join(chunks)[:limit]
            raise _malformed(f"body is over the {limit}-byte limit")
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    """Parse a 200 body; a malformed TransientError when it is not JSON or is nested too deep."""
    try:
        body = json.loads(raw)
    except _PARSE_ERRORS:
        raise _malformed("body is not JSON") from None
    # Counting brackets is cheap and usually ends the check; only then walk the value.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and nested_deeper_than(
        body, MAX_JSON_DEPTH
    ):
        raise _malformed(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether a parsed JSON value has more than `limit` levels of objects and arrays."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _malformed(detail: str) -> TransientError:
    return TransientError(f"malformed {clean(detail)}", http_status=200, label="malformed")


def _error_for(status: int, raw: bytes, headers: Mapping[str, str], *, now: float) -> CbrError:
    code, message = _error_fields(raw)
    request_id = headers.get("X-Request-Id")
    if request_id is not None:
        request_id = clean(request_id[:128])
    text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    kw: dict[str, Any] = {"http_status": status, "error_code": code, "request_id": request_id}
    if status == 401:
        return AuthError(text, **kw)
    if status == 404:
        return NotFoundError(text, **kw)
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
        return ThrottledError(text, retry_after=retry_after, **kw)
    if status in _TRANSIENT_STATUSES or status >= 500 or 300 <= status < 400:
        return TransientError(text, **kw)
    return FatalError(text, **kw)


def _error_fields(raw: bytes) -> tuple[str | None, str | None]:
    """error_code / error_msg from any of the shapes Huawei services use."""
    try:
        body = json.loads(raw)
    except _PARSE_ERRORS:
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
                return _scalar(item.get(code_key), 100), _scalar(item.get(msg_key), 300)
    return None, None


def _scalar(value: object, limit: int) -> str | None:
    """A short, clean text for a code or message; None for empty values and nested junk."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        return None
    try:
        text = value if isinstance(value, str) else repr(value)
    except ValueError:  # an int too long to print
        return None
    return clean(text[:limit]) or None


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return clean(text[:200])
