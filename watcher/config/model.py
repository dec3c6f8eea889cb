"""The settings model: one frozen pydantic model per TOML section, and `Settings`.

Every key is documented for users in docs/configuration.md; keep the two in step.

Build it with `watcher.config.load_settings`; `Settings(...)` alone only takes keyword
arguments and never reads the environment, a secret directory or a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from watcher.config.durations import format_duration
from watcher.config.errors import OMIT, Invalid, Loc
from watcher.config.sources import sources_for
from watcher.config.types import (
    CONTROL,
    HEADER_NAME,
    Duration,
    EventPattern,
    FilterValue,
    HttpUrlOrEmpty,
    HttpUrlSecretOrEmpty,
    Labels,
    Listen,
    ListenOrEmpty,
    NoBlanksSecret,
    NoControlsSecret,
    OperationType,
    PositiveDuration,
    ProjectId,
    ReadableFile,
    Region,
    TaskFile,
    TaskId,
    UrlFile,
    WhsecFile,
    WhsecOrEmpty,
    at_most_one,
    choice,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CbrSettings(_Section):
    """`[cbr]`: where the CBR API is and how to talk to it."""

    region: Region = ""
    project_id: ProjectId = ""
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

    method: Annotated[Literal["token", "password", "aksk"], choice("token", "password", "aksk")] = (
        "token"
    )
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
        at_most_one(
            self,
            ("token", "token_file"),
            ("password", "password_file"),
            ("secret_key", "secret_key_file"),
            ("security_token", "security_token_file"),
        )
        return self


class DiscoverSettings(_Section):
    """One `[[watch.discover]]` block: a ListOpLogs filter and the labels for what it finds."""

    vault_id: FilterValue = ""
    operation_type: list[OperationType] = Field(default_factory=list)
    resource_id: FilterValue = ""
    provider_id: FilterValue = ""
    enterprise_project_id: FilterValue = ""
    labels: Labels = Field(default_factory=dict)

    def filters(self) -> dict[str, str]:
        """The ListOpLogs query filters of this block, except `operation_type` (a list: CBR
        takes one type per request)."""
        pairs = {
            "vault_id": self.vault_id,
            "resource_id": self.resource_id,
            "provider_id": self.provider_id,
            "enterprise_project_id": self.enterprise_project_id,
        }
        return {key: value for key, value in pairs.items() if value}


class WatchSettings(_Section):
    """`[watch]`: which tasks, how often, and for how long."""

    tasks: list[TaskId] = Field(default_factory=list)
    task_file: TaskFile = ""
    poll_interval_min: PositiveDuration = 5.0
    poll_interval_max: PositiveDuration = 15.0
    deadline: PositiveDuration = 48 * 3600.0
    not_found_grace: Duration = 120.0
    max_concurrency: Annotated[int, Field(ge=1)] = 32
    max_requests_per_second: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 20.0
    exit_when_done: bool = False
    progress_interval: PositiveDuration = 120.0
    """Far from its estimated end a task is looked at every min(progress_interval,
    poll_interval_max)."""
    list_interval: PositiveDuration = 10.0
    """Watched tasks are refreshed through ListOpLogs pages about this often, when that costs
    fewer requests than one ShowOpLog each."""
    auth_failure_timeout: PositiveDuration = 600.0
    """With exit_when_done, give up (exit 1) after credentials fail this long."""
    discover: list[DiscoverSettings] = Field(default_factory=list)
    """`[[watch.discover]]` blocks; none = discovery off."""
    discover_interval: PositiveDuration = 30.0
    discover_lookback: Duration = 3600.0

    @model_validator(mode="after")
    def _intervals_in_order(self) -> Self:
        if self.poll_interval_min > self.poll_interval_max:
            raise Invalid(
                f"expected at most poll_interval_max ({format_duration(self.poll_interval_max)})",
                key=("poll_interval_min",),
                value=format_duration(self.poll_interval_min),
            )
        return self


class WebhookSettings(_Section):
    """One `[[webhooks]]` receiver."""

    name: str = ""
    url: HttpUrlOrEmpty = ""
    url_file: UrlFile = ""
    secret: WhsecOrEmpty = SecretStr("")
    secret_file: WhsecFile = ""
    events: list[EventPattern] = Field(default_factory=lambda: ["task.*", "watch.*"])
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: PositiveDuration = 15.0
    max_age: PositiveDuration = 24 * 3600.0

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise Invalid("expected a non-empty name")
        return value

    @field_validator("events")
    @classmethod
    def _some_events(cls, value: list[str]) -> list[str]:
        if not value:
            raise Invalid("expected at least one event type or glob")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, header in value.items():
            if HEADER_NAME.fullmatch(name) is None:
                raise Invalid("expected an HTTP header name", key=(name,), value=OMIT)
            if CONTROL.search(header.get_secret_value()):
                raise Invalid(
                    "expected a header value without control characters (line breaks, NUL)",
                    key=(name,),
                )
        return value

    @model_validator(mode="after")
    def _has_url(self) -> Self:
        if not self.url and not self.url_file:
            raise Invalid("expected an http(s) URL (set url or url_file)", key=("url",), value="")
        at_most_one(self, ("url", "url_file"), ("secret", "secret_file"))
        return self


class CoverageSettings(_Section):
    """`[coverage]`: the inventory of vaults, resources, policies and their newest backups."""

    enabled: bool = False
    interval: PositiveDuration = 900.0
    vault_ids: list[FilterValue] = Field(default_factory=list)
    """The vaults to inventory; empty = every vault of the project."""
    schedule_grace: PositiveDuration = 3600.0
    """A scheduled backup not started this long after its time is missed."""

    @field_validator("vault_ids")
    @classmethod
    def _no_empty_ids(cls, value: list[str]) -> list[str]:
        if any(not vault_id for vault_id in value):
            raise Invalid("expected vault IDs, none of them empty")
        return list(dict.fromkeys(value))


class HeartbeatSettings(_Section):
    """`[heartbeat]`: a dead man's switch for the watcher itself (docs/coverage.md#heartbeat)."""

    url: HttpUrlSecretOrEmpty = SecretStr("")
    url_file: UrlFile = ""
    interval: PositiveDuration = 60.0

    @field_validator("interval")
    @classmethod
    def _not_too_often(cls, value: float) -> float:
        # A checker is a shared service: a typo such as "1ms" must not flood it.
        if value < 1.0:
            raise Invalid("expected at least 1s", value=format_duration(value))
        return value

    @model_validator(mode="after")
    def _one_url(self) -> Self:
        at_most_one(self, ("url", "url_file"))
        return self

    @property
    def enabled(self) -> bool:
        """Whether a URL (or a file holding one) is set."""
        return bool(self.url.get_secret_value() or self.url_file)


