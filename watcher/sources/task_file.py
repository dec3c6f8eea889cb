"""`watch.task_file`: keep the engine's "file" tasks equal to the file's contents.

Reading and parsing run in a worker thread, so a 50,000-line file never stalls the event loop;
the loop only applies the difference to what was applied last, in chunks, yielding between
them. A one-line edit therefore costs the loop one `add` or `remove`, not a pass over the
whole table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from watcher.cbr.ids import InvalidTaskIdError, parse_task_file
from watcher.clock import Clock

log = structlog.get_logger("watcher.task_file")

SOURCE = "file"
"""The `source` of every task the file adds."""
CHECK_INTERVAL = 5.0
"""Seconds between looks at the file's size and modification time."""
APPLY_CHUNK = 500
"""Adds or removals applied between two yields to the event loop."""

Stamp = tuple[int, int]


class FileTask(Protocol):
    """What the source reads of a task-table row."""

    @property
    def source(self) -> str:
        """Where the task came from ("file", "config", "api", …)."""
        ...

    @property
    def ended(self) -> bool:
        """Whether its watch is over."""
        ...


class TaskTable(Protocol):
    """The part of the engine the task-file source uses."""

    @property
    def tasks(self) -> Mapping[str, FileTask]:
        """The task table by ID."""
        ...

    def add(
        self, task_id: str, labels: Mapping[str, str] | None = None, *, source: str = "config"
    ) -> bool:
        """Start watching `task_id`; False if already present (or known to have ended)."""
        ...

    def remove(self, task_id: str, *, tombstone: bool = True) -> bool:
        """Stop watching `task_id`."""
        ...

    def sync_source(self, source: str, task_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make the unfinished tasks of `source` equal `task_ids`; (added, removed)."""
        ...


@dataclass(frozen=True, slots=True)
class FileRead:
    """One read of the task file, done off the loop."""

    stamp: Stamp | None
    ids: list[str]
    id_set: frozenset[str]
    to_add: list[str]
    """IDs in the file that the table did not hold when the thread looked (checked again)."""
    to_remove: list[str]
    """IDs applied from the file last time that it no longer names."""


def read_stamp(path: Path) -> Stamp | None:
    """(mtime in ns, size) of `path`, or None when it cannot be stat'ed."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def read_and_diff(path: Path, applied: frozenset[str], table: Mapping[str, object]) -> FileRead:
    """Read and parse the file and diff it against `applied` and `table` (in a worker thread).

    `table` is only probed by key (atomic under the GIL); the loop re-checks every candidate.
    Raises OSError, UnicodeDecodeError or InvalidTaskIdError.
    """
    stamp = read_stamp(path)
    ids = parse_task_file(path.read_text(encoding="utf-8"))
    wanted = frozenset(ids)
    return FileRead(
        stamp=stamp,
        ids=ids,
        id_set=wanted,
        to_add=[task_id for task_id in ids if task_id not in table],
        to_remove=[task_id for task_id in applied if task_id not in wanted],
    )


class TaskFileSource:
    """Keeps the engine's "file" tasks equal to the contents of `watch.task_file`."""

    def __init__(
        self,
        path: Path,
        engine: TaskTable,
        *,
        on_added: Callable[[int], None] | None = None,
        chunk: int = APPLY_CHUNK,
    ) -> None:
        self.path = path
        self._engine = engine
        self._on_added = on_added
        self._chunk = max(1, chunk)
        self._stamp: Stamp | None = None
        self._applied: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self.reloads = 0
        """Reads of the file that changed what is watched or were forced (for tests)."""

    async def load(self) -> None:
        """The start-up read: the whole set in one step (the daemon is not ready yet)."""
        async with self._lock:
            read = await self._read(force=True)
            if read is None:
                return
            added, removed = self._engine.sync_source(SOURCE, read.ids)
            self._adopt(read, added, removed, forced=True)

    async def reload(self, *, force: bool = False) -> None:
        """Re-read the file if it changed (always with `force`); bad content keeps the old set.

        Only the difference to the last applied set is handed to the engine, in chunks.
        """
        async with self._lock:
            read = await self._read(force=force)
            if read is None:
                return
            added: list[str] = []
            for start in range(0, len(read.to_add), self._chunk):
                added += [
                    task_id
                    for task_id in read.to_add[start : start + self._chunk]
                    if self._engine.add(task_id, source=SOURCE)
                ]
                await asyncio.sleep(0)
            removed: list[str] = []
            for start in range(0, len(read.to_remove), self._chunk):
                removed += [
                    task_id
                    for task_id in read.to_remove[start : start + self._chunk]
                    if self._remove_file_task(task_id)
                ]
                await asyncio.sleep(0)
            self._adopt(read, added, removed, forced=force)

    async def follow(self, clock: Clock) -> None:
        """Check the file for changes every few seconds, forever."""
        while True:
            await clock.sleep(CHECK_INTERVAL)
            await self.reload()

    async def _read(self, *, force: bool) -> FileRead | None:
        stamp = await asyncio.to_thread(read_stamp, self.path)
        if not force and stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            read = await asyncio.to_thread(
                read_and_diff, self.path, self._applied, self._engine.tasks
            )
        except (OSError, UnicodeDecodeError) as error:
            log.error("task_file.unreadable", path=str(self.path), error=str(error))
            return None
        except InvalidTaskIdError as error:
            log.error("task_file.invalid", path=str(self.path), error=str(error))
            return None
        # A change between the stat and the read is caught on the next look.
        self._stamp = read.stamp if read.stamp == stamp else None
        return read

    def _remove_file_task(self, task_id: str) -> bool:
        task = self._engine.tasks.get(task_id)
        if task is None or task.source != SOURCE or task.ended:
            return False
        return self._engine.remove(task_id, tombstone=False)

    def _adopt(self, read: FileRead, added: list[str], removed: list[str], *, forced: bool) -> None:
        self._applied = read.id_set
        if added and self._on_added is not None:
            self._on_added(len(added))
        if added or removed or forced:
            self.reloads += 1
            log.info(
                "task_file.loaded",
                path=str(self.path),
                tasks=len(read.ids),
                added=len(added),
                removed=len(removed),
            )
