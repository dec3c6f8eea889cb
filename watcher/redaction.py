"""What counts as a secret, and how it is hidden: no secret leaves the process.

One marker, a few key-name rules and helpers, shared by configuration errors, `check-config`,
log lines and upstream error messages:

* `REDACTED` stands in for every hidden value;
* `is_secret_key(name)`: a setting, header or log field whose *name* says it holds a secret;
* `is_url_key(name)`: a key whose value is a URL, to be shown through `redact_url`;
* `is_token_url_key(path)`: a setting whose URL carries its token in the path (a push URL), to
  be shown through `redact_token_url`;
* `redact_url(url)`: the URL with its userinfo and query values hidden;
* `redact_token_url(url)`: only the scheme and host of the URL;
* `redact_text(text, secrets)`: known secret values cut out of free text.

Standard library only, so that any module can use it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "**********"

# A key holds a secret when its name contains one of these (case-insensitively)...
SECRET_WORDS: Final = (
    "token",
    "password",
    "secret",
    "access_key",
    "api_key",
    "authorization",
    "signature",
    "credential",
)
# ...unless it names where the secret is kept: a path is not itself a secret.
_LOCATION_SUFFIXES: Final = ("_file", "_dir", "_directory", "_path")

_URL_NAMES: Final = frozenset({"url", "endpoint"})
_URL_SUFFIXES: Final = ("_url", "_endpoint")

# Push URLs (Healthchecks, Cronitor, Uptime Kuma) are their own credential: the token is a
# path segment, so everything after the host is hidden.
_TOKEN_URL_KEYS: Final = frozenset({"heartbeat.url"})

_URL_PARTS: Final = re.compile(
    r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//)(?P<authority>[^/?#]*)"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?",
    re.DOTALL,
)


@functools.lru_cache(maxsize=4096)  # asked for every key of every log line
def is_secret_key(name: str) -> bool:
    """Whether a key called `name` holds a secret: "token", "auth.password", "api_token",
    "X-Auth-Token", "secret_key" do; "token_file", "secret_file" (paths) and "region" do not."""
    lowered = name.lower()
    if lowered.endswith(_LOCATION_SUFFIXES):
        return False
    return any(word in lowered for word in SECRET_WORDS)


def is_url_key(name: str) -> bool:
    """Whether a key called `name` holds a URL ("url", "endpoint", "iam_endpoint", "…_url")."""
    lowered = name.lower()
    return lowered in _URL_NAMES or lowered.endswith(_URL_SUFFIXES)


def is_token_url_key(path: str) -> bool:
    """Whether the setting at the dotted `path` ("heartbeat.url") holds a URL whose path is a
    secret, so that it is shown through `redact_token_url`."""
    return path.lower() in _TOKEN_URL_KEYS


def _redacted_query(query: str) -> str:
    params = []
    for param in query.split("&"):
        name, equals, value = param.partition("=")
        if equals:
            params.append(f"{name}={REDACTED}" if value else param)
        else:
            params.append(REDACTED if name else param)  # "?SECRET" alone may be a token
    return "&".join(params)


def redact_url(url: str) -> str:
    """`url` with its userinfo and every query value replaced by REDACTED:
    `https://user:pass@host/p?token=abc` → `https://**********@host/p?token=**********`.

    Textual, so that it works on malformed URLs (shown in error messages) too.
    """
    match = _URL_PARTS.fullmatch(url)
    if match is None:
        if "?" not in url:
            return url
        before, _, after = url.partition("?")
        query, hash_mark, fragment = after.partition("#")
        return f"{before}?{_redacted_query(query)}{hash_mark}{fragment}"
    authority = match["authority"]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    query = "" if match["query"] is None else f"?{_redacted_query(match['query'])}"
    return f"{match['head']}{authority}{match['path']}{query}{match['fragment'] or ''}"


def redact_token_url(url: str) -> str:
    """Only the scheme and host of `url`, the rest hidden:
    `https://hc-ping.com/5f1c…/fail?x=1` → `https://hc-ping.com/**********`.

    Textual, like `redact_url`; anything that does not even start like a URL is hidden whole.
    """
    match = _URL_PARTS.fullmatch(url)
    if match is None or not match["head"].endswith("://"):
        return REDACTED if url else url
    authority = match["authority"]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    rest = url[match.end("authority") :]
    return f"{match['head']}{authority}{rest if rest in ('', '/') else '/' + REDACTED}"


def redact_text(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every occurrence of each non-empty secret in `secrets` replaced by REDACTED.

    One pass, longest secret first: a secret that contains another is hidden whole, and the
    markers put in are never searched again.
    """
    wanted = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    if not wanted:
        return text
    return re.sub("|".join(re.escape(secret) for secret in wanted), REDACTED, text)
