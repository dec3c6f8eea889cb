"""sd_notify: the protocol against real sockets, the watchdog gate on a fake clock, and the real
daemon as a subprocess talking to a socket bound here, as systemd would see it.

Assertions are on the order and content of the datagrams, never on their timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.daemon_process import reap, spawn
from tests.support import Running, World, make_engine
from watcher.clock import RealClock
from watcher.observe.systemd import (
    STATUS_MIN_INTERVAL,
    WATCHDOG_STALE_AFTER,
    SystemdNotifier,
    notify,
    watchdog_interval,
)
from watcher.sim import SimTaskSpec, Simulator

TOKEN = "sd-notify-test-token"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes, including the terminating NUL


class NotifyReceiver:
    """An AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if kind == "abstract":
            name = f"cbr-watcher-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = str(directory / "notify.sock")
            assert len(path) <= UNIX_PATH_MAX, path
            self.sock.bind(path)
            self.env_value = path
        self.sock.setblocking(False)

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        messages: list[str] = []
        while True:
            try:
                messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return messages

    async def next(self) -> str:
        """The next datagram, waiting for it (30 s at most) on the event loop."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 30)
        return data.decode()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, or a shorter directory when a socket path there would not fit in sun_path."""
    if len(str(tmp_path / "notify.sock")) <= UNIX_PATH_MAX:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="sd", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[NotifyReceiver]:
    """A notification socket, once bound to a file-system path and once in the abstract
    namespace (`NOTIFY_SOCKET=@name`)."""
    bound = NotifyReceiver(request.param, short_dir)
    yield bound
    bound.close()


def lines_of(messages: list[str]) -> list[str]:
    """The KEY=VALUE lines of several datagrams, in order."""
    return [line for message in messages for line in message.split("\n") if line]


# ---- the protocol -----------------------------------------------------------------------------


def test_notify_delivers_one_datagram(receiver: NotifyReceiver) -> None:
    """A state goes out as one datagram, to a path socket and to an abstract one alike."""
    assert notify("READY=1\nSTATUS=hello", environ={"NOTIFY_SOCKET": receiver.env_value})
    assert receiver.pending() == ["READY=1\nSTATUS=hello"]


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_notify_is_a_no_op_outside_systemd(value: str) -> None:
    """Unset, or an address family we do not speak: nothing is sent, False is returned."""
    environ = {"NOTIFY_SOCKET": value} if value else {}
    assert notify("READY=1", environ=environ) is False


def test_notify_to_a_missing_socket_fails_quietly(tmp_path: Path) -> None:
    """A socket that is not there is a failed send (False), not an exception."""
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4242"}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """Half of WATCHDOG_USEC, and only when WATCHDOG_PID (if set) is this process."""
    assert watchdog_interval(environ, pid=4242) == expected


# ---- the notifier on a fake clock -------------------------------------------------------------


async def test_watchdog_is_withheld_while_the_loop_is_stale(
    world: World, receiver: NotifyReceiver
) -> None:
    """WATCHDOG=1 only while the scheduler loop turns: a stale last turn stops the pings, a
    fresh turn brings them back."""
    engine = make_engine(world)
    environ = {"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "400000"}
    notifier = SystemdNotifier(engine, world.clock, environ=environ)
    assert notifier.watchdog_interval == 0.2
    notifier.ready()
    assert lines_of(receiver.pending()) == [
        "READY=1",
        "STATUS=watching 0 tasks, 0 finished; upstream OK",
    ]
    notifier.tick()
    assert receiver.pending() == ["WATCHDOG=1"]

    world.clock.advance(WATCHDOG_STALE_AFTER + 1)  # the engine is not running: nothing turns
    for _ in range(3):
        notifier.tick()
    assert "WATCHDOG=1" not in lines_of(receiver.pending())

    async with Running(world, engine):
        await asyncio.sleep(0)  # one turn of the loop
        notifier.tick()
        assert "WATCHDOG=1" in lines_of(receiver.pending())


async def test_status_follows_the_engine_at_most_once_a_second(
    world: World, receiver: NotifyReceiver
) -> None:
    """STATUS= is sent when the summary changes, not more often than once a second; a failing
    upstream shows since when (UTC)."""
    engine = make_engine(world)
    notifier = SystemdNotifier(engine, world.clock, environ={"NOTIFY_SOCKET": receiver.env_value})
    assert notifier.watchdog_interval is None
    notifier.ready()
    receiver.pending()

    engine.add("task-1")
    notifier.tick()
    assert receiver.pending() == []  # changed, but the last STATUS= was just now
    world.clock.advance(STATUS_MIN_INTERVAL)
    notifier.tick()
    assert receiver.pending() == ["STATUS=watching 1 task, 0 finished; upstream OK"]
    world.clock.advance(STATUS_MIN_INTERVAL)
    notifier.tick()
    assert receiver.pending() == []  # unchanged

    # FakeClock's wall time started at 2026-01-01T00:00:00Z, two seconds ago.
    engine.upstream.failing_since = world.clock.monotonic() - 5
    world.clock.advance(STATUS_MIN_INTERVAL)
    notifier.tick()
    assert receiver.pending() == [
        "STATUS=watching 1 task, 0 finished; upstream failing since 23:59:57Z"
    ]

    notifier.stopping()
    notifier.stopping()
    assert receiver.pending() == ["STOPPING=1\nSTATUS=stopping"]


async def test_watchdog_pid_of_another_process_means_no_pings(
    world: World, receiver: NotifyReceiver
) -> None:
    """WATCHDOG_PID naming another process (a child of ours, say) turns the pings off."""
    engine = make_engine(world)
    environ = {
        "NOTIFY_SOCKET": receiver.env_value,
        "WATCHDOG_USEC": "400000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    notifier = SystemdNotifier(engine, world.clock, environ=environ)
    notifier.ready()
    notifier.tick()
    assert "WATCHDOG=1" not in lines_of(receiver.pending())


async def test_without_notify_socket_nothing_runs(world: World) -> None:
    """Outside systemd the notifier is inert: run() returns at once, nothing is sent."""
    notifier = SystemdNotifier(make_engine(world), world.clock, environ={"WATCHDOG_USEC": "1000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready()
    notifier.tick()
    notifier.stopping()
    await asyncio.wait_for(notifier.run(), 5)


# ---- the real daemon under a pretend systemd ----------------------------------------------------


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time, for a daemon in another process."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=7)
    async with sim.running() as base_url:
        yield sim, base_url


def systemd_env(
    sim: Simulator, base_url: str, notify_socket: str, state_dir: Path
) -> dict[str, str]:
    """What systemd would give the daemon (NOTIFY_SOCKET, WATCHDOG_USEC), plus fast polling."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CBR_WATCHER_", "WATCHDOG_", "NOTIFY_SOCKET"))
        and key not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")
    }
    env.update(
        {
            "NOTIFY_SOCKET": notify_socket,
            "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
            "CBR_WATCHER_CBR__ENDPOINT": base_url,
            "CBR_WATCHER_CBR__PROJECT_ID": sim.project_id,
            "CBR_WATCHER_AUTH__TOKEN": TOKEN,
            "CBR_WATCHER_WATCH__POLL_INTERVAL_MIN": "0.1s",
            "CBR_WATCHER_WATCH__POLL_INTERVAL_MAX": "0.4s",
            "CBR_WATCHER_STATE__PATH": str(state_dir / "state.db"),
            "CBR_WATCHER_SERVER__LISTEN": "127.0.0.1:0",
            "CBR_WATCHER_SERVER__API_LISTEN": "127.0.0.1:0",
            "CBR_WATCHER_LOG__FORMAT": "json",
        }
    )
    return env


