"""Text that always survives leaving the process (see docs/hostile-input.md).

CBR may send any valid JSON, and valid JSON can hold lone UTF-16 surrogates ("\\ud800") that
have no UTF-8 encoding. The rule, applied the same way everywhere:

* where JSON carries the value (webhook bodies, the stored raw body), a lone surrogate is
  written as its `\\uXXXX` escape, so the receiver decodes exactly what CBR sent;
* where only text can go (metric labels, SQLite text columns, typed fields, log lines), a lone
  surrogate becomes U+FFFD, the Unicode replacement character.
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    """Whether `text` holds a code point that UTF-8 cannot encode."""
    return _SURROGATE.search(text) is not None


def clean(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (unchanged, and fast, otherwise)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_text(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON that keeps non-ASCII text readable and escapes lone surrogates.

    A lone surrogate can only appear inside a JSON string, where `\\uXXXX` is its exact
    escape, so `json.loads(json_text(v)) == v` for every JSON value `v`.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape, text)


def json_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    """`json_text` as UTF-8 bytes: never raises UnicodeEncodeError."""
    return json_text(value, sort_keys=sort_keys).encode()
