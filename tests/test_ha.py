"""High availability the Prometheus way (docs/high-availability.md): identical replicas, one effect.

- The shipped alert rules are tested with two replicas, and every alert but the one about a
  single replica comes out without the labels that tell replicas apart.
- The dashboard aggregates across replicas.
- The demo receiver acts once per `webhook-id`.
- End to end: two `cbr-watcher run` processes, one simulator, one deduplicating receiver; one
  replica is killed with SIGKILL mid-run and later restarted on its state file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_process import DaemonProcess, fast_daemon_env
from tests.support import fake_clock_now
from tests.test_prometheus import (
    DASHBOARD,
    PROMTOOL,
    PrometheusServer,
    eventually,
    needs_prometheus,
    needs_promtool,
    substitute,
)
from watcher.clock import RealClock
from watcher.delivery.receiver import DemoReceiver, ReceivedWebhook
from watcher.delivery.signing import parse_whsec, sign
from watcher.sim import SimTaskSpec, Simulator
from watcher.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.test.yml"
PROMETHEUS_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus-ha.example.yml"
DOC = ROOT / "docs" / "high-availability.md"
REPLICA_LABELS = {"instance", "pod"}
"""What tells two replicas of one job apart; every rule aggregates these away."""
ABOUT_ONE_REPLICA = {"CbrWatcherReplicaDown"}
"""The alerts that are about one replica, and name it."""


# ---- the alert rules ------------------------------------------------------------------------


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alerting rule of the shipped rules file, by name."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def rule_tests() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(test group, alert_rule_test) for every alert test of the promtool test file."""
    document = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    for group in document["tests"]:
        for case in group.get("alert_rule_test", []):
            yield group, case


def instances(group: dict[str, Any]) -> set[tuple[str, str]]:
    """The (job, instance) pairs of a test group's input series."""
    found = set()
    for item in group["input_series"]:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', item["series"]))
        if "instance" in labels:
            found.add((labels.get("job", ""), labels["instance"]))
    return found


def test_every_alert_fires_once_for_two_replicas() -> None:
    """For every shipped alert, a promtool test with series from two replicas of one job
    expects it to fire, and (but for the alert about one replica) without instance or pod:
    promtool compares the exact list, so two replicas raising it twice would fail there."""
    checked = set()
    for group, case in rule_tests():
        jobs = [job for job, _ in instances(group)]
        two_replicas = any(jobs.count(job) >= 2 for job in jobs)
        if not (two_replicas and case["exp_alerts"]):
            continue
        for alert in case["exp_alerts"]:
            labels = set(alert["exp_labels"])
            if case["alertname"] in ABOUT_ONE_REPLICA:
                assert "instance" in labels, (group["name"], case["alertname"])
            else:
                assert not labels & REPLICA_LABELS, (group["name"], case["alertname"])
        checked.add(case["alertname"])
    assert checked == set(alert_rules())


def test_every_rule_aggregates_the_replica_labels_away() -> None:
    """Each alert's expression either aggregates without instance and pod, or looks at all
    replicas at once with absent(); the one about a single replica compares against its job."""
    for name, rule in alert_rules().items():
        expr = " ".join(rule["expr"].split())
        if name in ABOUT_ONE_REPLICA:
            assert "unless on (job)" in expr, name
        elif not expr.startswith("absent("):
            assert re.search(r"\b(?:max|min) without \(instance, pod\)", expr), name
        for template in rule.get("annotations", {}).values():
            if name not in ABOUT_ONE_REPLICA:
                assert "$labels.instance" not in template, name
                assert "$labels.pod" not in template, name


