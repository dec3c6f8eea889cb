"""Configuration: sources and precedence, validation messages, secrets, rendering."""

from __future__ import annotations

import base64
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from watcher.cbr.ids import TASK_ID_RULE
from watcher.cli.main import main
from watcher.config import (
    REDACTED,
    ConfigError,
    Settings,
    default_secrets_dirs,
    load_settings,
    redact_url,
    render_effective,
    require_runnable,
)
from watcher.config.durations import DURATION_RULE
from watcher.delivery.outbox import receiver_wants
from watcher.net.listener import parse_listen

WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    """Where a test writes its TOML config."""
    return tmp_path / "cbr-watcher.toml"


def load(
    toml: str | None = None,
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    secrets_dirs: Sequence[Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """load_settings isolated from the real environment and secret directories."""
    if toml is not None:
        assert path is not None
        path.write_text(toml, encoding="utf-8")
    return load_settings(
        config_file=path if toml is not None else None,
        overrides=overrides,
        environ=environ or {},
        secrets_dirs=secrets_dirs,
    )


def config_error(toml: str, path: Path, **kwargs: Any) -> str:
    """The ConfigError message loading `toml` raises."""
    with pytest.raises(ConfigError) as caught:
        load(toml, path=path, **kwargs)
    return str(caught.value)


# --- sources and precedence ------------------------------------------------------------------


def test_defaults_match_the_spec() -> None:
    settings = load()
    assert settings.cbr.model_dump() == {
        "region": "",
        "project_id": "",
        "endpoint": "",
        "request_timeout": 10.0,
        "verify_tls": True,
        "ca_file": "",
    }
    assert settings.auth.method == "token"
    assert settings.auth.token.get_secret_value() == ""
    assert settings.watch.model_dump() == {
        "tasks": [],
        "task_file": "",
        "poll_interval_min": 5.0,
        "poll_interval_max": 15.0,
        "deadline": 48 * 3600.0,
        "not_found_grace": 120.0,
        "max_concurrency": 32,
        "max_requests_per_second": 20.0,
        "exit_when_done": False,
        "progress_interval": 120.0,
        "list_interval": 10.0,
        "auth_failure_timeout": 600.0,
        "discover": [],
        "discover_interval": 30.0,
        "discover_lookback": 3600.0,
    }
    assert settings.webhooks == []
    assert settings.heartbeat.url.get_secret_value() == ""
    assert (settings.heartbeat.url_file, settings.heartbeat.interval) == ("", 60.0)
    assert not settings.heartbeat.enabled
    assert (settings.metrics.retention, settings.metrics.max_task_series) == (900.0, 10000)
    assert (settings.server.listen, settings.server.api_listen) == (
        "0.0.0.0:9471",
        "127.0.0.1:9472",
    )
    assert settings.server.api_token.get_secret_value() == ""
    assert settings.state.path == ""
    assert (settings.log.level, settings.log.format) == ("info", "auto")


def test_settings_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBR_WATCHER_CBR__REGION", "eu-west-101")
    assert Settings().cbr.region == ""
    assert Settings(cbr={"region": "la-south-2"}).cbr.region == "la-south-2"


def test_toml_file(toml_file: Path) -> None:
    settings = load(
        """
        [cbr]
        region = "ap-southeast-1"
        project_id = "04f1829c788037ac2fb8c01eb2b04b95"
        [watch]
        tasks = ["task-1", "task-2"]
        poll_interval_max = "2m"
        [[webhooks]]
        name = "ops"
        url = "https://hooks.example.com/cbr"
        events = ["task.*", "task.progress"]
        headers = { Authorization = "Bearer abc" }
        [log]
        level = "DEBUG"
        """,
        path=toml_file,
    )
    assert settings.cbr.project_id == "04f1829c788037ac2fb8c01eb2b04b95"
    assert settings.watch.tasks == ["task-1", "task-2"]
    assert settings.watch.poll_interval_max == 120.0
    (receiver,) = settings.webhooks
    assert receiver.headers["Authorization"].get_secret_value() == "Bearer abc"
    assert (receiver.timeout, receiver.max_age) == (15.0, 86400.0)
    assert settings.log.level == "debug"


def test_config_file_from_environment(toml_file: Path) -> None:
    toml_file.write_text('[cbr]\nregion = "cn-north-4"\n', encoding="utf-8")
    settings = load(environ={"CBR_WATCHER_CONFIG": str(toml_file)})
    assert settings.cbr.region == "cn-north-4"


def test_environment_overrides_toml_key_by_key(toml_file: Path) -> None:
    settings = load(
        '[cbr]\nregion = "cn-north-4"\nproject_id = "p1"\n',
        path=toml_file,
        environ={"CBR_WATCHER_CBR__PROJECT_ID": "p2", "cbr_watcher_watch__exit_when_done": "true"},
    )
    assert (settings.cbr.region, settings.cbr.project_id) == ("cn-north-4", "p2")
    assert settings.watch.exit_when_done is True


def test_overrides_override_environment(toml_file: Path) -> None:
    settings = load(
        '[watch]\ntasks = ["from-toml"]\n',
        path=toml_file,
        environ={"CBR_WATCHER_WATCH__TASKS": '["from-env"]', "CBR_WATCHER_LOG__LEVEL": "error"},
        overrides={
            "watch": {"tasks": ["from-cli"], "exit_when_done": True},
            "log": {"level": None},
        },
    )
    assert settings.watch.tasks == ["from-cli"]
    assert settings.watch.exit_when_done is True
    assert settings.log.level == "error"  # a None override is no override


def test_nested_environment_variables() -> None:
    settings = load(
        environ={
            "CBR_WATCHER_CBR__PROJECT_ID": "04f1829c788037ac2fb8c01eb2b04b95",
            "CBR_WATCHER_AUTH__TOKEN": "tok",
            "CBR_WATCHER_WATCH__TASKS": '["id1","id2"]',
            "CBR_WATCHER_WATCH__MAX_REQUESTS_PER_SECOND": "2.5",
            "CBR_WATCHER_SERVER__API_LISTEN": "",
            "UNRELATED": "x",
        }
    )
    assert settings.cbr.project_id == "04f1829c788037ac2fb8c01eb2b04b95"
    assert settings.auth.token.get_secret_value() == "tok"
    assert settings.watch.tasks == ["id1", "id2"]
    assert settings.watch.max_requests_per_second == 2.5
    assert settings.server.api_listen == ""


def test_webhooks_from_environment_json() -> None:
    receivers = [{"name": "ops", "url": "https://hooks.example.com/cbr", "secret": WHSEC}]
    settings = load(environ={"CBR_WATCHER_WEBHOOKS": json.dumps(receivers)})
    (receiver,) = settings.webhooks
    assert (receiver.name, receiver.secret.get_secret_value()) == ("ops", WHSEC)
    assert receiver.events == ["task.*", "watch.*"]


def test_secret_files_override_toml_but_not_environment(tmp_path: Path, toml_file: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "cbr_watcher_auth__token").write_text("from-file\n", encoding="utf-8")
    (credentials / "cbr_watcher_auth__password").write_text(" spaced pw \r\n", encoding="utf-8")
    (credentials / "ca.der").write_bytes(b"\xff\xfe\x00binary")  # not ours: never read
    toml = '[auth]\ntoken = "from-toml"\nsecurity_token = "st-toml"\n'

    settings = load(toml, path=toml_file, secrets_dirs=[credentials, tmp_path / "missing"])
    assert settings.auth.token.get_secret_value() == "from-file"
    assert settings.auth.password.get_secret_value() == " spaced pw "
    assert settings.auth.security_token.get_secret_value() == "st-toml"

    settings = load(toml, path=toml_file, environ={"CBR_WATCHER_AUTH__TOKEN": "from-env"})
    assert settings.auth.token.get_secret_value() == "from-env"


def test_secret_files_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "cbr_watcher_server__api_token").write_text("api\n", encoding="utf-8")
    (tmp_path / "cbr_watcher_webhooks").write_text(
        json.dumps([{"name": "ops", "url": "https://x.example"}]), encoding="utf-8"
    )
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert default_secrets_dirs(environ) == [tmp_path, Path("/run/secrets/cbr-watcher")]
    settings = load_settings(environ=environ)
    assert settings.server.api_token.get_secret_value() == "api"
    assert [receiver.name for receiver in settings.webhooks] == ["ops"]


def test_earlier_secret_directory_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        (directory / "cbr_watcher_auth__token").write_text(directory.name, encoding="utf-8")
    assert load(secrets_dirs=[first, second]).auth.token.get_secret_value() == "first"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), (45, 45.0), (2.5, 2.5)],
)
def test_duration_forms(value: object, seconds: float, toml_file: Path) -> None:
    settings = load(f"[watch]\ndeadline = {json.dumps(value)}\n", path=toml_file)
    assert settings.watch.deadline == seconds


