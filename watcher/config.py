"""Configuration (SPEC §4): the settings model, where values come from, and one-line errors.

Precedence, highest first: command-line overrides, environment variables (`CBR_WATCHER_…`,
`__` between levels), secret files (same names in lower case), the TOML file, defaults.
Every problem surfaces as a `ConfigError` whose text names the key, the value (secrets
redacted) and what is expected; the CLI exits 78 on it.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from watcher.durations import format_duration, parse_duration
from watcher.events import EVENT_TYPES, TASK_PROGRESS
from watcher.task_ids import TASK_ID_RULE, InvalidTaskIdError, is_valid_task_id, parse_task_file

ENV_PREFIX: Final = "CBR_WATCHER_"
CONFIG_FILE_ENV: Final = "CBR_WATCHER_CONFIG"
KUBERNETES_SECRETS_DIR: Final = Path("/run/secrets/cbr-watcher")
REDACTED: Final = "**********"
# Only named exactly: a glob such as "task.*" does not select it (SPEC §5).
EXACT_ONLY_EVENT_TYPES: Final = frozenset({TASK_PROGRESS})

_SECRET_KEYS: Final = frozenset(
    {"token", "password", "access_key", "secret_key", "security_token", "secret", "api_token"}
)
# Keys whose values are URLs: shown with userinfo and query values redacted.
URL_KEYS: Final = frozenset({"url", "endpoint", "iam_endpoint"})
# C0 controls and DEL: never valid in a header, a token or a URL.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_NO_VALUE: Final = object()  # _Invalid: show the value pydantic saw
_OMIT: Final = object()  # _Invalid: show no value at all
_MAX_SHOWN: Final = 80


class ConfigError(Exception):
    """A configuration problem, in one line: the key, the bad value and what is expected."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


class _Invalid(ValueError):
    """Raised by validators; `key` (relative to where pydantic reports it) and `value` refine it."""

    def __init__(
        self, expected: str, *, key: tuple[str | int, ...] = (), value: object = _NO_VALUE
    ) -> None:
        super().__init__(expected)
        self.expected = expected
        self.key = key
        self.value = value


# --- field types -----------------------------------------------------------------------------


class DurationMark:
    """Annotated metadata marking a float as a duration, so rendering can spell it "5m"."""


