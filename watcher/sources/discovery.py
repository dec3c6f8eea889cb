"""Discovery (see docs/polling.md): watch the tasks nobody named, such as backups policies start.

Each `[[watch.discover]]` block is one ListOpLogs filter (one query per operation type it
names: CBR takes one type per request). Every `discover_interval` each query lists the tasks
*created* since its cursor (no status filter, so a task that started and ended between two
looks is on the list with its terminal status, and the engine sends its terminal event once).
The first look of a process also lists the query's `running` and `waiting` tasks, which finds
long tasks created before the window.

The cursor of a query is the newest CBR `created_at` it has seen (CBR's clock, not ours), kept
in the state file; each look starts `CURSOR_OVERLAP` before it, for tasks that become visible
a little after they were created. Tasks already watched, ended (the state file keeps them for
30 days) or removed through the task API are skipped, so the overlap and restarts announce
nothing twice. With no cursor yet (the very first start, or a new block) the window starts
`discover_lookback` ago.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from watcher.cbr.errors import CbrError, ThrottledError
from watcher.cbr.models import OperationLog
from watcher.clock import Clock
from watcher.config.model import DiscoverSettings
from watcher.engine import listing as batch
from watcher.engine.engine import Engine
from watcher.engine.listing import IncompleteListingError

log = structlog.get_logger("watcher.discovery")

REFUSED_PAUSE = 3600.0
"""After a refused listing (403) discovery tries again this much later."""
CURSOR_KEY = "discovery.cursors"
CURSOR_OVERLAP = 600.0
"""Each look re-lists this many seconds before the cursor (late-visible tasks)."""
ACTIVE_STATUSES = ("running", "waiting")


class CursorStore(Protocol):
    """Where the cursors survive a restart (the state database's meta table)."""

    async def get_meta(self, key: str) -> str | None:
        """The stored value of `key`, or None."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key` durably."""
        ...


@dataclass(frozen=True, slots=True)
class Query:
    """One ListOpLogs filter of one block (one operation type at most)."""

    filters: Mapping[str, str]
    labels: Mapping[str, str]

    @property
    def key(self) -> str:
        """A stable name for the query's cursor."""
        return json.dumps(dict(sorted(self.filters.items())), separators=(",", ":"))


def queries_for(blocks: Sequence[DiscoverSettings]) -> list[Query]:
    """The ListOpLogs queries the blocks stand for."""
    queries: list[Query] = []
    for block in blocks:
        base = block.filters()
        types: list[str | None] = list(block.operation_type) or [None]
        for operation_type in types:
            filters = dict(base)
            if operation_type is not None:
                filters["operation_type"] = operation_type
            queries.append(Query(filters=filters, labels=dict(block.labels)))
    return queries


@dataclass(slots=True)
class LookResult:
    """What one look found."""

    listed: int = 0
    watched: list[str] = field(default_factory=list)
    pages: int = 0
    failed: int = 0
    """Queries whose listing failed (retried at the next look)."""


class Discovery:
    """Lists the configured queries every `interval` and hands new tasks to the engine."""

    def __init__(
        self,
        *,
        client: batch.ListApi,
        engine: Engine,
        clock: Clock,
        blocks: Sequence[DiscoverSettings],
        interval: float,
        lookback: float,
        cursors: CursorStore | None = None,
    ) -> None:
        self._client = client
        self._engine = engine
        self._clock = clock
        self.queries = queries_for(blocks)
        self._interval = interval
        self._lookback = lookback
        self._store = cursors
        self._cursors: dict[str, float] | None = None
        self._first_look = True
        self._failing = False
        self._refused_until = -math.inf
        self.looks = 0
        self.discovered = 0

    async def run(self) -> None:
        """Look every `interval` until cancelled; never raises."""
        while True:
            try:
                await self.look()
            except Exception as error:  # a bug here must not end discovery
                log.error(
                    "discovery.internal_error",
                    error_type=type(error).__name__,
                    error=str(error)[:200],
                )
            await self._clock.sleep(self._interval)

    async def look(self) -> LookResult:
        """One round over every query; new tasks are watched before it returns."""
        cursors = await self._load_cursors()
        result = LookResult()
        if self._clock.monotonic() < self._refused_until:
            return result
        for query in self.queries:
            try:
                await self._look_for(query, cursors, result)
            except IncompleteListingError as error:
                # Never read to its end: its cursor stays where it was, and the next look
                # lists the same window again.
                result.failed += 1
                log.warning("discovery.list_incomplete", query=query.key, error=str(error))
            except CbrError as error:
                result.failed += 1
                if error.http_status == 403:
                    self._refused(error)
                    break
                # The daemon's health (the heartbeat) counts discovery's requests too: a
                # watcher with no task to poll still depends on CBR answering these.
                self._engine.upstream.failed(error)
                if isinstance(error, ThrottledError) and error.retry_after is not None:
                    # The quota is shared by every request: nobody calls before it resets,
                    # but no header stops the watching for longer than poll_interval_max.
                    pause = min(error.retry_after, self._engine.policy.interval_max)
                    self._engine.budget.pause_until(self._clock.monotonic() + pause)
                if not self._failing:
                    log.warning(
                        "discovery.list_failed",
                        query=query.key,
                        error=error.message,
                        code=error.code_label,
                    )
                self._failing = True
            else:
                self._engine.upstream.ok()
        if not result.failed and self._failing:
            log.info("discovery.recovered")
            self._failing = False
        if not result.failed:
            self._first_look = False  # the running/waiting listings worked at least once
        self.looks += 1
        self.discovered += len(result.watched)
        await self._save_cursors(cursors)
        if result.watched:
            log.info(
                "discovery.found",
                count=len(result.watched),
                listed=result.listed,
                pages=result.pages,
            )
        return result

    def _refused(self, error: CbrError) -> None:
        """403: the credentials may not list. Said once, counted, tried again hourly."""
        self._engine.stats.list_refused["discovery"] += 1
        self._refused_until = self._clock.monotonic() + REFUSED_PAUSE
        if not self._failing:
            log.warning(
                "discovery.list_refused",
                error_code=error.error_code,
                detail=(
                    "the credentials may not list operation logs (ListOpLogs 403): discovery "
                    f"finds no new task; tried again every {REFUSED_PAUSE / 60:g} minutes"
                ),
            )
        self._failing = True

    async def _look_for(self, query: Query, cursors: dict[str, float], result: LookResult) -> None:
        now = self._clock.wall()
        cursor = cursors.get(query.key)
        since = now - self._lookback if cursor is None else cursor - CURSOR_OVERLAP
        listings = [batch.Listing({**query.filters, "start_time": batch.cbr_time(since)})]
        if self._first_look:
            listings += [batch.Listing({**query.filters, "status": s}) for s in ACTIVE_STATUSES]
        newest = cursor if cursor is not None else since
        for listing in listings:
            found = await batch.list_all(
                self._client,
                listing,
                acquire=self._engine.acquire_request,
                under_way=self._engine.scheduler.requests_under_way,
            )
            result.pages += found.pages
            result.listed += len(found.found)
            if found.malformed:
                self._engine.stats.list_malformed["discovery"] += found.malformed
                log.warning("discovery.entries_unreadable", entries=found.malformed)
            for operation_log in found.found.values():
                created = _created(operation_log)
                if "start_time" in listing.query and created is not None:
                    newest = max(newest, created)
                if await self._watch(operation_log, query):
                    result.watched.append(operation_log.id)
        cursors[query.key] = newest

    async def _watch(self, operation_log: OperationLog, query: Query) -> bool:
        if self._engine.knows(operation_log.id):
            return False
        try:
            return await self._engine.discovered(operation_log, query.labels)
        except ValueError:  # an ID the engine refuses (InvalidTaskIdError): skip it
            log.warning("discovery.bad_task_id", task_id=operation_log.id[:100])
            return False

    async def _load_cursors(self) -> dict[str, float]:
        if self._cursors is not None:
            return self._cursors
        self._cursors = {}
        if self._store is not None:
            raw = await self._store.get_meta(CURSOR_KEY)
            self._cursors = _parse_cursors(raw)
        return self._cursors

    async def _save_cursors(self, cursors: dict[str, float]) -> None:
        if self._store is None:
            return
        try:
            await self._store.set_meta(CURSOR_KEY, json.dumps(cursors, sort_keys=True))
        except Exception as error:
            # The next look saves again; a restart meanwhile re-lists the overlap and skips
            # every task it already knows.
            log.warning(
                "discovery.cursor_not_saved",
                error_type=type(error).__name__,
                error=str(error)[:200],
            )


def _created(operation_log: OperationLog) -> float | None:
    created_at = operation_log.created_at
    return created_at.timestamp() if created_at is not None else None


def _parse_cursors(raw: str | None) -> dict[str, float]:
    """Stored cursors; anything unreadable counts as none (a first look, with lookback)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        log.warning("discovery.cursor_unreadable")
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        str(key): float(cursor)
        for key, cursor in value.items()
        if isinstance(cursor, int | float)
        and not isinstance(cursor, bool)
        and math.isfinite(cursor)
    }
