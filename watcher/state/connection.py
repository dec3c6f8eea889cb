"""The SQLite connection behind the store: one worker thread, the state lock, open and migrate.

One connection, used only from one worker thread, so the event loop never waits on disk.
WAL mode, `synchronous=NORMAL` plus an explicit transaction per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from watcher.state.schema import MIGRATIONS, SCHEMA_VERSION
from watcher.state_lock import StateFileInUse, StateLock

_T = TypeVar("_T")


class StoreError(Exception):
    """The state file cannot be used: uncreatable, unreadable, corrupt, from a newer version,
    or in use by another cbr-watcher."""


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Everything inside commits together or not at all (`BEGIN IMMEDIATE`: one writer)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Connection:
    """A SQLite file opened (created if needed), locked and migrated on a worker thread."""

    def __init__(self, path: str, *, lock: bool = True) -> None:
        self.path = path
        self._locking = lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbr-watcher-db")
        self._db: sqlite3.Connection | None = None
        self._lock: StateLock | None = None

    async def open(self) -> None:
        """Lock, open and migrate; StoreError if the file is unusable or locked by another
        process (see `watcher.state_lock`). `lock=False` skips the daemon lock, for a command
        used next to a running daemon; SQLite's own locking keeps the two writers apart."""
        await self.run(self._open)

    async def close(self) -> None:
        """Close the connection, release the state lock and stop the worker thread."""
        if self._db is not None or self._lock is not None:
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the worker thread (the only thread that touches the connection)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection; use it only inside `run`."""
        if self._db is None:
            raise RuntimeError("store is closed")
        return self._db

    def _open(self) -> None:
        if self.path != ":memory:" and self._locking:
            self._lock = self._take_lock()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db = db  # from here on, close() closes it whatever fails below
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            integrity = db.execute("PRAGMA quick_check").fetchone()
            if integrity is None or integrity[0] != "ok":
                raise StoreError(f"state file {self.path} is corrupt: {integrity}")
            self._migrate(db)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"state file {self.path} is unusable: {error}") from None
        except OSError as error:
            raise StoreError(f"state file {self.path} cannot be opened: {error}") from None

    def _take_lock(self) -> StateLock:
        # Before SQLite touches the file: a second daemon must not even open it.
        parent = Path(self.path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"state.path = {self.path!r}: cannot create the directory {parent} "
                f"({error.strerror or error})"
            ) from None
        try:
            return StateLock.acquire(self.path)
        except StateFileInUse as error:
            raise StoreError(str(error)) from None
        except OSError as error:
            raise StoreError(
                f"state.path = {self.path!r}: cannot create the lock file "
                f"{self.path}.lock ({error.strerror or error})"
            ) from None

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state file {self.path} has schema version {version}; this cbr-watcher "
                f"understands up to {SCHEMA_VERSION} (downgrade not supported)"
            )
        if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"state file {self.path} is not a cbr-watcher database")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with transaction(db):
                for statement in MIGRATIONS[target]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
