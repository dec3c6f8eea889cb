"""ListOpLogs listings: which query covers a set of watched tasks, and paging through it.

Paging trusts only what the API reference promises. Whether `count` is every match or this
page, and the largest `limit` the cloud honours, are not documented; so a listing is read
page by page (`offset` advanced by the entries a page really returned, whatever `limit` asked
for) until a page comes back empty — never ended by `count` or by a short page. A refresh may
stop earlier, once every task it wants was seen: it concludes nothing from what it did not read.

Paging while the list changes: CBR lists newest first. New tasks created at the head push
entries toward later offsets, so the next page repeats a few (deduplicated by ID) and nothing
is skipped; deletions pull entries toward earlier offsets, so one may be skipped. Anything
wanted and not seen is reported missing, and the engine confirms each with one ShowOpLog.
An entry that cannot be read spoils that entry, not the page.
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
"""The page size asked for (the largest the reference's schema shows); the cloud may return
fewer per page, which only means more pages."""
MAX_PAGES = 10_000
"""A safety stop: a listing longer than this is abandoned as incomplete."""
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


class IncompleteListingError(RuntimeError):
    """A listing was abandoned before an empty page (see MAX_PAGES)."""


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
    """The narrowest single listing that covers `rows`: no status filter (a task that ended
    is still listed, with its terminal status), `start_time` the earliest creation second
    among them, and `vault_id` / `operation_type` when every row shares one. None when some
    row's creation time is unknown."""
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


@dataclass(slots=True)
class ListResult:
    """What paging through one listing found."""

    found: dict[str, OperationLog] = field(default_factory=dict)
    """Every readable task on the pages read, by ID (the latest answer when one repeats)."""
    pages: int = 0
    malformed: int = 0
    """Entries that could not be read."""
    largest_page: int = 0
    """The most entries one page returned (the page size the cloud really serves)."""
    to_the_end: bool = False
    """Read until an empty page (False when it stopped because every wanted task was seen)."""


async def list_all(
    client: ListApi,
    listing: Listing,
    *,
    wanted: Collection[str] = (),
    acquire: Callable[[], Awaitable[None]],
    limit: int = LIST_LIMIT,
    max_pages: int = MAX_PAGES,
) -> ListResult:
    """Page through `listing` until an empty page, or (with `wanted`) until every wanted ID
    was seen.

    `acquire` is awaited before each page (the shared request budget). Errors propagate, and
    so does IncompleteListingError after `max_pages`: the caller decides what a failed
    listing means, and must not take a partial one for the whole list.
    """
    result = ListResult()
    missing = set(wanted)
    offset = 0
    while True:
        if result.pages >= max_pages:
            raise IncompleteListingError(f"no empty page after {max_pages} pages")
        await acquire()
        page = await client.list_op_logs(limit=limit, offset=offset, extra=listing.query)
        result.pages += 1
        returned = page.returned
        if returned == 0:
            result.to_the_end = True
            return result
        result.largest_page = max(result.largest_page, returned)
        result.malformed += len(page.malformed)
        for operation_log in page.operation_logs:
            result.found[operation_log.id] = operation_log
            missing.discard(operation_log.id)
        offset += returned
        if wanted and not missing:
            return result