@needs_promtool
def test_prometheus_example_scrapes_both_replicas_as_one_job() -> None:
    """The example configuration for two hosts is valid (`promtool check config`, which also
    checks the rules file it loads), and scrapes both replicas under one job whose name the
    watcher-down alerts match, with no label that would tell the replicas apart."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", PROMETHEUS_EXAMPLE.name],
        cwd=PROMETHEUS_EXAMPLE.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert "cbr-watcher" in job["job_name"]
    (static,) = job["static_configs"]
    assert len(static["targets"]) == 2
    assert "labels" not in static
    assert [ALERTS.name] == config["rule_files"]


# ---- the documentation ----------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_doc_links_stay_in_the_documentation_and_its_code_parses() -> None:
    """docs/high-availability.md links only to its own headings and to the documentation's
    other pages (`bash .ci/docs` checks their anchors); every repository file it names
    exists; its Python example parses."""
    text = DOC.read_text(encoding="utf-8")
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        page, _, anchor = link.partition("#")
        if page:
            assert "/" not in page, link
            assert (DOC.parent / page).is_file(), link
        else:
            assert anchor in anchors, link
    for path in re.findall(r"`((?:deploy|systemd|watcher|tests)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        compile(block, str(DOC), "exec")


# ---- the demo receiver ----------------------------------------------------------------------


async def test_demo_receiver_acts_once_per_webhook_id() -> None:
    """A second verified copy of an ID is acknowledged (2xx, so its sender stops) and counted
    as a duplicate; a copy with a bad signature is refused and cannot claim the ID first."""
    async with DemoReceiver(RealClock()) as receiver, aiohttp.ClientSession() as http:

        async def post(webhook_id: str, body: bytes, *, secret: str) -> int:
            now = int(time.time())
            headers = {
                "webhook-id": webhook_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sign(parse_whsec(secret), webhook_id, now, body),
            }
            async with http.post(receiver.url, data=body, headers=headers) as response:
                return response.status

        body = b'{"type":"task.succeeded","data":{"task_id":"t-1"}}'
        forger = "whsec_" + base64.b64encode(b"not the receiver's secret").decode()
        assert await post("evt_1", b'{"type":"forged"}', secret=forger) == 401
        assert await post("evt_1", body, secret=receiver.secret) == 204
        assert await post("evt_1", body, secret=receiver.secret) == 204
        assert await post("evt_2", body, secret=receiver.secret) == 204
    assert receiver.first == {"evt_1": body, "evt_2": body}
    assert receiver.duplicates == 1
    assert [(hook.webhook_id, hook.verified, hook.duplicate) for hook in receiver.received] == [
        ("evt_1", False, False),
        ("evt_1", True, False),
        ("evt_1", True, True),
        ("evt_2", True, False),
    ]


# ---- two replicas, end to end ---------------------------------------------------------------

TOKEN = "ha-test-token"
PHASE = 60.0
"""Fake seconds of each scripted phase; the simulator's clock jumps a whole phase at a time,
and only once every live replica has seen the previous one, so what each replica observes is
fixed however slowly a loaded machine runs it."""
TASKS: dict[str, list[tuple[str, float, int | None]]] = {
    # These end while both replicas run.
    "ha-ok-1": [("waiting", PHASE, 0), ("running", PHASE, 40), ("success", 0, 100)],
    "ha-fail-1": [("waiting", PHASE, 0), ("running", PHASE, 40), ("failed", 0, 40)],
    # These end after one replica was killed.
    "ha-ok-2": [("waiting", PHASE, 0), ("running", 2 * PHASE, 40), ("success", 0, 100)],
    "ha-timeout-2": [("waiting", PHASE, 0), ("running", 2 * PHASE, 40), ("timeout", 0, 40)],
    "ha-skip-2": [("waiting", 3 * PHASE, 0), ("skipped", 0, 0)],
    # This one runs on.
    "ha-long": [("waiting", PHASE, 0), ("running", PHASE, 40)],
}
MISSING = "ha-typo-0O11"
"""Named but not in the simulator: each replica gives up on it (watch.not_found)."""
BEFORE_KILL = {
    ("ha-ok-1", "task.started"),
    ("ha-ok-1", "task.succeeded"),
    ("ha-fail-1", "task.started"),
    ("ha-fail-1", "task.failed"),
    ("ha-ok-2", "task.started"),
    ("ha-timeout-2", "task.started"),
    ("ha-long", "task.started"),
    (MISSING, "watch.not_found"),
}
AFTER_KILL = {
    ("ha-ok-2", "task.succeeded"),
    ("ha-timeout-2", "task.timed_out"),
    ("ha-skip-2", "task.skipped"),
}
SAME_ON_EVERY_REPLICA = (
    "cbr_watcher_task_progress_ratio",
    "cbr_watcher_task_status",
    "cbr_watcher_task_info",
    "cbr_watcher_task_started_timestamp_seconds",
    "cbr_watcher_resource_last_success_timestamp_seconds",
    "cbr_watcher_resource_last_status",
    "cbr_watcher_last_success_timestamp_seconds",
)
"""Per-task and per-resource series (and the last success), all read from CBR's answers.
Not compared, as documented: cbr_watcher_task_last_progress_timestamp_seconds and
cbr_watcher_task_estimated_end_timestamp_seconds (when each replica noticed a change, and
its estimate from that), and every counter of a replica's own work."""


