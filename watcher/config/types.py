"""Value types of the configuration: each is a parser or an `Annotated` pydantic type whose
validators raise `Invalid` with the "expected …" half of the message.

The formats that other parts own are parsed by them: listen addresses by
`watcher.net.listener.parse_listen`, webhook secrets by `watcher.delivery.signing.parse_whsec`,
event patterns by `watcher.delivery.outbox.event_matches`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, SecretStr

from watcher.cbr.ids import TASK_ID_RULE, InvalidTaskIdError, is_valid_task_id, parse_task_file
from watcher.config.durations import parse_duration
from watcher.config.errors import Invalid
from watcher.delivery.outbox import event_matches
from watcher.delivery.signing import WHSEC_RULE, is_whsec
from watcher.engine.events import EVENT_TYPES
from watcher.net.listener import parse_listen

# C0 controls and DEL: never valid in a header, a token or a URL.
CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

# --- listen addresses ------------------------------------------------------------------------


def _listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return value


def _listen_or_empty(value: str) -> str:
    return _listen(value) if value else value


Listen = Annotated[str, AfterValidator(_listen)]
ListenOrEmpty = Annotated[str, AfterValidator(_listen_or_empty)]

# --- Standard Webhooks secrets ---------------------------------------------------------------


def _whsec_or_empty(value: SecretStr) -> SecretStr:
    if value.get_secret_value() and not is_whsec(value.get_secret_value()):
        raise Invalid(f"expected {WHSEC_RULE}")
    return value


WhsecOrEmpty = Annotated[SecretStr, AfterValidator(_whsec_or_empty)]

# --- durations -------------------------------------------------------------------------------


class DurationMark:
    """Annotated metadata marking a float as a duration, so rendering can spell it "5m"."""


def _duration(*, positive: bool) -> BeforeValidator:
    def parse(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        except OverflowError:  # an integer too large for a float
            raise Invalid("expected a duration of a sensible size") from None
        if positive and seconds == 0:
            raise Invalid("expected a duration greater than zero")
        return seconds

    return BeforeValidator(parse)


Duration = Annotated[float, _duration(positive=False), DurationMark()]
PositiveDuration = Annotated[float, _duration(positive=True), DurationMark()]

# --- secrets ---------------------------------------------------------------------------------


def _no_blanks(value: SecretStr) -> SecretStr:
    if any(c.isspace() for c in value.get_secret_value()):
        # A stray space or newline would only show up later, as a rejected signature.
        raise Invalid("expected no spaces or line breaks")
    return value


def _no_controls(value: SecretStr) -> SecretStr:
    if CONTROL.search(value.get_secret_value()):
        # Sent in an HTTP header (or a JSON body built from it): it could never work.
        raise Invalid("expected no control characters (line breaks, tabs, NUL)")
    return value


NoControlsSecret = Annotated[SecretStr, AfterValidator(_no_controls)]
NoBlanksSecret = Annotated[SecretStr, AfterValidator(_no_blanks), AfterValidator(_no_controls)]


def is_set(value: str | SecretStr) -> bool:
    """Whether a string or secret setting holds anything."""
    return bool(value.get_secret_value() if isinstance(value, SecretStr) else value)


def at_most_one(model: BaseModel, *pairs: tuple[str, str]) -> None:
    """Invalid, at the second key, when both keys of a (value, file) pair are set."""
    for value_key, file_key in pairs:
        if is_set(getattr(model, value_key)) and is_set(getattr(model, file_key)):
            raise Invalid(
                f"expected only one of {value_key} and {file_key}",
                key=(file_key,),
                value=getattr(model, file_key),
            )


# --- choices, URLs, files --------------------------------------------------------------------


def choice(*options: str) -> BeforeValidator:
    """A validator accepting one of `options`, case-insensitively, returned in lower case."""

    def check(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise Invalid(f"expected one of {', '.join(options)}")

    return BeforeValidator(check)


def is_http_url(value: str) -> bool:
    """Whether `value` is an http:// or https:// URL with a host (and a valid port, if any)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError when out of range
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _http_url_or_empty(value: str) -> str:
    if value and (
        not is_http_url(value) or any(c.isspace() for c in value) or CONTROL.search(value)
    ):
        raise Invalid("expected an http:// or https:// URL")
    return value


