"""Paging through a CBR listing the way the API reference allows, and no further.

Whether `count` is every match or one page, and the largest `limit` honoured, are not
documented; so a listing is read page by page, `offset` advanced by the entries a page really
returned (readable or not), until a page comes back empty: never ended by `count` or by a
short page. `watcher.engine.listing.list_all` pages ListOpLogs by the same rules; this is the
same loop for any listing whose pages say how many entries they `returned` (ListVaults,
ListBackups).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

MAX_PAGES = 10_000
"""A safety stop: a listing longer than this is abandoned as incomplete."""


class IncompletePagingError(RuntimeError):
    """A listing was abandoned before an empty page (see MAX_PAGES)."""


class Page(Protocol):
    """One page of a listing."""

    @property
    def returned(self) -> int:
        """Entries the page held, readable or not."""
        ...


P = TypeVar("P", bound=Page)


async def pages(
    fetch: Callable[[int], Awaitable[P]],
    *,
    acquire: Callable[[], Awaitable[None]],
    max_pages: int = MAX_PAGES,
) -> AsyncIterator[P]:
    """Every non-empty page of a listing, from offset 0 until an empty page.

    `fetch(offset)` asks for one page; `acquire` is awaited before each (the request budget).
    The iteration ends normally only after an empty page; errors propagate, and so does
    IncompletePagingError after `max_pages`, so a caller never takes a partial listing for
    the whole one.
    """
    offset = 0
    for _ in range(max_pages):
        await acquire()
        page = await fetch(offset)
        if page.returned <= 0:
            return
        yield page
        offset += page.returned
    raise IncompletePagingError(f"no empty page after {max_pages} pages")
