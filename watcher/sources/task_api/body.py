"""The task API's request bodies: read bounded, decoded bounded, parsed strictly, validated.

The only body the API takes is PUT's optional `{"labels": {"key": "value", ...}}`. Every
function here answers a bad body with the JSON error response to send (never an exception),
so a handler returns it as it is.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from aiohttp import web

from watcher.safetext import has_surrogates
from watcher.sources.task_api.errors import error_response, shown

LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_BODY = 64 * 1024

_GZIP_WBITS = 16 + zlib.MAX_WBITS


async def _read_body(request: web.Request) -> bytes | web.Response:
    """The whole body as sent (still content-encoded), or a 413 once it passes MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        # read(n) returns what has arrived (up to n bytes); b"" only at the end.
        chunk = await request.content.read(MAX_BODY + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return error_response(413, "body_too_large", f"the body is limited to {MAX_BODY} bytes")


def _decompress(data: bytes, coding: str) -> bytes | web.Response:
    """One content coding undone, never to more than MAX_BODY bytes (a zip bomb is a 413)."""
    if coding == "deflate" and data and data[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header: common, tolerated
    else:
        wbits = _GZIP_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(data, MAX_BODY + 1)
    except zlib.error:
        return error_response(400, "invalid_body", f"the body is not valid {coding} data")
    if len(out) > MAX_BODY or decoder.unconsumed_tail:
        return error_response(
            413, "body_too_large", f"the decoded body is limited to {MAX_BODY} bytes"
        )
    if not decoder.eof or decoder.unused_data:
        return error_response(400, "invalid_body", f"the body is not valid {coding} data")
    return out


def _decode_body(raw: bytes, content_encoding: str) -> bytes | web.Response:
    """Undo `Content-Encoding` (identity, gzip, x-gzip, deflate; applied last first).

    The server does not decompress for us (see TaskApiRunner), so a body that is not what
    its header says is answered here, like any other bad body.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    unsupported = [c for c in codings if c not in ("identity", "gzip", "x-gzip", "deflate")]
    if unsupported:
        return error_response(
            415,
            "unsupported_encoding",
            f"Content-Encoding {shown(unsupported[0])} is not supported: use gzip, deflate or none",
        )
    if len(codings) > 2:
        return error_response(
            415, "unsupported_encoding", "at most two content codings are supported"
        )
    data = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoded = _decompress(data, coding)
        if isinstance(decoded, web.Response):
            return decoded
        data = decoded
    return data


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
    if not request.can_read_body:
        return None
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    raw = _decode_body(raw, request.headers.get("Content-Encoding", ""))
    if isinstance(raw, web.Response):
        return raw
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
