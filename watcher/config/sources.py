"""Where configuration values come from, on pydantic-settings' public hooks only.

Precedence, highest first: command-line overrides, environment variables (`CBR_WATCHER_…`,
`__` between levels), secret files (the same names, any case, in `$CREDENTIALS_DIRECTORY` then
`/run/secrets/cbr-watcher`), the TOML file (`--config`, else `$CBR_WATCHER_CONFIG`), defaults.

`load_settings` reads every input first, then builds `Settings` inside `loading(...)`;
`Settings.settings_customise_sources` asks `sources_for` for the sources of that load. The
overrides and the TOML file go through pydantic-settings' `InitSettingsSource`; variables and
secret files through `VariablesSource`, our own `PydanticBaseSettingsSource`: the standard
environment and secret-file sources can only read `os.environ` and every file of a directory,
while a load reads a given mapping and only our own files (a credentials directory may hold
other programs' binary files, such as a CA bundle).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from watcher.config.errors import ConfigError, UndecodableValue

ENV_PREFIX: Final = "CBR_WATCHER_"
CONFIG_FILE_ENV: Final = "CBR_WATCHER_CONFIG"
KUBERNETES_SECRETS_DIR: Final = Path("/run/secrets/cbr-watcher")
NESTING: Final = "__"

_TOML_POSITION: Final = re.compile(r"\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def default_secrets_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """`$CREDENTIALS_DIRECTORY` (systemd) then `/run/secrets/cbr-watcher` (Kubernetes)."""
    env = os.environ if environ is None else environ
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    return [*([Path(credentials)] if credentials else []), KUBERNETES_SECRETS_DIR]


def read_toml(config_file: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The TOML file's tables (`config_file`, else `$CBR_WATCHER_CONFIG`, else none), or a
    ConfigError naming the file (and the line and column of a syntax error)."""
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


def environment_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The `CBR_WATCHER_…` variables of `environ`, names in lower case."""
    prefix = ENV_PREFIX.lower()
    return {
        name.lower(): value for name, value in environ.items() if name.lower().startswith(prefix)
    }


def secret_file_variables(directories: Sequence[Path]) -> dict[str, str]:
    """Our secret files (`cbr_watcher_…`, any case) in `directories` as name → text, the
    earlier directory winning and missing ones skipped. Only trailing line breaks are
    stripped; an unreadable file is a ConfigError naming it."""
    prefix = ENV_PREFIX.lower()
    found: dict[str, str] = {}
    for directory in reversed([path for path in directories if path.is_dir()]):
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


def without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` without None entries, at every level: a flag not given is no override."""
    return {
        key: without_none(value) if isinstance(value, Mapping) else value
        for key, value in values.items()
        if value is not None
    }


# --- variables: names to nested values -------------------------------------------------------


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _complexity(annotation: Any) -> tuple[bool, bool]:
    """(whether a value of this type is written as JSON, whether text that is not JSON may
    still be meant literally — for a union of, say, `list[str] | str`)."""
    annotation = _strip_annotated(annotation)
    if get_origin(annotation) in (Union, UnionType):
        members = [_complexity(member)[0] for member in get_args(annotation)]
        return any(members), True
    if _is_model(annotation) or get_origin(annotation) in (list, dict, set, frozenset, tuple):
        return True, False
    return annotation in (list, dict, set, frozenset, tuple), False


def _child(annotation: Any, key: str) -> tuple[str, Any]:
    """(the key as the model spells it, the type of its value) for `key` inside a value of
    type `annotation`; the type is None when `annotation` has no such key."""
    annotation = _strip_annotated(annotation)
    if _is_model(annotation):
        for name, field in annotation.model_fields.items():
            if name.lower() == key.lower():
                return name, field.annotation
    elif get_origin(annotation) is dict:
        return key, get_args(annotation)[1]
    return key, None