def test_duration_from_environment_and_zero_where_it_makes_sense() -> None:
    settings = load(
        environ={"CBR_WATCHER_WATCH__NOT_FOUND_GRACE": "0", "CBR_WATCHER_METRICS__RETENTION": "90"}
    )
    assert (settings.watch.not_found_grace, settings.metrics.retention) == (0.0, 90.0)


# --- validation ------------------------------------------------------------------------------

RECEIVER = '[[webhooks]]\nname = "ops"\nurl = "https://hooks.example.com"\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            '[cbr]\nrequest_timeout = "soon"',
            f"cbr.request_timeout = 'soon': expected {DURATION_RULE}",
            id="cbr-duration",
        ),
        pytest.param(
            '[cbr]\nregion = "ap south"',
            "cbr.region = 'ap south': expected a region such as \"ap-southeast-1\"",
            id="cbr-region",
        ),
        pytest.param(
            '[cbr]\nendpoint = "cbr.example.com"',
            "cbr.endpoint = 'cbr.example.com': expected an http:// or https:// URL",
            id="cbr-endpoint",
        ),
        pytest.param(
            '[auth]\nmethod = "oauth"',
            "auth.method = 'oauth': expected one of token, password, aksk",
            id="auth-method",
        ),
        pytest.param(
            '[auth]\ntoken_file = "/nonexistent/token"',
            "auth.token_file = '/nonexistent/token': expected a readable file "
            "(No such file or directory)",
            id="auth-token-file",
        ),
        pytest.param(
            '[watch]\npoll_interval_min = "abc"',
            f"watch.poll_interval_min = 'abc': expected {DURATION_RULE}",
            id="watch-duration",
        ),
        pytest.param(
            "[watch]\ndeadline = 0",
            "watch.deadline = 0: expected a duration greater than zero",
            id="watch-zero-duration",
        ),
        pytest.param(
            '[watch]\npoll_interval_min = "2m"\npoll_interval_max = "1m"',
            "watch.poll_interval_min = '2m': expected at most poll_interval_max (1m)",
            id="watch-interval-order",
        ),
        pytest.param(
            "[watch]\nmax_concurrency = 0",
            "watch.max_concurrency = 0: expected a number >= 1",
            id="watch-concurrency",
        ),
        pytest.param(
            "[watch]\nmax_requests_per_second = 0",
            "watch.max_requests_per_second = 0: expected a number > 0",
            id="watch-rate",
        ),
        pytest.param(
            '[watch]\ntasks = ["ok-1", "bad/id"]',
            f"watch.tasks[1] = 'bad/id': expected {TASK_ID_RULE}",
            id="watch-task-id",
        ),
        pytest.param(
            '[watch]\nexit_when_done = "perhaps"',
            "watch.exit_when_done = 'perhaps': expected true or false",
            id="watch-bool",
        ),
        pytest.param(
            '[[webhooks]]\nname = "ops"\nurl = "ftp://hooks.example.com"',
            "webhooks[0].url = 'ftp://hooks.example.com': expected an http:// or https:// URL",
            id="webhooks-url",
        ),
        pytest.param(
            '[[webhooks]]\nname = "ops"',
            "webhooks[0].url = '': expected an http(s) URL (set url or url_file)",
            id="webhooks-no-url",
        ),
        pytest.param(
            '[[webhooks]]\nname = " "\nurl = "https://x.example"',
            "webhooks[0].name = ' ': expected a non-empty name",
            id="webhooks-empty-name",
        ),
        pytest.param(
            RECEIVER + RECEIVER,
            "webhooks[1].name = 'ops': expected a name no other receiver uses",
            id="webhooks-duplicate-name",
        ),
        pytest.param(
            RECEIVER + 'events = ["task.*", "task.finish*"]',
            "webhooks[0].events[1] = 'task.finish*': expected an event type or a glob matching "
            "one of task.started, task.progress, task.succeeded, task.failed, task.timed_out, "
            "task.skipped, watch.not_found, watch.expired, backup.missed, test.ping",
            id="webhooks-event-glob",
        ),
        pytest.param(
            RECEIVER + "timeout = -1",
            f"webhooks[0].timeout = -1: expected {DURATION_RULE}, not negative",
            id="webhooks-duration",
        ),
        pytest.param(
            '[webhooks]\nname = "ops"',
            "webhooks = {'name': 'ops'}: expected [[webhooks]] tables (a list of receivers)",
            id="webhooks-single-brackets",
        ),
        pytest.param(
            "[metrics]\nmax_task_series = -1",
            "metrics.max_task_series = -1: expected a number >= 0",
            id="metrics-series",
        ),
        pytest.param(
            '[metrics]\nretention = "15 minutes"',
            f"metrics.retention = '15 minutes': expected {DURATION_RULE}",
            id="metrics-retention",
        ),
        pytest.param(
            '[server]\nlisten = "nope"',
            "server.listen = 'nope': expected HOST:PORT such as 0.0.0.0:9471 or [::1]:9471",
            id="server-listen",
        ),
        pytest.param(
            '[server]\napi_listen = "127.0.0.1:99999"',
            "server.api_listen = '127.0.0.1:99999': expected HOST:PORT such as 0.0.0.0:9471 "
            "or [::1]:9471",
            id="server-api-listen",
        ),
        pytest.param("[state]\npath = 5", "state.path = 5: expected a string", id="state-path"),
        pytest.param(
            '[log]\nlevel = "loud"',
            "log.level = 'loud': expected one of debug, info, warning, error",
            id="log-level",
        ),
        pytest.param(
            '[log]\nformat = "xml"',
            "log.format = 'xml': expected one of auto, json, console",
            id="log-format",
        ),
        pytest.param(
            "[watch]\npoll_intervall_min = 5",
            "watch.poll_intervall_min: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            '[heartbeat]\nurl = "hc-ping.com/5f1c-token"',
            f"heartbeat.url = '{REDACTED}': expected an http:// or https:// URL",
            id="heartbeat-url",
        ),
        pytest.param(
            '[heartbeat]\nurl = "ftp://hc-ping.com/5f1c-token"',
            f"heartbeat.url = 'ftp://hc-ping.com/{REDACTED}': expected an http:// or https:// URL",
            id="heartbeat-url-scheme",
        ),
        pytest.param(
            '[heartbeat]\nurl = "https://hc-ping.com/x"\ninterval = "500ms"',
            "heartbeat.interval = '0.5s': expected at least 1s",
            id="heartbeat-interval",
        ),
        pytest.param(
            '[heartbeat]\nurl = "https://hc-ping.com/x"\nurl_file = "/nonexistent/url"',
            "heartbeat.url_file = '/nonexistent/url': expected a readable file "
            "(No such file or directory)",
            id="heartbeat-url-file",
        ),
        pytest.param('[metric]\nretention = "1m"', "metric: unknown key", id="unknown-section"),
        pytest.param(
            '[log]\nlevel = "loud"\nformat = "xml"',
            "log.level = 'loud': expected one of debug, info, warning, error (and 1 more problem)",
            id="several-problems",
        ),
    ],
)
def test_invalid_value_names_key_value_and_expectation(
    toml: str, message: str, toml_file: Path
) -> None:
    assert config_error(toml, toml_file) == message


