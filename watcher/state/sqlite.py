"""The state store: watched tasks, the webhook outbox and dead letters, bookkeeping that must
survive a restart, and what discovery remembers; all in one SQLite file.

A task's new state and the rows it produced are committed together, before anything is
delivered (see `watcher.delivery.recorder`). The file is opened, locked and migrated by
`watcher.state.connection`; its tables are in `watcher.state.schema`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from watcher.coverage.freshness import ResourceKey, ResourceStatus
from watcher.safetext import clean
from watcher.state.connection import Connection, transaction
from watcher.state.rows import (
    DeadLetter,
    InventoryRecord,
    LastSuccess,
    MissedRecord,
    OutboxEntry,
    PendingDelivery,
    TaskRecord,
)

CHECKED_UNTIL_KEY = "coverage.checked_until"
_TASK_COLUMNS = (
    "task_id, labels, source, status, progress, raw, first_seen, started,"
    " last_change, last_progress, ended, end_reason"
)
_RESOURCE_COLUMNS = (
    "resource_id, operation_type, resource_name, resource_type, vault_id, last_status,"
    " last_ended, last_success_ended"
)


class Store:
    """Async facade over the state file; every query runs on the connection's worker thread."""

    def __init__(self, path: str, *, lock: bool = True) -> None:
        self.path = path
        self._connection = Connection(path, lock=lock)

    @classmethod
    async def open(cls, path: str, *, lock: bool = True) -> Store:
        """Lock, open (creating if needed) and migrate the state file; StoreError if it is
        unusable or another process has it open (see `watcher.state.lock`).

        `lock=False` opens it without the daemon lock, next to a running daemon (for the
        `dead-letters` command); SQLite's own locking keeps the two writers apart.
        """
        store = cls(path, lock=lock)
        try:
            await store._connection.open()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close the file, release the state lock and stop the worker thread."""
        await self._connection.close()

    @property
    def _db(self) -> sqlite3.Connection:
        return self._connection.db

    # ---- tasks ----------------------------------------------------------------------------

    async def load_tasks(self) -> list[TaskRecord]:
        """Every task in the store, finished or not, oldest first."""

        def query() -> list[TaskRecord]:
            rows = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY first_seen"
            ).fetchall()
            return [_task_record(row) for row in rows]

        return await self._connection.run(query)

    async def save(
        self,
        task: TaskRecord,
        outbox: Iterable[OutboxEntry] = (),
        *,
        last_success: LastSuccess | None = None,
        resources: Iterable[ResourceStatus] = (),
    ) -> None:
        """Write a task's state, the outbox rows of its events and the bookkeeping they
        changed, in one transaction. `resources` replace what is stored for their keys."""
        entries, statuses = list(outbox), list(resources)

        def write(db: sqlite3.Connection) -> None:
            _upsert_task(db, task)
            _insert_outbox(db, entries)
            if last_success is not None:
                db.execute(
                    "INSERT INTO last_success (operation_type, ended) VALUES (?, ?)"
                    " ON CONFLICT (operation_type) DO UPDATE"
                    " SET ended = max(ended, excluded.ended)",
                    (clean(last_success.operation_type), last_success.ended),
                )
            _upsert_resources(db, statuses)

        await self._connection.write(write)

    async def delete_task(self, task_id: str, *, tombstone_at: float | None = None) -> None:
        """Forget a task (its undelivered events stay in the outbox). With `tombstone_at`
        (wall seconds), also remember it was removed on purpose (see `tombstones`)."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
            if tombstone_at is not None:
                _insert_tombstone(db, task_id, tombstone_at)

        await self._connection.write(delete)

    async def prune_ended(self, before: float) -> int:
        """Drop tasks that ended before `before` (wall seconds); returns how many."""
        cursor = await self._connection.run(
            lambda: self._db.execute(
                "DELETE FROM tasks WHERE ended IS NOT NULL AND ended < ?", (before,)
            )
        )
        return cursor.rowcount

    # ---- bookkeeping ------------------------------------------------------------------------

    async def last_successes(self) -> dict[str, float]:
        """The newest successful end per operation type (for the restart-proof metric)."""
        rows = await self._connection.run(
            lambda: self._db.execute("SELECT operation_type, ended FROM last_success").fetchall()
        )
        return {str(op): float(ended) for op, ended in rows}

    async def resource_statuses(self) -> list[ResourceStatus]:
        """What is known of every resource's newest finished task (the freshness metrics'
        restore at start-up), ordered by resource and operation type."""
        rows = await self._connection.run(
            lambda: self._db.execute(
                f"SELECT {_RESOURCE_COLUMNS} FROM resource_status"
                " ORDER BY resource_id, operation_type"
            ).fetchall()
        )
        return [
            ResourceStatus(
                key=ResourceKey(str(row[0]), str(row[1])),
                resource_name=str(row[2]),
                resource_type=str(row[3]),
                vault_id=str(row[4]),
                last_status=str(row[5]),
                last_ended=float(row[6]),
                last_success_ended=None if row[7] is None else float(row[7]),
            )
            for row in rows
        ]

    # ---- coverage ---------------------------------------------------------------------------

    async def inventory_records(self) -> list[InventoryRecord]:
        """Every resource the coverage inventory has seen and not seen leave."""
        rows = await self._connection.run(
            lambda: self._db.execute(
                "SELECT resource_id, first_seen, asked, backed_up, newest_backup"
                " FROM inventory_resources ORDER BY resource_id"
            ).fetchall()
        )
        return [
            InventoryRecord(
                str(row[0]),
                float(row[1]),
                None if row[2] is None else float(row[2]),
                None if row[3] is None else bool(row[3]),
                None if row[4] is None else float(row[4]),
            )
            for row in rows
        ]

    async def save_inventory(
        self, records: Iterable[InventoryRecord], *, removed: Iterable[str] = ()
    ) -> None:
        """Store what the inventory learned of `records` (replacing what was stored for them)
        and forget the `removed` resources: their inventory rows, freshness rows and missed
        counts, in one transaction."""
        upserts = [
            (
                clean(r.resource_id),
                r.first_seen,
                r.asked,
                None if r.backed_up is None else int(r.backed_up),
                r.newest_backup,
            )
            for r in records
        ]
        gone = [(clean(resource_id),) for resource_id in removed]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO inventory_resources"
                " (resource_id, first_seen, asked, backed_up, newest_backup)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (resource_id) DO UPDATE SET"
                " first_seen=excluded.first_seen, asked=excluded.asked,"
                " backed_up=excluded.backed_up, newest_backup=excluded.newest_backup",
                upserts,
            )
            db.executemany("DELETE FROM inventory_resources WHERE resource_id = ?", gone)
            db.executemany("DELETE FROM resource_status WHERE resource_id = ?", gone)
            db.executemany("DELETE FROM missed_counts WHERE resource_id = ?", gone)

        await self._connection.write(write)

    async def record_missed(
        self,
        missed: Iterable[tuple[MissedRecord, Sequence[OutboxEntry]]],
        *,
        checked_until: float,
        keep: float = 7 * 86_400.0,
    ) -> int:
        """Announce missed backups, each with its outbox rows, and store the point up to
        which starts were judged, in one transaction. A (resource, start) already announced
        is skipped, outbox rows and all; each new one adds 1 to its resource's count.
        Announcements of starts older than `keep` before `checked_until` are pruned. Returns
        how many were new."""
        items = [(row, list(entries)) for row, entries in missed]
        new = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal new
            new = 0
            for row, entries in items:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO missed_backups"
                    " (resource_id, scheduled_at, vault_id, policy_id, announced)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        clean(row.resource_id),
                        row.scheduled_at,
                        clean(row.vault_id),
                        clean(row.policy_id),
                        row.announced,
                    ),
                )
                if cursor.rowcount != 1:
                    continue
                new += 1
                db.execute(
                    "INSERT INTO missed_counts (resource_id, vault_id, missed)"
                    " VALUES (?, ?, 1) ON CONFLICT (resource_id, vault_id) DO UPDATE"
                    " SET missed = missed + 1",
                    (clean(row.resource_id), clean(row.vault_id)),
                )
                _insert_outbox(db, entries)
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (CHECKED_UNTIL_KEY, repr(checked_until)),
            )
            db.execute("DELETE FROM missed_backups WHERE scheduled_at < ?", (checked_until - keep,))

        await self._connection.write(write)
        return new

    async def missed_since(self, since: float) -> set[tuple[str, float]]:
        """(resource ID, scheduled start) of every announcement of a start after `since`."""
        rows = await self._connection.run(
            lambda: self._db.execute(
                "SELECT resource_id, scheduled_at FROM missed_backups WHERE scheduled_at > ?",
                (since,),
            ).fetchall()
        )
        return {(str(row[0]), float(row[1])) for row in rows}

    async def missed_counts(self) -> dict[tuple[str, str], int]:
        """Missed backups announced per (resource ID, vault ID), for the restart-proof counter."""
        rows = await self._connection.run(
            lambda: self._db.execute(
                "SELECT resource_id, vault_id, missed FROM missed_counts"
            ).fetchall()
        )
        return {(str(row[0]), str(row[1])): int(row[2]) for row in rows}

    async def checked_until(self) -> float | None:
        """Up to when scheduled starts were judged (None: never)."""
        raw = await self.get_meta(CHECKED_UNTIL_KEY)
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) else None

    # ---- discovery ----------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        """The value stored under `key` by `set_meta`, None if there is none."""
        row = await self._connection.run(
            lambda: self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key` (replacing any earlier one), committed before returning."""
        await self._connection.run(
            lambda: self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    async def add_tombstone(self, task_id: str, at: float) -> None:
        """Remember that `task_id` was removed on purpose at `at` (wall seconds), so discovery
        does not watch it again; kept until `prune_tombstones` drops it."""
        await self._connection.run(lambda: _insert_tombstone(self._db, task_id, at))

    async def tombstones(self) -> set[str]:
        """Every task removed on purpose and not pruned yet."""
        rows = await self._connection.run(
            lambda: self._db.execute("SELECT task_id FROM tombstones").fetchall()
        )
        return {str(row[0]) for row in rows}

    async def prune_tombstones(self, before: float) -> int:
        """Drop tombstones older than `before` (wall seconds); returns how many."""
        cursor = await self._connection.run(
            lambda: self._db.execute("DELETE FROM tombstones WHERE removed < ?", (before,))
        )
        return cursor.rowcount

    # ---- outbox ---------------------------------------------------------------------------

    async def enqueue(self, entries: Iterable[OutboxEntry]) -> None:
        """Add outbox rows that come with no task state (e.g. a benchmark's, a test's)."""
        rows = list(entries)
        await self._connection.run(lambda: _insert_outbox(self._db, rows))

    async def due(
        self, receiver: str, now: float, *, limit: int, exclude_tasks: Iterable[str] = ()
    ) -> list[PendingDelivery]:
        """Rows due for `receiver`, oldest first, at most one per task (the task's oldest).

        Only a task's oldest undelivered event is ever offered, so events for one task reach
        a receiver in the order they were created, even after a long outage.
        """
        excluded = sorted(set(exclude_tasks))

        def query() -> list[PendingDelivery]:
            rows = self._db.execute(
                "SELECT o.id, o.event_id, o.receiver, o.task_id, o.event_type, o.body,"
                " o.created, o.attempts FROM outbox o WHERE o.next_attempt <= ? AND "
                + _heads_of_tasks(len(excluded))
                + " ORDER BY o.id LIMIT ?",
                (now, receiver, *excluded, limit),
            ).fetchall()
            return [PendingDelivery(*row) for row in rows]

        return await self._connection.run(query)

    async def next_attempt_at(
        self, receiver: str, *, exclude_tasks: Iterable[str] = ()
    ) -> float | None:
        """When the next row `due` could offer becomes due (None: nothing is queued)."""
        excluded = sorted(set(exclude_tasks))

        def query() -> float | None:
            row = self._db.execute(
                "SELECT min(o.next_attempt) FROM outbox o WHERE " + _heads_of_tasks(len(excluded)),
                (receiver, *excluded),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._connection.run(query)

    async def delivered(self, row_id: int) -> None:
        """The receiver acknowledged: the row goes, so it is never sent again."""
        await self._connection.run(
            lambda: self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        )

    async def retry_later(self, row_id: int, *, next_attempt: float, error: str) -> None:
        """Count a failed attempt and set when to try again."""
        await self._connection.run(
            lambda: self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                " WHERE id = ?",
                (next_attempt, clean(error[:500]), row_id),
            )
        )

    async def dead_letter(self, row_id: int, *, now: float, reason: str, error: str) -> None:
        """Move a row the receiver never accepted into dead_letters (kept, never retried)."""

        def move() -> None:
            with transaction(self._db) as db:
                db.execute(
                    "INSERT INTO dead_letters (id, event_id, receiver, task_id, event_type, body,"
                    " created, attempts, last_error, dead_at, reason)"
                    " SELECT id, event_id, receiver, task_id, event_type, body, created,"
                    " attempts + 1, ?, ?, ? FROM outbox WHERE id = ?",
                    (clean(error[:500]), now, reason, row_id),
                )
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

        await self._connection.run(move)

    async def queue_depths(self) -> dict[str, int]:
        """Undelivered events per receiver."""
        rows = await self._connection.run(
            lambda: self._db.execute(
                "SELECT receiver, count(*) FROM outbox GROUP BY receiver"
            ).fetchall()
        )
        return {str(name): int(count) for name, count in rows}

    async def dead_letters(self) -> list[tuple[str, str, str, str]]:
        """(event_id, receiver, reason, last_error) of every dead letter, oldest first."""
        return [
            (letter.event_id, letter.receiver, letter.reason, letter.last_error)
            for letter in await self.dead_letter_rows()
        ]

    async def dead_letter_rows(self) -> list[DeadLetter]:
        """Every dead letter with its details, oldest first."""
        rows = await self._connection.run(
            lambda: self._db.execute(
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
            with transaction(self._db) as db:
                # The original row id keeps the event in its place among its task's events.
                db.execute(
                    "INSERT OR IGNORE INTO outbox (id, event_id, receiver, task_id, event_type,"
                    " body, created, attempts, next_attempt, last_error)"
                    " SELECT id, event_id, receiver, task_id, event_type, body, ?, 0, ?,"
                    " last_error FROM dead_letters " + where,
                    (when, when, *args),
                )
                return int(db.execute("DELETE FROM dead_letters " + where, args).rowcount)

        return await self._connection.run(move)


def _task_record(row: Any) -> TaskRecord:
    return TaskRecord(
        task_id=row[0],
        labels=json.loads(row[1]),
        source=row[2],
        status=row[3],
        progress=row[4],
        raw_json=row[5].encode() if row[5] else None,
        first_seen=row[6],
        started=row[7],
        last_change=row[8],
        last_progress=row[9],
        ended=row[10],
        end_reason=row[11],
    )


def _upsert_task(db: sqlite3.Connection, task: TaskRecord) -> None:
    db.execute(
        f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            task.raw_json.decode() if task.raw_json is not None else None,
            task.first_seen,
            task.started,
            task.last_change,
            task.last_progress,
            task.ended,
            None if task.end_reason is None else clean(task.end_reason),
        ),
    )


def _upsert_resources(db: sqlite3.Connection, statuses: Sequence[ResourceStatus]) -> None:
    db.executemany(
        f"INSERT INTO resource_status ({_RESOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (resource_id, operation_type) DO UPDATE SET"
        " resource_name=excluded.resource_name, resource_type=excluded.resource_type,"
        " vault_id=excluded.vault_id, last_status=excluded.last_status,"
        " last_ended=excluded.last_ended, last_success_ended=excluded.last_success_ended",
        [
            (
                clean(s.key.resource_id),
                clean(s.key.operation_type),
                clean(s.resource_name),
                clean(s.resource_type),
                clean(s.vault_id),
                clean(s.last_status),
                s.last_ended,
                s.last_success_ended,
            )
            for s in statuses
        ],
    )


def _insert_outbox(db: sqlite3.Connection, entries: Sequence[OutboxEntry]) -> None:
    """The one outbox INSERT: a row already there (same event, same receiver) is kept."""
    db.executemany(
        "INSERT OR IGNORE INTO outbox (event_id, receiver, task_id, event_type, body,"
        " created, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (e.event_id, e.receiver, e.task_id, e.event_type, e.body, e.created, e.created)
            for e in entries
        ],
    )


def _insert_tombstone(db: sqlite3.Connection, task_id: str, at: float) -> None:
    db.execute(
        "INSERT INTO tombstones (task_id, removed) VALUES (?, ?)"
        " ON CONFLICT (task_id) DO UPDATE SET removed = excluded.removed",
        (task_id, at),
    )


def _heads_of_tasks(excluded: int) -> str:
    """SQL condition: rows of receiver `?` that are their task's oldest, minus `excluded` tasks.

    Only "?" placeholders are spliced in, never values.
    """
    not_in = f" AND o.task_id NOT IN ({','.join('?' * excluded)})" if excluded else ""
    return (
        "o.receiver = ?" + not_in + " AND NOT EXISTS (SELECT 1 FROM outbox p"
        " WHERE p.receiver = o.receiver AND p.task_id = o.task_id AND p.id < o.id)"
    )
