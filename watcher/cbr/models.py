"""Tolerant models of the CBR OperationLog (ShowOpLog / ListOpLogs).

The cloud adds fields and statuses over time, so every model keeps unknown keys, every field
but `id` and `status` may be missing or `null` (the official examples send `"policy_id": null`,
`"vault_id": null`, `"vault_name": null`), and timestamps are accepted in every form the
documentation shows: `2020-02-23T01:00:32Z`, `2019-05-23T14:35:23.584+00:00`, and without a
zone (`2019-05-23T14:31:36.039365`, read as UTC). The raw JSON object is kept
as compact JSON bytes next to the typed fields, and decoded on demand (`raw`), so webhooks and
the state file get it exactly as CBR sent it while each watched task holds one representation
of its last answer: a slotted object of interned text, datetimes and a bytes body, a fraction
of the size of a validated model plus its dict (bench/README.md has the figures). The parser
is hand-written: per poll it costs a fraction of model validation.

Tolerant down to single fields: only a missing or non-string `id`/`status`, or a body that is
not the documented shape at all, makes a body malformed (MalformedBodyError, the only
exception parsing raises for any JSON value). In a ListOpLogs page such an entry spoils only
itself: the page keeps every entry it can read and describes the others (`OpLogPage.malformed`).
A field that cannot be read is treated as absent, while `raw` keeps it exactly as sent:

* a timestamp that is not one, or lies outside what `datetime` can hold in UTC
  (`9999-12-31T23:59:59-05:00`), is None;
* progress that is not a finite number or ASCII digits (`Infinity`, `NaN`, `"²"`) is None;
  a finite number outside 0–100 is clamped;
* a text field holding a number is read as its decimal text; any other non-string is None;
* a sub-object (`error_info`, `extra_info`, `common`, `resource`) that is not an object is None.

Every typed text passes through `safetext.clean`, so no lone surrogate reaches metric labels,
SQLite or logs.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from watcher.safetext import clean, json_bytes

PENDING_STATUSES = frozenset({"waiting", "running"})
TERMINAL_STATUSES = frozenset({"success", "failed", "skipped", "timeout"})
KNOWN_STATUSES = PENDING_STATUSES | TERMINAL_STATUSES
_MAX_TIMESTAMP_LENGTH = 64
_MAX_ID_SHOWN = 128
_BIG_INT = 10**30
_PROGRESS_TEXT = re.compile(r"\s*([0-9]{1,10})\s*")


def parse_timestamp(value: object) -> datetime | None:
    """Parse a CBR timestamp in either documented form; empty → None; naive → UTC.

    ValueError for anything else, including dates that cannot be expressed in UTC.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and len(value) <= _MAX_TIMESTAMP_LENGTH:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as error:
            raise ValueError(f"not a CBR timestamp: {_shown(value)}") from error
    else:
        raise ValueError(f"not a CBR timestamp: {_shown(value)}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as error:
        raise ValueError(f"timestamp out of range: {_shown(value)}") from error


def _lenient_timestamp(value: object) -> datetime | None:
    """`parse_timestamp`, with None for anything it cannot read."""
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _shown(value: object) -> str:
    return clean(repr(value)[:80]) if isinstance(value, str) else type(value).__name__


def _required_text(value: object, name: str) -> str:
    """A required text field: cleaned and interned; MalformedBodyError when absent or not text."""
    if isinstance(value, str):
        return _intern(clean(value))
    if value is None:
        raise MalformedBodyError(f"{name}: a required text field is missing or null")
    raise MalformedBodyError(f"{name}: expected text, got {type(value).__name__}")


def _optional_text(value: object) -> str | None:
    """An optional text field: cleaned text, an integer's digits, or None for anything else."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int) and not isinstance(value, bool) and -_BIG_INT < value < _BIG_INT:
        return str(value)
    return None


def _shared_text(value: object) -> str | None:
    """`_optional_text`, interned: statuses, types, vaults and names repeat across tasks."""
    text = _optional_text(value)
    return None if text is None else _intern(text)


def _intern(text: str) -> str:
    return sys.intern(text) if type(text) is str else text


def _object(value: object) -> Mapping[str, Any] | None:
    """A sub-object that is not a JSON object is treated as absent."""
    return value if isinstance(value, dict) else None


def _progress(value: object) -> int | None:
    """Progress as CBR means it: an integer 0–100. Anything else is treated as unknown."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return max(0, min(100, value))
    if isinstance(value, float):
        return max(0, min(100, int(value))) if math.isfinite(value) else None
    if isinstance(value, str) and (match := _PROGRESS_TEXT.fullmatch(value)):
        return max(0, min(100, int(match.group(1))))
    return None


@dataclass(slots=True)
class OpErrorInfo:
    """`error_info`: present with empty strings when the task did not fail."""

    FIELDS: ClassVar[tuple[str, ...]] = ("code", "message")
    code: str | None = None
    message: str | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> OpErrorInfo:
        """Read the typed fields of one `error_info` object."""
        return cls(_optional_text(raw.get("code")), _optional_text(raw.get("message")))


@dataclass(slots=True)
class OpExtendInfoCommon:
    """`extra_info.common`: progress and request bookkeeping."""

    FIELDS: ClassVar[tuple[str, ...]] = ("progress", "request_id", "task_id")
    progress: int | None = None
    request_id: str | None = None
    task_id: str | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> OpExtendInfoCommon:
        """Read the typed fields of one `common` object."""
        return cls(
            _progress(raw.get("progress")),
            _optional_text(raw.get("request_id")),
            _optional_text(raw.get("task_id")),
        )


@dataclass(slots=True)
class Resource:
    """`extra_info.resource`: the server, disk or file system the task works on."""

    FIELDS: ClassVar[tuple[str, ...]] = ("id", "name", "type")
    id: str | None = None
    name: str | None = None
    type: str | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Resource:
        """Read the typed fields of one `resource` object."""
        # Only the type repeats across tasks often enough to share; IDs and names mostly
        # do not, and interning them would cost an entry in the interned-string table each.
        return cls(
            _optional_text(raw.get("id")),
            _optional_text(raw.get("name")),
            _shared_text(raw.get("type")),
        )


_NO_RESOURCE = Resource()


@dataclass(slots=True)
class OpExtraInfo:
    """`extra_info`: only the parts the watcher reads are typed; the rest stay in `raw`."""

    FIELDS: ClassVar[tuple[str, ...]] = ("common", "resource")
    common: OpExtendInfoCommon | None = None
    resource: Resource | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> OpExtraInfo:
        """Read the typed parts of one `extra_info` object."""
        common, resource = _object(raw.get("common")), _object(raw.get("resource"))
        return cls(
            OpExtendInfoCommon.from_raw(common) if common is not None else None,
            Resource.from_raw(resource) if resource is not None else None,
        )


_RAW_FIELDS = frozenset(
    {
        "id",
        "status",
        "operation_type",
        "project_id",
        "vault_id",
        "vault_name",
        "provider_id",
        "checkpoint_id",
        "policy_id",
        "created_at",
        "started_at",
        "updated_at",
        "ended_at",
        "error_info",
        "extra_info",
    }
)
"""The keys of an OperationLog that have typed fields; every other key is an extra."""


class OperationLog:
    """One CBR task ("operation log"): the typed fields the watcher reads, and the raw body.

    The fields the engine, metrics and webhooks read on every poll or scrape are parsed once
    (text interned); the rest (`project_id`, `error_info`, `extra_info`, `model_extra`, …)
    are read from the kept body when asked for.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "id",
        "status",
        "operation_type",
        "project_id",
        "vault_id",
        "vault_name",
        "provider_id",
        "checkpoint_id",
        "policy_id",
        "created_at",
        "started_at",
        "updated_at",
        "ended_at",
    )
    """The typed top-level fields (text or datetime), in CBR's order."""

    __slots__ = (
        "_body",
        "created_at",
        "ended_at",
        "error",
        "id",
        "operation_type",
        "progress",
        "resource",
        "started_at",
        "status",
        "updated_at",
        "vault_id",
        "vault_name",
    )

    id: str
    status: str
    operation_type: str | None
    vault_id: str | None
    vault_name: str | None
    created_at: datetime | None
    started_at: datetime | None
    updated_at: datetime | None
    ended_at: datetime | None
    progress: int | None
    """`extra_info.common.progress` (0–100) or None when CBR did not say."""
    resource: Resource
    """The resource, or an empty one when CBR omitted it."""
    error: tuple[str, str] | None
    """(code, message) when CBR reported an error, None when both are empty."""
    _body: bytes | dict[str, Any]

    def __init__(self, raw: Mapping[str, Any], body: bytes | None = None) -> None:
        """Read `raw` (a JSON object as CBR sent it); MalformedBodyError without id/status.
        `body`, when given, is `raw` already encoded as `raw_json` would encode it."""
        get = raw.get
        self.id = _required_text(get("id"), "id")
        self.status = _required_text(get("status"), "status")
        self.operation_type = _shared_text(get("operation_type"))
        self.vault_id = _shared_text(get("vault_id"))
        self.vault_name = _shared_text(get("vault_name"))
        self.created_at = _lenient_timestamp(get("created_at"))
        self.started_at = _lenient_timestamp(get("started_at"))
        self.updated_at = _lenient_timestamp(get("updated_at"))
        self.ended_at = _lenient_timestamp(get("ended_at"))
        extra = _object(get("extra_info"))
        common = _object(extra.get("common")) if extra is not None else None
        resource = _object(extra.get("resource")) if extra is not None else None
        self.progress = _progress(common.get("progress")) if common is not None else None
        self.resource = Resource.from_raw(resource) if resource is not None else _NO_RESOURCE
        info = _object(get("error_info"))
        code = _optional_text(info.get("code")) if info is not None else None
        message = _optional_text(info.get("message")) if info is not None else None
        self.error = (code or "", message or "") if code or message else None
        self._body = body if body is not None else _compact(raw)

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object exactly as CBR sent it (a fresh copy on every access)."""
        body = self._body
        return json.loads(body) if isinstance(body, bytes) else body

    @property
    def raw_json(self) -> bytes:
        """`raw` as compact UTF-8 JSON, lone surrogates as `\\uXXXX` escapes (no decoding)."""
        body = self._body
        return body if isinstance(body, bytes) else json_bytes(body)

    @property
    def is_terminal(self) -> bool:
        """Whether this status ends the task (success, failed, skipped, timeout)."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_known_status(self) -> bool:
        """False for a status string this version of the watcher has never heard of."""
        return self.status in KNOWN_STATUSES

    @property
    def project_id(self) -> str | None:
        """`project_id` as text (read from the kept body)."""
        return _optional_text(self.raw.get("project_id"))

    @property
    def provider_id(self) -> str | None:
        """`provider_id` as text (read from the kept body)."""
        return _optional_text(self.raw.get("provider_id"))

    @property
    def checkpoint_id(self) -> str | None:
        """`checkpoint_id` as text (read from the kept body)."""
        return _optional_text(self.raw.get("checkpoint_id"))

    @property
    def policy_id(self) -> str | None:
        """`policy_id` as text (read from the kept body)."""
        return _optional_text(self.raw.get("policy_id"))

    @property
    def error_info(self) -> OpErrorInfo | None:
        """`error_info` with its typed fields, None when absent or not an object."""
        info = _object(self.raw.get("error_info"))
        return OpErrorInfo.from_raw(info) if info is not None else None

    @property
    def extra_info(self) -> OpExtraInfo | None:
        """`extra_info` with its typed parts, None when absent or not an object."""
        extra = _object(self.raw.get("extra_info"))
        return OpExtraInfo.from_raw(extra) if extra is not None else None

    @property
    def model_extra(self) -> dict[str, Any]:
        """The keys CBR sent that have no typed field (a key named "raw" among them)."""
        return {key: value for key, value in self.raw.items() if key not in _RAW_FIELDS}

    extras = model_extra

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OperationLog):
            return NotImplemented
        return self.raw_json == other.raw_json

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OperationLog(id={self.id!r}, status={self.status!r}, progress={self.progress!r})"

    @classmethod
    def from_json(cls, body: bytes) -> OperationLog:
        """Parse one stored operation log (`raw_json` bytes), keeping them as they are when
        they are in `raw_json`'s own form (no re-encoding: restoring 50,000 tasks is faster)."""
        try:
            raw = json.loads(body)
        except (RecursionError, ValueError) as error:
            raise MalformedBodyError(f"unreadable operation_log ({type(error).__name__})") from None
        if not isinstance(raw, dict):
            raise MalformedBodyError(f"operation_log is {type(raw).__name__}, not an object")
        # Without escapes, json.dumps' ASCII form and `raw_json`'s form are the same bytes.
        known = body if b"\\u" not in body else None
        try:
            return cls(raw, known)
        except MalformedBodyError:
            raise
        except (RecursionError, OverflowError, ValueError, TypeError) as error:
            raise MalformedBodyError(f"unreadable operation_log ({type(error).__name__})") from None

    @classmethod
    def from_raw(cls, raw: object) -> OperationLog:
        """Parse one JSON object as CBR sent it, keeping the original as compact bytes."""
        if not isinstance(raw, dict):
            raise MalformedBodyError(f"operation_log is {type(raw).__name__}, not an object")
        try:
            return cls(raw)
        except MalformedBodyError:
            raise
        except (RecursionError, OverflowError, ValueError, TypeError) as error:
            raise MalformedBodyError(f"unreadable operation_log ({type(error).__name__})") from None