def test_invalid_value_from_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"CBR_WATCHER_WATCH__MAX_CONCURRENCY": "lots"})
    assert str(caught.value) == "watch.max_concurrency = 'lots': expected a whole number"


def test_environment_json_that_does_not_parse() -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"CBR_WATCHER_WATCH__TASKS": "id1,id2"})
    assert str(caught.value).startswith(
        "watch.tasks = 'id1,id2' (from environment variable CBR_WATCHER_WATCH__TASKS): "
        "expected valid JSON ("
    )


def test_invalid_task_file(tmp_path: Path, toml_file: Path) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# watched\nabc-1\n\nbad/id  # typo\n", encoding="utf-8")
    message = config_error(f"[watch]\ntask_file = {json.dumps(str(tasks))}", toml_file)
    assert message == (
        f"watch.task_file = {str(tasks)!r}: line 4: invalid task ID 'bad/id': "
        f"expected {TASK_ID_RULE}"
    )


def test_valid_task_file(tmp_path: Path, toml_file: Path) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("abc-1\n# comment\nabc-2\n", encoding="utf-8")
    settings = load(f"[watch]\ntask_file = {json.dumps(str(tasks))}", path=toml_file)
    assert settings.watch.task_file == str(tasks)


def test_value_and_file_for_one_secret(tmp_path: Path, toml_file: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t", encoding="utf-8")
    toml = f'[auth]\ntoken = "t"\ntoken_file = {json.dumps(str(token_file))}'
    assert config_error(toml, toml_file) == (
        f"auth.token_file = {str(token_file)!r}: expected only one of token and token_file"
    )


def test_webhook_secret_file_must_hold_a_secret(tmp_path: Path, toml_file: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("hunter2\n", encoding="utf-8")
    message = config_error(RECEIVER + f"secret_file = {json.dumps(str(secret_file))}", toml_file)
    assert message == (
        f"webhooks[0].secret_file = {str(secret_file)!r}: "
        'expected a file holding "whsec_" and base64'
    )
    assert "hunter2" not in message


def test_toml_syntax_error_names_file_and_line(toml_file: Path) -> None:
    message = config_error('[cbr]\nregion = "ap-southeast-1"\nproject_id = \n', toml_file)
    assert message.startswith(f"{toml_file}:3:")
    assert "invalid TOML" in message
    assert "\n" not in message


@pytest.mark.parametrize("via", ["--config", "CBR_WATCHER_CONFIG"])
def test_missing_config_file(via: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    config_file, environ = (missing, {}) if via == "--config" else (None, {via: str(missing)})
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config_file, environ=environ, secrets_dirs=[])
    assert str(caught.value) == (
        f"config file {str(missing)!r} (from {via}): cannot read it: No such file or directory"
    )


# --- secrets ---------------------------------------------------------------------------------

SECRET_VALUES = {
    "auth.token": "tok-SECRET-1",
    "auth.password": "pw-SECRET-2",
    "auth.access_key": "ak-SECRET-3",
    "auth.secret_key": "sk-SECRET-4",
    "auth.security_token": "st-SECRET-5",
    "webhooks.secret": "whsec_" + base64.b64encode(b"SECRET-6").decode(),
    "webhooks.headers": "Bearer SECRET-7",
    "server.api_token": "api-SECRET-8",
}


def every_secret_set() -> Settings:
    """Settings with a distinctive value in every secret field."""
    auth_keys = ("token", "password", "access_key", "secret_key", "security_token")
    return load(
        overrides={
            "auth": {key: SECRET_VALUES[f"auth.{key}"] for key in auth_keys},
            "webhooks": [
                {
                    "name": "ops",
                    "url": "https://user:pass-SECRET-9@hooks.example.com/cbr",
                    "secret": SECRET_VALUES["webhooks.secret"],
                    "headers": {"Authorization": SECRET_VALUES["webhooks.headers"], "X-Empty": ""},
                }
            ],
            "server": {"api_token": SECRET_VALUES["server.api_token"]},
        }
    )


def test_render_effective_redacts_every_secret() -> None:
    settings = every_secret_set()
    text = render_effective(settings)
    for value in SECRET_VALUES.values():
        assert value not in repr(settings)
    assert "SECRET" not in text
    assert text.count(f'"{REDACTED}"') == len(SECRET_VALUES) + 1  # + the URL password
    assert 'X-Empty = ""' in text
    assert 'password_file = ""' in text


def test_render_effective_is_toml_that_loads_back(toml_file: Path) -> None:
    settings = load(
        """
        [cbr]
        region = "ap-southeast-1"
        [watch]
        tasks = ["a1", "b2"]
        poll_interval_min = 2.5
        max_requests_per_second = 7.5
        [[webhooks]]
        name = "ops \\"eu\\""
        url = "https://hooks.example.com/cbr"
        events = ["task.progress"]
        headers = { "X-Team" = "" }
        [state]
        path = ":memory:"
        """,
        path=toml_file,
    )
    text = render_effective(settings)
    assert "[[webhooks]]" in text
    assert 'poll_interval_min = "2.5s"' in text
    assert 'deadline = "2d"' in text
    assert 'endpoint = ""  # https://cbr.ap-southeast-1.myhuaweicloud.com' in text
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == [
        "[cbr]",
        "[auth]",
        "[watch]",
        "[[webhooks]]",
        "[coverage]",
        "[heartbeat]",
        "[metrics]",
        "[server]",
        "[state]",
        "[log]",
    ]
    assert tomllib.loads(text)["watch"]["tasks"] == ["a1", "b2"]
    assert load(text, path=toml_file) == settings


@pytest.mark.parametrize(
    ("toml", "secret"),
    [
        (RECEIVER + 'secret = "whsec_%%%"', "%%%"),
        ("[auth]\ntoken = 123456789", "123456789"),
        (RECEIVER + 'headers = { Authorization = "Bearer SECRET\\nX-Evil: 1" }', "SECRET"),
        ('[auth]\ntokn = "tok-SECRET"', "SECRET"),
        ('[server]\napi_token = ["api-SECRET"]', "SECRET"),
        ('[auth]\npassword = ["pw-SECRET"]', "SECRET"),
        ('[auth]\naccess_key = ["ak-SECRET"]', "SECRET"),
        ('[auth]\nsecret_key = ["sk-SECRET"]', "SECRET"),
        ('[auth]\nsecurity_token = ["st-SECRET"]', "SECRET"),
        ('[heartbeat]\nurl = "https://hc-ping.com/hb-SECRET "', "SECRET"),
        ('[heartbeat]\nurl = ["https://hc-ping.com/hb-SECRET"]', "SECRET"),
        ('[heartbeat]\nurl = { u = "https://hc-ping.com/hb-SECRET" }', "SECRET"),
    ],
)
def test_config_errors_never_echo_secrets(toml: str, secret: str, toml_file: Path) -> None:
    message = config_error(toml, toml_file)
    assert secret not in message


def test_aksk_values_with_blanks_are_rejected_redacted(toml_file: Path) -> None:
    assert config_error('[auth]\nsecret_key = "sk-SECRET "', toml_file) == (
        f"auth.secret_key = '{REDACTED}': expected no spaces or line breaks"
    )


def test_bad_secret_value_is_shown_redacted(toml_file: Path) -> None:
    assert config_error(RECEIVER + 'secret = "whsec_%%%"', toml_file) == (
        f"webhooks[0].secret = '{REDACTED}': expected \"whsec_\" followed by base64"
    )


def test_unparsable_heartbeat_json_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"CBR_WATCHER_HEARTBEAT": '{"url": "https://hc-ping.com/hb-SECRET"'})
    assert "SECRET" not in str(caught.value)
    assert str(caught.value).startswith(f"heartbeat = '{REDACTED}' (from environment variable")