def _duration(*, positive: bool) -> BeforeValidator:
    def parse(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        except OverflowError:  # an integer too large for a float
            raise _Invalid("expected a duration of a sensible size") from None
        if positive and seconds == 0:
            raise _Invalid("expected a duration greater than zero")
        return seconds

    return BeforeValidator(parse)


Duration = Annotated[float, _duration(positive=False), DurationMark()]
PositiveDuration = Annotated[float, _duration(positive=True), DurationMark()]


def _choice(*options: str) -> BeforeValidator:
    def check(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise _Invalid(f"expected one of {', '.join(options)}")

    return BeforeValidator(check)


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError when out of range
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _http_url_or_empty(value: str) -> str:
    if value and (
        not _is_http_url(value)
        or any(c.isspace() for c in value)
        or _CONTROL.search(value) is not None
    ):
        raise _Invalid("expected an http:// or https:// URL")
    return value


def _readable_file(value: str) -> str:
    if value:
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise _Invalid(f"expected a readable file ({exc.strerror or exc})") from None
    return value


def _file_holding(check: Callable[[str], bool], what: str) -> AfterValidator:
    def validate(value: str) -> str:
        if value:
            try:
                text = Path(value).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            if not check(text):
                raise _Invalid(f"expected a file holding {what}")
        return value

    return AfterValidator(validate)


def _task_id(value: str) -> str:
    if not is_valid_task_id(value):
        raise _Invalid(f"expected {TASK_ID_RULE}")
    return value


def _task_file(value: str) -> str:
    if value:
        try:
            parse_task_file(Path(value).read_text(encoding="utf-8"))
        except OSError as exc:
            raise _Invalid(f"expected a readable file ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise _Invalid("expected a UTF-8 text file, one task ID per line") from None
        except InvalidTaskIdError as exc:
            raise _Invalid(str(exc)) from None
    return value


_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PROJECT_ID = re.compile(r"[A-Za-z0-9_-]+")


def _region(value: str) -> str:
    if value and _REGION.fullmatch(value) is None:
        raise _Invalid('expected a region such as "ap-southeast-1"')
    return value


def _project_id(value: str) -> str:
    if value and _PROJECT_ID.fullmatch(value) is None:
        raise _Invalid("expected a project ID: letters, digits, '_' or '-' (usually 32 hex digits)")
    return value


_LISTEN = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^\s:\[\]]*)):(?P<port>\d{1,5})")


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT"; "[::1]:9471" for IPv6, ":9471" (host "") for every
    interface. Raises ValueError otherwise."""
    match = _LISTEN.fullmatch(value)
    if match is not None and int(match["port"]) <= 65535:
        if match["ipv6"] is None:
            return match["host"], int(match["port"])
        try:
            return str(ipaddress.IPv6Address(match["ipv6"])), int(match["port"])
        except ValueError:
            pass
    raise ValueError("expected HOST:PORT such as 0.0.0.0:9471 or [::1]:9471")


def _listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return value


def _listen_or_empty(value: str) -> str:
    return _listen(value) if value else value


def _is_whsec(value: str) -> bool:
    """One "whsec_<base64>" secret, or several separated by whitespace (during rotation)."""

    def single(part: str) -> bool:
        if not part.startswith("whsec_"):
            return False
        try:
            return len(base64.b64decode(part.removeprefix("whsec_"), validate=True)) > 0
        except (binascii.Error, ValueError):
            return False

    parts = value.split()
    return bool(parts) and all(single(part) for part in parts)


def _no_blanks(value: SecretStr) -> SecretStr:
    if any(c.isspace() for c in value.get_secret_value()):
        # A stray space or newline would only show up later, as a rejected signature.
        raise _Invalid("expected no spaces or line breaks")
    return value


def _no_controls(value: SecretStr) -> SecretStr:
    if _CONTROL.search(value.get_secret_value()):
        # Sent in an HTTP header (or a JSON body built from it): it could never work.
        raise _Invalid("expected no control characters (line breaks, tabs, NUL)")
    return value


NoControlsSecret = Annotated[SecretStr, AfterValidator(_no_controls)]
NoBlanksSecret = Annotated[SecretStr, AfterValidator(_no_blanks), AfterValidator(_no_controls)]


def _whsec_or_empty(value: SecretStr) -> SecretStr:
    if value.get_secret_value() and not _is_whsec(value.get_secret_value()):
        raise _Invalid('expected "whsec_" followed by base64')
    return value


def _event_pattern(value: str) -> str:
    matches = value in EVENT_TYPES or any(
        fnmatch.fnmatchcase(event, value)
        for event in EVENT_TYPES
        if event not in EXACT_ONLY_EVENT_TYPES
    )
    if not matches:
        raise _Invalid(f"expected an event type or a glob matching one of {', '.join(EVENT_TYPES)}")
    return value


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

TaskId = Annotated[str, AfterValidator(_task_id)]
HttpUrlOrEmpty = Annotated[str, AfterValidator(_http_url_or_empty)]
ReadableFile = Annotated[str, AfterValidator(_readable_file)]


def _is_set(value: str | SecretStr) -> bool:
    return bool(value.get_secret_value() if isinstance(value, SecretStr) else value)


def _at_most_one(model: BaseModel, *pairs: tuple[str, str]) -> None:
    for value_key, file_key in pairs:
        if _is_set(getattr(model, value_key)) and _is_set(getattr(model, file_key)):
            raise _Invalid(
                f"expected only one of {value_key} and {file_key}",
                key=(file_key,),
                value=getattr(model, file_key),
            )


# --- sections --------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CbrSettings(_Section):
    """`[cbr]`: where the CBR API is and how to talk to it."""

    region: Annotated[str, AfterValidator(_region)] = ""
    project_id: Annotated[str, AfterValidator(_project_id)] = ""
    endpoint: HttpUrlOrEmpty = ""
    request_timeout: PositiveDuration = 10.0
    verify_tls: bool = True
    ca_file: ReadableFile = ""

    @property
    def effective_endpoint(self) -> str:
        """`endpoint`, or `https://cbr.{region}.myhuaweicloud.com`; no trailing slash."""
        return (self.endpoint or f"https://cbr.{self.region}.myhuaweicloud.com").rstrip("/")


class AuthSettings(_Section):
    """`[auth]`: credentials; `*_file` keys are paths the daemon re-reads itself."""

    method: Annotated[
        Literal["token", "password", "aksk"], _choice("token", "password", "aksk")
    ] = "token"
    token: NoControlsSecret = SecretStr("")
    token_file: ReadableFile = ""
    iam_endpoint: HttpUrlOrEmpty = ""
    domain_name: str = ""
    user_name: str = ""
    password: NoControlsSecret = SecretStr("")
    password_file: ReadableFile = ""
    access_key: NoBlanksSecret = SecretStr("")
    secret_key: NoBlanksSecret = SecretStr("")
    secret_key_file: ReadableFile = ""
    security_token: NoBlanksSecret = SecretStr("")
    security_token_file: ReadableFile = ""

    @model_validator(mode="after")
    def _one_source_per_secret(self) -> Self:
        _at_most_one(
            self,
            ("token", "token_file"),
            ("password", "password_file"),
            ("secret_key", "secret_key_file"),
            ("security_token", "security_token_file"),
        )
        return self


class WatchSettings(_Section):
    """`[watch]`: which tasks, how often, and for how long."""

    tasks: list[TaskId] = Field(default_factory=list)
    task_file: Annotated[str, AfterValidator(_task_file)] = ""
    poll_interval_min: PositiveDuration = 5.0
    poll_interval_max: PositiveDuration = 60.0
    deadline: PositiveDuration = 48 * 3600.0
    not_found_grace: Duration = 120.0
    max_concurrency: Annotated[int, Field(ge=1)] = 32
    max_requests_per_second: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 20.0
    exit_when_done: bool = False
    progress_interval: PositiveDuration = 120.0
    """A running task's progress is refreshed at least this often (SPEC §4)."""
    auth_failure_timeout: PositiveDuration = 600.0
    """With exit_when_done, give up (exit 1) after credentials fail this long."""

    @model_validator(mode="after")
    def _intervals_in_order(self) -> Self:
        if self.poll_interval_min > self.poll_interval_max:
            raise _Invalid(
                f"expected at most poll_interval_max ({format_duration(self.poll_interval_max)})",
                key=("poll_interval_min",),
                value=format_duration(self.poll_interval_min),
            )
        return self