def _compact(raw: Mapping[str, Any]) -> bytes | dict[str, Any]:
    """The body as compact JSON bytes; the object itself if it is not plain JSON (built in
    Python with values JSON cannot hold, or nested too deeply to encode)."""
    try:
        return json_bytes(raw)
    except (RecursionError, OverflowError, ValueError, TypeError):
        return dict(raw)


@dataclass(slots=True)
class OpLogPage:
    """One page of ListOpLogs: the logs that could be read, the `count` (and the echoed `limit`
    and `offset`) CBR reported, and why each entry that could not be read was left out."""

    operation_logs: list[OperationLog]
    count: int | None = None
    limit: int | None = None
    offset: int | None = None
    malformed: list[str] = field(default_factory=list)
    """One short reason per unreadable entry, in page order, naming its place on the page and
    its ID when at least that could be read: `entry 2 (id 'x'): status: ...`."""

    @property
    def returned(self) -> int:
        """How many entries CBR returned on this page, readable or not: what the next
        `offset` moves on by, and 0 only for a page that really is empty."""
        return len(self.operation_logs) + len(self.malformed)


class MalformedBodyError(ValueError):
    """A 2xx body that is not the documented JSON shape."""


def parse_show_body(body: object) -> OperationLog:
    """Parse a ShowOpLog 200 body: `{"operation_log": {...}}`."""
    if not isinstance(body, dict) or "operation_log" not in body:
        raise MalformedBodyError("body has no 'operation_log' object")
    return OperationLog.from_raw(body["operation_log"])