def _http_url_secret_or_empty(value: SecretStr) -> SecretStr:
    _http_url_or_empty(value.get_secret_value())
    return value


def _readable_file(value: str) -> str:
    if value:
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise Invalid(f"expected a readable file ({exc.strerror or exc})") from None
    return value


def file_holding(check: Callable[[str], bool], what: str) -> AfterValidator:
    """A validator for a file path whose (stripped) UTF-8 content must pass `check`."""

    def validate(value: str) -> str:
        if value:
            try:
                text = Path(value).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            if not check(text):
                raise Invalid(f"expected a file holding {what}")
        return value

    return AfterValidator(validate)


HttpUrlOrEmpty = Annotated[str, AfterValidator(_http_url_or_empty)]
HttpUrlSecretOrEmpty = Annotated[SecretStr, AfterValidator(_http_url_secret_or_empty)]
"""A URL that is its own credential (a push URL with the token in its path)."""
ReadableFile = Annotated[str, AfterValidator(_readable_file)]
UrlFile = Annotated[ReadableFile, file_holding(is_http_url, "an http(s) URL")]
WhsecFile = Annotated[ReadableFile, file_holding(is_whsec, '"whsec_" and base64')]

# --- CBR names, task IDs, event types, headers -----------------------------------------------

_REGION: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PROJECT_ID: Final = re.compile(r"[A-Za-z0-9_-]+")
HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _region(value: str) -> str:
    if value and _REGION.fullmatch(value) is None:
        raise Invalid('expected a region such as "ap-southeast-1"')
    return value


def _project_id(value: str) -> str:
    if value and _PROJECT_ID.fullmatch(value) is None:
        raise Invalid("expected a project ID: letters, digits, '_' or '-' (usually 32 hex digits)")
    return value


def _task_id(value: str) -> str:
    if not is_valid_task_id(value):
        raise Invalid(f"expected {TASK_ID_RULE}")
    return value


def _task_file(value: str) -> str:
    if value:
        try:
            parse_task_file(Path(value).read_text(encoding="utf-8"))
        except OSError as exc:
            raise Invalid(f"expected a readable file ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise Invalid("expected a UTF-8 text file, one task ID per line") from None
        except InvalidTaskIdError as exc:
            raise Invalid(str(exc)) from None
    return value


_FILTER_VALUE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_OPERATION_TYPE: Final = re.compile(r"[a-z][a-z_]{0,63}")
_LABEL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_DISCOVER_LABELS: Final = 32
MAX_LABEL_VALUE: Final = 256


def _filter_value(value: str) -> str:
    if value and _FILTER_VALUE.fullmatch(value) is None:
        raise Invalid("expected an ID: up to 128 letters, digits, '_', '-', '.' or ':'")
    return value


def _operation_type(value: str) -> str:
    if _OPERATION_TYPE.fullmatch(value) is None:
        raise Invalid('expected a CBR operation type such as "backup" or "replication"')
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_DISCOVER_LABELS:
        raise Invalid(f"expected at most {MAX_DISCOVER_LABELS} labels")
    for name, text in value.items():
        if _LABEL_NAME.fullmatch(name) is None:
            raise Invalid(f"label {name!r}: expected a name of letters, digits, '_', '.' or '-'")
        if len(text) > MAX_LABEL_VALUE or CONTROL.search(text):
            raise Invalid(
                f"label {name!r}: expected up to {MAX_LABEL_VALUE} characters, no control ones"
            )
    return value


def _event_pattern(value: str) -> str:
    if not any(event_matches(event, value) for event in EVENT_TYPES):
        raise Invalid(f"expected an event type or a glob matching one of {', '.join(EVENT_TYPES)}")
    return value


Region = Annotated[str, AfterValidator(_region)]
ProjectId = Annotated[str, AfterValidator(_project_id)]
TaskId = Annotated[str, AfterValidator(_task_id)]
TaskFile = Annotated[str, AfterValidator(_task_file)]
EventPattern = Annotated[str, AfterValidator(_event_pattern)]
FilterValue = Annotated[str, AfterValidator(_filter_value)]
OperationType = Annotated[str, AfterValidator(_operation_type)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
