"""The task API: in-process for the HTTP contract, and end to end through a real daemon."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.daemon_process import DaemonProcess
from tests.support import TestReceiver, World, make_engine
from tests.test_crash import env_for
from watcher.clock import RealClock
from watcher.sim import SimTaskSpec, Simulator
from watcher.store import Store
from watcher.task_api import make_task_api

API_TOKEN = "api-token-for-tests"


@pytest.fixture
async def api(world: World) -> AsyncIterator[tuple[str, Store, World]]:
    """The task API over an engine on the world's fake clock, served on a real socket."""
    store = await Store.open(":memory:")
    engine = make_engine(world)
    runner = web.AppRunner(make_task_api(engine, store, api_token=API_TOKEN), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    world.engine = engine  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", store, world
    finally:
        await runner.cleanup()
        await store.close()


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_put_is_idempotent_and_persisted(api: tuple[str, Store, World]) -> None:
    """PUT creates (201), repeats (200), replaces labels, and the row is in the store at once."""
    url, store, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        first = await http.put(f"{url}/v1/tasks/t-1", json={"labels": {"team": "db"}})
        assert first.status == 201
        assert (await first.json())["labels"] == {"team": "db"}
        again = await http.put(f"{url}/v1/tasks/t-1")
        assert again.status == 200
        relabel = await http.put(f"{url}/v1/tasks/t-1", json={"labels": {"team": "web"}})
        assert (await relabel.json())["labels"] == {"team": "web"}
        listing = await (await http.get(f"{url}/v1/tasks")).json()
        assert [t["task_id"] for t in listing["tasks"]] == ["t-1"]
        one = await http.get(f"{url}/v1/tasks/t-1")
        assert (await one.json())["watching"] is True
    stored = await store.load_tasks()
    assert [(r.task_id, r.labels, r.source) for r in stored] == [("t-1", {"team": "web"}, "api")]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/v1/tasks/bad%2Fid", None, 400, "invalid_task_id"),
        ("PUT", "/v1/tasks/-dash", None, 400, "invalid_task_id"),
        ("GET", "/v1/tasks/" + "x" * 129, None, 400, "invalid_task_id"),
        ("PUT", "/v1/tasks/ok", b"not json", 400, "invalid_body"),
        ("PUT", "/v1/tasks/ok", b'{"labels": ["a"]}', 400, "invalid_labels"),
        ("PUT", "/v1/tasks/ok", b'{"labels": {"bad key": "v"}}', 400, "invalid_labels"),
        ("PUT", "/v1/tasks/ok", b'{"labels": {"k": 1}}', 400, "invalid_labels"),
        ("PUT", "/v1/tasks/ok", b'{"other": 1}', 400, "invalid_body"),
        ("GET", "/v1/tasks/unknown", None, 404, "not_found"),
        ("DELETE", "/v1/tasks/unknown", None, 404, "not_found"),
    ],
)
async def test_bad_requests_get_json_errors(
    api: tuple[str, Store, World],
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    """Bad IDs and bodies are 400, unknown IDs 404, always with a JSON error."""
    url, _, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        response = await http.request(method, url + path, data=body)
        assert response.status == status
        assert (await response.json())["error"]["code"] == code


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {API_TOKEN}"])
async def test_bearer_token_is_required(api: tuple[str, Store, World], header: str | None) -> None:
    """Without the right bearer token every route answers 401 and changes nothing."""
    url, store, _ = api
    headers = {"Authorization": header} if header else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        response = await http.put(f"{url}/v1/tasks/t-1")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await http.get(f"{url}/v1/tasks")).status == 401
    assert await store.load_tasks() == []


async def test_delete_stops_the_watch(api: tuple[str, Store, World]) -> None:
    """DELETE → 204, the task leaves the table and the store."""
    url, store, world = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        assert (await http.put(f"{url}/v1/tasks/t-9")).status == 201
        assert (await http.delete(f"{url}/v1/tasks/t-9")).status == 204
        assert (await http.get(f"{url}/v1/tasks/t-9")).status == 404
    assert "t-9" not in world.engine.tasks  # type: ignore[attr-defined]
    assert await store.load_tasks() == []


