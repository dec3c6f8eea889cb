"""One daemon per state file: an exclusive OS lock on `<state path>.lock`.

`flock(LOCK_EX | LOCK_NB)` on a sibling file, held for as long as the store is open. The kernel
drops the lock when the holder exits in any way (kill -9 included), so a stale lock file never
blocks the next start. The file also names the holder (PID, host, since when) so the refusal
can say who to stop. The lock belongs to one open file description: a second acquire in the
same process conflicts as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LOCK_SUFFIX: Final = ".lock"
_MAX_HOLDER_BYTES: Final = 4096


def lock_path_for(state_path: str) -> Path:
    """The lock file that guards `state_path`: the same name with ".lock" appended."""
    return Path(state_path + LOCK_SUFFIX)


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a state lock, as written into the lock file by the holder."""

    pid: int
    host: str
    since: str

    def describe(self) -> str:
        """ "pid 1234 on host h (since 2024-05-01T12:00:00Z)"."""
        return f"pid {self.pid} on host {self.host} (since {self.since})"


class StateFileInUse(Exception):
    """Another process (or another open in this one) holds the lock on the state file."""

    def __init__(self, state_path: str, holder: LockHolder | None) -> None:
        who = holder.describe() if holder is not None else "another process"
        super().__init__(
            f"state file {state_path} is in use by {who}; "
            "stop that cbr-watcher or set state.path to another file"
        )
        self.state_path = state_path
        self.holder = holder


def read_holder(lock_path: Path) -> LockHolder | None:
    """The holder recorded in `lock_path`, or None when it is missing, empty or unreadable."""
    try:
        with open(lock_path, "rb") as file:
            data = json.loads(file.read(_MAX_HOLDER_BYTES))
        pid, host, since = data["pid"], data["host"], data["since"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(pid, int) or not isinstance(host, str) or not isinstance(since, str):
        return None
    # The host name is shown in a one-line message: keep it printable.
    return LockHolder(pid, host if host.isprintable() else repr(host), since)


class StateLock:
    """An acquired lock; `release` (or leaving the `with` block) gives it back."""

    def __init__(self, state_path: str, fd: int) -> None:
        self.state_path = state_path
        self.lock_path = lock_path_for(state_path)
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_path: str) -> StateLock:
        """Take the lock for `state_path` without waiting.

        Raises StateFileInUse when it is held, OSError when the lock file cannot be created.
        """
        lock_path = lock_path_for(state_path)
        # No O_TRUNC: until we hold the lock, the file's content is the holder's.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFileInUse(state_path, read_holder(lock_path)) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(state_path, fd)
        try:
            lock._write_holder()
        except BaseException:
            lock.release()
            raise
        return lock

    def _write_holder(self) -> None:
        assert self._fd is not None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock back; the lock file stays (removing it would race a new holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