class MetricsSettings(_Section):
    """`[metrics]`: per-task series lifetime and cardinality cap."""

    retention: Duration = 900.0
    max_task_series: Annotated[int, Field(ge=0)] = 10000


class ServerSettings(_Section):
    """`[server]`: the metrics/health listener and the task API listener."""

    listen: Listen = "0.0.0.0:9471"
    api_listen: ListenOrEmpty = "127.0.0.1:9472"
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
        Literal["debug", "info", "warning", "error"], choice("debug", "info", "warning", "error")
    ] = "info"
    format: Annotated[Literal["auto", "json", "console"], choice("auto", "json", "console")] = (
        "auto"
    )


class Settings(BaseSettings):
    """Everything cbr-watcher is configured with. Build it with `load_settings`.

    `Settings(...)` itself only takes keyword arguments (handy in tests); it never reads the
    environment, secret directories or a file.
    """

    # Keys from keyword arguments, flags and TOML are matched exactly, as TOML spells them;
    # variable names are matched case-insensitively by their own source.
    model_config = SettingsConfigDict(case_sensitive=True, extra="forbid", frozen=True)

    cbr: CbrSettings = Field(default_factory=CbrSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    coverage: CoverageSettings = Field(default_factory=CoverageSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
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
        """Keyword arguments, then (inside `load_settings` only) the sources of that load."""
        return (init_settings, *sources_for(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, values: Any) -> Any:
        # Undecodable bytes in an environment variable arrive as lone surrogates; nothing
        # downstream (files, HTTP, logs) can encode them, so refuse them first, by key.
        found = _lone_surrogate(values, ())
        if found is not None:
            loc, text = found
            raise Invalid(
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
                raise Invalid(
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


def _lone_surrogate(value: object, loc: Loc) -> tuple[Loc, str] | None:
    """(where, the text) of the first string in `value` that UTF-8 cannot encode, else None."""
    # Iterative: a hostile JSON value may nest deeper than Python's recursion limit.
    pending: list[tuple[object, Loc]] = [(value, loc)]
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
