"""Real Prometheus parts: promtool on a live scrape and on the shipped rules, a real Prometheus
server scraping a running daemon, and the dashboard's and rules' PromQL against a live scrape.

The daemon runs as `python -m watcher run` against the simulator on real time, with
sub-second tasks. Where prometheus/promtool are missing these tests skip (CI installs them and
fails on skips). Waiting is done by polling with an overall timeout; nothing asserts on how
long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_process import DaemonProcess, die_with_parent, fast_daemon_env, spawned
from tests.support import TestReceiver, free_port
from tests.test_metrics import finished
from watcher.clock import RealClock
from watcher.observe.metrics import Metrics
from watcher.sim import SimTaskSpec, Simulator
from watcher.sim.inventory import BackupSpec, ResourceSpec, VaultSpec
from watcher.sim.policies import PolicySpec
from watcher.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "cbr-watcher.json"
TOKEN = "prometheus-test-token"
COVERED_VAULT = "vault-lint"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus (the server) is not installed"
)

DOCUMENTED_METRICS = {
    # docs/metrics.md, as family names of the text format (counters with _total).
    "cbr_watcher_task_progress_ratio": "gauge",
    "cbr_watcher_task_status": "gauge",
    "cbr_watcher_task_info": "gauge",
    "cbr_watcher_task_started_timestamp_seconds": "gauge",
    "cbr_watcher_task_last_progress_timestamp_seconds": "gauge",
    "cbr_watcher_tasks": "gauge",
    "cbr_watcher_tasks_finished_total": "counter",
    "cbr_watcher_task_duration_seconds": "histogram",
    "cbr_watcher_detection_delay_seconds": "histogram",
    "cbr_watcher_last_success_timestamp_seconds": "gauge",
    "cbr_watcher_api_requests_total": "counter",
    "cbr_watcher_api_request_duration_seconds": "histogram",
    "cbr_watcher_api_throttled_total": "counter",
    "cbr_watcher_webhook_deliveries_total": "counter",
    "cbr_watcher_webhook_attempts_total": "counter",
    "cbr_watcher_webhook_delivery_latency_seconds": "histogram",
    "cbr_watcher_webhook_queue_depth": "gauge",
    "cbr_watcher_webhook_receiver_disabled": "gauge",
    "cbr_watcher_auth_token_expiry_timestamp_seconds": "gauge",
    "cbr_watcher_build_info": "gauge",
    "cbr_watcher_task_series_dropped_total": "counter",
    "cbr_watcher_resource_last_success_timestamp_seconds": "gauge",
    "cbr_watcher_resource_last_status": "gauge",
    "cbr_watcher_resource_series_dropped_total": "counter",
}
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}
_PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


# ---- helpers ------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, within: float = 60.0
) -> None:
    """Poll `check` until it is true; fail with `what` after `within` real seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def daemon_env(sim: Simulator, base_url: str, task_file: Path, receiver_url: str) -> dict[str, str]:
    """A fast-polling daemon watching `task_file`, with one webhook receiver "ops"."""
    return fast_daemon_env(
        base_url,
        sim.project_id,
        TOKEN,
        CBR_WATCHER_WATCH__TASK_FILE=str(task_file),
        CBR_WATCHER_WATCH__POLL_INTERVAL_MAX="0.3s",
        CBR_WATCHER_WEBHOOKS=json.dumps([{"name": "ops", "url": receiver_url}]),
        CBR_WATCHER_COVERAGE__ENABLED="true",
        CBR_WATCHER_COVERAGE__VAULT_IDS=json.dumps([COVERED_VAULT]),
    )


