"""Plain data (TOML tables, JSON objects) into task specs, policies and fault profiles.

Shared by scenario files and the control API. Every error is a ValueError whose message starts
with where the bad value sits, e.g. `tasks[2].outcome: ...`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from watcher.cbr.ids import validate_task_id
from watcher.config.durations import parse_duration
from watcher.sim.faults import FaultProfile, parse_fault
from watcher.sim.policies import PolicySpec, parse_pattern, parse_skips, parse_vault_refs
from watcher.sim.tasks import Phase, SimTaskSpec

_DURATION_KEYS = frozenset({"waiting", "running", "visible_after"})
_NUMBER_KEYS = frozenset({"progress_exponent", "stop_at"})
_OPTIONAL_TEXT_KEYS = frozenset(
    {
        "vault_id",
        "vault_name",
        "resource_id",
        "resource_name",
        "provider_id",
        "policy_id",
        "enterprise_project_id",
        "error_code",
        "error_message",
        "style",
    }
)
_TEXT_KEYS = frozenset({"operation_type", "outcome", "resource_type"})
_PROFILE_DURATIONS = frozenset({"latency", "latency_jitter", "retry_after_seconds"})
SPEC_KEYS = frozenset(item.name for item in fields(SimTaskSpec))
PROFILE_KEYS = frozenset(item.name for item in fields(FaultProfile))
POLICY_KEYS = frozenset(item.name for item in fields(PolicySpec))
_POLICY_DURATIONS = frozenset({"every", "first", "spread", "duration", "waiting"})
_POLICY_NUMBERS = frozenset({"fail_share", "skip_share", "timeout_share", "duration_sigma"})
_POLICY_INTEGERS = frozenset({"resources", "runs"})


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    return float(value)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def _phases(value: object) -> list[Phase]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of [status, duration, progress] phases")
    phases: list[Phase] = []
    for position, item in enumerate(value):
        if isinstance(item, Mapping):
            duration = item.get("duration", item.get("seconds", 0))
            item = [item.get("status"), duration, item.get("progress")]
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError(f"phase {position}: expected [status, duration(, progress)]")
        status, duration, progress = (*item, None)[:3]
        if progress is not None and (
            isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= 100
        ):
            raise ValueError(f"phase {position}: progress must be an integer 0-100")
        try:
            phases.append((_text(status), parse_duration(duration), progress))
        except ValueError as error:
            raise ValueError(f"phase {position}: {error}") from None
    return phases


def _faults(value: object) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("expected a list of fault names")
    for name in value:
        if not isinstance(name, str):
            raise ValueError("expected a list of fault names")
        parse_fault(name)
    return list(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _string_table(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValueError("expected a table of string values")
    return dict(value)


def _table(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table")
    return dict(value)


def _converter(key: str) -> Callable[[object], object]:
    if key in _DURATION_KEYS:
        return parse_duration
    if key in _NUMBER_KEYS:
        return _number
    if key in _TEXT_KEYS or key in _OPTIONAL_TEXT_KEYS:
        return _text
    return {
        "id": validate_task_id,
        "phases": _phases,
        "faults": _faults,
        "labels": _string_table,
        "extra": _table,
    }[key]


def spec_from_mapping(data: object, where: str = "task") -> SimTaskSpec:
    """A SimTaskSpec from a table; durations may be numbers or strings like "30s" or "5m"."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table of task settings")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in SPEC_KEYS:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(sorted(SPEC_KEYS))})")
        if raw is None and key in _OPTIONAL_TEXT_KEYS | _NUMBER_KEYS | {"id", "phases"}:
            continue
        try:
            values[key] = _converter(key)(raw)
        except ValueError as error:
            raise ValueError(f"{where}.{key}: {error}") from None
    try:
        return SimTaskSpec(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def profile_from_mapping(data: object, where: str = "faults") -> FaultProfile:
    """A FaultProfile from a table; latency fields accept durations, rates plain numbers."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table of fault settings")
    values: dict[str, float] = {}
    for key, raw in data.items():
        if key not in PROFILE_KEYS:
            raise ValueError(
                f"{where}.{key}: unknown key (known: {', '.join(sorted(PROFILE_KEYS))})"
            )
        try:
            values[key] = parse_duration(raw) if key in _PROFILE_DURATIONS else _number(raw)
        except ValueError as error:
            raise ValueError(f"{where}.{key}: {error}") from None
    try:
        return FaultProfile(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


_POLICY_SCHEDULE: dict[str, Callable[[object], object]] = {
    "pattern": parse_pattern,
    "vaults": parse_vault_refs,
    "skip": parse_skips,
    "enabled": _boolean,
}
_POLICY_NULLABLE = frozenset(
    {"id", "name", "runs", "vault_id", "vault_name", "provider_id", "style"}
)


def _policy_converter(key: str) -> Callable[[object], object]:
    if key in _POLICY_DURATIONS:
        return parse_duration
    if key in _POLICY_NUMBERS:
        return _number
    if key in _POLICY_INTEGERS:
        return _integer
    if key == "id":
        return validate_task_id
    return _POLICY_SCHEDULE.get(key, _text)


def policy_from_mapping(data: object, where: str = "policy") -> PolicySpec:
    """A PolicySpec from a table; `resources` and `every` are required unless `pattern` is
    given, durations may be numbers or strings like "10m" or "24h"."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table of policy settings")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in POLICY_KEYS:
            known = ", ".join(sorted(POLICY_KEYS))
            raise ValueError(f"{where}.{key}: unknown key (known: {known})")
        if raw is None and key in _POLICY_NULLABLE:
            continue
        try:
            values[key] = _policy_converter(key)(raw)
        except ValueError as error:
            raise ValueError(f"{where}.{key}: {error}") from None
    for required in () if "pattern" in values else ("resources", "every"):
        if required not in values:
            raise ValueError(f"{where}.{required}: required")
    try:
        return PolicySpec(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
