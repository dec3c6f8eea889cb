"""ListOpLogs listings: which query covers a set of watched tasks, and paging through it.

Paging trusts only what the API reference promises. Whether `count` is every match or this
page, and the largest `limit` the cloud honours, are not documented; so a listing is read
page by page (`offset` advanced by the entries a page really returned, whatever `limit` asked
for) until a page comes back empty — never ended by `count` or by a short page. A refresh may
stop earlier, once every task it wants was seen: it concludes nothing from what it did not read.

Paging while the list changes: CBR lists newest first, and offsets shift under a reader. New
tasks at the head push entries toward later offsets: a page then repeats entries already read
(deduplicated by ID), and nothing is skipped. Deletions pull entries toward earlier offsets,
which would skip some; so each page after a full one starts on the last entry already read
(an overlap of one), and a page that holds no entry read before — the list shrank under us —
is read again from earlier offsets until it does. A page is continuous with what was read when
it holds an entry read before (everything after the last such entry is new and comes next),
or when it is the head of the list. An entry that cannot be read spoils that entry, not the
page.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractContextManager
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


def narrowing(rows: Collection[WatchedTask]) -> dict[str, str]:
    """The filters every one of `rows` passes besides time and status: `vault_id` and
    `operation_type` when every row's last answer shares one (none for a task never seen)."""
    query: dict[str, str] = {}
    vaults = {row.operation_log.vault_id if row.operation_log else None for row in rows}
    types = {row.operation_log.operation_type if row.operation_log else None for row in rows}
    if len(vaults) == 1 and (vault := next(iter(vaults))):
        query["vault_id"] = vault
    if len(types) == 1 and (operation_type := next(iter(types))):
        query["operation_type"] = operation_type
    return query


def since(rows: Collection[WatchedTask]) -> dict[str, str]:
    """`start_time` at the earliest creation second among `rows`, when every creation time is
    known (else no bound: a task never seen may be older than all of them)."""
    created = [row.created_wall for row in rows]
    if not created or any(c is None for c in created):
        return {}
    return {"start_time": cbr_time(min(c for c in created if c is not None))}


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


class Pager:
    """Reads one listing page by page, by the rules in the module docstring; a caller may stop
    after any page (a refresh sweep reads two listings side by side and chooses)."""

    def __init__(
        self,
        client: ListApi,
        listing: Listing,
        *,
        acquire: Callable[[], Awaitable[None]],
        limit: int = LIST_LIMIT,
        under_way: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self._client = client
        self._acquire = acquire
        self.listing = listing
        self._limit = limit
        self._under_way = under_way
        self.result = ListResult()
        self._offset = 0
        self._overlapping = False
        """Whether the page at `_offset` should start on an entry already read."""
        self.last_page: list[OperationLog] = []
        """The readable entries of the last page read."""
        self.last_returned = 0
        """How many entries the last page read returned (0 before the first)."""

    @property
    def ended(self) -> bool:
        """Whether an empty page that follows what was read came back."""
        return self.result.to_the_end

    async def next_page(self) -> list[OperationLog]:
        """Read the next page (one request, each after `acquire`; more only when the list
        shrank under us and a page must be read again from earlier). Returns its readable
        entries, empty once the listing has ended. Errors propagate."""
        if self.ended:
            return []
        result = self.result
        while True:
            await self._acquire()
            with self._under_way():
                page = await self._client.list_op_logs(
                    limit=self._limit, offset=self._offset, extra=self.listing.query
                )
            result.pages += 1
            returned = page.returned
            if returned == 0:
                if not self._overlapping or self._offset == 0:
                    result.to_the_end = True
                    self.last_page, self.last_returned = [], 0
                    return []
                # The entry we stood on is gone: the list shrank. Read again from earlier.
                self._offset = max(0, self._offset - max(result.largest_page, 1))
                self._overlapping = self._offset > 0
                continue
            logs = page.operation_logs
            read_before = [i for i, log in enumerate(logs) if log.id in result.found]
            if self._overlapping and logs and not read_before:
                # Nothing on this page was read before: entries moved toward the head while we
                # paged, and some may have slipped past. Read again from earlier offsets.
                self._offset = max(0, self._offset - returned)
                self._overlapping = self._offset > 0
                continue
            result.largest_page = max(result.largest_page, returned)
            result.malformed += len(page.malformed)
            for log in logs:
                result.found[log.id] = log
            places = page.places()
            if places and places[-1] > 0:
                self._offset += places[-1]  # stand on the last entry read: overlap one
                self._overlapping = True
            else:
                self._offset += returned
                self._overlapping = False
            self.last_page, self.last_returned = logs, returned
            return logs


async def list_all(
    client: ListApi,
    listing: Listing,
    *,
    wanted: Collection[str] = (),
    acquire: Callable[[], Awaitable[None]],
    limit: int = LIST_LIMIT,
    max_pages: int = MAX_PAGES,
    under_way: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    on_page: Callable[[list[OperationLog]], Awaitable[None]] | None = None,
) -> ListResult:
    """Page through `listing` until an empty page that follows what was read, or (with
    `wanted`) until every wanted ID was seen.

    `acquire` is awaited before each page (the shared request budget), and each page request
    runs inside `under_way()` (the scheduler counts it in flight). `on_page` gets each page's
    readable entries as soon as the page is read, so a caller can act before the listing ends.
    Errors propagate, and
    so does IncompleteListingError after `max_pages`: the caller decides what a failed
    listing means, and must not take a partial one for the whole list.
    """
    pager = Pager(client, listing, acquire=acquire, limit=limit, under_way=under_way)
    missing = set(wanted)
    while True:
        if pager.result.pages >= max_pages:
            raise IncompleteListingError(f"no empty page after {max_pages} pages")
        logs = await pager.next_page()
        if pager.ended:
            return pager.result
        missing.difference_update(log.id for log in logs)
        if on_page is not None:
            await on_page(logs)
        if wanted and not missing:
            return pager.result
