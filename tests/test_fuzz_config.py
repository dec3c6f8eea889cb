"""Fuzzing the configuration edge: whatever the environment, the TOML file or a duration holds,
loading either succeeds or raises one ConfigError line that names a key and echoes no secret;
through the CLI that is exit 0 or 78, never a traceback."""

from __future__ import annotations

import ast
import contextlib
import datetime
import io
import json
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from watcher.cli.main import main
from watcher.config import (
    REDACTED,
    ConfigError,
    DurationMark,
    Settings,
    WebhookSettings,
    load_settings,
    render_effective,
    require_runnable,
)

EXAMPLES = 200
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Put in front of every value at a secret key: if any of it leaks into a message, this does.
MARKER = "Zq9SECRETzQ"
SECRET_NAMES = frozenset(
    {"token", "password", "access_key", "secret_key", "security_token", "secret", "api_token"}
)
SECTIONS: dict[str, list[str]] = {
    name: list(field.annotation.model_fields)  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
    if name != "webhooks"
}
RECEIVER_KEYS = list(WebhookSettings.model_fields)
DURATION_KEYS = [
    (section, key)
    for section, field in Settings.model_fields.items()
    if section != "webhooks"
    for key, inner in field.annotation.model_fields.items()  # type: ignore[union-attr]
    if any(isinstance(item, DurationMark) for item in inner.metadata)
] + [("webhooks", "timeout"), ("webhooks", "max_age")]
# A message starts with the dotted key it is about (webhooks[0].url, auth.headers['X'], ...).
_INDEX = r"""\[(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\d+)\]"""
KEY_AT_START = re.compile(
    rf"(?:(?P<section>[A-Za-z_][A-Za-z0-9_]*)|(?P<quoted>{_INDEX}))(?:\.[A-Za-z_]\w*|{_INDEX})*"
)
RUNNABLE: dict[str, Any] = {
    "cbr": {"project_id": "p1", "region": "ap-southeast-1"},
    "auth": {"token": "t"},
}
RUNNABLE_ENV = {
    "CBR_WATCHER_CBR__PROJECT_ID": "p1",
    "CBR_WATCHER_CBR__REGION": "ap-southeast-1",
    "CBR_WATCHER_AUTH__TOKEN": "t",
}

