"""Configuration: the settings model, where values come from, and one-line errors.

What users see of it (every key, precedence, secret files): docs/configuration.md.

Precedence, highest first: command-line overrides, environment variables (`CBR_WATCHER_…`,
`__` between levels), secret files (same names in lower case), the TOML file, defaults.
Every problem surfaces as a `ConfigError` whose text names the key, the value (secrets
redacted) and what is expected; the CLI exits 78 on it.

Modules, each importing only those above it:

* `errors`  — ConfigError, and pydantic's errors turned into one line;
* `types`   — value types and validators (durations, listen addresses, whsec secrets, …);
* `sources` — the TOML file, environment variables, secret files and flag overrides;
* `model`   — the pydantic-settings model and its sections;
* `load`    — `load_settings` and `require_runnable`;
* `render`  — `check-config`'s effective TOML, secrets redacted.

This module re-exports what the rest of the code base imports from `watcher.config`.
"""

from __future__ import annotations

from watcher.config.errors import ConfigError
from watcher.config.load import load_settings, require_runnable
from watcher.config.model import HeartbeatSettings, Settings, WebhookSettings
from watcher.config.render import render_effective
from watcher.config.sources import ENV_PREFIX, KUBERNETES_SECRETS_DIR, default_secrets_dirs
from watcher.config.types import DurationMark
from watcher.redaction import REDACTED, redact_url

__all__ = [
    "ENV_PREFIX",
    "KUBERNETES_SECRETS_DIR",
    "REDACTED",
    "ConfigError",
    "DurationMark",
    "HeartbeatSettings",
    "Settings",
    "WebhookSettings",
    "default_secrets_dirs",
    "load_settings",
    "redact_url",
    "render_effective",
    "require_runnable",
]
