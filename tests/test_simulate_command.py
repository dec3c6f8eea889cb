"""`cbr-watcher simulate`: the simulator alone, as a user starts it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.daemon_process import clean_env, spawned


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def start(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run `cbr-watcher simulate ARGS`; yield it and its first stdout line. Ended on exit."""
    async with spawned(sys.executable, "-m", "watcher", "simulate", *args, env=clean_env()) as proc:
        assert proc.stdout is not None
        yield proc, (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()


async def test_default_is_the_demo_scenario() -> None:
    """Without --scenario it serves the ten demo tasks."""
    async with start("--listen", f"127.0.0.1:{free_port()}") as (proc, banner):
        assert "tasks=10" in banner
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_simulate_serves_a_scenario_and_stops_on_sigterm(tmp_path: Path) -> None:
    """It prints where it listens, answers CBR requests with the token, and exits 0 on SIGTERM."""
    scenario = tmp_path / "one.toml"
    scenario.write_text('tokens = ["tok-1"]\n[[tasks]]\nid = "backup-ecs-0001"\nwaiting = "1h"\n')
    port = free_port()
    async with start("--listen", f"127.0.0.1:{port}", "--scenario", str(scenario)) as (
        proc,
        banner,
    ):
        assert f"endpoint=http://127.0.0.1:{port}" in banner
        project = banner.split("project_id=")[1].split()[0]
        token = banner.split("token=")[1].split()[0]
        assert token == "tok-1"
        base = f"http://127.0.0.1:{port}/v3/{project}/operation-logs"
        async with aiohttp.ClientSession() as http:
            ok = await http.get(f"{base}/backup-ecs-0001", headers={"X-Auth-Token": token})
            assert ok.status == 200
            log = (await ok.json())["operation_log"]
            assert (log["id"], log["status"]) == ("backup-ecs-0001", "waiting")
            denied = await http.get(f"{base}/backup-ecs-0001")
            assert denied.status == 401
            assert (await denied.json())["error_code"] == "APIGW.0301"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_simulate_rejects_a_bad_scenario(tmp_path: Path) -> None:
    """A scenario with a bad value exits 78 with one line naming it."""
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[[tasks]]\noutcome = "exploded"\n')
    async with spawned(
        sys.executable, "-m", "watcher", "simulate", "--scenario", str(scenario),
        "--listen", f"127.0.0.1:{free_port()}",
        env=clean_env(),
    ) as proc:  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 78
    assert "outcome" in err.decode()
    assert len(err.decode().strip().splitlines()) == 1