# Any code point, lone surrogates included (hypothesis leaves them out unless asked).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
# What a TOML file can hold: no lone surrogates.
TOML_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
PLAUSIBLE = st.sampled_from(
    [
        "",
        "0",
        "5s",
        "2.5m",
        "1d",
        "-1s",
        "1e400",
        "https://hooks.example.com/cbr",
        "https://u:p@h/?token=x",
        "ftp://h/",
        "token",
        "password",
        "aksk",
        "debug",
        "json",
        "127.0.0.1:0",
        "[::1]:9471",
        ":memory:",
        "whsec_MDEyMzQ1Njc4OWFiY2RlZg==",
        "task.*",
        "task.progress",
        "a1",
        "bad/id",
        '["a1", "b2"]',
        '[{"name": "ops", "url": "https://h/"}]',
        "{}",
        "true",
        "null",
    ]
)
# Nesting deeper than any recursion limit, and numbers too long to convert.
DEEP_JSON = st.builds(
    lambda depth, opener, closer: opener * depth + closer * depth,
    st.sampled_from([10, 500, 990, 5000, 20_000]),
    st.just("["),
    st.just("]"),
) | st.builds(
    lambda depth: (
        '[{"name": "a", "url": "https://h/", "headers": '
        + '{"a": ' * depth
        + '"v"'
        + "}" * depth
        + "}]"
    ),
    st.sampled_from([10, 500, 990, 5000]),
)
HOSTILE_TOML = st.sampled_from(
    [
        "[watch]\ntasks = " + "[" * 5000 + "]" * 5000,
        "[watch]\ntasks = " + "[" * 400 + "]" * 400,
        "[[webhooks]]\nname = 'a'\nurl = 'https://h/'\nheaders = " + "{a=" * 300 + "1" + "}" * 300,
        "[watch]\nmax_concurrency = " + "9" * 5000,
        "[watch]\ndeadline = " + "9" * 4000,
        "[watch]\ndeadline = " + "9" * 400 + ".5",
        "[cbr]\nregion = 'a'\n[cbr]\nregion = 'b'",
        "webhooks = 3\n[[webhooks]]",
        "[auth]\ntoken = '\u0000'",
        '[auth]\ntoken = "\\ud800"',
    ]
)
TOML_SCALARS = st.one_of(
    PLAUSIBLE,
    TOML_TEXT,
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.dates(),
    st.times(),
    st.datetimes(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(TOML_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)


# --- TOML writing ----------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, except that DEL must be escaped too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: object) -> str:
    """`value` as an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(type(value))


def toml_document(doc: Mapping[str, Any]) -> str:
    """A TOML document with one top-level key per line."""
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in doc.items())


def with_marked_secrets(value: Any, key: str = "", *, secret: bool = False) -> Any:
    """`value` with MARKER in front of every string at (or under) a secret key."""
    secret = secret or key in SECRET_NAMES
    if isinstance(value, dict):
        return {
            k: with_marked_secrets(v, k, secret=secret or key == "headers")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [with_marked_secrets(item, key, secret=secret) for item in value]
    if isinstance(value, str) and secret:
        return MARKER + value
    return value


def merged(base: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """`doc` over `base`, table by table."""
    out = dict(base)
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A config document: known sections and keys mostly, unknown ones sometimes."""
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from([*SECTIONS, "webhooks"]) | TOML_TEXT)
        if section == "webhooks":
            receivers = draw(
                st.lists(
                    st.dictionaries(
                        st.sampled_from(RECEIVER_KEYS) | TOML_TEXT, TOML_VALUES, max_size=5
                    ),
                    max_size=2,
                )
                | TOML_VALUES
            )
            doc["webhooks"] = receivers
            continue
        keys = st.sampled_from(SECTIONS.get(section, ["x"])) | TOML_TEXT
        doc[section] = draw(st.dictionaries(keys, TOML_VALUES, max_size=4) | TOML_VALUES)
    return doc


# --- what every outcome must look like -------------------------------------------------------


def check_message(message: str, sections: set[str], config_file: Path | None = None) -> None:
    """One line, starting with a key (of one of `sections` when given) or, for a file that is
    not TOML, the file's name; no secret in it."""
    assert len(message.splitlines()) == 1, message
    assert "\n" not in message
    assert "\r" not in message
    assert MARKER not in message, message
    assert "Traceback" not in message
    message.encode("utf-8")
    if config_file is not None and (
        re.match(rf"{re.escape(str(config_file))}(:\d+:\d+)?: invalid TOML: ", message)
        or message.startswith(f"config file {str(config_file)!r}: expected UTF-8 text")
    ):
        return
    match = KEY_AT_START.match(message)
    assert match is not None, message
    assert message[match.end() :].startswith((" = ", ": ")), message
    if sections:
        section = match["section"] or ast.literal_eval(match["quoted"][1:-1])
        assert section in sections, (message, sections)


def load_and_check(*, sections: set[str], **kwargs: Any) -> Settings | None:
    """load_settings + require_runnable: the settings, or None after a well-formed ConfigError."""
    try:
        loaded = load_settings(secrets_dirs=[], **kwargs)
        require_runnable(loaded)
    except ConfigError as error:
        event("ConfigError")
        check_message(str(error), sections, kwargs.get("config_file"))
        return None
    event("loaded")
    return loaded


# --- environment variables -------------------------------------------------------------------

KNOWN_ENV_NAMES = [
    f"CBR_WATCHER_{section.upper()}__{key.upper()}"
    for section, keys in SECTIONS.items()
    for key in keys
] + ["CBR_WATCHER_WEBHOOKS"]


def env_section(name: str) -> str:
    """ "auth" for CBR_WATCHER_AUTH__TOKEN."""
    return name.removeprefix("CBR_WATCHER_").split("__")[0].lower()


@st.composite
def environments(draw: st.DrawFn, text: st.SearchStrategy[str] = ANY_TEXT) -> dict[str, str]:
    """1-3 CBR_WATCHER_* variables (secret ones marked) holding anything."""
    names = draw(st.lists(st.sampled_from(KNOWN_ENV_NAMES), min_size=1, max_size=3, unique=True))
    env: dict[str, str] = {}
    for name in names:
        value = draw(PLAUSIBLE | text | DEEP_JSON)
        key = name.rsplit("__", 1)[-1].lower()
        if key in SECRET_NAMES:
            value = MARKER + value
        elif name == "CBR_WATCHER_WEBHOOKS" and draw(st.booleans()):
            receiver = {"name": "ops", "url": "https://h/", "headers": {"X-K": MARKER + value}}
            value = json.dumps([receiver], ensure_ascii=draw(st.booleans()))
        env[name] = value
    return env


@FUZZ
@given(env=environments())
def test_any_environment_loads_or_fails_with_one_clean_line(env: dict[str, str]) -> None:
    loaded = load_and_check(
        environ={**RUNNABLE_ENV, **env}, sections={env_section(name) for name in env}
    )
    if loaded is not None:
        assert MARKER not in repr(loaded)


# --- TOML files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file every example overwrites (examples run one at a time)."""
    return tmp_path_factory.mktemp("fuzz") / "cbr-watcher.toml"


@FUZZ
@given(doc=documents())
def test_any_toml_document_loads_or_fails_with_one_clean_line(
    doc: dict[str, Any], config_path: Path
) -> None:
    text = toml_document(merged(RUNNABLE, with_marked_secrets(doc)))
    parsed = tomllib.loads(text)  # the generator writes valid TOML
    config_path.write_text(text, encoding="utf-8")
    load_and_check(config_file=config_path, environ={}, sections=set(parsed))


@FUZZ
@given(data=st.binary(max_size=200) | (TOML_TEXT | HOSTILE_TOML).map(str.encode))
def test_any_bytes_as_config_file_load_or_fail_with_one_clean_line(
    data: bytes, config_path: Path
) -> None:
    config_path.write_bytes(data)
    try:
        sections = set(tomllib.loads(data.decode()))
    except (ValueError, RecursionError):  # not UTF-8, not TOML, or nested too deeply
        sections = set()
    load_and_check(config_file=config_path, environ=RUNNABLE_ENV, sections=sections)


# --- durations -------------------------------------------------------------------------------

DURATIONS = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.booleans(),
    st.from_regex(r"\s*-?\d{0,400}(\.\d{0,5})?\s*(ms|s|m|h|d|y|)\s*", fullmatch=True),
    TOML_TEXT,
    st.lists(st.integers(), max_size=2),
)


