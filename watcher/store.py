"""The state store: watched tasks, the webhook outbox and dead letters, in SQLite.

One connection, used only from one worker thread, so the event loop never waits on disk.
WAL mode, `synchronous=NORMAL` plus an explicit transaction per change: a task's new state and
the events it produced are committed together, before anything is delivered.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from watcher.safetext import clean
from watcher.state_lock import StateFileInUse, StateLock

_T = TypeVar("_T")

SCHEMA_VERSION = 1

# Each entry upgrades the schema from version N-1 to N. Never edit a shipped entry: append.
_MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            labels TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT 'config',
            status TEXT,
            progress INTEGER,
            raw TEXT,
            first_seen REAL NOT NULL,
            started REAL,
            last_change REAL,
            last_progress REAL,
            ended REAL,
            end_reason TEXT
        )""",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            receiver TEXT NOT NULL,
            task_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body BLOB NOT NULL,
            created REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT,
            UNIQUE (event_id, receiver)
        )""",
        "CREATE INDEX outbox_due ON outbox (receiver, next_attempt)",
        "CREATE INDEX outbox_task ON outbox (receiver, task_id, id)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            receiver TEXT NOT NULL,
            task_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body BLOB NOT NULL,
            created REAL NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            dead_at REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
        """CREATE TABLE last_success (
            operation_type TEXT PRIMARY KEY,
            ended REAL NOT NULL
        )""",
    ),
}


class StoreError(Exception):
    """The state file cannot be used: uncreatable, unreadable, corrupt, from a newer version,
    or in use by another cbr-watcher."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A watched task as persisted."""

    task_id: str
    labels: dict[str, str]
    source: str
    status: str | None
    progress: int | None
    raw: dict[str, Any] | None
    first_seen: float
    started: float | None
    last_change: float | None
    last_progress: float | None
    ended: float | None
    end_reason: str | None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event for one receiver, with the exact bytes to send."""

    event_id: str
    receiver: str
    task_id: str
    event_type: str
    body: bytes
    created: float


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """An outbox row due for an attempt."""

    row_id: int
    event_id: str
    receiver: str
    task_id: str
    event_type: str
    body: bytes
    created: float
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a receiver never accepted within `max_age` (see `Store.dead_letter_rows`)."""

    row_id: int
    event_id: str
    receiver: str
    task_id: str
    event_type: str
    created: float
    attempts: int
    last_error: str
    dead_at: float
    reason: str