def stage_inventory(sim: Simulator) -> None:
    """A vault for coverage: a server with a backup and one without, under a daily policy."""
    sim.inventory.add_vaults(
        [
            VaultSpec(
                id=COVERED_VAULT,
                resources=(ResourceSpec(id="ecs-covered"), ResourceSpec(id="ecs-bare")),
            )
        ]
    )
    sim.inventory.add_backups([BackupSpec("ecs-covered", age=3600.0)])
    sim.add_policy(
        PolicySpec(
            id="p-lint", pattern=("FREQ=DAILY;BYHOUR=3;BYMINUTE=0",), vaults=(COVERED_VAULT,)
        )
    )


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Simulator, DaemonProcess, str, Path]]:
    """A simulator and a webhook receiver on real time, and a daemon watching a task file."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=5)
    stage_inventory(sim)
    task_file = tmp_path / "tasks.txt"
    task_file.write_text("")
    async with sim.running() as base_url, TestReceiver() as receiver:
        daemon = DaemonProcess(daemon_env(sim, base_url, task_file, receiver.url))
        async with daemon:
            url = await daemon.url("server.listening")
            yield sim, daemon, url, task_file
            await daemon.stop()


def watch(daemon: DaemonProcess, task_file: Path, sim: Simulator, *specs: SimTaskSpec) -> list[str]:
    """Create tasks in the simulator and make the daemon watch them (task file + SIGHUP)."""
    ids = sim.add_tasks(specs)
    with task_file.open("a") as handle:
        handle.writelines(f"{task_id}\n" for task_id in ids)
    daemon.hup()
    return ids


async def scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/metrics", headers={"Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        return await resp.text()


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def rules() -> list[dict[str, Any]]:
    """Every rule of the shipped rules file, alerting and recording."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the test extras have it)")
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def rule_expressions() -> list[str]:
    """The PromQL of every shipped rule."""
    return [rule["expr"] for rule in rules()]


def recorded_names() -> set[str]:
    """The series the recording rules make (Prometheus has them; a scrape does not)."""
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_expressions() -> list[str]:
    """Every PromQL query of the dashboard, panels and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
        for inner in panel.get("panels", []):
            exprs.extend(target["expr"] for target in inner.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match, query
            exprs.append(match.group(1))
    return exprs


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    """What `promtool args...` prints (stdout, then stderr); the test fails unless it exits 0."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args], input=stdin, cwd=cwd, capture_output=True, check=False
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    return output


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# ---- promtool -----------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    """The shipped alert rules are valid."""
    assert "SUCCESS" in promtool("check", "rules", str(ALERTS))


@needs_promtool
def test_promtool_test_rules() -> None:
    """Every alert has unit tests, and they pass."""
    promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    tests = ALERT_TESTS.read_text()
    alerts = re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), flags=re.MULTILINE)
    assert len(alerts) >= 7
    for alert in alerts:
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests), (
            f"{alert} has no test where it fires"
        )


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana variables filled in)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"cbr_watcher_dashboard:query_{n}", "expr": substitute(expr)}
                    for n, expr in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    promtool("check", "rules", str(path))


@needs_promtool
def test_promtool_finds_nothing_in_the_freshness_families() -> None:
    """`promtool check metrics` is silent on the per-resource families, label values that
    need escaping included (text 0.0.4, as promtool reads it)."""
    metrics = Metrics(clock=FakeClock(), process_metrics=False)
    names = ['quote"d', "back\\slash", "new\nline", "ünïcode ✓", "", "lone \udc80"]
    for n, name in enumerate(names):
        metrics.record_event(
            finished(
                f"t{n}",
                ("success", "failed")[n % 2],
                ended_minute=n,
                resource_name=name,
                resource_id=f"res-{n}",
            )
        )
    body, _ = metrics.render("")
    assert body.count(b"cbr_watcher_resource_last_status{") == len(names)
    assert promtool("check", "metrics", stdin=body) == ""


def test_metric_names_are_found_in_expressions() -> None:
    """The name extraction the live tests rely on."""
    expr = (
        'histogram_quantile(0.9, sum by (le, op) (rate(a_bucket{job=~"$job",x="b c"}'
        "[$__rate_interval]))) * on (job) group_left (v) b_info > 1e3 and c unless d offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_info", "c", "d"}


