"""Refreshing many watched tasks with ListOpLogs pages instead of one ShowOpLog each.

Plan: the tasks to refresh must all have told us their CBR `created_at`. One listing covers
them: `start_time` = the earliest creation second among them, no status filter (so a task
that ended is still on the list, with its terminal status), and `vault_id` / `operation_type`
when every task shares one. CBR lists newest first.

Paging while the list changes: we page by offset (`limit` up to 1000) and stop at a short
page, past `count`, or as soon as every wanted task was seen. Without a status filter a task
never leaves the list by finishing; the list only changes by (a) new tasks created at its
head, which push entries toward later offsets — the next page then repeats a few entries,
deduplicated by ID, and nothing is skipped — and (b) deletions, which pull entries toward
earlier offsets, so one may be skipped. Anything wanted and not seen is returned as missing,
and the engine confirms each with one ShowOpLog: a skip costs one request, never a task.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from watcher.cbr.models import OperationLog, OpLogPage
from watcher.engine.task import WatchedTask

LIST_LIMIT = 1000
"""CBR's largest page."""
MAX_PAGES = 100
"""A safety stop: a listing longer than this many pages is not cheaper than the tasks."""
CBR_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ListApi(Protocol):
    """The part of the CBR client that lists tasks."""

    async def list_op_logs(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        vault_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OpLogPage:
        """One page of ListOpLogs."""
        ...


def cbr_time(wall: float) -> str:
    """`wall` (epoch seconds) as a ListOpLogs time parameter, rounded down to the second."""
    return datetime.fromtimestamp(math.floor(wall), UTC).strftime(CBR_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class Listing:
    """One ListOpLogs query (without paging): the filters sent with every page."""

    query: Mapping[str, str]

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """A hashable name for the query, without its time window (for cost estimates)."""
        return tuple(sorted((k, v) for k, v in self.query.items() if k != "start_time"))


def plan(rows: Collection[WatchedTask]) -> Listing | None:
    """The narrowest listing that covers `rows`; None when some row's creation is unknown."""
    created = [row.created_wall for row in rows]
    if not rows or any(c is None for c in created):
        return None
    query = {"start_time": cbr_time(min(c for c in created if c is not None))}
    vaults = {row.operation_log.vault_id if row.operation_log else None for row in rows}
    types = {row.operation_log.operation_type if row.operation_log else None for row in rows}
    if len(vaults) == 1 and (vault := next(iter(vaults))):
        query["vault_id"] = vault
    if len(types) == 1 and (operation_type := next(iter(types))):
        query["operation_type"] = operation_type
    return Listing(query=query)


def pages_for(count: int | None, wanted: int) -> int:
    """Pages a listing is expected to take: from the `count` CBR reported for it last time,
    else at least what the wanted tasks alone fill."""
    entries = max(count or 0, wanted)
    return max(1, math.ceil(entries / LIST_LIMIT))


@dataclass(slots=True)
class ListResult:
    """What paging through one listing found."""

    found: dict[str, OperationLog] = field(default_factory=dict)
    """Every task on the pages read, by ID (the latest answer when one repeats)."""
    pages: int = 0
    count: int | None = None
    """The total CBR reported on the last page."""


async def list_all(
    client: ListApi,
    listing: Listing,
    *,
    wanted: Collection[str],
    acquire: Callable[[], Awaitable[None]],
    limit: int = LIST_LIMIT,
    max_pages: int = MAX_PAGES,
) -> ListResult:
    """Page through `listing` until every `wanted` ID was seen or the list ends.

    `acquire` is awaited before each page (the shared request budget). Errors propagate: the
    caller decides what a failed listing means.
    """
    result = ListResult()
    missing = set(wanted)
    offset = 0
    while result.pages < max_pages:
        await acquire()
        page = await client.list_op_logs(limit=limit, offset=offset, extra=listing.query)
        result.pages += 1
        result.count = page.count
        for operation_log in page.operation_logs:
            result.found[operation_log.id] = operation_log
            missing.discard(operation_log.id)
        offset += len(page.operation_logs)
        if wanted and not missing:
            break
        if len(page.operation_logs) < limit or (page.count is not None and offset >= page.count):
            break
    return result
