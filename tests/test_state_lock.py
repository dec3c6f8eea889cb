"""One daemon per state file: the lock, its refusal message, and recovery after kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemon_process import DaemonProcess, clean_env, run_cli
from watcher.state.connection import StoreError
from watcher.state.lock import StateFileInUse, StateLock, lock_path_for, read_holder
from watcher.state.sqlite import Store


def test_lock_records_its_holder_and_refuses_a_second_acquire(tmp_path: Path) -> None:
    """flock belongs to one open file description: a second acquire in-process conflicts."""
    state = str(tmp_path / "state.db")
    with StateLock.acquire(state) as lock:
        assert lock.lock_path == tmp_path / "state.db.lock"
        holder = read_holder(lock.lock_path)
        assert holder is not None
        assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
        with pytest.raises(StateFileInUse) as caught:
            StateLock.acquire(state)
        assert str(caught.value) == (
            f"state file {state} is in use by pid {os.getpid()} on host "
            f"{socket.gethostname()} (since {holder.since}); "
            "stop that cbr-watcher or set state.path to another file"
        )
    assert not lock.held
    with StateLock.acquire(state):  # released: free again
        pass


def test_a_leftover_lock_file_does_not_block(tmp_path: Path) -> None:
    """The file outlives its holder; only a held flock counts, whatever the file says."""
    state = str(tmp_path / "state.db")
    lock_path_for(state).write_text(json.dumps({"pid": 1, "host": "gone", "since": "x"}))
    with StateLock.acquire(state) as lock:
        holder = read_holder(lock.lock_path)
        assert holder is not None
        assert holder.pid == os.getpid()


def test_an_unreadable_holder_record_is_reported_as_unknown(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with StateLock.acquire(state) as lock:
        lock.lock_path.write_bytes(b"\xff not json")
        with pytest.raises(StateFileInUse, match="in use by another process; stop that"):
            StateLock.acquire(state)


async def test_second_store_on_one_file_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "state.db")
    first = await Store.open(path)
    try:
        with pytest.raises(StoreError) as caught:
            await Store.open(path)
        message = str(caught.value)
        assert len(message.splitlines()) == 1
        assert message.startswith(f"state file {path} is in use by pid {os.getpid()} on host ")
    finally:
        await first.close()
    second = await Store.open(path)  # close released the lock
    await second.close()


async def test_memory_stores_take_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = await Store.open(":memory:")
    second = await Store.open(":memory:")
    await first.close()
    await second.close()
    assert os.listdir(tmp_path) == []  # no ":memory:.lock"


async def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    """A state file refused for another reason leaves no lock behind."""
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="unusable"):
        await Store.open(str(path))
    with StateLock.acquire(str(path)):
        pass


# --- real daemons ----------------------------------------------------------------------------


def daemon_env(state_path: Path) -> dict[str, str]:
    """A daemon with nothing to watch (so it needs no CBR API) on `state_path`."""
    return clean_env(
        CBR_WATCHER_CBR__ENDPOINT="http://127.0.0.1:9",
        CBR_WATCHER_CBR__PROJECT_ID="p1",
        CBR_WATCHER_AUTH__TOKEN="t",
        CBR_WATCHER_STATE__PATH=str(state_path),
        CBR_WATCHER_LOG__FORMAT="json",
        CBR_WATCHER_SERVER__LISTEN="127.0.0.1:0",
        CBR_WATCHER_SERVER__API_LISTEN="127.0.0.1:0",
    )


@pytest.fixture
async def daemons() -> AsyncIterator[list[DaemonProcess]]:
    """Daemons a test starts; whatever happens, each is killed and reaped afterwards."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.returncode is None:
            await daemon.kill(signal.SIGKILL)


async def start_daemon(daemons: list[DaemonProcess], state_path: Path) -> DaemonProcess:
    """A running daemon on `state_path`, started and registered for clean-up."""
    daemon = DaemonProcess(daemon_env(state_path))
    daemons.append(daemon)
    await daemon.start()
    await daemon.wait_for(lambda: daemon.logged("daemon.started"), "daemon.started")
    return daemon


async def test_second_daemon_on_one_state_file_exits_78_naming_the_holder(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """The second `run` refuses with one line; after the holder is kill -9ed, a start works."""
    state = tmp_path / "state.db"
    holder = await start_daemon(daemons, state)
    assert holder.proc is not None

    code, _, err = await run_cli("run", env=daemon_env(state))
    assert code == 78
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"state file {state} is in use by pid {holder.proc.pid} on host " in lines[0]
    assert "stop that cbr-watcher or set state.path to another file" in lines[0]

    assert await holder.kill(signal.SIGKILL) == -signal.SIGKILL
    # The kernel dropped the flock with the process; its record is still in the file.
    assert lock_path_for(str(state)).read_text() != ""
    successor = await start_daemon(daemons, state)
    await successor.stop()