SECRET = "whsec_" + base64.b64encode(b"task-api-end-to-end-secret-32by!").decode()


async def test_end_to_end_labels_restart_delete(tmp_path: Path) -> None:
    """Through a real daemon: labels reach the webhook, a restart keeps the watch, DELETE ends
    polling, a bad token is 401 and a bad ID 400."""
    sim = Simulator(RealClock(), tokens=["crash-test-token"], seed=4)
    sim.add_task(SimTaskSpec(id="api-quick", waiting=0.1, running=0.4))
    sim.add_task(SimTaskSpec(id="api-long", waiting=0.1, running=3600))
    sim.add_task(SimTaskSpec(id="api-other", waiting=0.1, running=3600))
    async with sim.running() as base_url, TestReceiver() as receiver:
        env = env_for(base_url, sim.project_id, tmp_path / "state.db", receiver.url)
        env["CBR_WATCHER_WATCH__TASKS"] = "[]"
        env["CBR_WATCHER_SERVER__API_TOKEN"] = API_TOKEN
        env["CBR_WATCHER_LOG__LEVEL"] = "info"

        first = DaemonProcess(env)
        await first.start()
        url = await first.url("task_api.listening")
        async with aiohttp.ClientSession() as http:
            assert (await http.put(f"{url}/v1/tasks/api-quick")).status == 401
            bad = await http.put(f"{url}/v1/tasks/a%2Fb", headers=AUTH)
            assert bad.status == 400
            for task_id in ("api-quick", "api-long"):
                response = await http.put(
                    f"{url}/v1/tasks/{task_id}",
                    headers=AUTH,
                    json={"labels": {"app": "billing", "job": task_id}},
                )
                assert response.status == 201
        await first.wait_for(
            lambda: any(json.loads(h.body)["type"] == "task.succeeded" for h in receiver.delivered),
            "the quick task's webhook",
        )
        succeeded = next(
            json.loads(h.body)
            for h in receiver.delivered
            if json.loads(h.body)["type"] == "task.succeeded"
        )
        assert succeeded["data"]["labels"] == {"app": "billing", "job": "api-quick"}
        assert await first.kill(signal.SIGTERM) == 0

        second = DaemonProcess(env)
        await second.start()
        url = await second.url("task_api.listening")
        await second.wait_for(
            lambda: second.logged("task.resumed", task_id="api-long"), "api-long resumed"
        )
        metrics_url = await second.url("server.listening")
        async with aiohttp.ClientSession(headers=AUTH) as http:
            watched = await (await http.get(f"{url}/v1/tasks/api-long")).json()
            assert watched["labels"] == {"app": "billing", "job": "api-long"}
            await second.wait_for(
                lambda: sim.request_count("api-long") > 0, "a poll of api-long after restart"
            )
            exposition = await (await http.get(f"{metrics_url}/metrics")).text()
            [info] = [
                line
                for line in exposition.splitlines()
                if line.startswith("cbr_watcher_task_info") and 'task_id="api-long"' in line
            ]
            assert 'label_app="billing"' in info
            assert 'label_job="api-long"' in info
            assert (await http.delete(f"{url}/v1/tasks/api-long")).status == 204
            polls = sim.request_count("api-long")
            assert (await http.put(f"{url}/v1/tasks/api-other")).status == 201
        # Another task polled five times shows the daemon kept going; the deleted one stayed put.
        await second.wait_for(lambda: sim.request_count("api-other") >= 5, "polls of api-other")
        # At most the one request that was already on the wire when DELETE answered.
        assert sim.request_count("api-long") <= polls + 1
        assert await second.kill(signal.SIGTERM) == 0
