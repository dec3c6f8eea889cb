"""The SQLite state store: schema, round trips, and refusing files it cannot trust."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.daemon_process import clean_env, run_cli
from tests.support import World, make_engine, run_until
from watcher.persistence import StateRecorder, restore
from watcher.sim import SimTaskSpec
from watcher.store import SCHEMA_VERSION, OutboxEntry, Store, StoreError, TaskRecord


def record(task_id: str, **changes: object) -> TaskRecord:
    """A task record with defaults."""
    fields: dict[str, object] = {
        "task_id": task_id,
        "labels": {"team": "db"},
        "source": "api",
        "status": "running",
        "progress": 40,
        "raw": {"id": task_id, "status": "running"},
        "first_seen": 100.0,
        "started": 110.0,
        "last_change": 120.0,
        "last_progress": 120.0,
        "ended": None,
        "end_reason": None,
    }
    fields.update(changes)
    return TaskRecord(**fields)  # type: ignore[arg-type]


async def test_round_trip_and_atomic_outbox(tmp_path: Path) -> None:
    """A task and its events are written together and read back after reopening."""
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    entry = OutboxEntry("evt_1", "ops", "t1", "task.started", b'{"x":1}', 120.0)
    await store.save(record("t1"), [entry, entry])  # the duplicate is ignored
    await store.close()

    store = await Store.open(path)
    try:
        assert await store.load_tasks() == [record("t1")]
        assert await store.queue_depths() == {"ops": 1}
        due = await store.due("ops", 200.0, limit=10)
        assert [(d.event_id, d.body) for d in due] == [("evt_1", b'{"x":1}')]
        assert await store.due("ops", 50.0, limit=10) == []
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_memory_store_works() -> None:
    """ ":memory:" is a valid, non-durable store."""
    store = await Store.open(":memory:")
    await store.save(
        record(
            "t1", ended=130.0, end_reason="success", raw={"id": "t1", "operation_type": "backup"}
        )
    )
    assert await store.last_successes() == {"backup": 130.0}
    await store.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database at all, just text" * 100, "unusable"),
        (b"", None),
    ],
)
async def test_garbage_files_are_refused(
    tmp_path: Path, content: bytes, message: str | None
) -> None:
    """A file that is not SQLite stops start-up; an empty file is a fresh database."""
    path = tmp_path / "state.db"
    path.write_bytes(content)
    if message is None:
        store = await Store.open(str(path))
        await store.close()
        return
    with pytest.raises(StoreError, match=message):
        await Store.open(str(path))


async def test_foreign_and_newer_databases_are_refused(tmp_path: Path) -> None:
    """Another application's SQLite file, or one from a newer cbr-watcher, is not touched."""
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE something_else (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a cbr-watcher database"):
        await Store.open(str(foreign))

    newer = tmp_path / "newer.db"
    store = await Store.open(str(newer))
    await store.close()
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="downgrade"):
        await Store.open(str(newer))


async def test_unreadable_state_file_exits_78(tmp_path: Path) -> None:
    """The daemon refuses to start on a corrupt state file: exit 78, one clear line."""
    path = tmp_path / "state.db"
    path.write_bytes(b"garbage" * 1000)
    env = clean_env(
        CBR_WATCHER_CBR__ENDPOINT="http://127.0.0.1:9",
        CBR_WATCHER_CBR__PROJECT_ID="p1",
        CBR_WATCHER_AUTH__TOKEN="t",
        CBR_WATCHER_STATE__PATH=str(path),
    )
    code, _, err = await run_cli("run", env=env)
    assert code == 78
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert "Traceback" not in err


async def test_uncreatable_state_path_names_the_key(tmp_path: Path) -> None:
    """A state path under a regular file can never work: StoreError naming state.path."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = str(blocker / "sub" / "state.db")
    with pytest.raises(StoreError) as caught:
        await Store.open(path)
    assert str(caught.value) == (
        f"state.path = {path!r}: cannot create the directory {blocker / 'sub'} (Not a directory)"
    )


async def test_uncreatable_state_path_exits_78(tmp_path: Path) -> None:
    """`run` on an uncreatable state.path: exit 78, one line naming the key and the path."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "state.db"
    env = clean_env(
        CBR_WATCHER_CBR__ENDPOINT="http://127.0.0.1:9",
        CBR_WATCHER_CBR__PROJECT_ID="p1",
        CBR_WATCHER_AUTH__TOKEN="t",
        CBR_WATCHER_STATE__PATH=str(path),
    )
    code, _, err = await run_cli("run", env=env)
    assert code == 78
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "state.path" in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in err


async def test_restart_resumes_unfinished_and_skips_ended(world: World, tmp_path: Path) -> None:
    """After a restart the running task resumes with its state; the ended one is not re-added."""
    done_id = world.sim.add_task(SimTaskSpec(id="done", waiting=5, running=60))
    long_id = world.sim.add_task(SimTaskSpec(id="long", waiting=5, running=7200))
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    engine = make_engine(world, record=StateRecorder(store, None))
    engine.add(done_id, labels={"k": "v"})
    engine.add(long_id, labels={"k": "w"})
    await run_until(
        world,
        engine,
        lambda: engine.tasks[done_id].ended and (engine.tasks[long_id].progress or 0) > 5,
    )
    progress_before = engine.tasks[long_id].progress
    await store.close()

    store = await Store.open(path)
    restarted = make_engine(world, record=StateRecorder(store, None))
    restored = await restore(restarted, store, now=world.clock.wall())
    assert restored.resumed == [long_id]
    assert restored.ended == {done_id}
    assert not restarted.add(done_id)  # a config list naming it again does not re-watch it
    resumed = restarted.tasks[long_id]
    assert (resumed.status, resumed.progress, resumed.labels) == (
        "running",
        progress_before,
        {"k": "w"},
    )
    assert resumed.operation_log is not None
    polls_of_done = world.sim.request_count(done_id)
    await run_until(world, restarted, lambda: restarted.tasks[long_id].ended)
    assert restarted.tasks[long_id].end_reason == "success"
    assert world.sim.request_count(done_id) == polls_of_done
    await store.close()
