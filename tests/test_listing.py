"""The pager against lists that change while they are paged: inserts at the head, deletions,
page caps and both meanings of `count`. Whatever happens, a listing ends, and every task that
was on the list when it began and is still there when it ends was read. (Pages of a single
entry cannot overlap, so a deletion between two of them can still hide one: the watcher asks
for 1,000 and no cloud serves one at a time.)"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.cbr.models import OperationLog, OpLogPage
from watcher.engine import listing

BASE = {
    "operation_type": "backup",
    "status": "running",
    "provider_id": "0daac4c5-6707-4851-97ba-169e36266b66",
    "project_id": "p",
}


def log_of(task_id: str) -> OperationLog:
    """A readable operation log with this ID."""
    return OperationLog.from_raw({**BASE, "id": task_id})


@dataclass
class ChangingList:
    """ListOpLogs over a list (newest first) that a script changes before each page."""

    entries: list[str]
    cap: int | None
    count_is_page: bool
    rng: random.Random
    inserts: float
    deletes: float
    unreadable: frozenset[str] = frozenset()
    next_new: int = 0
    deleted: set[str] = field(default_factory=set)
    calls: list[int] = field(default_factory=list)

    def change(self, page: int) -> None:
        """Between two pages: maybe new tasks at the head (fewer than a page fills: a list
        that grows faster than it can be read has no end), maybe some deleted anywhere."""
        if self.rng.random() < self.inserts:
            for _ in range(self.rng.randint(1, max(1, page // 4))):
                self.entries.insert(0, f"new-{self.next_new}")
                self.next_new += 1
        if self.entries and self.rng.random() < self.deletes:
            for _ in range(self.rng.randint(1, 5)):
                if self.entries:
                    self.deleted.add(self.entries.pop(self.rng.randrange(len(self.entries))))

    async def list_op_logs(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
        **_: object,
    ) -> OpLogPage:
        """One page, after the script had its turn."""
        size = limit or 1000
        if self.cap is not None:
            size = min(size, self.cap)
        if self.calls:
            self.change(size)
        start = offset or 0
        self.calls.append(start)
        ids = self.entries[start : start + size]
        logs = [log_of(i) for i in ids if i not in self.unreadable]
        places = [n for n, i in enumerate(ids) if i not in self.unreadable]
        count = len(ids) if self.count_is_page else len(self.entries)
        malformed = [f"entry {n}" for n, i in enumerate(ids) if i in self.unreadable]
        return OpLogPage(logs, count=count, malformed=malformed, positions=places)


async def nothing() -> None:
    """A budget that never waits."""


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 150),
    limit=st.sampled_from([2, 3, 10, 50, 1000]),
    cap=st.sampled_from([None, 2, 7, 100]),
    count_is_page=st.booleans(),
    inserts=st.sampled_from([0.0, 0.3]),
    deletes=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 2**32),
)
async def test_every_task_that_stays_on_the_list_is_read(
    size: int,
    limit: int,
    cap: int | None,
    count_is_page: bool,
    inserts: float,
    deletes: float,
    seed: int,
) -> None:
    initial = [f"t{n}" for n in range(size)]
    server = ChangingList(list(initial), cap, count_is_page, random.Random(seed), inserts, deletes)
    result = await listing.list_all(
        server, listing.Listing({}), acquire=nothing, limit=limit, max_pages=100_000
    )
    assert result.to_the_end
    stayed = [task for task in initial if task not in server.deleted]
    assert [task for task in stayed if task not in result.found] == []
    assert set(result.found) <= set(initial) | {f"new-{n}" for n in range(server.next_new)}


@pytest.mark.parametrize("count_is_page", [False, True])
@pytest.mark.parametrize("cap", [None, 100])
async def test_a_still_list_costs_its_pages_and_one_empty_one(
    count_is_page: bool, cap: int | None
) -> None:
    """1,203 tasks, nothing changing: every one read; with 1,000 per page that is two pages,
    the last entry once more (each page stands on the last one read) and the empty page;
    with pages capped at 100, about one page per 99."""
    initial = [f"t{n}" for n in range(1203)]
    server = ChangingList(list(initial), cap, count_is_page, random.Random(1), 0.0, 0.0)
    result = await listing.list_all(server, listing.Listing({}), acquire=nothing)
    assert set(result.found) == set(initial)
    assert result.to_the_end
    if cap is None:
        assert server.calls == [0, 999, 1202, 1203]
    else:
        assert len(server.calls) <= 1203 // 99 + 4


async def test_a_refresh_stops_once_every_wanted_task_was_seen() -> None:
    server = ChangingList([f"t{n}" for n in range(3000)], None, False, random.Random(1), 0, 0)
    result = await listing.list_all(
        server, listing.Listing({}), wanted=["t3", "t400"], acquire=nothing
    )
    assert {"t3", "t400"} <= set(result.found)
    assert server.calls == [0]
    assert not result.to_the_end


async def test_an_unreadable_entry_spoils_only_itself() -> None:
    """One entry that cannot be read: every other task is read, the bad one is counted, and
    paging goes on past it (its place still counts for the next offset)."""
    initial = [f"t{n}" for n in range(250)]
    server = ChangingList(
        list(initial), 100, True, random.Random(1), 0.0, 0.0, unreadable=frozenset({"t99"})
    )
    result = await listing.list_all(server, listing.Listing({}), acquire=nothing)
    assert set(result.found) == set(initial) - {"t99"}
    assert result.malformed >= 1
    assert result.to_the_end


async def test_a_listing_that_never_ends_is_reported_incomplete() -> None:
    """A server that always answers a full page: the pager gives up after max_pages and says
    so, so no cursor moves past it."""
    server = ChangingList([f"t{n}" for n in range(50)], None, False, random.Random(1), 1.0, 0.0)

    def grow(page: int) -> None:
        server.entries.extend(f"x{len(server.entries)}-{n}" for n in range(page))

    server.change = grow  # type: ignore[method-assign]
    with pytest.raises(listing.IncompleteListingError):
        await listing.list_all(server, listing.Listing({}), acquire=nothing, limit=5, max_pages=20)