async def listening_url(proc: asyncio.subprocess.Process, app: str) -> str:
    """The URL from the daemon's `server.listening` log line for `app`."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "the daemon exited early"
        record = json.loads(line)
        if record["event"] == "server.listening" and record.get("app") == app:
            return str(record["url"])


async def test_daemon_speaks_sd_notify(
    live_sim: tuple[Simulator, str], receiver: NotifyReceiver, tmp_path: Path
) -> None:
    """READY=1 first (from then on /readyz and /healthz answer 200 and the tasks are polled),
    STATUS= as tasks finish, WATCHDOG=1 pings while it runs, STOPPING=1 after SIGTERM, exit 0."""
    sim, base_url = live_sim
    long_id = sim.add_task(SimTaskSpec(id="long", waiting=0.1, running=3600))
    short_id = sim.add_task(SimTaskSpec(id="short", waiting=0.1, running=0.5))
    proc = await spawn(
        sys.executable,
        "-m",
        "watcher",
        "run",
        "--task",
        long_id,
        "--task",
        short_id,
        env=systemd_env(sim, base_url, receiver.env_value, tmp_path),
    )
    messages: list[str] = []
    signalled = False
    try:
        messages.append(await receiver.next())
        assert messages[0].split("\n")[0] == "READY=1", messages
        # READY=1 means what /readyz means: configuration, state and listeners are ready.
        metrics_url = await listening_url(proc, "metrics")
        async with aiohttp.ClientSession() as session:
            for path in ("/readyz", "/healthz"):
                async with session.get(metrics_url + path) as response:
                    assert response.status == 200, path
        # Live: both tasks are polled; the short one finishes; the watchdog keeps pinging.
        while lines_of(messages).count(
            "WATCHDOG=1"
        ) < 5 or "STATUS=watching 1 task, 1 finished; upstream OK" not in lines_of(messages):
            messages.append(await receiver.next())
        assert sim.request_count(long_id) > 0
        proc.send_signal(signal.SIGTERM)
        signalled = True
        while "STOPPING=1" not in lines_of(messages):
            messages.append(await receiver.next())
    finally:
        try:
            if not signalled and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            await reap(proc)
    messages.extend(receiver.pending())
    assert proc.returncode == 0, err.decode()

    lines = lines_of(messages)
    assert lines.count("READY=1") == 1
    assert lines.count("STOPPING=1") == 1
    assert lines.count("WATCHDOG=1") >= 5
    statuses = [line.removeprefix("STATUS=") for line in lines if line.startswith("STATUS=")]
    assert statuses[0] == "watching 2 tasks, 0 finished; upstream OK"
    assert "watching 1 task, 1 finished; upstream OK" in statuses
    assert statuses[-1] == "stopping"
    stopping_at = lines.index("STOPPING=1")
    assert all(line.startswith("WATCHDOG=") for line in lines[stopping_at + 2 :])
    assert {line.split("=", 1)[0] for line in lines} == {"READY", "STATUS", "WATCHDOG", "STOPPING"}
