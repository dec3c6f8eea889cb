"""`check-config` output: the effective settings as TOML, every secret redacted (URLs too:
their userinfo and query values)."""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, SecretStr

from watcher.config.durations import format_duration
from watcher.config.model import Settings
from watcher.config.types import DurationMark
from watcher.redaction import REDACTED, is_token_url_key, is_url_key, redact_token_url, redact_url

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _string(text: str) -> str:
    def escape(char: str) -> str:
        if char in _ESCAPES:
            return _ESCAPES[char]
        return f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char

    return '"' + "".join(escape(char) for char in text) + '"'


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _value(value: object, *, duration: bool = False) -> str:
    if isinstance(value, SecretStr):
        return _string(REDACTED if value.get_secret_value() else "")
    if isinstance(value, bool):
        return "true" if value else "false"
    if duration and isinstance(value, float):
        return _string(format_duration(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _table(header: str, section: BaseModel, notes: dict[str, str]) -> list[str]:
    lines = [header]
    path = header.strip("[]")
    nested: list[tuple[str, BaseModel]] = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            nested.extend((name, item) for item in value)
            continue
        if is_token_url_key(f"{path}.{name}"):
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            value = redact_token_url(raw) if isinstance(raw, str) else raw
        elif is_url_key(name) and isinstance(value, str):
            value = redact_url(value)
        duration = any(isinstance(item, DurationMark) for item in field.metadata)
        line = f"{_key(name)} = {_value(value, duration=duration)}"
        if name in notes:
            line += f"  # {redact_url(notes[name])}"
        lines.append(line)
    for name, item in nested:
        # An array of tables (e.g. [[watch.discover]]) follows its parent table's keys.
        lines.extend(["", *_table(f"[[{path}.{name}]]", item, {})])
    return lines


def render_effective(settings: Settings) -> str:
    """The effective settings as TOML for `check-config`: sections in the documented order,
    durations spelt like "5m", and every secret that is set shown as REDACTED."""
    notes: dict[str, dict[str, str]] = {"cbr": {}, "auth": {}}
    if settings.cbr.region and not settings.cbr.endpoint:
        notes["cbr"]["endpoint"] = settings.cbr.effective_endpoint
    if settings.cbr.region and not settings.auth.iam_endpoint:
        notes["auth"]["iam_endpoint"] = settings.effective_iam_endpoint
    lines = [f'# cbr-watcher effective configuration; secrets are shown as "{REDACTED}"']
    for name in type(settings).model_fields:
        lines.append("")
        if name == "webhooks":
            for receiver in settings.webhooks:
                lines.extend(_table("[[webhooks]]", receiver, {}))
                lines.append("")
            if not settings.webhooks:
                lines.extend(["# no [[webhooks]] receivers", ""])
            lines.pop()
        else:
            lines.extend(_table(f"[{name}]", getattr(settings, name), notes.get(name, {})))
    return "\n".join(lines) + "\n"
