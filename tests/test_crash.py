"""Durability across kill -9: the daemon as a subprocess, a real receiver, one state file.

The daemon polls on real time, but the simulated tasks move only on the simulator's fake
clock: each one waits until the test has seen the daemon poll it, runs until the test has
seen the daemon notice, and only then ends. However slowly a loaded machine starts the
daemon, it sees every phase, so the events it must deliver are fixed.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.daemon_process import DaemonProcess, clean_env
from tests.support import TestReceiver, fake_clock_now
from watcher.sim import SimTaskSpec, Simulator
from watcher.state.sqlite import Store
from watcher.testing import FakeClock

TOKEN = "crash-test-token"
SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-of-32-bytes!!!").decode()


PHASE = 60.0
"""Fake seconds of each scripted phase; the fake clock jumps a whole phase at a time."""
QUICK = [("waiting", PHASE, 0), ("running", PHASE, 40), ("success", 0, 100)]
LONG = [("waiting", PHASE, 0), ("running", PHASE, 40)]
"""A task that, once running, stays at 40 % for ever: no progress events to race with."""


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator whose tasks move only when the test advances its fake clock."""
    sim = Simulator(fake_clock_now(), tokens=[TOKEN], seed=9)
    async with sim.running() as base_url:
        yield sim, base_url


def advance(sim: Simulator, seconds: float) -> None:
    """Move the simulator's tasks `seconds` along their timelines."""
    clock = sim.clock
    assert isinstance(clock, FakeClock)
    clock.advance(seconds)


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
    sim.add_task(SimTaskSpec(id="quick-a", phases=list(QUICK)))
    sim.add_task(SimTaskSpec(id="quick-b", phases=list(QUICK)))
    sim.add_task(SimTaskSpec(id="long-c", phases=list(LONG)))
    state = tmp_path / "state.db"
    ids = ("quick-a", "quick-b", "long-c")

    async with TestReceiver() as receiver:
        receiver.script = [200, "hang", *[503] * 1000]
        env = env_for(base_url, sim.project_id, state, receiver.url)
        async with DaemonProcess(env) as first:
            await first.ready()
            await first.wait_for(
                lambda: all(
                    first.logged("task.status_changed", task_id=t, status="waiting") for t in ids
                ),
                "every task seen waiting",
            )
            advance(sim, PHASE)
            await first.wait_for(
                lambda: all(
                    first.logged("task.status_changed", task_id=t, status="running") for t in ids
                ),
                "every task seen running",
            )
            advance(sim, PHASE)
            await first.wait_for(
                lambda: (
                    first.logged("task.status_changed", task_id="quick-a", status="success")
                    and first.logged("task.status_changed", task_id="quick-b", status="success")
                ),
                "both quick tasks to end",
            )
            await first.wait_for(
                lambda: first.logged("webhook.delivered"), "one acknowledged event"
            )
            await first.wait_for(
                lambda: any(hook.answered is None for hook in receiver.received),
                "a delivery in flight",
            )
            await first.wait_for(
                lambda: any(hook.answered == 503 for hook in receiver.received),
                "a failed attempt",
            )
            assert await first.kill(signal.SIGKILL) == -signal.SIGKILL

        acknowledged = {h.headers["webhook-id"] for h in receiver.delivered}
        assert len(acknowledged) == 1
        polls_after_kill = {t: sim.request_count(t) for t in ids}
        in_phase_one = len(receiver.received)
        receiver.script = []

        async with DaemonProcess(env) as second:
            # The last success comes back from the state file: nothing in this run succeeded.
            metrics_url = await second.ready()
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
            assert await second.kill(signal.SIGTERM) == 0, second.stderr

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