class WebhookSettings(_Section):
    """One `[[webhooks]]` receiver."""

    name: str = ""
    url: HttpUrlOrEmpty = ""
    url_file: Annotated[
        str, AfterValidator(_readable_file), _file_holding(_is_http_url, "an http(s) URL")
    ] = ""
    secret: Annotated[SecretStr, AfterValidator(_whsec_or_empty)] = SecretStr("")
    secret_file: Annotated[
        str, AfterValidator(_readable_file), _file_holding(_is_whsec, '"whsec_" and base64')
    ] = ""
    events: list[Annotated[str, AfterValidator(_event_pattern)]] = Field(
        default_factory=lambda: ["task.*", "watch.*"]
    )
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: PositiveDuration = 15.0
    max_age: PositiveDuration = 24 * 3600.0

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise _Invalid("expected a non-empty name")
        return value

    @field_validator("events")
    @classmethod
    def _some_events(cls, value: list[str]) -> list[str]:
        if not value:
            raise _Invalid("expected at least one event type or glob")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, header in value.items():
            if _HEADER_NAME.fullmatch(name) is None:
                raise _Invalid("expected an HTTP header name", key=(name,), value=_OMIT)
            if _CONTROL.search(header.get_secret_value()):
                raise _Invalid(
                    "expected a header value without control characters (line breaks, NUL)",
                    key=(name,),
                )
        return value

    @model_validator(mode="after")
    def _has_url(self) -> Self:
        if not self.url and not self.url_file:
            raise _Invalid("expected an http(s) URL (set url or url_file)", key=("url",), value="")
        _at_most_one(self, ("url", "url_file"), ("secret", "secret_file"))
        return self

    def wants(self, event_type: str) -> bool:
        """Whether this receiver asked for `event_type`; exact-only types need their full name."""
        if event_type in self.events:
            return True
        return event_type not in EXACT_ONLY_EVENT_TYPES and any(
            fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events
        )


class MetricsSettings(_Section):
    """`[metrics]`: per-task series lifetime and cardinality cap."""

    retention: Duration = 900.0
    max_task_series: Annotated[int, Field(ge=0)] = 10000


class ServerSettings(_Section):
    """`[server]`: the metrics/health listener and the task API listener."""

    listen: Annotated[str, AfterValidator(_listen)] = "0.0.0.0:9471"
    api_listen: Annotated[str, AfterValidator(_listen_or_empty)] = "127.0.0.1:9472"
    api_token: NoControlsSecret = SecretStr("")


