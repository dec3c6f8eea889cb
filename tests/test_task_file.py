"""`watch.task_file`: linear parsing, reloads off the event loop, and only the diff applied."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import watcher.sources.task_file
from watcher.cbr.ids import InvalidTaskIdError, is_valid_task_id, parse_task_file
from watcher.sources.task_file import SOURCE, TaskFileSource

VALID_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z")
ONE_LINE = st.text(max_size=15).filter(lambda text: len(f"{text}x".splitlines()) == 1)
"""Any text that stays on one line (str.splitlines also breaks at \\f, \\x1c, U+2028, …)."""
LINES = st.lists(
    st.one_of(
        VALID_IDS.map(lambda task_id: ("id", task_id)),
        st.tuples(VALID_IDS, ONE_LINE).map(lambda pair: ("id+comment", pair)),
        ONE_LINE.map(lambda text: ("comment", text)),
        st.sampled_from(["", "   ", "\t"]).map(lambda blank: ("blank", blank)),
    ),
    max_size=60,
)


def render(kind: str, value: object) -> tuple[str, str | None]:
    """(the line as written, the ID it names or None)."""
    if kind == "id":
        assert isinstance(value, str)
        return f"  {value} ", value
    if kind == "id+comment":
        assert isinstance(value, tuple)
        return f"{value[0]}  # {value[1]}", value[0]
    if kind == "comment":
        return f"# {value}", None
    assert isinstance(value, str)
    return value, None


@settings(max_examples=300, deadline=None, database=None)
@given(LINES)
def test_parsing_is_the_order_preserving_dedupe_of_the_ids(lines: list[tuple[str, object]]) -> None:
    """Comments and blank lines are ignored; each ID counts once, where it first appears."""
    rendered = [render(kind, value) for kind, value in lines]
    text = "\n".join(line for line, _ in rendered)
    named = [task_id for _, task_id in rendered if task_id is not None]
    assert parse_task_file(text) == list(dict.fromkeys(named))


def test_the_first_bad_line_is_named() -> None:
    """A bad ID raises with its line number; the rule is in the message."""
    with pytest.raises(InvalidTaskIdError, match="line 3: invalid task ID 'bad/id'"):
        parse_task_file("ok-1\n# fine\nbad/id\nok-2\n")


def test_fifty_thousand_ids_with_repeats_parse_completely() -> None:
    """A 50,000-line file with every ID twice gives 25,000 IDs in file order."""
    ids = [f"task-{n:06d}" for n in range(25_000)]
    text = "\n".join(ids + ids[::-1])
    assert parse_task_file(text) == ids
    assert all(is_valid_task_id(task_id) for task_id in ids)


@dataclass
class Row:
    """A task-table row as the source sees it."""

    source: str
    ended: bool = False


class Table:
    """A task table that records every call the source makes."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.calls: list[tuple[str, str]] = []
        self.syncs = 0

    @property
    def tasks(self) -> Mapping[str, Row]:
        """The table."""
        return self.rows

    def add(
        self, task_id: str, labels: Mapping[str, str] | None = None, *, source: str = "config"
    ) -> bool:
        """Add unless present."""
        self.calls.append(("add", task_id))
        if task_id in self.rows:
            return False
        self.rows[task_id] = Row(source)
        return True

    def remove(self, task_id: str, *, tombstone: bool = True) -> bool:
        """Remove if present."""
        self.calls.append(("remove", task_id))
        return self.rows.pop(task_id, None) is not None

    def sync_source(self, source: str, task_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """The engine's full sync."""
        self.syncs += 1
        wanted = list(dict.fromkeys(task_ids))
        added = [task_id for task_id in wanted if self.add(task_id, source=source)]
        wanted_set = set(wanted)
        removed = [
            task_id
            for task_id, row in list(self.rows.items())
            if row.source == source and not row.ended and task_id not in wanted_set
        ]
        for task_id in removed:
            self.remove(task_id)
        return added, removed


def write(path: Path, ids: list[str]) -> None:
    """Write `ids` and make sure the stamp changes even within one mtime tick."""
    path.write_text("# tasks\n" + "\n".join(ids) + "\n")


async def test_a_one_line_edit_of_a_big_file_hands_the_engine_one_add_and_one_remove(
    tmp_path: Path,
) -> None:
    """50,000 IDs loaded; replacing one line costs the table exactly two calls."""
    path = tmp_path / "tasks.txt"
    ids = [f"task-{n:06d}" for n in range(50_000)]
    write(path, ids)
    table = Table()
    source = TaskFileSource(path, table)
    await source.load()
    assert len(table.rows) == 50_000
    table.calls.clear()
    edited = [*ids[:-1], "task-new"]
    write(path, edited)
    await source.reload()
    assert table.syncs == 1  # only the start-up load
    assert sorted(table.calls) == [("add", "task-new"), ("remove", ids[-1])]
    assert set(table.rows) == set(edited)


async def test_reload_without_a_change_does_nothing(tmp_path: Path) -> None:
    """Unchanged size and mtime: the file is not read again."""
    path = tmp_path / "tasks.txt"
    write(path, ["a1", "b2"])
    table = Table()
    source = TaskFileSource(path, table)
    await source.load()
    table.calls.clear()
    await source.reload()
    assert table.calls == []


async def test_a_forced_reload_watches_again_what_was_removed_elsewhere(tmp_path: Path) -> None:
    """SIGHUP (force): a file task removed through the API comes back; other sources' tasks
    and ended tasks are left alone when the file drops them."""
    path = tmp_path / "tasks.txt"
    write(path, ["a1", "b2", "c3"])
    table = Table()
    table.rows["c3"] = Row("config")
    source = TaskFileSource(path, table)
    await source.load()
    table.rows.pop("a1")  # removed through the task API
    table.rows["b2"].ended = True
    write(path, ["a1"])
    await source.reload(force=True)
    assert table.rows == {"a1": Row(SOURCE), "b2": Row(SOURCE, ended=True), "c3": Row("config")}


async def test_bad_content_keeps_the_watched_set(tmp_path: Path) -> None:
    """An invalid line or bytes that are not UTF-8 are logged; nothing is added or removed."""
    path = tmp_path / "tasks.txt"
    write(path, ["a1", "b2"])
    table = Table()
    source = TaskFileSource(path, table)
    await source.load()
    path.write_text("a1\nnot/valid\n")
    await source.reload()
    path.write_bytes(b"a1\n\xff\xfe\n")
    await source.reload(force=True)
    path.unlink()
    await source.reload(force=True)
    assert set(table.rows) == {"a1", "b2"}


async def test_the_loop_keeps_turning_while_a_big_file_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse can only finish after the event loop turned 200 times meanwhile: had it run
    on the loop, the loop could not turn and the parse would give up waiting."""
    path = tmp_path / "tasks.txt"
    write(path, [f"task-{n:06d}" for n in range(50_000)])
    turned = threading.Event()
    waited: list[bool] = []

    def slow_parse(text: str) -> list[str]:
        waited.append(turned.wait(timeout=30))
        return parse_task_file(text)

    monkeypatch.setattr(watcher.sources.task_file, "parse_task_file", slow_parse)
    table = Table()
    source = TaskFileSource(path, table)
    loading = asyncio.create_task(source.load())
    for _ in range(200):
        await asyncio.sleep(0)
    turned.set()
    await loading
    assert waited == [True]
    assert len(table.rows) == 50_000


async def test_large_additions_are_reported_for_the_collector(tmp_path: Path) -> None:
    """`on_added` hears how many tasks each load or reload added."""
    path = tmp_path / "tasks.txt"
    write(path, [f"t{n}" for n in range(1500)])
    heard: list[int] = []
    source = TaskFileSource(path, Table(), on_added=heard.append, chunk=100)
    await source.load()
    write(path, [f"t{n}" for n in range(1700)])
    await source.reload()
    assert heard == [1500, 200]
