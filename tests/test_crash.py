"""Durability across kill -9: the daemon as a subprocess, a real receiver, one state file."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.daemon_process import DaemonProcess, clean_env
from tests.support import TestReceiver
from watcher.clock import RealClock
from watcher.sim import SimTaskSpec, Simulator
from watcher.store import Store

TOKEN = "crash-test-token"
SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-of-32-bytes!!!").decode()


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=9)
    async with sim.running() as base_url:
        yield sim, base_url


def env_for(base_url: str, project_id: str, state: Path, receiver_url: str) -> dict[str, str]:
    """A daemon configuration: fast polling, one signed receiver, a state file."""
    return clean_env(
        **{
            "CBR_WATCHER_CBR__ENDPOINT": base_url,
            "CBR_WATCHER_CBR__PROJECT_ID": project_id,
            "CBR_WATCHER_AUTH__TOKEN": TOKEN,
            "CBR_WATCHER_WATCH__TASKS": json.dumps(["quick-a", "quick-b", "long-c"]),
            "CBR_WATCHER_WATCH__POLL_INTERVAL_MIN": "0.1s",
            "CBR_WATCHER_WATCH__POLL_INTERVAL_MAX": "0.3s",
            "CBR_WATCHER_STATE__PATH": str(state),
            "CBR_WATCHER_SERVER__LISTEN": "127.0.0.1:0",
            "CBR_WATCHER_SERVER__API_LISTEN": "127.0.0.1:0",
            "CBR_WATCHER_WEBHOOKS": json.dumps(
                [{"name": "ops", "url": receiver_url, "secret": SECRET, "timeout": "1h"}]
            ),
            "CBR_WATCHER_LOG__FORMAT": "json",
            "CBR_WATCHER_LOG__LEVEL": "debug",
        }
    )


async def test_kill_9_loses_nothing_and_resends_nothing_acknowledged(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """SIGKILL with events queued and one delivery in flight; restart on the same state file."""
    sim, base_url = live_sim
    sim.add_task(SimTaskSpec(id="quick-a", waiting=0.1, running=0.5))
    sim.add_task(SimTaskSpec(id="quick-b", waiting=0.1, running=0.8))
    sim.add_task(SimTaskSpec(id="long-c", waiting=0.1, running=3600))
    state = tmp_path / "state.db"

    async with TestReceiver() as receiver:
        receiver.script = [200, "hang", *[503] * 1000]
        env = env_for(base_url, sim.project_id, state, receiver.url)
        first = DaemonProcess(env)
        await first.start()
        await first.wait_for(
            lambda: (
                first.logged("task.status_changed", task_id="quick-a", status="success")
                and first.logged("task.status_changed", task_id="quick-b", status="success")
            ),
            "both quick tasks to end",
        )
        await first.wait_for(lambda: first.logged("webhook.delivered"), "one acknowledged event")
        await first.wait_for(
            lambda: any(hook.answered is None for hook in receiver.received),
            "a delivery in flight",
        )
        await first.wait_for(
            lambda: any(hook.answered == 503 for hook in receiver.received), "a failed attempt"
        )
        assert await first.kill(signal.SIGKILL) == -signal.SIGKILL

        acknowledged = {h.headers["webhook-id"] for h in receiver.delivered}
        assert len(acknowledged) == 1
        polls_after_kill = {t: sim.request_count(t) for t in ("quick-a", "quick-b", "long-c")}
        in_phase_one = len(receiver.received)
        receiver.script = []

        second = DaemonProcess(env)
        await second.start()
        # The last success comes back from the state file: nothing in this run succeeded yet.
        metrics_url = await second.url("server.listening")
        async with aiohttp.ClientSession() as http:
            exposition = await (await http.get(f"{metrics_url}/metrics")).text()
        series = 'cbr_watcher_last_success_timestamp_seconds{operation_type="backup"}'
        [last_success] = [line for line in exposition.splitlines() if line.startswith(series)]
        assert float(last_success.split()[-1]) > 0
        expected_types = {
            "quick-a": {"task.started", "task.succeeded"},
            "quick-b": {"task.started", "task.succeeded"},
            "long-c": {"task.started"},
        }

        def delivered_types() -> dict[str, set[str]]:
            seen: dict[str, set[str]] = {}
            for hook in receiver.delivered:
                body = json.loads(hook.body)
                seen.setdefault(body["data"]["task_id"], set()).add(body["type"])
            return seen

        await second.wait_for(lambda: delivered_types() == expected_types, "every event")
        await second.wait_for(
            lambda: sim.request_count("long-c") > polls_after_kill["long-c"], "long-c resumed"
        )
        assert await second.kill(signal.SIGTERM) == 0

    # Everything arrived at least once, and the acknowledged event never came again.
    resent = [h.headers["webhook-id"] for h in receiver.received[in_phase_one:]]
    assert not acknowledged & set(resent)
    # Ended tasks were not watched again; the unfinished one was resumed, not restarted.
    assert sim.request_count("quick-a") == polls_after_kill["quick-a"]
    assert sim.request_count("quick-b") == polls_after_kill["quick-b"]
    assert second.logged("task.resumed", task_id="long-c")
    assert not second.logged("task.watching", task_id="quick-a")
    # Nothing is left behind in the outbox.
    store = await Store.open(str(state))
    try:
        assert await store.queue_depths() == {}
        assert await store.dead_letters() == []
    finally:
        await store.close()
