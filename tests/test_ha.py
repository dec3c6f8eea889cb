"""High availability the Prometheus way (docs/high-availability.md): identical replicas, one effect.

- The shipped alert rules are tested with two replicas, and every alert but the one about a
  single replica comes out without the labels that tell replicas apart.
- The dashboard aggregates across replicas.
- The demo receiver acts once per `webhook-id`.
- End to end: two `cbr-watcher run` processes, one simulator, one deduplicating receiver; one
  replica is killed with SIGKILL mid-run and later restarted on its state file.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml  # type: ignore[import-untyped]

from watcher.clock import RealClock
from watcher.demo_receiver import DemoReceiver
from watcher.signing import sign, split_secrets

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.test.yml"
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
                "webhook-signature": sign(split_secrets(secret), webhook_id, now, body),
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
