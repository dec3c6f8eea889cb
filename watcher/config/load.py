"""`load_settings` (every source, one ConfigError line on any problem) and `require_runnable`
(what `run` needs on top of a valid configuration)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from watcher.config.errors import (
    ConfigError,
    UndecodableValue,
    from_settings_error,
    from_undecodable,
    from_validation_error,
)
from watcher.config.model import Settings
from watcher.config.sources import (
    ENV_PREFIX,
    LoadInputs,
    default_secrets_dirs,
    environment_variables,
    loading,
    read_toml,
    secret_file_variables,
    without_none,
)
from watcher.config.types import is_set


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
    file_values = read_toml(config_file, env)
    # `from None` throughout: a chained pydantic error would print the raw (secret) input.
    try:
        inputs = LoadInputs(
            overrides=without_none(overrides or {}),
            environment=environment_variables(env),
            secret_files=secret_file_variables(directories),
            file_values=file_values,
        )
        with loading(inputs):
            return Settings()
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except UndecodableValue as exc:
        raise from_undecodable(exc) from None
    except SettingsError as exc:
        raise from_settings_error(exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc}") from None


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
        if not any(is_set(getattr(auth, name)) for name in names):
            alternatives = " or ".join(f"auth.{name}" for name in names)
            raise ConfigError(
                f"auth.{names[0]}: required for auth.method = {auth.method!r} (set {alternatives})"
            )
    if auth.method == "password" and not cbr.region and not auth.iam_endpoint:
        raise ConfigError(
            "auth.iam_endpoint = '': required for auth.method = 'password' "
            "when cbr.region is not set"
        )