def _canonical(annotation: Any, value: Any) -> Any:
    """`value` with the keys of its tables spelt as the model's fields (JSON keys, like
    variable names, are matched case-insensitively)."""
    if not (_is_model(_strip_annotated(annotation)) and isinstance(value, dict)):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name, inner = _child(annotation, str(key))
        out[name] = _canonical(inner, item) if inner is not None else item
    return out


class VariablesSource(PydanticBaseSettingsSource):
    """Values from `CBR_WATCHER_…` names (environment variables or secret file names).

    Names are matched case-insensitively, `__` separates levels, and names that match no
    setting are ignored. Where the setting is a list, a table or a section the text is JSON
    (a deeper variable is merged into it and wins over what it holds at that place);
    elsewhere it is taken as it is, for the model to validate.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], variables: Mapping[str, str], *, origin: str
    ) -> None:
        super().__init__(settings_cls)
        self._variables = variables
        self._origin = origin

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` builds every field at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The variables as nested values, shaped like the model."""
        prefix = ENV_PREFIX.lower()
        order = {name.lower(): index for index, name in enumerate(self.settings_cls.model_fields)}
        entries = []
        for name, text in self._variables.items():
            path = name.lower().removeprefix(prefix).split(NESTING)
            if name.lower().startswith(prefix) and path[0] in order:
                entries.append((path, name, text))
        # In the model's order, shallower first: a deeper variable lands in (and wins over) a
        # section's JSON object, and the first problem reported is the first in the model.
        entries.sort(key=lambda entry: (order[entry[0][0]], len(entry[0])))
        tree: dict[str, Any] = {}
        for path, name, text in entries:
            self._place(tree, path, name, text)
        return tree

    def _place(self, tree: dict[str, Any], path: list[str], name: str, text: str) -> None:
        keys: list[str] = []
        annotation: Any = self.settings_cls
        for segment in path:
            key, annotation = _child(annotation, segment)
            keys.append(key)
        node = tree
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                # The deeper variable wins, so that the model reports it rather than it being
                # silently ignored.
                child = node[key] = {}
            node = child
        value: Any = text
        is_complex, literal_ok = _complexity(annotation)
        # Top-level values are always JSON (empty text too); deeper empty text stays text.
        if is_complex and (text or len(keys) == 1):
            try:
                value = _canonical(annotation, json.loads(text))
            except ValueError as exc:
                if not literal_ok:
                    raise self._undecodable(name, keys, text, str(exc)) from None
            except RecursionError:
                raise self._undecodable(name, keys, text, "nested too deeply") from None
            if value is None and len(keys) == 1:
                return  # `CBR_WATCHER_WEBHOOKS=null`: as if unset
        node[keys[-1]] = value

    def _undecodable(self, name: str, keys: list[str], text: str, reason: str) -> UndecodableValue:
        return UndecodableValue(
            name=name, loc=tuple(keys), origin=self._origin, value=text, reason=reason
        )


# --- one load at a time ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadInputs:
    """Everything one `load_settings` call read, before validation."""

    overrides: Mapping[str, Any]
    environment: Mapping[str, str]
    secret_files: Mapping[str, str]
    file_values: Mapping[str, Any]


# pydantic-settings builds a model's sources inside its __init__ and offers no public way to
# hand them in per call; this carries one load's inputs to `settings_customise_sources`.
_LOADING: ContextVar[LoadInputs | None] = ContextVar("watcher_config_loading", default=None)


@contextmanager
def loading(inputs: LoadInputs) -> Iterator[None]:
    """Within this block, constructing the settings model reads `inputs`."""
    token = _LOADING.set(inputs)
    try:
        yield
    finally:
        _LOADING.reset(token)


def sources_for(settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources of the load in progress, highest precedence first; none outside one."""
    inputs = _LOADING.get()
    if inputs is None:
        return ()
    return (
        InitSettingsSource(settings_cls, init_kwargs=dict(inputs.overrides)),
        VariablesSource(settings_cls, inputs.environment, origin="environment variable"),
        VariablesSource(settings_cls, inputs.secret_files, origin="secret file"),
        InitSettingsSource(settings_cls, init_kwargs=dict(inputs.file_values)),
    )
