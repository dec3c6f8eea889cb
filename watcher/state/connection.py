"""The SQLite connection behind the store: one worker thread, the state lock, open and migrate.

One connection, used only from one worker thread, so the event loop never waits on disk.
WAL mode, `synchronous=NORMAL` plus an explicit transaction per change. Changes sent with
`write` while the worker is busy share one transaction (group commit), each inside its own
savepoint, so one failing change rolls back only itself: 64 concurrent task-API PUTs then
cost one COMMIT, not 64.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from watcher.state.lock import StateFileInUse, StateLock
from watcher.state.schema import MIGRATIONS, SCHEMA_VERSION

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


_Write = tuple[Callable[[sqlite3.Connection], None], "asyncio.Future[None]"]


def _in_savepoint(
    db: sqlite3.Connection, change: Callable[[sqlite3.Connection], None]
) -> Exception | None:
    """Apply one change of a batch; on error undo just that change and return the error."""
    db.execute("SAVEPOINT change")
    try:
        change(db)
    except Exception as error:
        db.execute("ROLLBACK TO change")
        db.execute("RELEASE change")
        return error
    db.execute("RELEASE change")
    return None


def _settle(futures: list[asyncio.Future[None]], outcomes: list[BaseException | None]) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.cancelled():
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)


class Connection:
    """A SQLite file opened (created if needed), locked and migrated on a worker thread."""

    def __init__(self, path: str, *, lock: bool = True) -> None:
        self.path = path
        self._locking = lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbr-watcher-db")
        self._db: sqlite3.Connection | None = None
        self._lock: StateLock | None = None
        self._open_batch: list[_Write] | None = None
        """Changes waiting for the worker, all in one transaction; None when none wait."""
        self._batch_lock = threading.Lock()

    async def open(self) -> None:
        """Lock, open and migrate; StoreError if the file is unusable or locked by another
        process (see `watcher.state.lock`). `lock=False` skips the daemon lock, for a command
        used next to a running daemon; SQLite's own locking keeps the two writers apart."""
        await self.run(self._open)

    async def close(self) -> None:
        """Close the connection, release the state lock and stop the worker thread."""
        if self._db is not None or self._lock is not None:
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the worker thread (the only thread that touches the connection)."""
        with self._batch_lock:
            self._open_batch = None  # a later `write` must not run before `fn`
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def write(self, change: Callable[[sqlite3.Connection], None]) -> None:
        """Apply `change` in a transaction on the worker thread; it raises what `change` or
        the COMMIT raised. Changes sent while the worker is busy are committed together."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._batch_lock:
            batch = self._open_batch
            if batch is None:
                batch = self._open_batch = []
                self._executor.submit(self._commit_batch, batch, loop)
            batch.append((change, done))
        await done

    def _commit_batch(self, batch: list[_Write], loop: asyncio.AbstractEventLoop) -> None:
        with self._batch_lock:
            if self._open_batch is batch:
                self._open_batch = None
            changes = list(batch)
        outcomes: list[BaseException | None] = []
        try:
            with transaction(self.db) as db:
                for change, _ in changes:
                    outcomes.append(_in_savepoint(db, change))
        except Exception as error:  # BEGIN or COMMIT failed: nothing was written
            outcomes = [error] * len(changes)
        loop.call_soon_threadsafe(_settle, [done for _, done in changes], outcomes)

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