def advance(sim: Simulator, seconds: float) -> None:
    """Move the simulator's tasks `seconds` along their timelines."""
    clock = sim.clock
    assert isinstance(clock, FakeClock)
    clock.advance(seconds)


def replica_env(
    base_url: str, sim: Simulator, state: Path, receiver: DemoReceiver, task_ids: Iterable[str]
) -> dict[str, str]:
    """One replica: the same configuration for all, only the state file differs."""
    return fast_daemon_env(
        base_url,
        sim.project_id,
        TOKEN,
        CBR_WATCHER_WATCH__TASKS=json.dumps(list(task_ids)),
        CBR_WATCHER_STATE__PATH=str(state),
        CBR_WATCHER_WEBHOOKS=json.dumps(
            [{"name": "ops", "url": receiver.url, "secret": receiver.secret, "timeout": "1h"}]
        ),
        CBR_WATCHER_LOG__LEVEL="debug",  # webhook.delivered, with its event_id
    )


async def every(
    daemons: Iterable[DaemonProcess], condition: Callable[[DaemonProcess], bool], what: str
) -> None:
    """Wait until `condition` holds for each daemon."""
    for daemon in daemons:
        await daemon.wait_for(lambda daemon=daemon: condition(daemon), what)  # type: ignore[misc]


def saw_status(task_ids: Iterable[str], status: str) -> Callable[[DaemonProcess], bool]:
    """Whether a daemon logged each task's change to `status`."""
    ids = list(task_ids)
    return lambda daemon: all(
        daemon.logged("task.status_changed", task_id=task_id, status=status) for task_id in ids
    )


def delivered(webhook_ids: Iterable[str]) -> Callable[[DaemonProcess], bool]:
    """Whether a daemon logged the acknowledged delivery of each of these events."""
    wanted = set(webhook_ids)
    return lambda daemon: (
        wanted
        <= {
            line.get("event_id")
            for line in daemon.lines
            if line.get("event") == "webhook.delivered"
        }
    )


def ids_of(receiver: DemoReceiver, events: set[tuple[str, str]]) -> set[str]:
    """The webhook-ids under which `events` ((task ID, type) pairs) arrived."""
    return {
        hook.webhook_id
        for hook in receiver.received
        if hook.verified and (hook.task_id, hook.event_type) in events
    }


def arrived(receiver: DemoReceiver) -> set[tuple[str | None, str]]:
    """The (task ID, type) of every event the receiver accepted."""
    return {(hook.task_id, hook.event_type) for hook in receiver.received if hook.verified}


