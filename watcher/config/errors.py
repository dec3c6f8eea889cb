"""Configuration errors: every problem becomes one `ConfigError` line naming the key, the value
(secrets redacted) and what is expected; the CLI exits 78 on it.

Validators raise `Invalid`; sources raise `UndecodableValue`; `from_validation_error` and
`from_undecodable` turn those (and pydantic's own errors) into the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from pydantic import ValidationError
from pydantic_settings import SettingsError

from watcher.redaction import (
    REDACTED,
    is_secret_key,
    is_token_url_key,
    is_url_key,
    redact_token_url,
    redact_url,
)

Loc = tuple[str | int, ...]

NO_VALUE: Final = object()  # Invalid: show the value pydantic saw
OMIT: Final = object()  # Invalid: show no value at all
_MAX_SHOWN: Final = 80


class ConfigError(Exception):
    """A configuration problem, in one line: the key, the bad value and what is expected."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


class Invalid(ValueError):
    """Raised by validators; `key` (relative to where pydantic reports it) and `value` refine it."""

    def __init__(self, expected: str, *, key: Loc = (), value: object = NO_VALUE) -> None:
        super().__init__(expected)
        self.expected = expected
        self.key = key
        self.value = value


class UndecodableValue(ValueError):
    """A JSON value in an environment variable or a secret file that does not parse."""

    def __init__(self, *, name: str, loc: Loc, origin: str, value: str, reason: str) -> None:
        super().__init__(reason)
        self.name, self.loc, self.origin, self.value, self.reason = name, loc, origin, value, reason


_EXPECTED_BY_TYPE: Final = {
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "extra_forbidden": "unknown key",
    "missing": "required",
}

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def dotted(loc: Sequence[str | int]) -> str:
    """`loc` as a key people recognise: `webhooks[0].headers['X-Key']`."""
    text = ""
    for part in loc:
        if isinstance(part, int) or _IDENTIFIER.fullmatch(part) is None:
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text


def is_secret_loc(loc: Sequence[str | int]) -> bool:
    """Whether the value at `loc` is a secret: a secret key, or anything under `headers`."""
    names = [part for part in loc if isinstance(part, str)]
    return bool(names) and (is_secret_key(names[-1]) or "headers" in names[:-1])


class _Elided:
    """Stands for what is nested too deep to show."""

    def __repr__(self) -> str:
        return "..."


def is_token_url_loc(loc: Sequence[str | int]) -> bool:
    """Whether the value at `loc` is (or is inside) a URL whose path is a secret."""
    return len(loc) >= 2 and is_token_url_key(f"{loc[0]}.{loc[1]}")


def _redacted(value: object, loc: Loc, depth: int = 0) -> object:
    if is_secret_loc(loc):
        return REDACTED
    if isinstance(value, str) and is_token_url_loc(loc):
        return redact_token_url(value)
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_SHOWN // 2:
        return _Elided()  # shown cut to _MAX_SHOWN characters anyway
    if isinstance(value, Mapping):
        return {key: _redacted(item, (*loc, str(key)), depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item, (*loc, index), depth + 1) for index, item in enumerate(value)]
    if isinstance(value, str) and loc and isinstance(loc[-1], str) and is_url_key(loc[-1]):
        return redact_url(value)
    return value


def shown(value: object, loc: Loc) -> str:
    """`value` (found at `loc`) as shown in a message: secrets redacted, at most 80 characters."""
    text = repr(_redacted(value, loc))
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def from_validation_error(exc: ValidationError) -> ConfigError:
    """The first problem pydantic found, as one line (with a count of the others)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc: Loc = tuple(first["loc"])
    value: object = first["input"]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Invalid):
        expected = cause.expected
        loc += cause.key
        value = value if cause.value is NO_VALUE else cause.value
    elif first["type"] in ("greater_than_equal", "greater_than"):
        bound = first.get("ctx") or {}
        relation = ">=" if "ge" in bound else ">"
        expected = f"expected a number {relation} {bound.get('ge', bound.get('gt')):g}"
    elif loc == ("webhooks",) and first["type"] == "list_type":
        expected = "expected [[webhooks]] tables (a list of receivers)"
    else:
        expected = _EXPECTED_BY_TYPE.get(first["type"], first["msg"].removeprefix("Value error, "))
    message = f"{dotted(loc)}: {expected}"
    if first["type"] not in ("extra_forbidden", "missing") and value is not OMIT:
        message = f"{dotted(loc)} = {shown(value, loc)}: {expected}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ConfigError(message)


def from_undecodable(exc: UndecodableValue) -> ConfigError:
    """A variable or secret file whose JSON does not parse, named with where it came from."""
    # The raw text failed to parse, so it cannot be redacted field by field: hide it whole
    # when it may hold a secret.
    loc = exc.loc
    hidden = (
        loc[:1] in (("webhooks",), ("heartbeat",)) or is_secret_loc(loc) or is_token_url_loc(loc)
    )
    value = repr(REDACTED) if hidden else shown(exc.value, loc)
    return ConfigError(
        f"{dotted(loc)} = {value} (from {exc.origin} {exc.name.upper()}): "
        f"expected valid JSON ({exc.reason})"
    )


def from_settings_error(exc: SettingsError) -> ConfigError:
    """Anything else pydantic-settings reports; our own sources raise `UndecodableValue`."""
    return ConfigError(f"configuration: {exc}")
