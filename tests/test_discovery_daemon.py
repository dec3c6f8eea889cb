"""Discovery in the real daemon: policy-started backups nobody named are watched, survive a
restart on the same state file without being announced twice, and feed per-resource metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_process import DaemonProcess, clean_env
from tests.support import TestReceiver
from watcher.clock import RealClock
from watcher.sim import PolicySpec, Simulator

TOKEN = "discovery-token"


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=9)
    async with sim.running() as base_url:
        yield sim, base_url


def env_for(sim: Simulator, base_url: str, state: Path, hook_url: str) -> dict[str, str]:
    return clean_env(
        CBR_WATCHER_WEBHOOKS=json.dumps([{"name": "ops", "url": hook_url}]),
        CBR_WATCHER_CBR__ENDPOINT=base_url,
        CBR_WATCHER_CBR__PROJECT_ID=sim.project_id,
        CBR_WATCHER_AUTH__TOKEN=TOKEN,
        CBR_WATCHER_WATCH__POLL_INTERVAL_MIN="0.1s",
        CBR_WATCHER_WATCH__POLL_INTERVAL_MAX="0.4s",
        CBR_WATCHER_WATCH__DISCOVER_INTERVAL="0.3s",
        CBR_WATCHER_WATCH__DISCOVER=json.dumps(
            [{"operation_type": ["backup"], "labels": {"found_by": "policy-scan"}}]
        ),
        CBR_WATCHER_LOG__FORMAT="json",
        CBR_WATCHER_STATE__PATH=str(state),
        CBR_WATCHER_SERVER__LISTEN="127.0.0.1:0",
        CBR_WATCHER_SERVER__API_LISTEN="",
    )


def finals(daemon: DaemonProcess) -> dict[str, str]:
    return {
        line["task_id"]: line["status"]
        for line in daemon.lines
        if line.get("event") == "task.status_changed" and line.get("final")
    }


async def test_policy_backups_are_discovered_and_not_announced_again_after_restart(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    sim, base_url = live_sim
    sim.add_policy(
        PolicySpec(resources=3, every=3600.0, duration=0.6, duration_sigma=0.0, waiting=0.1)
    )
    state = tmp_path / "state.db"
    receiver = TestReceiver()
    async with receiver, DaemonProcess(env_for(sim, base_url, state, receiver.url)) as daemon:
        await daemon.ready()
        await daemon.wait_for(lambda: len(finals(daemon)) == 3, "three discovered backups ending")
        watched = [line for line in daemon.lines if line.get("event") == "task.watching"]
        assert {line["source"] for line in watched} == {"discover"}
        assert set(finals(daemon).values()) == {"success"}
        await daemon.wait_for(
            lambda: succeeded_hooks(receiver) == set(finals(daemon)), "the succeeded webhooks"
        )
        await daemon.stop()
        first = finals(daemon)
        delivered_first = len(receiver.delivered)

        lists_before = _lists(sim)
        again = DaemonProcess(env_for(sim, base_url, state, receiver.url))
        await again.start()
        try:
            url = await again.ready()
            # Two full looks (each lists created-since-cursor, running and waiting at least).
            await again.wait_for(lambda: _lists(sim) >= lists_before + 6, "two discovery looks")
            async with aiohttp.ClientSession() as http:
                text = await (await http.get(f"{url}/metrics")).text()
            await again.stop()
        finally:
            await again.close()
    # One webhook per event across both runs: none re-sent after the restart.
    ids = [hook.headers["webhook-id"] for hook in receiver.delivered]
    assert len(ids) == len(set(ids)) == delivered_first
    # Nothing announced twice: the restart watched none of the tasks the first run reported.
    assert not any(
        line.get("event") == "task.watching" and line.get("task_id") in first
        for line in again.lines
    )
    statuses = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cbr_watcher_resource_last_status"
    ]
    # Restored from the state file: the three resources' last backups succeeded.
    assert len(statuses) == 3, text
    assert {sample.value for sample in statuses} == {1.0}
    assert {sample.labels["operation_type"] for sample in statuses} == {"backup"}


def succeeded_hooks(receiver: TestReceiver) -> set[str]:
    bodies = [json.loads(hook.body) for hook in receiver.delivered]
    return {body["data"]["task_id"] for body in bodies if body["type"] == "task.succeeded"}


def _lists(sim: Simulator) -> int:
    return sum(1 for entry in sim.request_log if entry.task_id is None)