async def replica_view(http: aiohttp.ClientSession, url: str) -> dict[tuple[Any, ...], float]:
    """The series of SAME_ON_EVERY_REPLICA in one replica's /metrics."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in SAME_ON_EVERY_REPLICA
    }


def task_id_of(key: tuple[Any, ...]) -> str | None:
    """The task_id label of a view's key, if it has one."""
    return next((value for label, value in key[1:] if label == "task_id"), None)


async def same_views(
    http: aiohttp.ClientSession, one: str, other: str, *, tasks: set[str] | None = None
) -> dict[tuple[Any, ...], float]:
    """Wait until two replicas export the same values (per-task series only of `tasks`, when
    given), and return them; fail with the difference if they never do."""

    def comparable(view: dict[tuple[Any, ...], float]) -> dict[tuple[Any, ...], float]:
        return {
            key: value
            for key, value in view.items()
            if tasks is None or task_id_of(key) in (None, *tasks)
        }

    deadline = time.monotonic() + 60
    while True:
        mine = comparable(await replica_view(http, one))
        theirs = comparable(await replica_view(http, other))
        if mine == theirs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert mine == theirs
    return mine


def without_timestamp(body: bytes) -> str:
    """A body with its top-level `timestamp` left out, as canonical JSON."""
    payload: dict[str, Any] = json.loads(body)
    payload.pop("timestamp")
    return json.dumps(payload, sort_keys=True)


async def test_two_replicas_one_receiver_every_event_once_per_id(tmp_path: Path) -> None:
    """Two `cbr-watcher run` replicas with their own state files watch the same tasks and
    send to one receiver that deduplicates by webhook-id. Every event arrives; all copies of
    one ID are byte-identical (watch.* events differ in `timestamp` only, as documented);
    /metrics of both agree on every task. Replica b is killed with SIGKILL mid-run: every
    later event still arrives, once per ID, from a alone; b, restarted on its state file,
    catches up, and its late copies are byte-identical duplicates."""
    began = time.monotonic()
    sim = Simulator(fake_clock_now(), tokens=[TOKEN], seed=23)
    for task_id, steps in TASKS.items():
        sim.add_task(SimTaskSpec(id=task_id, phases=list(steps)))
    running = [task_id for task_id, steps in TASKS.items() if steps[1][0] == "running"]
    async with (
        sim.running() as base_url,
        DemoReceiver(RealClock()) as receiver,
        aiohttp.ClientSession() as http,
    ):
        named = [*TASKS, MISSING]
        env_a = replica_env(base_url, sim, tmp_path / "a.db", receiver, named)
        env_b = replica_env(base_url, sim, tmp_path / "b.db", receiver, named)
        async with DaemonProcess(env_a) as a:
            async with DaemonProcess(env_b) as b:
                url_a, url_b = await a.ready(), await b.ready()
                both = (a, b)
                await every(both, saw_status(TASKS, "waiting"), "every task seen waiting")
                advance(sim, PHASE)
                await every(both, saw_status(running, "running"), "the tasks seen running")
                advance(sim, PHASE)
                await every(both, saw_status(["ha-ok-1"], "success"), "ha-ok-1 seen ended")
                await every(both, saw_status(["ha-fail-1"], "failed"), "ha-fail-1 seen ended")
                await a.wait_for(lambda: arrived(receiver) >= BEFORE_KILL, "every event so far")
                await every(both, delivered(ids_of(receiver, BEFORE_KILL)), "both delivered")
                view = await same_views(http, url_a, url_b)
                assert {task_id_of(key) for key in view} == {None, *TASKS, MISSING}
                assert await b.kill(signal.SIGKILL) == -signal.SIGKILL

            # b is gone with tasks mid-run; a alone sees them end.
            advance(sim, PHASE)
            await a.wait_for(lambda: arrived(receiver) >= AFTER_KILL, "the rest")
            late = ids_of(receiver, AFTER_KILL)
            await a.wait_for(lambda: delivered(late)(a), "a's deliveries of the rest")
            assert len(late) == len(AFTER_KILL)
            assert sorted(
                h.webhook_id for h in receiver.received if h.webhook_id in late
            ) == sorted(late)  # one copy each, from a

            # b comes back on its state file, resumes its unfinished watches and catches up.
            async with DaemonProcess(env_b) as b_again:
                url_b = await b_again.ready()
                await b_again.wait_for(lambda: delivered(late)(b_again), "b's late copies")
                ended_late = {task_id for task_id, _ in AFTER_KILL}
                await same_views(http, url_a, url_b, tasks=ended_late | {"ha-long"})
                await b_again.stop()
            await a.stop()

    elapsed = time.monotonic() - began
    copies: dict[str, list[ReceivedWebhook]] = {}
    for hook in receiver.received:
        assert hook.verified, hook.problem
        copies.setdefault(hook.webhook_id, []).append(hook)
    assert arrived(receiver) == BEFORE_KILL | AFTER_KILL
    assert set(copies) == set(receiver.first)
    for webhook_id, hooks in copies.items():
        event_type = hooks[0].event_type
        assert len(hooks) == 2, (webhook_id, event_type)  # one copy from each replica
        assert [hook.duplicate for hook in hooks] == [False, True]
        if event_type.startswith("watch."):
            # No CBR time of its own: each replica stamps when it gave up (documented).
            assert len({without_timestamp(hook.body) for hook in hooks}) == 1, webhook_id
        else:
            assert {hook.body for hook in hooks} == {receiver.first[webhook_id]}, event_type
    print(
        f"\nHA: {len(copies)} events, {len(receiver.received)} deliveries, "
        f"{receiver.duplicates} duplicates, {elapsed:.1f} s"
    )