def parse_list_body(body: object) -> OpLogPage:
    """Parse a ListOpLogs 200 body: `{"operation_logs": [...], "count": N}`.

    MalformedBodyError only when the body has no `operation_logs` list; an entry that is not
    an operation log is left out of `operation_logs` and described in `malformed`.
    """
    if not isinstance(body, dict) or not isinstance(body.get("operation_logs"), list):
        raise MalformedBodyError("body has no 'operation_logs' list")
    logs: list[OperationLog] = []
    malformed: list[str] = []
    for position, item in enumerate(body["operation_logs"]):
        if not isinstance(item, dict):
            malformed.append(f"entry {position}: {_json_type(item)}, not an operation log")
            continue
        try:
            logs.append(OperationLog.from_raw(item))
        except MalformedBodyError as error:
            malformed.append(f"entry {position}{_entry_id(item)}: {error}")

    def as_int(key: str) -> int | None:
        value = body.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return OpLogPage(
        operation_logs=logs,
        count=as_int("count"),
        limit=as_int("limit"),
        offset=as_int("offset"),
        malformed=malformed,
    )


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__


def _entry_id(raw: Mapping[str, Any]) -> str:
    """` (id '…')` for an unreadable entry whose `id` is text (cut to a task ID's longest
    length), else nothing."""
    value = raw.get("id")
    return f" (id {clean(value[:_MAX_ID_SHOWN])!r})" if isinstance(value, str) else ""
