"""`cbr-watcher` as a real subprocess, for tests that need signals, restarts or kill -9.

Every process a test starts goes through `spawn` (or `spawned`, `DaemonProcess`, `run_cli`)
and is ended in every outcome: the context managers terminate, then kill, on success, on a
failed assertion and on cancellation; a registry kills whatever is still alive at interpreter
exit (Ctrl-C skips a coroutine's `finally`); and on Linux each child gets SIGKILL from the
kernel if the test process itself dies first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import IO, Any

import aiohttp

STOP_GRACE = 15.0
"""Seconds a process gets to exit after SIGTERM before it is killed."""
WAIT_TIMEOUT = 60.0
"""Real seconds `DaemonProcess.wait_for` waits for a condition: generous, for loaded CI."""

_PR_SET_PDEATHSIG = 1
_live: dict[int, asyncio.subprocess.Process] = {}


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Resolved now, in the parent: the child must not load libraries between fork and exec.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_leftovers() -> list[int]:
    """SIGKILL every spawned process still running; returns their PIDs."""
    killed = []
    for pid, proc in list(_live.items()):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        _live.pop(pid, None)
    return killed


atexit.register(_kill_leftovers)


def kill_leftovers() -> list[int]:
    """Kill any spawned process a test left running (the conftest safety net); their PIDs."""
    return _kill_leftovers()


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any CBR_WATCHER_* or systemd variables, plus
    `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_WATCHER_")}
    for key in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "STATE_DIRECTORY"):
        env.pop(key, None)
    env.update(settings)
    return env


def fast_daemon_env(endpoint: str, project_id: str, token: str, **extra: str) -> dict[str, str]:
    """`clean_env` for a daemon pointed at a simulator, with fast polling (0.1–0.4 s), a 1 s
    404 grace, JSON logs, an in-memory state and the metrics listener on a free port; `extra`
    adds or overrides settings."""
    settings = {
        "CBR_WATCHER_CBR__ENDPOINT": endpoint,
        "CBR_WATCHER_CBR__PROJECT_ID": project_id,
        "CBR_WATCHER_AUTH__TOKEN": token,
        "CBR_WATCHER_WATCH__POLL_INTERVAL_MIN": "0.1s",
        "CBR_WATCHER_WATCH__POLL_INTERVAL_MAX": "0.4s",
        "CBR_WATCHER_WATCH__NOT_FOUND_GRACE": "1s",
        "CBR_WATCHER_LOG__FORMAT": "json",
        "CBR_WATCHER_STATE__PATH": ":memory:",
        "CBR_WATCHER_SERVER__LISTEN": "127.0.0.1:0",
        "CBR_WATCHER_SERVER__API_LISTEN": "",
    }
    return clean_env(**{**settings, **extra})


Stdio = int | IO[Any] | None


async def spawn(
    *argv: str,
    env: Mapping[str, str] | None = None,
    stdin: Stdio = None,
    stdout: Stdio = subprocess.PIPE,
    stderr: Stdio = subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """Start `argv`, registered so that it is killed at exit if nobody reaps it first."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=die_with_parent,
    )
    _live[proc.pid] = proc
    return proc


async def reap(
    proc: asyncio.subprocess.Process, *, signum: int = signal.SIGTERM, grace: float = STOP_GRACE
) -> int:
    """End `proc` if it still runs: `signum`, then SIGKILL after `grace` seconds; exit code.

    Safe in a `finally`: if the wait is cancelled, the process is killed before re-raising.
    """
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        raise
    finally:
        if proc.returncode is not None:
            _live.pop(proc.pid, None)
    assert proc.returncode is not None
    return proc.returncode


@contextlib.asynccontextmanager
async def spawned(
    *argv: str,
    env: Mapping[str, str] | None = None,
    stdin: Stdio = None,
    stdout: Stdio = subprocess.PIPE,
    stderr: Stdio = subprocess.PIPE,
    grace: float = STOP_GRACE,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`spawn`, and on leaving (however) SIGTERM → `grace` seconds → SIGKILL if still alive."""
    proc = await spawn(*argv, env=env, stdin=stdin, stdout=stdout, stderr=stderr)
    try:
        yield proc
    finally:
        await reap(proc, grace=grace)


class DaemonProcess:
    """`cbr-watcher run` in a subprocess; its JSON log lines are collected as they come.

    Use it as `async with DaemonProcess(env) as daemon:`: leaving the block ends the
    process (SIGTERM, then SIGKILL) whatever happened inside.
    """

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> DaemonProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Spawn the daemon."""
        self.proc = await spawn(sys.executable, "-m", "watcher", "run", *self.args, env=self.env)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_lines(self.proc.stdout)),
            asyncio.create_task(self._read_stderr(self.proc.stderr)),
        ]

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": None, "unparsed": line.decode(errors="replace")}
            self.lines.append(record if isinstance(record, dict) else {"event": None})

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        # Drained as it comes, so a chatty stderr can never fill the pipe and stall the daemon.
        while chunk := await stream.read(65536):
            self._stderr += chunk

    @property
    def stderr(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        return self._stderr.decode(errors="replace")

    async def wait_for(
        self, condition: Callable[[], bool], what: str, *, within: float = WAIT_TIMEOUT
    ) -> None:
        """Wait (at most `within` real seconds) for a condition on the logs or on peers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not condition():
            await self._check_alive(what)
            if loop.time() >= deadline:
                raise AssertionError(f"timed out after {within:g} s waiting for {what}")
            await asyncio.sleep(0.02)

    async def _check_alive(self, what: str) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            await self._finish_reading()
            raise AssertionError(
                f"daemon exited {self.proc.returncode} waiting for {what}: {self.stderr}"
            )

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

    async def ready(self) -> str:
        """Wait until /readyz answers 200; returns the metrics listener's URL."""
        url = await self.url("server.listening")
        ready = False

        async with aiohttp.ClientSession() as http:

            async def probe() -> None:
                nonlocal ready
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(
                        f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=5)
                    ) as response:
                        ready = response.status == 200

            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_TIMEOUT
            await probe()
            while not ready:
                await self._check_alive("/readyz")
                assert loop.time() < deadline, "timed out waiting for /readyz"
                await asyncio.sleep(0.05)
                await probe()
        return url

    def hup(self) -> None:
        """Send SIGHUP."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def kill(self, signum: int, *, grace: float = STOP_GRACE) -> int:
        """Send `signum` and return the exit code (SIGKILL follows after `grace` seconds)."""
        assert self.proc is not None
        code = await reap(self.proc, signum=signum, grace=grace)
        await self._finish_reading()
        return code

    async def stop(self) -> None:
        """SIGTERM; the daemon must exit 0. Nothing to do when it already ended."""
        if self.proc is None or self.proc.returncode is not None:
            return
        code = await self.kill(signal.SIGTERM)
        assert code == 0, f"exit code {code}: {self.stderr}"

    async def close(self) -> None:
        """End the process whatever state it is in, and stop reading its output."""
        if self.proc is None:
            return
        try:
            await reap(self.proc)
        finally:
            for reader in self._readers:
                if not reader.done():
                    reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)

    async def _finish_reading(self) -> None:
        # After exit the pipes reach EOF; bounded anyway, in case a grandchild holds them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True), 10)


async def run_cli(
    *args: str, env: Mapping[str, str], within: float = WAIT_TIMEOUT
) -> tuple[int, str, str]:
    """Run `python -m watcher ARGS` to completion without blocking the simulator's loop.

    Killed if it does not finish within `within` seconds (and the test fails).
    """
    async with spawned(sys.executable, "-m", "watcher", *args, env=env) as proc:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON object (SPEC §8)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
