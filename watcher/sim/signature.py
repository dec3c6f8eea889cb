"""The simulated API gateway's own check of `SDK-HMAC-SHA256` signatures.

Written from Huawei Cloud's published AK/SK signing description, independently of
`watcher.cbr.signer` (which it must never import): the watcher's signer and this verifier
meeting in the middle is the end-to-end test. The gateway's view differs from the client's in
one way that matters: it only has the bytes that arrived, so the canonical request is rebuilt
from the raw path, the raw query string and the headers named in `SignedHeaders`.

Inference (not documented): a raw `+` in the query is a literal plus, not a space.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_to_bytes

_AUTHORIZATION = re.compile(
    r"SDK-HMAC-SHA256\s+Access=(?P<ak>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-fA-F]+)\s*"
)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_SKEW = 15 * 60.0


@dataclass(frozen=True)
class SignedCall:
    """What arrived: method, raw path and query (still percent-encoded), headers, body."""

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Verdict:
    """`reason` is None when the signature is good; `access_key` when one was named."""

    access_key: str | None
    reason: str | None
    canonical: str = ""


def parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    """(access key, signed header names, signature) from an `Authorization` value."""
    match = _AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        return None
    return match["ak"], match["signed"].split(";"), match["signature"].lower()


def _pct(data: bytes) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)


def _path(raw_path: str) -> str:
    parts = [_pct(part) for part in unquote_to_bytes(raw_path).split(b"/")]
    joined = "/".join(parts)
    return joined if joined.endswith("/") else joined + "/"


def _query(raw_query: str) -> str:
    pairs: list[tuple[bytes, bytes]] = []
    for item in filter(None, raw_query.split("&")):
        name, _, value = item.partition("=")
        pairs.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    # Sorted as text, as the client sorts its parameters before encoding them.
    pairs.sort(key=lambda pair: tuple(part.decode(errors="replace") for part in pair))
    return "&".join(f"{_pct(name)}={_pct(value)}" for name, value in pairs)


def _payload(call: SignedCall) -> str:
    if not call.body:
        return hashlib.sha256(b"").hexdigest()
    declared = call.headers.get("X-Sdk-Content-Sha256")
    return declared or hashlib.sha256(call.body).hexdigest()


def canonical_request(call: SignedCall, signed: list[str]) -> str | None:
    """The canonical request from the gateway's side; None if a signed header is missing."""
    lines = [call.method.upper(), _path(call.raw_path), _query(call.raw_query)]
    block = ""
    for name in signed:
        value = call.headers.get(name)
        if value is None:
            return None
        block += f"{name}:{value.strip()}\n"
    lines += [block, ";".join(signed), _payload(call)]
    return "\n".join(lines)


def _sdk_time(text: str | None) -> float | None:
    try:
        return datetime.strptime(text or "", _DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def verify(call: SignedCall, secret_for: Mapping[str, str], now: float) -> Verdict:
    """Check the signature against the secret key of the named access key, at `now`.

    Reasons follow the gateway's documented `APIGW.0301` wording where there is one:
    "verify aksk signature fail" (plus the canonical request, `|` for newlines),
    "Get secretKey failed,ak:******,err:ak not exist". The wording for a stale `X-Sdk-Date`
    is borrowed from the APIG app-auth message (inference).
    """
    parsed = parse_authorization(call.headers.get("Authorization", ""))
    if parsed is None:
        return Verdict(None, "verify aksk signature fail, malformed Authorization header")
    access_key, signed, given = parsed
    secret = secret_for.get(access_key)
    if secret is None:
        return Verdict(access_key, "Get secretKey failed,ak:******,err:ak not exist")
    if "x-sdk-date" not in signed or signed != sorted(set(signed)):
        return Verdict(access_key, "verify aksk signature fail, x-sdk-date must be signed")
    when = _sdk_time(call.headers.get("X-Sdk-Date"))
    if when is None or abs(now - when) > MAX_SKEW:
        server = datetime.fromtimestamp(now, UTC).strftime(_DATE_FORMAT)
        return Verdict(
            access_key,
            f"signature expired, signature time:{call.headers.get('X-Sdk-Date')},"
            f"server time:{server}",
        )
    canonical = canonical_request(call, signed)
    if canonical is None:
        return Verdict(access_key, "verify aksk signature fail, a signed header is missing")
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    text = f"SDK-HMAC-SHA256\n{call.headers['X-Sdk-Date']}\n{digest}"
    expected = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        shown = canonical.replace("\n", "|")
        return Verdict(access_key, f"verify aksk signature fail, {shown}", canonical)
    return Verdict(access_key, None, canonical)