@needs_promtool
async def test_live_scrape_is_lint_clean_and_has_every_metric(
    live: tuple[Simulator, DaemonProcess, str, Path],
) -> None:
    """A daemon watching simulator tasks: `promtool check metrics` prints nothing, every
    documented metric is there with its type, and every name the rules and the dashboard read
    exists."""
    assert PROMTOOL is not None
    sim, daemon, url, task_file = live
    watch(
        daemon,
        task_file,
        sim,
        SimTaskSpec(id="lint-ok", waiting=0.1, running=0.5, vault_name='vault "prod"'),
        SimTaskSpec(
            id="lint-failed", operation_type="restore", outcome="failed", waiting=0.1, running=0.3
        ),
        SimTaskSpec(
            id="lint-running",
            operation_type="replication",
            waiting=0.1,
            running=3600,
            resource_name="ecs\\web\n01",
        ),
    )
    async with aiohttp.ClientSession() as session:
        text = ""

        async def settled() -> bool:
            nonlocal text
            text = await scrape(session, url)
            return (
                'cbr_watcher_tasks_finished_total{operation_type="backup",status="success"} 1.0'
                in text
                and 'cbr_watcher_tasks_finished_total{operation_type="restore",status="failed"} 1.0'
                in text
                and 'task_id="lint-running",status="running"} 1' in text
                and 'cbr_watcher_resource_never_backed_up{resource_id="ecs-bare"' in text
            )

        await eventually(settled, "both short tasks to finish and the long one to run")
    async with spawned(
        PROMTOOL,
        "check",
        "metrics",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as promtool:
        output, _ = await asyncio.wait_for(promtool.communicate(text.encode()), 60)
    assert promtool.returncode == 0, output.decode()
    assert output.decode() == ""

    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name, kind in DOCUMENTED_METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert families.get(family) == kind, (name, families.get(family))
    assert any(name.startswith("process_") for name in families)
    assert any(name.startswith("python_") for name in families)

    live_names = sample_names(text) | {"up"}
    used = {name for expr in rule_expressions() for name in metric_names(expr)}
    used |= {name for expr in dashboard_expressions() for name in metric_names(expr)}
    assert len(used) >= 20
    assert used - live_names - recorded_names() == set()
    assert recorded_names() <= used  # each recording rule is read by an alert

    # The freshness series of both finished tasks' resources, with every documented label.
    resources = {
        (s.name, s.labels["operation_type"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("cbr_watcher_resource_last_") and s.labels["vault_id"] != COVERED_VAULT
    }
    assert resources == {
        ("cbr_watcher_resource_last_status", "backup"): 1.0,
        ("cbr_watcher_resource_last_status", "restore"): 0.0,
        ("cbr_watcher_resource_last_success_timestamp_seconds", "backup"): pytest.approx(
            time.time(), abs=300
        ),
    }
    for resource_family in text_string_to_metric_families(text):
        if resource_family.name.startswith("cbr_watcher_resource_last_"):
            for s in resource_family.samples:
                assert set(s.labels) == {
                    "resource_id",
                    "resource_name",
                    "resource_type",
                    "vault_id",
                    "operation_type",
                }


# ---- a real Prometheus server -------------------------------------------------------------


class PrometheusServer:
    """`prometheus` on 127.0.0.1 with a temporary config and data directory, scraping
    `targets` as one job, "cbr-watcher"."""

    def __init__(self, tmp_path: Path, *targets: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "cbr-watcher", "static_configs": [{"targets": list(targets)}]}
                    ],
                }
            )
        )
        self.data = tmp_path / "prometheus-data"
        self.log = tmp_path / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert PROMETHEUS is not None
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # Ctrl-C skips stop(); the kernel still ends it
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with session.get(self.url + "/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def query_range(
        self, session: aiohttp.ClientSession, expr: str, start: float, end: float
    ) -> list[dict[str, Any]]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": "1"}
        async with session.get(self.url + "/api/v1/query_range", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@needs_prometheus
async def test_real_prometheus_scrapes_the_daemon(
    live: tuple[Simulator, DaemonProcess, str, Path], tmp_path: Path
) -> None:
    """Prometheus stores what the daemon exports: up, rising progress, the final status, the
    finished counter; the shipped rules evaluate cleanly; every dashboard query runs."""
    sim, daemon, url, task_file = live
    server = PrometheusServer(tmp_path, url.removeprefix("http://"))
    server.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert server.proc is not None
                if server.proc.poll() is not None:
                    pytest.fail("prometheus exited:\n" + server.log.read_text())
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(server.url + "/-/ready") as resp:
                        return resp.status == 200
                return False

            await eventually(ready, "Prometheus to be ready")

            async def up() -> bool:
                result = await server.query(session, 'up{job="cbr-watcher"} == 1')
                return len(result) == 1

            await eventually(up, "up == 1")

            started = time.time()
            backup, restore = watch(
                daemon,
                task_file,
                sim,
                SimTaskSpec(id="prom-backup", waiting=0.5, running=6, progress_exponent=1.0),
                SimTaskSpec(
                    id="prom-restore",
                    operation_type="restore",
                    outcome="failed",
                    waiting=0.5,
                    running=3,
                    progress_exponent=1.0,
                    stop_at=0.6,
                ),
            )

            async def finished() -> bool:
                success = await server.query(
                    session, f'cbr_watcher_task_status{{task_id="{backup}",status="success"}} == 1'
                )
                failed = await server.query(
                    session, f'cbr_watcher_task_status{{task_id="{restore}",status="failed"}} == 1'
                )
                return bool(success) and bool(failed)

            await eventually(finished, "Prometheus to store both final statuses")

            [progress] = await server.query_range(
                session,
                f'cbr_watcher_task_progress_ratio{{task_id="{backup}"}}',
                started,
                time.time(),
            )
            values = [float(v) for _, v in progress["values"]]
            assert values == sorted(values), values  # never goes backwards
            assert len(set(values)) >= 3, values  # seen rising, not only start and end
            [final] = await server.query(
                session, f'cbr_watcher_task_progress_ratio{{task_id="{backup}"}}'
            )
            assert float(final["value"][1]) == 1.0

            [running] = await server.query_range(
                session,
                f'cbr_watcher_task_status{{task_id="{backup}",status="running"}}',
                started,
                time.time(),
            )
            assert 1.0 in {float(v) for _, v in running["values"]}
            [now_running] = await server.query(
                session, f'cbr_watcher_task_status{{task_id="{backup}",status="running"}}'
            )
            assert float(now_running["value"][1]) == 0.0

            counts = {
                (r["metric"]["status"], r["metric"]["operation_type"]): float(r["value"][1])
                for r in await server.query(session, "cbr_watcher_tasks_finished_total > 0")
            }
            assert counts == {("success", "backup"): 1.0, ("failed", "restore"): 1.0}
            [info] = await server.query(session, f'cbr_watcher_task_info{{task_id="{backup}"}}')
            assert info["metric"]["operation_type"] == "backup"
            assert info["metric"]["job"] == "cbr-watcher"
            [last] = await server.query(
                session, 'cbr_watcher_last_success_timestamp_seconds{operation_type="backup"}'
            )
            assert float(last["value"][1]) >= started
            freshness = {
                r["metric"]["operation_type"]: float(r["value"][1])
                for r in await server.query(session, "cbr_watcher_resource_last_status")
            }
            assert freshness == {"backup": 1.0, "restore": 0.0}

            async def rules_evaluated() -> bool:
                async with session.get(server.url + "/api/v1/rules") as resp:
                    body = await resp.json()
                rules = [r for g in body["data"]["groups"] for r in g["rules"]]
                assert len(rules) >= 7
                bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
                assert bad == []
                return all(r["health"] == "ok" for r in rules)

            await eventually(rules_evaluated, "every alert rule to be evaluated")

            for expr in dashboard_expressions():
                await server.query(session, substitute(expr))  # asserts status "success"
    finally:
        server.stop()
