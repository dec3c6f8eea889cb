"""Standard Webhooks signatures (standardwebhooks.com): HMAC-SHA256 over "id.timestamp.body".

Both sides live here: `sign` for the deliverer, `verify` for receivers (the demo's, and anyone
who wants a reference). Tests check both against the independent `standardwebhooks` library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from watcher.config.types import parse_whsec

DEFAULT_TOLERANCE = 300.0


class SignatureError(ValueError):
    """A webhook whose signature or timestamp does not check out."""


def split_secrets(value: str) -> list[bytes]:
    """The HMAC keys in one or more whitespace-separated "whsec_<base64>" secrets (several
    while a secret is being rotated); ValueError, never naming the value, otherwise."""
    return parse_whsec(value)


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of "msg_id.timestamp.body"."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: "v1,<sig>" per key, space-separated."""
    return " ".join(f"v1,{signature(key, msg_id, timestamp, body)}" for key in keys)


def verify(
    keys: Sequence[bytes],
    *,
    msg_id: str,
    timestamp: str,
    signature_header: str,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Raise SignatureError unless some v1 signature matches some key, within the tolerance."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    if abs(now - sent_at) > tolerance:
        raise SignatureError("webhook-timestamp is too far from now")
    offered = [part.split(",", 1)[1] for part in signature_header.split() if part.startswith("v1,")]
    for key in keys:
        expected = signature(key, msg_id, sent_at, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("no matching signature")
