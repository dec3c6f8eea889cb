"""AK/SK request signing, `SDK-HMAC-SHA256`, as the Huawei Cloud SDKs do it.

Pure functions, no I/O and no clock: the caller passes the time. `sign` adds `X-Sdk-Date`,
`Host` and `Authorization` to a header dict in place. The URL must already carry its query
in canonical form (`encode_query`), because the API gateway rebuilds the canonical query from
what it receives and the Huawei SDK sends exactly the canonical form.

Details that match the SDK (huaweicloudsdkcore `signer/signer.py`) rather than intuition:
header names containing `_` are sent but never signed; the canonical URI always ends in `/`
while the URL sent does not have to; the HMAC key is the secret key's bytes, no derivation;
a non-JSON `Content-Type` makes the payload `UNSIGNED-PAYLOAD`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

from yarl import URL

ALGORITHM = "SDK-HMAC-SHA256"
DATE_HEADER = "X-Sdk-Date"
CONTENT_SHA_HEADER = "X-Sdk-Content-Sha256"
SECURITY_TOKEN_HEADER = "X-Security-Token"  # noqa: S105 - a header name
PROJECT_HEADER = "X-Project-Id"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_SIGNED_CONTENT_TYPES = ("application/json", "application/bson")


def sdk_date(epoch: float) -> str:
    """`X-Sdk-Date` for a Unix time: UTC, `YYYYMMDDTHHMMSSZ`."""
    return time.strftime(DATE_FORMAT, time.gmtime(epoch))


def encode(text: str) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters (UTF-8 first)."""
    return quote(text, safe="~")


def encode_query(pairs: Iterable[tuple[str, str]]) -> str:
    """The canonical query string: pairs sorted by (key, value) before encoding, `k=v&…`.

    Also the query to *send*: yarl would leave `:` and `/` bare and turn a space into `+`.
    """
    return "&".join(f"{encode(key)}={encode(value)}" for key, value in sorted(pairs))


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """Decode a raw query string into (key, value) pairs; `+` stays a plus, as sent encoded."""
    pairs = []
    for item in raw_query.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def canonical_uri(raw_path: str) -> str:
    """Decode the path, re-encode each segment, and end it with `/`."""
    path = "/".join(encode(segment) for segment in unquote(raw_path).split("/"))
    return path if path.endswith("/") else path + "/"


def payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    """Hex SHA-256 of the body; an `X-Sdk-Content-Sha256` header stands in for a non-empty one."""
    if not body:
        return EMPTY_BODY_SHA256
    declared = _get(headers, CONTENT_SHA_HEADER)
    return declared if declared else hashlib.sha256(body).hexdigest()


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Every header name, lower-cased and sorted, except those containing `_`."""
    return sorted({name.lower() for name in headers if "_" not in name})


def canonical_request(
    method: str, url: URL, headers: Mapping[str, str], body: bytes, signed: list[str]
) -> str:
    """The six newline-joined parts: method, URI, query, header block, signed list, body hash."""
    values = {name.lower(): str(value).strip() for name, value in headers.items()}
    header_block = "".join(f"{name}:{values[name]}\n" for name in signed)
    return "\n".join(
        (
            method.upper(),
            canonical_uri(url.raw_path),
            encode_query(query_pairs(url.raw_query_string)),
            header_block,
            ";".join(signed),
            payload_hash(headers, body),
        )
    )


def string_to_sign(canonical: str, date: str) -> str:
    """Algorithm, `X-Sdk-Date` value and the hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{date}\n{digest}"


def signature(secret_key: str, text: str) -> str:
    """Hex HMAC-SHA256 keyed with the secret key's UTF-8 bytes."""
    return hmac.new(secret_key.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(
    method: str,
    url: URL,
    headers: dict[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    now: float,
) -> None:
    """Add `X-Sdk-Date` (unless present), `Host` (unless present) and `Authorization`.

    Every header already in `headers` is signed (bar names with `_`), so put `X-Project-Id`
    and `X-Security-Token` in before calling.
    """
    content_type = _get(headers, "Content-Type")
    if content_type and not content_type.startswith(_SIGNED_CONTENT_TYPES):
        headers[CONTENT_SHA_HEADER] = UNSIGNED_PAYLOAD
    date = _get(headers, DATE_HEADER)
    if date is None:
        date = headers[DATE_HEADER] = sdk_date(now)
    if _get(headers, "Host") is None:
        headers["Host"] = url.host_port_subcomponent or url.raw_host or ""
    signed = signed_header_names(headers)
    canonical = canonical_request(method, url, headers, body, signed)
    headers["Authorization"] = (
        f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(signed)}, "
        f"Signature={signature(secret_key, string_to_sign(canonical, date))}"
    )


def _get(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None