class Store:
    """Async facade over a SQLite database used from a single worker thread."""

    def __init__(self, path: str, *, lock: bool = True) -> None:
        self.path = path
        self._locking = lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbr-watcher-db")
        self._db: sqlite3.Connection | None = None
        self._lock: StateLock | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str, *, lock: bool = True) -> Store:
        """Lock, open (creating if needed) and migrate the database; StoreError if it is
        unusable or another process has it open (see `watcher.state_lock`).

        `lock=False` opens it without the daemon lock, next to a running daemon (for the
        `dead-letters` command); SQLite's own locking keeps the two writers apart.
        """
        store = cls(path, lock=lock)
        try:
            await store._run(store._open)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close the connection, release the state lock and stop the worker thread."""
        if self._db is not None or self._lock is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

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
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is closed")
        return self._db

    # ---- tasks ----------------------------------------------------------------------------

    async def load_tasks(self) -> list[TaskRecord]:
        """Every task in the store, finished or not, oldest first."""
        return await self._run(self._load_tasks)

    def _load_tasks(self) -> list[TaskRecord]:
        rows = self._conn.execute(
            "SELECT task_id, labels, source, status, progress, raw, first_seen, started,"
            " last_change, last_progress, ended, end_reason FROM tasks ORDER BY first_seen"
        ).fetchall()
        return [
            TaskRecord(
                task_id=row[0],
                labels=json.loads(row[1]),
                source=row[2],
                status=row[3],
                progress=row[4],
                raw=json.loads(row[5]) if row[5] else None,
                first_seen=row[6],
                started=row[7],
                last_change=row[8],
                last_progress=row[9],
                ended=row[10],
                end_reason=row[11],
            )
            for row in rows
        ]

    async def save(self, task: TaskRecord, outbox: Iterable[OutboxEntry] = ()) -> None:
        """Write a task's state and the events it produced, in one transaction."""
        entries = list(outbox)
        await self._run(lambda: self._save(task, entries))

    def _save(self, task: TaskRecord, entries: list[OutboxEntry]) -> None:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO tasks (task_id, labels, source, status, progress, raw, first_seen,"
                " started, last_change, last_progress, ended, end_reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET labels=excluded.labels,"
                " source=excluded.source, status=excluded.status, progress=excluded.progress,"
                " raw=excluded.raw, started=excluded.started,"
                " last_change=excluded.last_change, last_progress=excluded.last_progress,"
                " ended=excluded.ended, end_reason=excluded.end_reason",
                (
                    task.task_id,
                    json.dumps(task.labels, sort_keys=True),
                    clean(task.source),
                    None if task.status is None else clean(task.status),
                    task.progress,
                    json.dumps(task.raw, separators=(",", ":")) if task.raw is not None else None,
                    task.first_seen,
                    task.started,
                    task.last_change,
                    task.last_progress,
                    task.ended,
                    None if task.end_reason is None else clean(task.end_reason),
                ),
            )
            operation_type = (task.raw or {}).get("operation_type")
            if task.end_reason == "success" and task.ended is not None:
                db.execute(
                    "INSERT INTO last_success (operation_type, ended) VALUES (?, ?)"
                    " ON CONFLICT (operation_type) DO UPDATE"
                    " SET ended = max(ended, excluded.ended)",
                    (clean(str(operation_type or "unknown")), task.ended),
                )
            db.executemany(
                "INSERT OR IGNORE INTO outbox (event_id, receiver, task_id, event_type, body,"
                " created, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.event_id, e.receiver, e.task_id, e.event_type, e.body, e.created, e.created)
                    for e in entries
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def delete_task(self, task_id: str) -> None:
        """Forget a task (its undelivered events stay in the outbox)."""
        await self._run(
            lambda: self._conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        )

    async def prune_ended(self, before: float) -> int:
        """Drop tasks that ended before `before` (wall seconds); returns how many."""
        cursor = await self._run(
            lambda: self._conn.execute(
                "DELETE FROM tasks WHERE ended IS NOT NULL AND ended < ?", (before,)
            )
        )
        return cursor.rowcount

    async def last_successes(self) -> dict[str, float]:
        """The newest successful end per operation type (for the restart-proof metric)."""
        rows = await self._run(
            lambda: self._conn.execute("SELECT operation_type, ended FROM last_success").fetchall()
        )
        return {str(op): float(ended) for op, ended in rows}

    # ---- outbox ---------------------------------------------------------------------------

    async def enqueue(self, entries: Iterable[OutboxEntry]) -> None:
        """Add events that are not about a task's state (e.g. test.ping)."""
        rows = list(entries)

        def insert() -> None:
            self._conn.executemany(
                "INSERT OR IGNORE INTO outbox (event_id, receiver, task_id, event_type, body,"
                " created, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.event_id, e.receiver, e.task_id, e.event_type, e.body, e.created, e.created)
                    for e in rows
                ],
            )

        await self._run(insert)

    async def due(
        self, receiver: str, now: float, *, limit: int, exclude_tasks: Iterable[str] = ()
    ) -> list[PendingDelivery]:
        """Rows due for `receiver`, oldest first, at most one per task (the task's oldest).

        Only a task's oldest undelivered event is ever offered, so events for one task reach
        a receiver in the order they were created, even after a long outage.
        """
        excluded = sorted(set(exclude_tasks))

        def query() -> list[PendingDelivery]:
            rows = self._conn.execute(
                "SELECT o.id, o.event_id, o.receiver, o.task_id, o.event_type, o.body,"
                " o.created, o.attempts FROM outbox o WHERE o.next_attempt <= ? AND "
                + _heads_of_tasks(len(excluded))
                + " ORDER BY o.id LIMIT ?",
                (now, receiver, *excluded, limit),
            ).fetchall()
            return [PendingDelivery(*row) for row in rows]

        return await self._run(query)

    async def next_attempt_at(
        self, receiver: str, *, exclude_tasks: Iterable[str] = ()
    ) -> float | None:
        """When the next row `due` could offer becomes due (None: nothing is queued)."""
        excluded = sorted(set(exclude_tasks))

        def query() -> float | None:
            row = self._conn.execute(
                "SELECT min(o.next_attempt) FROM outbox o WHERE " + _heads_of_tasks(len(excluded)),
                (receiver, *excluded),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(query)

    async def delivered(self, row_id: int) -> None:
        """The receiver acknowledged: the row goes, so it is never sent again."""
        await self._run(lambda: self._conn.execute("DELETE FROM outbox WHERE id = ?", (row_id,)))

    async def retry_later(self, row_id: int, *, next_attempt: float, error: str) -> None:
        """Count a failed attempt and set when to try again."""
        await self._run(
            lambda: self._conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                " WHERE id = ?",
                (next_attempt, clean(error[:500]), row_id),
            )
        )

    async def dead_letter(self, row_id: int, *, now: float, reason: str, error: str) -> None:
        """Move a row the receiver never accepted into dead_letters (kept, never retried)."""

        def move() -> None:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO dead_letters (id, event_id, receiver, task_id, event_type, body,"
                    " created, attempts, last_error, dead_at, reason)"
                    " SELECT id, event_id, receiver, task_id, event_type, body, created,"
                    " attempts + 1, ?, ?, ? FROM outbox WHERE id = ?",
                    (clean(error[:500]), now, reason, row_id),
                )
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(move)

    async def queue_depths(self) -> dict[str, int]:
        """Undelivered events per receiver."""
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT receiver, count(*) FROM outbox GROUP BY receiver"
            ).fetchall()
        )
        return {str(name): int(count) for name, count in rows}

    async def dead_letters(self) -> list[tuple[str, str, str, str]]:
        """(event_id, receiver, reason, last_error) of every dead letter, oldest first."""
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT event_id, receiver, reason, coalesce(last_error, '')"
                " FROM dead_letters ORDER BY dead_at, id"
            ).fetchall()
        )
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    async def dead_letter_rows(self) -> list[DeadLetter]:
        """Every dead letter with its details, oldest first."""
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT id, event_id, receiver, task_id, event_type, created, attempts,"
                " coalesce(last_error, ''), dead_at, reason FROM dead_letters"
                " ORDER BY dead_at, id"
            ).fetchall()
        )
        return [DeadLetter(*row) for row in rows]

    async def replay_dead_letters(self, event_id: str | None, *, now: float | None = None) -> int:
        """Move the dead letters of `event_id` (every one when None) back into the outbox with
        their attempts reset and their `max_age` starting again at `now` (default: the time);
        returns how many moved. The deliverer of a running daemon finds them on its next look.
        """
        when = time.time() if now is None else now
        where, args = ("WHERE event_id = ?", (event_id,)) if event_id is not None else ("", ())

        def move() -> int:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                # The original row id keeps the event in its place among its task's events.
                db.execute(
                    "INSERT OR IGNORE INTO outbox (id, event_id, receiver, task_id, event_type,"
                    " body, created, attempts, next_attempt, last_error)"
                    " SELECT id, event_id, receiver, task_id, event_type, body, ?, 0, ?,"
                    " last_error FROM dead_letters " + where,
                    (when, when, *args),
                )
                moved = db.execute("DELETE FROM dead_letters " + where, args).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(moved)

        return await self._run(move)


def _heads_of_tasks(excluded: int) -> str:
    """SQL condition: rows of receiver `?` that are their task's oldest, minus `excluded` tasks.

    Only "?" placeholders are spliced in, never values.
    """
    not_in = f" AND o.task_id NOT IN ({','.join('?' * excluded)})" if excluded else ""
    return (
        "o.receiver = ?" + not_in + " AND NOT EXISTS (SELECT 1 FROM outbox p"
        " WHERE p.receiver = o.receiver AND p.task_id = o.task_id AND p.id < o.id)"
    )
