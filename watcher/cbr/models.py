"""Tolerant models of the CBR OperationLog (ShowOpLog / ListOpLogs).

The cloud adds fields and statuses over time, so every model keeps unknown keys, every field
but `id` and `status` may be missing, and timestamps are accepted in both documented forms
(`2020-02-23T01:00:32Z` and `2019-05-23T14:35:23.584+00:00`). The raw JSON object is kept
next to the parsed view so webhooks can forward it exactly as CBR sent it.

Tolerant down to single fields: only a missing or non-string `id`/`status`, or a body that is
not the documented shape at all, makes a body malformed (MalformedBodyError, the only
exception parsing raises for any JSON value). A field that cannot be read is treated as
absent, while `raw` keeps it exactly as sent:

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

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from watcher.safetext import clean

PENDING_STATUSES = frozenset({"waiting", "running"})
TERMINAL_STATUSES = frozenset({"success", "failed", "skipped", "timeout"})
KNOWN_STATUSES = PENDING_STATUSES | TERMINAL_STATUSES
_MAX_TIMESTAMP_LENGTH = 64
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


Timestamp = Annotated[datetime | None, BeforeValidator(_lenient_timestamp)]


def _required_text(value: object) -> object:
    """A required text field: cleaned when it is a string, left for pydantic to refuse if not."""
    return clean(value) if isinstance(value, str) else value


def _optional_text(value: object) -> str | None:
    """An optional text field: cleaned text, an integer's digits, or None for anything else."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int) and not isinstance(value, bool) and -_BIG_INT < value < _BIG_INT:
        return str(value)
    return None


def _object_or_none(value: object) -> object:
    """A sub-object that is not a JSON object is treated as absent."""
    return value if isinstance(value, dict | BaseModel) else None


Text = Annotated[str, BeforeValidator(_required_text)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]


class _Tolerant(BaseModel):
    """Unknown keys are kept as extras, exactly as sent, without pydantic looking at them:
    it refuses keys it cannot hold as Rust strings (a lone surrogate)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_unknown_keys_aside(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        fields = cls.model_fields
        # `raw` is the watcher's own field, never filled from CBR's keys.
        if all(key in fields and key != "raw" for key in data):
            return handler(data)
        model = handler({k: v for k, v in data.items() if k in fields and k != "raw"})
        model.__pydantic_extra__ = {k: v for k, v in data.items() if k not in fields or k == "raw"}
        return model


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


class OpErrorInfo(_Tolerant):
    """`error_info`: present with empty strings when the task did not fail."""

    code: OptionalText = None
    message: OptionalText = None


class OpExtendInfoCommon(_Tolerant):
    """`extra_info.common`: progress and request bookkeeping."""

    progress: Annotated[int | None, BeforeValidator(_progress)] = None
    request_id: OptionalText = None
    task_id: OptionalText = None


class Resource(_Tolerant):
    """`extra_info.resource`: the server, disk or file system the task works on."""

    id: OptionalText = None
    name: OptionalText = None
    type: OptionalText = None


class OpExtraInfo(_Tolerant):
    """`extra_info`: only the parts the watcher reads are typed; the rest are kept as-is."""

    common: Annotated[OpExtendInfoCommon | None, BeforeValidator(_object_or_none)] = None
    resource: Annotated[Resource | None, BeforeValidator(_object_or_none)] = None


class OperationLog(_Tolerant):
    """One CBR task ("operation log")."""

    id: Text
    status: Text
    operation_type: OptionalText = None
    project_id: OptionalText = None
    vault_id: OptionalText = None
    vault_name: OptionalText = None
    provider_id: OptionalText = None
    checkpoint_id: OptionalText = None
    policy_id: OptionalText = None
    created_at: Timestamp = None
    started_at: Timestamp = None
    updated_at: Timestamp = None
    ended_at: Timestamp = None
    error_info: Annotated[OpErrorInfo | None, BeforeValidator(_object_or_none)] = None
    extra_info: Annotated[OpExtraInfo | None, BeforeValidator(_object_or_none)] = None
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @property
    def progress(self) -> int | None:
        """`extra_info.common.progress` (0–100) or None when CBR did not say."""
        if self.extra_info is None or self.extra_info.common is None:
            return None
        return self.extra_info.common.progress

    @property
    def is_terminal(self) -> bool:
        """Whether this status ends the task (success, failed, skipped, timeout)."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_known_status(self) -> bool:
        """False for a status string this version of the watcher has never heard of."""
        return self.status in KNOWN_STATUSES

    @property
    def resource(self) -> Resource:
        """The resource, or an empty one when CBR omitted it."""
        if self.extra_info is None or self.extra_info.resource is None:
            return Resource()
        return self.extra_info.resource

    @property
    def error(self) -> tuple[str, str] | None:
        """(code, message) when CBR reported an error, None when both are empty."""
        info = self.error_info
        if info is None or not (info.code or info.message):
            return None
        return info.code or "", info.message or ""

    @classmethod
    def from_raw(cls, raw: object) -> OperationLog:
        """Parse one JSON object as CBR sent it, keeping the original alongside."""
        if not isinstance(raw, dict):
            raise MalformedBodyError(f"operation_log is {type(raw).__name__}, not an object")
        try:
            model = cls.model_validate(raw)
        except ValidationError as error:
            raise MalformedBodyError(_first_problem(error)) from None
        except (RecursionError, OverflowError, ValueError, TypeError) as error:
            raise MalformedBodyError(f"unreadable operation_log ({type(error).__name__})") from None
        model.raw = raw
        return model


class OpLogPage(BaseModel):
    """One page of ListOpLogs: the logs and the `count` CBR reported."""

    operation_logs: list[OperationLog]
    count: int | None = None
    limit: int | None = None
    offset: int | None = None


class MalformedBodyError(ValueError):
    """A 2xx body that is not the documented JSON shape."""


def parse_show_body(body: object) -> OperationLog:
    """Parse a ShowOpLog 200 body: `{"operation_log": {...}}`."""
    if not isinstance(body, dict) or "operation_log" not in body:
        raise MalformedBodyError("body has no 'operation_log' object")
    return OperationLog.from_raw(body["operation_log"])


def parse_list_body(body: object) -> OpLogPage:
    """Parse a ListOpLogs 200 body: `{"operation_logs": [...], "count": N}`."""
    if not isinstance(body, dict) or not isinstance(body.get("operation_logs"), list):
        raise MalformedBodyError("body has no 'operation_logs' list")
    logs = [OperationLog.from_raw(item) for item in body["operation_logs"]]

    def as_int(key: str) -> int | None:
        value = body.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return OpLogPage(
        operation_logs=logs, count=as_int("count"), limit=as_int("limit"), offset=as_int("offset")
    )


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return clean(f"{where[:100]}: {first['msg'][:200]}")