class StateSettings(_Section):
    """`[state]`: the SQLite state database."""

    path: str = ""

    def effective_path(self, environ: Mapping[str, str] | None = None) -> str:
        """`path`, else `$STATE_DIRECTORY/cbr-watcher.db`, else
        `$XDG_STATE_HOME/cbr-watcher/state.db`, else `~/.local/state/cbr-watcher/state.db`.
        ":memory:" is kept as is."""
        env = os.environ if environ is None else environ
        if self.path == ":memory:":
            return self.path
        if self.path:
            return str(Path(self.path).expanduser())
        # systemd joins several StateDirectory= entries with ':'; the first is ours.
        state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
        if state_directory:
            return str(Path(state_directory) / "cbr-watcher.db")
        xdg_state_home = env.get("XDG_STATE_HOME", "")
        if xdg_state_home:
            return str(Path(xdg_state_home) / "cbr-watcher" / "state.db")
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        return str(home / ".local" / "state" / "cbr-watcher" / "state.db")


class LogSettings(_Section):
    """`[log]`: level and rendering."""

    level: Annotated[
        Literal["debug", "info", "warning", "error"], _choice("debug", "info", "warning", "error")
    ] = "info"
    format: Annotated[Literal["auto", "json", "console"], _choice("auto", "json", "console")] = (
        "auto"
    )


class Settings(BaseSettings):
    """Everything cbr-watcher is configured with (SPEC §4). Build it with `load_settings`.

    `Settings(...)` itself only takes keyword arguments (handy in tests); it never reads the
    environment, secret directories or a file.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    cbr: CbrSettings = Field(default_factory=CbrSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments only: the real sources are wired by `load_settings`."""
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, values: Any) -> Any:
        # Undecodable bytes in an environment variable arrive as lone surrogates; nothing
        # downstream (files, HTTP, logs) can encode them, so refuse them first, by key.
        found = _lone_surrogate(values, ())
        if found is not None:
            loc, text = found
            raise _Invalid(
                "expected valid Unicode text (it holds a lone surrogate, "
                "such as undecodable bytes from the environment)",
                key=loc,
                value=text,
            )
        return values

    @model_validator(mode="after")
    def _unique_receiver_names(self) -> Self:
        seen: set[str] = set()
        for index, receiver in enumerate(self.webhooks):
            if receiver.name in seen:
                raise _Invalid(
                    "expected a name no other receiver uses",
                    key=("webhooks", index, "name"),
                    value=receiver.name,
                )
            seen.add(receiver.name)
        return self

    @property
    def effective_iam_endpoint(self) -> str:
        """`auth.iam_endpoint`, or `https://iam.{cbr.region}.myhuaweicloud.com`."""
        return (
            self.auth.iam_endpoint or f"https://iam.{self.cbr.region}.myhuaweicloud.com"
        ).rstrip("/")


def _lone_surrogate(
    value: object, loc: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], str] | None:
    """(where, the text) of the first string in `value` that UTF-8 cannot encode, else None."""
    # Iterative: a hostile JSON value may nest deeper than Python's recursion limit.
    pending: list[tuple[object, tuple[str | int, ...]]] = [(value, loc)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, SecretStr):
            item = item.get_secret_value()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where, item
        elif isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                pending.extend([(child, (*where, str(key))), (key, (*where, str(key)))])
        elif isinstance(item, list | tuple):
            pending.extend((child, (*where, i)) for i, child in reversed(list(enumerate(item))))
    return None


# --- sources ---------------------------------------------------------------------------------


class _Undecodable(ValueError):
    """A JSON value in an environment variable or secret file that does not parse."""

    def __init__(self, name: str, origin: str, value: object, reason: str) -> None:
        super().__init__(reason)
        self.name, self.origin, self.value, self.reason = name, origin, value, reason


def _undecodable(
    source: EnvSettingsSource, origin: str, field_name: str, value: Any, reason: str
) -> _Undecodable:
    # pydantic-settings only passes the innermost field name, so find the variable by value.
    names = [
        name
        for name, raw in source.env_vars.items()
        if raw == value and name.endswith(field_name.lower())
    ]
    return _Undecodable(names[0] if names else field_name, origin, value, reason)