@FUZZ
@given(where=st.sampled_from(DURATION_KEYS), value=DURATIONS, via_env=st.booleans())
def test_any_duration_loads_or_fails_with_one_clean_line(
    where: tuple[str, str], value: object, via_env: bool, config_path: Path
) -> None:
    section, key = where
    if section == "webhooks":
        doc: dict[str, Any] = {"webhooks": [{"name": "ops", "url": "https://h/", key: value}]}
    else:
        doc = {section: {key: value}}
    if via_env and section != "webhooks":
        env = {**RUNNABLE_ENV, f"CBR_WATCHER_{section.upper()}__{key.upper()}": str(value)}
        load_and_check(environ=env, sections={section})
        return
    config_path.write_text(toml_document(merged(RUNNABLE, doc)), encoding="utf-8")
    load_and_check(config_file=config_path, environ={}, sections={section})


# --- the heartbeat URL: a credential in its path ----------------------------------------------

HEARTBEAT_URLS = st.builds(
    lambda head, tail: head + MARKER + tail,
    st.sampled_from(
        [
            "https://hc-ping.com/",
            "https://hc-ping.com/ping/key/",
            "http://u:p@checks.example:8000/ping/",
            "https://kuma.example/api/push/",
            "https://cronitor.link/p/",
            "https://h/?k=",
            "https://h/#",
            "https://h?",
            "hc-ping.com/",
            "ftp://hc-ping.com/",
            " https://hc-ping.com/",
            "https:/hc-ping.com/",
        ]
    ),
    TOML_TEXT,
)


@FUZZ
@given(url=HEARTBEAT_URLS | HEARTBEAT_URLS.map(lambda u: [u]), via_env=st.booleans())
def test_a_heartbeat_url_never_shows_its_token(
    url: str | list[str], via_env: bool, config_path: Path
) -> None:
    """Whatever the URL looks like, loading it works or fails with one line, and neither the
    message, the settings' repr nor check-config's output shows what follows its host."""
    if via_env and isinstance(url, str) and settable(url):
        env = {**RUNNABLE_ENV, "CBR_WATCHER_HEARTBEAT__URL": url}
        loaded = load_and_check(environ=env, sections={"heartbeat"})
    else:
        doc = merged(RUNNABLE, {"heartbeat": {"url": url}})
        config_path.write_text(toml_document(doc), encoding="utf-8")
        loaded = load_and_check(config_file=config_path, environ={}, sections={"heartbeat"})
    if loaded is not None:
        assert MARKER not in repr(loaded)
        assert MARKER not in render_effective(loaded)


# --- through the command line ----------------------------------------------------------------


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ holding `env` and no other CBR_WATCHER_* or systemd credentials variable."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("CBR_WATCHER_") or name == "CREDENTIALS_DIRECTORY":
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        yield


def settable(value: str) -> bool:
    """Whether a process environment can hold `value` (no NUL; surrogates only as escapes)."""
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return "\0" not in value


@FUZZ
@given(env=environments(), doc=documents())
def test_check_config_exits_0_or_78_with_one_line(
    env: dict[str, str], doc: dict[str, Any], config_path: Path
) -> None:
    env = {name: value for name, value in env.items() if settable(value)}
    config_path.write_text(toml_document(merged(RUNNABLE, with_marked_secrets(doc))), "utf-8")
    out, err = io.StringIO(), io.StringIO()
    with (
        environment(env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(["check-config", "--config", str(config_path)])
    assert code in (0, 78), err.getvalue()
    event(f"exit {code}")
    assert MARKER not in out.getvalue() + err.getvalue()
    if code == 0:
        assert err.getvalue() == ""
        tomllib.loads(out.getvalue())  # the effective settings are valid TOML
        assert REDACTED in out.getvalue()  # auth.token is always set
    else:
        assert out.getvalue() == ""
        lines = err.getvalue().splitlines()
        assert len(lines) == 1, err.getvalue()
        assert lines[0].startswith("cbr-watcher: configuration error: ")
