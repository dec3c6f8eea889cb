"""Hostile answers: bodies and headers that are valid HTTP, mostly valid JSON, and not what a
faithful CBR sends. Used only by the opt-in hostile faults (see `watcher.sim.faults.Fault`).

A body fault starts from the real 200 body and changes one aspect of every operation log in
it, so the status a client reads is still the task's true one (except "surrogate:status").
Values no JSON encoder writes (`Infinity`, `1e999`, a 400-digit integer) are spliced into the
encoded text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

DEEP_LEVELS = 100_000
OVERSIZED_BYTES = 9 * 1024 * 1024 + 17
"""Over the watcher's 8 MiB body limit, whatever the real body adds."""
FAR_DATES = {"future": "9999-12-31T23:59:59-05:00", "past": "0001-01-01T00:00:00+05:00"}
PROGRESS_TEXT = {
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "NaN": "NaN",
    "1e999": "1e999",
    "huge": "9" * 400,
    "superscript": '"\u00b2"',
}
_PLACEHOLDER = "\x00sim-raw-json\x00"
_TIMESTAMP_KEYS = ("created_at", "started_at", "updated_at", "ended_at")
_SURROGATES = ("\ud800", "\udfff", "\udc80")


def odd_retry_after(variant: str, now_wall: float) -> str:
    """The `Retry-After` value of a "throttle_odd" fault; dates are a minute after `now_wall`."""
    ahead = datetime.fromtimestamp(now_wall + 60, UTC)
    return {
        "minus0000": "Wed, 21 Oct 2015 07:28:00 -0000",
        "superscript": "\u00b2",
        "huge": "99999999999",
        "garbage": "soon, maybe",
        "rfc850": ahead.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
        "asctime": ahead.strftime("%a %b ") + f"{ahead.day:2d}" + ahead.strftime(" %H:%M:%S %Y"),
    }[variant]


def deep_body(key: str, levels: int = DEEP_LEVELS) -> bytes:
    """`{key: [[[…]]]}` nested `levels` deep: valid JSON that exhausts recursive parsers."""
    return b'{"' + key.encode() + b'":' + b"[" * levels + b"]" * levels + b"}"


def mutated_body(kind: str, variant: str, data: dict[str, Any]) -> bytes:
    """The real body `data` (already parsed) changed as the fault `kind:variant` says."""
    logs = _logs(data)
    if kind == "oversized":
        data["sim_padding"] = "x" * OVERSIZED_BYTES
        return _encode(data)
    if kind == "far_date":
        for log in logs:
            for key in _TIMESTAMP_KEYS:
                if key in log:
                    log[key] = FAR_DATES[variant]
        return _encode(data)
    if kind == "surrogate":
        for log in logs:
            _add_surrogates(log, status_only=variant == "status")
        return _encode(data)
    if kind == "progress":
        for log in logs:
            extra = log.setdefault("extra_info", {})
            extra.setdefault("common", {})["progress"] = _PLACEHOLDER
        return _encode(data, raw=PROGRESS_TEXT[variant])
    raise ValueError(f"not a body fault: {kind}")


def _logs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The operation log objects of a ShowOpLog or ListOpLogs body."""
    if isinstance(data.get("operation_log"), dict):
        return [data["operation_log"]]
    return [log for log in data.get("operation_logs", []) if isinstance(log, dict)]


def _add_surrogates(log: dict[str, Any], *, status_only: bool) -> None:
    first, second, third = _SURROGATES
    if status_only:
        log["status"] = f"{log.get('status', '')}{first}"
        return
    log["operation_type"] = f"{log.get('operation_type', '')}{first}"
    log["vault_name"] = f"{second}{log.get('vault_name', '')}"
    resource = log.setdefault("extra_info", {}).setdefault("resource", {})
    resource["name"] = f"{resource.get('name', '')}{third}"
    resource["type"] = f"{first}{resource.get('type', '')}"
    log.setdefault("error_info", {})["message"] = f"broken {second} text"
    log["sim_label"] = third


def _encode(data: dict[str, Any], *, raw: str | None = None) -> bytes:
    # ensure_ascii: the only way to write a lone surrogate is its \uXXXX escape.
    text = json.dumps(data, ensure_ascii=True)
    if raw is not None:
        text = text.replace(json.dumps(_PLACEHOLDER), raw)
    return text.encode()