def _decode_json(
    source: EnvSettingsSource, origin: str, field_name: str, field: FieldInfo, value: Any
) -> Any:
    try:
        return EnvSettingsSource.decode_complex_value(source, field_name, field, value)
    except RecursionError:
        raise _undecodable(source, origin, field_name, value, "nested too deeply") from None
    except ValueError as exc:
        raise _undecodable(source, origin, field_name, value, str(exc)) from exc


class _MappingSource(PydanticBaseSettingsSource):
    """Values already shaped like the model: the TOML file, or the command line."""

    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = dict(values)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` returns the whole mapping."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


class _EnvSource(EnvSettingsSource):
    """`CBR_WATCHER_…` variables from a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by super().__init__ through _load_env_vars
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """JSON for lists and tables; an error names the variable."""
        return _decode_json(self, "environment variable", field_name, field, value)


class _SecretsSource(NestedSecretsSettingsSource):
    """Files named like the environment variables, in lower case, `__` for nesting."""

    def __init__(self, settings_cls: type[BaseSettings], directories: Sequence[Path]) -> None:
        super().__init__(
            SecretsSettingsSource(settings_cls),
            # pydantic-settings lets the last directory win; ours lets the first win.
            secrets_dir=list(reversed(directories)),
            secrets_dir_missing="ok",
            secrets_nested_delimiter="__",
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Read only our own files: a credentials directory may also hold other programs'
        # (or binary, such as a CA bundle for cbr.ca_file) files. Strip trailing newlines only.
        prefix = ENV_PREFIX.lower()
        found: dict[str, str | None] = {}
        for directory in self.secrets_paths:
            for entry in sorted(directory.iterdir()):
                if entry.name.lower().startswith(prefix) and entry.is_file():
                    try:
                        text = entry.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as exc:
                        raise ConfigError(
                            f"secret file {str(entry)!r}: cannot read it ({exc})"
                        ) from None
                    found[entry.name.lower()] = text.rstrip("\r\n")
        return found

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """JSON for lists and tables; an error names the file."""
        return _decode_json(self, "secret file", field_name, field, value)


def default_secrets_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """`$CREDENTIALS_DIRECTORY` (systemd) then `/run/secrets/cbr-watcher` (Kubernetes)."""
    env = os.environ if environ is None else environ
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    return [*([Path(credentials)] if credentials else []), KUBERNETES_SECRETS_DIR]


_TOML_POSITION = re.compile(r"\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def _read_toml(config_file: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    if config_file is not None:
        path, origin = config_file, "--config"
    elif environ.get(CONFIG_FILE_ENV):
        path, origin = Path(environ[CONFIG_FILE_ENV]), CONFIG_FILE_ENV
    else:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config file {str(path)!r} (from {origin}): cannot read it: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r}: expected UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigError(f"{path}: invalid TOML: {message}") from None
        where = f"{path}:{position['line']}:{position['column']}"
        raise ConfigError(f"{where}: invalid TOML: {message[: position.start()]}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _without_none(value) if isinstance(value, Mapping) else value
        for key, value in values.items()
        if value is not None
    }


def load_settings(
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    secrets_dirs: Sequence[Path] | None = None,
) -> Settings:
    """The effective settings, or ConfigError.

    `config_file` is `--config` (else `$CBR_WATCHER_CONFIG`); `overrides` are command-line
    values nested like the model (None values are ignored); `environ` defaults to `os.environ`;
    `secrets_dirs` to `default_secrets_dirs(environ)`, earlier directories winning and missing
    ones skipped.
    """
    env = os.environ if environ is None else environ
    directories = default_secrets_dirs(env) if secrets_dirs is None else secrets_dirs
    file_values = _read_toml(config_file, env)
    try:
        sources = (
            _MappingSource(Settings, _without_none(overrides or {})),
            _EnvSource(Settings, env),
            _SecretsSource(Settings, [path for path in directories if path.is_dir()]),
            _MappingSource(Settings, file_values),
        )
        return Settings(_build_sources=(sources, {}))
    # `from None` throughout: a chained pydantic error would print the raw (secret) input.
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    except SettingsError as exc:
        raise _from_settings_error(exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc}") from None


def render_effective(settings: Settings) -> str:
    """The effective settings as TOML for `check-config`, every secret shown as REDACTED."""
    # Imported here: the renderer lives in its own module and needs this one.
    from watcher.config_render import render_toml

    return render_toml(settings)


def require_runnable(settings: Settings) -> None:
    """ConfigError for what `run` needs on top of a valid configuration: the project, where the
    API is, and credentials for `auth.method`."""
    cbr, auth = settings.cbr, settings.auth
    if not cbr.project_id:
        raise ConfigError(
            "cbr.project_id = '': expected the project ID "
            f"(set cbr.project_id or {ENV_PREFIX}CBR__PROJECT_ID)"
        )
    if not cbr.region and not cbr.endpoint:
        raise ConfigError(
            "cbr.region = '': expected a region such as \"ap-southeast-1\" (or set cbr.endpoint)"
        )
    needed: dict[str, list[tuple[str, ...]]] = {
        "token": [("token", "token_file")],
        "password": [("domain_name",), ("user_name",), ("password", "password_file")],
        "aksk": [("access_key",), ("secret_key", "secret_key_file")],
    }
    for names in needed[auth.method]:
        if not any(_is_set(getattr(auth, name)) for name in names):
            alternatives = " or ".join(f"auth.{name}" for name in names)
            raise ConfigError(
                f"auth.{names[0]}: required for auth.method = {auth.method!r} (set {alternatives})"
            )
    if auth.method == "password" and not cbr.region and not auth.iam_endpoint:
        raise ConfigError(
            "auth.iam_endpoint = '': required for auth.method = 'password' "
            "when cbr.region is not set"
        )


# --- error messages --------------------------------------------------------------------------

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


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int) or _IDENTIFIER.fullmatch(part) is None:
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text


def _is_secret(loc: Sequence[str | int]) -> bool:
    names = [part for part in loc if isinstance(part, str)]
    return bool(names) and (names[-1] in _SECRET_KEYS or "headers" in names[:-1])


_URL_PARTS: Final = re.compile(
    r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//)(?P<authority>[^/?#]*)"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?",
    re.DOTALL,
)


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


class _Elided:
    """Stands for what is nested too deep to show."""

    def __repr__(self) -> str:
        return "..."


def _redacted(value: object, loc: tuple[str | int, ...], depth: int = 0) -> object:
    if _is_secret(loc):
        return REDACTED
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_SHOWN // 2:
        return _Elided()  # shown cut to _MAX_SHOWN characters anyway
    if isinstance(value, Mapping):
        return {key: _redacted(item, (*loc, str(key)), depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item, (*loc, index), depth + 1) for index, item in enumerate(value)]
    if isinstance(value, str) and loc and loc[-1] in URL_KEYS:
        return redact_url(value)
    return value


def _shown(value: object, loc: tuple[str | int, ...]) -> str:
    text = repr(_redacted(value, loc))
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _from_validation_error(exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc: tuple[str | int, ...] = tuple(first["loc"])
    value: object = first["input"]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _Invalid):
        expected = cause.expected
        loc += cause.key
        value = value if cause.value is _NO_VALUE else cause.value
    elif first["type"] in ("greater_than_equal", "greater_than"):
        bound = first.get("ctx") or {}
        relation = ">=" if "ge" in bound else ">"
        expected = f"expected a number {relation} {bound.get('ge', bound.get('gt')):g}"
    elif loc == ("webhooks",) and first["type"] == "list_type":
        expected = "expected [[webhooks]] tables (a list of receivers)"
    else:
        expected = _EXPECTED_BY_TYPE.get(first["type"], first["msg"].removeprefix("Value error, "))
    message = f"{_dotted(loc)}: {expected}"
    if first["type"] not in ("extra_forbidden", "missing") and value is not _OMIT:
        message = f"{_dotted(loc)} = {_shown(value, loc)}: {expected}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ConfigError(message)


def _from_settings_error(exc: SettingsError) -> ConfigError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, _Undecodable):
        cause = cause.__cause__
    if cause is None:
        return ConfigError(f"configuration: {exc}")
    name = cause.name.upper()
    loc = tuple(name.removeprefix(ENV_PREFIX).lower().split("__"))
    # The raw text failed to parse, so it cannot be redacted field by field: hide it whole
    # when it may hold a secret.
    shown = repr(REDACTED) if loc[0] == "webhooks" or _is_secret(loc) else _shown(cause.value, loc)
    return ConfigError(
        f"{_dotted(loc)} = {shown} (from {cause.origin} {name}): "
        f"expected valid JSON ({cause.reason})"
    )
