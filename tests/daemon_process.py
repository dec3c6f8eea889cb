"""`cbr-watcher run` as a real subprocess, for tests that need signals, restarts or kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any CBR_WATCHER_* or systemd credentials, plus
    `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_WATCHER_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(settings)
    return env


class DaemonProcess:
    """The daemon in a subprocess; its JSON log lines are collected as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn the daemon."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher",
            "run",
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (at most 60 s of real time) for a condition on the logs or on peers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not condition():
            assert self.proc is not None
            if self.proc.returncode is not None:
                assert self.proc.stderr is not None
                err = (await self.proc.stderr.read()).decode()
                raise AssertionError(
                    f"daemon exited {self.proc.returncode} waiting for {what}: {err}"
                )
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    def logged(self, event: str, **fields: Any) -> bool:
        """Whether a log line with this event and these fields was written."""
        return any(
            line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
            for line in self.lines
        )

    async def url(self, event: str) -> str:
        """The `url` of the first `event` line (server.listening, task_api.listening)."""
        await self.wait_for(lambda: self.logged(event), f"the {event} log line")
        return str(next(line["url"] for line in self.lines if line.get("event") == event))

    def hup(self) -> None:
        """Send SIGHUP."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def kill(self, signum: int) -> int:
        """Send `signum` and return the exit code."""
        assert self.proc is not None
        assert self._reader is not None
        self.proc.send_signal(signum)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        return code

    async def stop(self) -> None:
        """SIGTERM; the daemon must exit 0. Nothing to do when it already ended."""
        if self.proc is None or self.proc.returncode is not None:
            return
        assert await self.kill(signal.SIGTERM) == 0


async def run_cli(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run `python -m watcher ARGS` to completion without blocking the simulator's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        *args,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON object (SPEC §8)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