def test_heartbeat_url_and_url_file_exclude_each_other(tmp_path: Path, toml_file: Path) -> None:
    url_file = tmp_path / "heartbeat-url"
    url_file.write_text("https://hc-ping.com/from-file", encoding="utf-8")
    message = config_error(
        f'[heartbeat]\nurl = "https://hc-ping.com/x"\nurl_file = "{url_file}"', toml_file
    )
    assert message.startswith("heartbeat.url_file = ")
    assert message.endswith("expected only one of url and url_file")
    settings = load(f'[heartbeat]\nurl_file = "{url_file}"', path=toml_file)
    assert settings.heartbeat.enabled


def test_unparsable_webhooks_json_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"CBR_WATCHER_WEBHOOKS": '[{"secret": "whsec_SECRET"'})
    assert "SECRET" not in str(caught.value)
    assert str(caught.value).startswith(f"webhooks = '{REDACTED}' (from environment variable")


SECRET_ENV = {
    "auth.token": "CBR_WATCHER_AUTH__TOKEN",
    "auth.password": "CBR_WATCHER_AUTH__PASSWORD",
    "auth.access_key": "CBR_WATCHER_AUTH__ACCESS_KEY",
    "auth.secret_key": "CBR_WATCHER_AUTH__SECRET_KEY",
    "auth.security_token": "CBR_WATCHER_AUTH__SECURITY_TOKEN",
    "server.api_token": "CBR_WATCHER_SERVER__API_TOKEN",
}
CONTROL_CHARACTERS = ["\r", "\n", "\0", "\t", "\x01", "\x1b", "\x1f", "\x7f"]


