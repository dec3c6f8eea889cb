"""Standard Webhooks signatures (standardwebhooks.com): HMAC-SHA256 over "id.timestamp.body".

Both sides live here: `sign` for the deliverer, `verify` for receivers (the demo's, and anyone
who wants a reference). Tests check both against the independent `standardwebhooks` library.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

DEFAULT_TOLERANCE = 300.0


class SignatureError(ValueError):
    """A webhook whose signature or timestamp does not check out."""


WHSEC_PREFIX: Final = "whsec_"
WHSEC_RULE: Final = '"whsec_" followed by base64'


def parse_whsec(value: str) -> list[bytes]:
    """The HMAC keys in `value`: one "whsec_<base64>" secret, or several separated by
    whitespace while a secret is being rotated. Each must decode to at least one byte.

    Raises ValueError naming the expected form, never the value.
    """
    keys: list[bytes] = []
    for part in value.split():
        key = b""
        if part.startswith(WHSEC_PREFIX):
            with contextlib.suppress(binascii.Error, ValueError):
                key = base64.b64decode(part.removeprefix(WHSEC_PREFIX), validate=True)
        if not key:
            raise ValueError(f"a webhook secret must be {WHSEC_RULE}")
        keys.append(key)
    if not keys:
        raise ValueError(f"a webhook secret must be {WHSEC_RULE}")
    return keys


def is_whsec(value: str) -> bool:
    """Whether `parse_whsec(value)` accepts `value`."""
    try:
        parse_whsec(value)
    except ValueError:
        return False
    return True


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