# ---- a real Prometheus scraping two replicas ------------------------------------------------

PROM_TASKS: dict[str, list[tuple[str, float, int | None]]] = {
    "prom-fail": [("waiting", PHASE, 0), ("running", PHASE, 40), ("failed", 0, 40)],
    "prom-long": [("waiting", PHASE, 0), ("running", PHASE, 40)],
}


def dashboard_targets() -> Iterator[tuple[str, str, str]]:
    """(panel title, query, legend) of every query of the dashboard's panels."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
    for panel in panels:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")


class Prom:
    """Queries against a PrometheusServer that fail the test if the server died."""

    def __init__(self, server: PrometheusServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr`."""
        return await self.server.query(self.http, expr)

    async def count(self, expr: str) -> int:
        """How many series `expr` returns now; -1 while the server does not listen yet."""
        proc = self.server.proc
        assert proc is not None
        if proc.poll() is not None:
            pytest.fail("prometheus exited:\n" + self.server.log.read_text())
        try:
            return len(await self.query(expr))
        except aiohttp.ClientError:
            return -1

    async def until_count(self, expr: str, wanted: int, what: str) -> None:
        """Wait until `expr` returns `wanted` series."""

        async def reached() -> bool:
            return await self.count(expr) == wanted

        await eventually(reached, what)

    async def firing(self, alertname: str) -> list[dict[str, str]]:
        """The label sets of the firing alerts named `alertname`."""
        found = await self.query(f'ALERTS{{alertname="{alertname}",alertstate="firing"}}')
        return [item["metric"] for item in found]


async def check_dashboard(prom: Prom) -> None:
    """Every panel query aggregates the replicas away (the Watcher row's show each one, on
    purpose): no instance label, one series per task; the in-flight task and the failure are
    counted once, not once per replica."""
    for title, expr, legend in dashboard_targets():
        result = await prom.query(substitute(expr))
        if "{{instance}}" in legend:
            assert all("instance" in item["metric"] for item in result), title
            assert len(result) <= 2, (title, result)
            continue
        assert all("instance" not in item["metric"] for item in result), title
        task_ids = [item["metric"]["task_id"] for item in result if "task_id" in item["metric"]]
        assert len(task_ids) == len(set(task_ids)), (title, task_ids)
        if title == "In-flight tasks":
            [in_flight] = result
            assert float(in_flight["value"][1]) == 1.0  # prom-long
        if title.startswith("Failed or timed out"):
            [failures] = result
            assert 0.9 < float(failures["value"][1]) < 1.3  # increase() extrapolates a little