@pytest.mark.parametrize("key", SECRET_ENV)
@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=repr)
def test_secrets_with_control_characters_are_refused_redacted(key: str, char: str) -> None:
    """A credential that could never go into a header stops start-up, named, never shown."""
    with pytest.raises(ConfigError) as caught:
        load(environ={SECRET_ENV[key]: f"v-SECRET{char}more"})
    message = str(caught.value)
    assert message.startswith(f"{key} = '{REDACTED}': expected no ")
    assert "SECRET" not in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=repr)
def test_header_values_with_control_characters_are_refused(char: str, toml_file: Path) -> None:
    value = json.dumps(f"Bearer SECRET{char}X-Evil: 1")
    message = config_error(RECEIVER + f"headers = {{ Authorization = {value} }}", toml_file)
    assert message == (
        f"webhooks[0].headers.Authorization = '{REDACTED}': "
        "expected a header value without control characters (line breaks, NUL)"
    )


@pytest.mark.parametrize("name", ["X Team", "X:Team", "X-Team\r\n", "", "Ünïcode"])
def test_header_names_must_be_tokens(name: str, toml_file: Path) -> None:
    message = config_error(RECEIVER + f'headers = {{ {json.dumps(name)} = "v" }}', toml_file)
    assert message == f"webhooks[0].headers[{name!r}]: expected an HTTP header name"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"CBR_WATCHER_AUTH__USER_NAME": "bob\udcff"},
            "auth.user_name = 'bob\\udcff': expected valid Unicode text",
            id="plain",
        ),
        pytest.param(
            {"CBR_WATCHER_AUTH__TOKEN": "tok-SECRET\udc80"},
            f"auth.token = '{REDACTED}': expected valid Unicode text",
            id="secret",
        ),
        pytest.param(
            {"CBR_WATCHER_CBR__CA_FILE": "/etc/\ud800"},
            "cbr.ca_file = '/etc/\\ud800': expected valid Unicode text",
            id="path",
        ),
        pytest.param(
            {
                "CBR_WATCHER_WEBHOOKS": '[{"name": "ops", "url": "https://h/", "headers": '
                '{"X-Key": "SECRET\\udc80"}}]'
            },
            f"webhooks[0].headers['X-Key'] = '{REDACTED}': expected valid Unicode text",
            id="json-header",
        ),
        pytest.param(
            {"CBR_WATCHER_WATCH__TASKS": '["ok-1", "\\ud83d"]'},
            "watch.tasks[1] = '\\ud83d': expected valid Unicode text",
            id="json-list",
        ),
    ],
)
def test_lone_surrogates_are_refused_by_key(environ: dict[str, str], message: str) -> None:
    """Undecodable bytes (or a JSON escape of half a character) cannot be encoded anywhere."""
    with pytest.raises(ConfigError) as caught:
        load(environ=environ)
    assert str(caught.value).startswith(message)
    assert "SECRET" not in str(caught.value)
    str(caught.value).encode("utf-8")  # printable on any terminal


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://host.example/x", "https://host.example/x"),
        ("https://user:pass@host", f"https://{REDACTED}@host"),
        ("https://tok@host:8443/p", f"https://{REDACTED}@host:8443/p"),
        ("https://host/p?token=abc", f"https://host/p?token={REDACTED}"),
        (
            "https://u:p@host/x?a=1&b=&c#frag",
            f"https://{REDACTED}@host/x?a={REDACTED}&b=&{REDACTED}#frag",
        ),
        ("https://a@b@host/", f"https://{REDACTED}@host/"),
        ("https://u:p@[bad/?k=v", f"https://{REDACTED}@[bad/?k={REDACTED}"),  # malformed too
        ("not a url?k=v", f"not a url?k={REDACTED}"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_render_effective_redacts_every_url(toml_file: Path) -> None:
    """check-config shows no userinfo and no query value of any URL it prints."""
    settings = load(
        """
        [cbr]
        endpoint = "https://ep-user:ep-SECRET@cbr.example.com/?sig=cbr-SECRET"
        [auth]
        iam_endpoint = "https://iam.example.com/?key=iam-SECRET"
        [[webhooks]]
        name = "ops"
        url = "https://hook-SECRET@hooks.example.com/cbr?token=hook-SECRET"
        [heartbeat]
        url = "https://hc-ping.com/hb-SECRET-uuid"
        """,
        path=toml_file,
    )
    text = render_effective(settings)
    assert "SECRET" not in text
    assert f'endpoint = "https://{REDACTED}@cbr.example.com/?sig={REDACTED}"' in text
    # A push URL is its own credential: only its host is shown.
    assert f'url = "https://hc-ping.com/{REDACTED}"' in text
    assert f'iam_endpoint = "https://iam.example.com/?key={REDACTED}"' in text
    assert f'url = "https://{REDACTED}@hooks.example.com/cbr?token={REDACTED}"' in text


def test_check_config_prints_urls_redacted(
    toml_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cbr-watcher check-config` itself: no URL credential or query value in what it prints."""
    for name in list(os.environ):
        if name.startswith("CBR_WATCHER_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    toml_file.write_text(
        """
        [cbr]
        project_id = "p1"
        endpoint = "https://cbr.example.com/?ak=cbr-SECRET"
        [auth]
        token = "tok-SECRET"
        [[webhooks]]
        name = "ops"
        url = "https://user:pass-SECRET@hooks.example.com/cbr?token=abc-SECRET"
        [heartbeat]
        url = "https://hc-ping.com/hb-SECRET/"
        """,
        encoding="utf-8",
    )
    assert main(["check-config", "--config", str(toml_file)]) == 0
    out = capsys.readouterr().out
    assert "SECRET" not in out
    assert f'url = "https://hc-ping.com/{REDACTED}"' in out
    assert f'url = "https://{REDACTED}@hooks.example.com/cbr?token={REDACTED}"' in out
    assert f'endpoint = "https://cbr.example.com/?ak={REDACTED}"' in out


@pytest.mark.parametrize(
    "toml",
    [
        '[cbr]\nendpoint = "https://u:ep-SECRET@[::1"',
        '[[webhooks]]\nname = "ops"\nurl = "ftp://u:hook-SECRET@host/?t=q-SECRET"',
    ],
)
def test_invalid_urls_are_shown_redacted(toml: str, toml_file: Path) -> None:
    message = config_error(toml, toml_file)
    assert "SECRET" not in message
    assert REDACTED in message


# --- require_runnable ------------------------------------------------------------------------

PROJECT = {"project_id": "04f1829c788037ac2fb8c01eb2b04b95", "region": "ap-southeast-1"}


@pytest.mark.parametrize(
    ("cbr", "auth", "message"),
    [
        ({}, {"token": "t"}, "cbr.project_id = '': expected the project ID"),
        ({"project_id": "p"}, {"token": "t"}, "cbr.region = '': expected a region"),
        (PROJECT, {}, "auth.token: required for auth.method = 'token' (set auth.token or"),
        (
            PROJECT,
            {"method": "password", "user_name": "u", "password": "p"},
            "auth.domain_name: required for auth.method = 'password'",
        ),
        (
            PROJECT,
            {"method": "password", "domain_name": "d", "user_name": "u"},
            "auth.password: required for auth.method = 'password' "
            "(set auth.password or auth.password_file)",
        ),
        (
            PROJECT,
            {"method": "aksk", "access_key": "ak"},
            "auth.secret_key: required for auth.method = 'aksk'",
        ),
        (
            {"project_id": "p", "endpoint": "https://cbr.example"},
            {"method": "password", "domain_name": "d", "user_name": "u", "password": "p"},
            "auth.iam_endpoint = '': required for auth.method = 'password'",
        ),
    ],
)
def test_require_runnable_reports_what_run_needs(
    cbr: dict[str, str], auth: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        require_runnable(Settings(cbr=cbr, auth=auth))


@pytest.mark.parametrize(
    ("cbr", "auth"),
    [
        (PROJECT, {"token": "t"}),
        ({"project_id": "p", "endpoint": "https://cbr.example"}, {"token": "t"}),
        (PROJECT, {"method": "password", "domain_name": "d", "user_name": "u", "password": "p"}),
        (PROJECT, {"method": "aksk", "access_key": "ak", "secret_key": "sk"}),
    ],
)
def test_require_runnable_accepts_complete_settings(
    cbr: dict[str, str], auth: dict[str, str]
) -> None:
    require_runnable(Settings(cbr=cbr, auth=auth))


def test_require_runnable_accepts_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t", encoding="utf-8")
    require_runnable(Settings(cbr=PROJECT, auth={"token_file": str(token_file)}))


# --- derived values --------------------------------------------------------------------------


def test_effective_endpoints() -> None:
    settings = Settings(cbr={"region": "ap-southeast-1"})
    assert settings.cbr.effective_endpoint == "https://cbr.ap-southeast-1.myhuaweicloud.com"
    assert settings.effective_iam_endpoint == "https://iam.ap-southeast-1.myhuaweicloud.com"
    custom = Settings(
        cbr={"region": "x-1", "endpoint": "http://127.0.0.1:8080/"},
        auth={"iam_endpoint": "https://iam.example/"},
    )
    assert custom.cbr.effective_endpoint == "http://127.0.0.1:8080"
    assert custom.effective_iam_endpoint == "https://iam.example"


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("0.0.0.0:9471", ("0.0.0.0", 9471)),
        ("localhost:80", ("localhost", 80)),
        ("[::1]:9471", ("::1", 9471)),
        (":9471", ("", 9471)),
    ],
)
def test_parse_listen(value: str, address: tuple[str, int]) -> None:
    assert parse_listen(value) == address


@pytest.mark.parametrize("value", ["nope", "host:", "1.2.3.4:65536", "[zz]:1", "::1:9471", ""])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen(value)


@pytest.mark.parametrize(
    ("path", "environ", "expected"),
    [
        (":memory:", {"STATE_DIRECTORY": "/var/lib/x"}, ":memory:"),
        ("/data/w.db", {"STATE_DIRECTORY": "/var/lib/x"}, "/data/w.db"),
        (
            "",
            {"STATE_DIRECTORY": "/var/lib/cbr-watcher:/var/lib/other"},
            "/var/lib/cbr-watcher/cbr-watcher.db",
        ),
        ("", {"XDG_STATE_HOME": "/home/u/.state"}, "/home/u/.state/cbr-watcher/state.db"),
        ("", {"HOME": "/home/u"}, "/home/u/.local/state/cbr-watcher/state.db"),
    ],
)
def test_effective_state_path(path: str, environ: dict[str, str], expected: str) -> None:
    assert Settings(state={"path": path}).state.effective_path(environ) == expected


def test_receiver_event_selection() -> None:
    (receiver,) = Settings(
        webhooks=[{"name": "ops", "url": "https://x.example", "events": ["task.*"]}]
    ).webhooks
    assert receiver_wants(receiver.events, "task.failed")
    assert not receiver_wants(receiver.events, "task.progress")  # a glob never selects it
    assert not receiver_wants(receiver.events, "watch.expired")
    (progress,) = Settings(
        webhooks=[{"name": "p", "url": "https://x.example", "events": ["task.progress"]}]
    ).webhooks
    assert receiver_wants(progress.events, "task.progress")
