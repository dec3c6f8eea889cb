"""The task API's request bodies: read bounded, never decompressed, parsed strictly, validated.

The only body the API takes is PUT's optional `{"labels": {"key": "value", ...}}`. Every
function here answers a bad body with the JSON error response to send, so a handler returns it
as it is; the one exception is a body over MAX_BODY, the app's `client_max_size`, for which
aiohttp raises its 413 and `json_errors` answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from watcher.safetext import has_surrogates
from watcher.sources.task_api.errors import error_response, shown

LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_BODY = 64 * 1024


def _encoding_problem(request: web.Request) -> web.Response | None:
    """The 415 for a body sent with a Content-Encoding other than identity; None otherwise.

    Bodies are taken as sent, never decompressed (`task_api_runner` turns aiohttp's own
    decompression off): a labels object is small, and a decoder is one more thing for a hostile
    body to aim at.
    """
    codings = [
        coding.strip().lower()
        for header in request.headers.getall("Content-Encoding", [])
        for coding in header.split(",")
    ]
    refused = [coding for coding in codings if coding not in ("", "identity")]
    if not refused:
        return None
    response = error_response(
        415,
        "unsupported_encoding",
        f"Content-Encoding {shown(refused[0])} is not supported: send the body uncompressed",
    )
    response.headers["Accept-Encoding"] = "identity"
    return response


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes) -> Any:
    """The JSON value in `raw`; ValueError for anything RFC 8259 does not allow."""
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _label_problem(key: object, value: object) -> web.Response | None:
    """The error for one label that breaks a rule; None when it is fine."""
    if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
        return error_response(
            400, "invalid_labels", f"label {shown(key)}: expected [A-Za-z_][A-Za-z0-9_.-]*"
        )
    if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
        return error_response(
            400,
            "invalid_labels",
            f"label {shown(key)}: expected a string of <= {MAX_LABEL_VALUE} characters",
        )
    if has_surrogates(value):
        # Labels become metric labels and webhook fields: only text UTF-8 can carry.
        return error_response(
            400, "invalid_labels", f"label {shown(key)}: the value is not valid Unicode"
        )
    return None


async def read_labels(request: web.Request) -> dict[str, str] | web.Response | None:
    """The optional {"labels": {...}} body; None when absent, the error response when bad."""
    refused = _encoding_problem(request)
    if refused is not None:
        return refused
    if not request.can_read_body:
        return None
    raw = await request.read()  # over MAX_BODY: aiohttp raises the 413
    if not raw.strip():
        return None
    try:
        body = _parse_json(raw)
    except UnicodeDecodeError:
        return error_response(400, "invalid_body", "the body is not UTF-8 encoded JSON")
    except ValueError:
        return error_response(400, "invalid_body", "the body is not JSON")
    if not isinstance(body, dict) or set(body) - {"labels"}:
        return error_response(
            400, "invalid_body", 'expected an object like {"labels": {"key": "value"}}'
        )
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        return error_response(
            400, "invalid_labels", f"labels: expected an object of at most {MAX_LABELS}"
        )
    for key, value in labels.items():
        problem = _label_problem(key, value)
        if problem is not None:
            return problem
    return labels