@needs_prometheus
async def test_prometheus_sees_two_replicas_as_one_watcher(tmp_path: Path) -> None:
    """Prometheus scrapes two replicas as one job with the shipped rules and the dashboard's
    queries: a failed backup raises CbrTaskFailed and CbrBackupLastFailed once each, without
    instance; every panel but the Watcher row's per-replica ones comes without instance, one
    series per task, nothing counted twice. Killing one replica changes no alert."""
    sim = Simulator(fake_clock_now(), tokens=[TOKEN], seed=29)
    for task_id, steps in PROM_TASKS.items():
        sim.add_task(SimTaskSpec(id=task_id, phases=list(steps)))
    async with (
        sim.running() as base_url,
        DemoReceiver(RealClock()) as receiver,
        aiohttp.ClientSession() as http,
    ):
        env_a = replica_env(base_url, sim, tmp_path / "a.db", receiver, PROM_TASKS)
        env_b = replica_env(base_url, sim, tmp_path / "b.db", receiver, PROM_TASKS)
        async with DaemonProcess(env_a) as a, DaemonProcess(env_b) as b:
            url_a, url_b = await a.ready(), await b.ready()
            target_b = url_b.removeprefix("http://")
            server = PrometheusServer(tmp_path, url_a.removeprefix("http://"), target_b)
            server.start()
            prom = Prom(server, http)
            try:
                both = (a, b)
                await every(both, saw_status(PROM_TASKS, "waiting"), "both tasks seen waiting")
                advance(sim, PHASE)
                await every(both, saw_status(PROM_TASKS, "running"), "both tasks seen running")
                running = 'cbr_watcher_task_status{status="running"} == 1'
                await prom.until_count(running, 4, "both replicas' running tasks scraped")
                # Ten samples of the failure counter at 0 first: increase() then sees it move,
                # and extrapolates it by at most about a tenth, so that 2 (a failure counted
                # once per replica) cannot pass for 1.
                before = (
                    "count_over_time(cbr_watcher_tasks_finished_total"
                    '{status="failed",operation_type="backup"}[1m]) >= 10'
                )
                await prom.until_count(before, 2, "ten scrapes of both replicas")
                advance(sim, PHASE)
                await every(both, saw_status(["prom-fail"], "failed"), "the failure seen")
                failed = 'cbr_watcher_task_status{status="failed"} == 1'
                await prom.until_count(failed, 2, "both replicas' failure scraped")
                for alertname in ("CbrTaskFailed", "CbrBackupLastFailed"):
                    await prom.until_count(
                        f'ALERTS{{alertname="{alertname}",alertstate="firing"}}', 1, alertname
                    )
                [task_failed] = await prom.firing("CbrTaskFailed")
                [last_failed] = await prom.firing("CbrBackupLastFailed")
                assert task_failed["task_id"] == "prom-fail"
                assert last_failed["operation_type"] == "backup"
                for alert in (task_failed, last_failed):
                    assert alert["job"] == "cbr-watcher"
                    assert "instance" not in alert
                await check_dashboard(prom)

                # One replica dies: the alerts stay the same ones, with the same labels.
                assert await b.kill(signal.SIGKILL) == -signal.SIGKILL
                b_down = f'up{{instance="{target_b}"}} == 0'
                await prom.until_count(b_down, 1, "Prometheus to see replica b down")
                await prom.until_count(failed, 1, "b's series to go stale")
                assert await prom.firing("CbrTaskFailed") == [task_failed]
                assert await prom.firing("CbrBackupLastFailed") == [last_failed]
            finally:
                server.stop()
