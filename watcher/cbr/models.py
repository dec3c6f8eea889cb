"""Tolerant models of the CBR OperationLog (ShowOpLog / ListOpLogs).

The cloud adds fields and statuses over time, so every model keeps unknown keys, every field
but `id` and `status` may be missing, and timestamps are accepted in both documented forms
(`2020-02-23T01:00:32Z` and `2019-05-23T14:35:23.584+00:00`). The raw JSON object is kept
next to the parsed view so webhooks can forward it exactly as CBR sent it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

PENDING_STATUSES = frozenset({"waiting", "running"})
TERMINAL_STATUSES = frozenset({"success", "failed", "skipped", "timeout"})
KNOWN_STATUSES = PENDING_STATUSES | TERMINAL_STATUSES


def parse_timestamp(value: object) -> datetime | None:
    """Parse a CBR timestamp in either documented form; empty → None; naive → UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as error:
            raise ValueError(f"not a CBR timestamp: {value!r}") from error
    else:
        raise ValueError(f"not a CBR timestamp: {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


Timestamp = Annotated[datetime | None, BeforeValidator(parse_timestamp)]


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _progress(value: object) -> int | None:
    """Progress as CBR means it: an integer 0–100. Anything else is treated as unknown."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return max(0, min(100, int(value)))
    if isinstance(value, str) and value.strip().isdigit():
        return max(0, min(100, int(value.strip())))
    return None


class OpErrorInfo(_Tolerant):
    """`error_info`: present with empty strings when the task did not fail."""

    code: str | None = None
    message: str | None = None


class OpExtendInfoCommon(_Tolerant):
    """`extra_info.common`: progress and request bookkeeping."""

    progress: Annotated[int | None, BeforeValidator(_progress)] = None
    request_id: str | None = None
    task_id: str | None = None


class Resource(_Tolerant):
    """`extra_info.resource`: the server, disk or file system the task works on."""

    id: str | None = None
    name: str | None = None
    type: str | None = None


class OpExtraInfo(_Tolerant):
    """`extra_info`: only the parts the watcher reads are typed; the rest are kept as-is."""

    common: OpExtendInfoCommon | None = None
    resource: Resource | None = None


class OperationLog(_Tolerant):
    """One CBR task ("operation log")."""

    id: str
    status: str
    operation_type: str | None = None
    project_id: str | None = None
    vault_id: str | None = None
    vault_name: str | None = None
    provider_id: str | None = None
    checkpoint_id: str | None = None
    policy_id: str | None = None
    created_at: Timestamp = None
    started_at: Timestamp = None
    updated_at: Timestamp = None
    ended_at: Timestamp = None
    error_info: OpErrorInfo | None = None
    extra_info: OpExtraInfo | None = None
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
            raise MalformedBodyError(_first_problem(error)) from error
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
    return f"{where}: {first['msg']}"
