"""The SQLite state store: schema, migrations, round trips, the recorder's one-commit writes,
discovery's storage, and refusing files it cannot trust."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon_process import clean_env, run_cli
from tests.support import World, make_engine, run_until
from watcher.cbr.models import OperationLog
from watcher.cli.restore import ENDED_TASK_RETENTION, restore
from watcher.coverage.freshness import ResourceKey, ResourceStatus
from watcher.delivery.outbox import Outbox, Route
from watcher.delivery.recorder import StateRecorder
from watcher.engine.engine import WatchedTask
from watcher.engine.events import TERMINAL_EVENT_FOR_STATUS, TaskEvent
from watcher.safetext import json_bytes
from watcher.sim import SimTaskSpec
from watcher.sources.task_api.handlers import start_task_api
from watcher.state.connection import Connection, StoreError
from watcher.state.rows import LastSuccess, OutboxEntry, TaskRecord
from watcher.state.schema import SCHEMA_VERSION
from watcher.state.sqlite import Store


def record(task_id: str, **changes: object) -> TaskRecord:
    """A task record with defaults."""
    fields: dict[str, object] = {
        "task_id": task_id,
        "labels": {"team": "db"},
        "source": "api",
        "status": "running",
        "progress": 40,
        "raw_json": json_bytes({"id": task_id, "status": "running"}),
        "first_seen": 100.0,
        "started": 110.0,
        "last_change": 120.0,
        "last_progress": 120.0,
        "ended": None,
        "end_reason": None,
    }
    if "raw" in changes:
        raw = changes.pop("raw")
        changes["raw_json"] = None if raw is None else json_bytes(raw)
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


async def test_concurrent_changes_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    """Group commit: 64 changes sent at once (64 task-API PUTs) commit in a few transactions,
    and the one change that fails rolls back alone; the others are on disk."""
    path = str(tmp_path / "group.db")
    connection = Connection(path)
    await connection.open()
    commits: list[str] = []
    try:
        await connection.run(lambda: connection.db.execute("CREATE TABLE t (n INTEGER)"))
        connection.db.set_trace_callback(
            lambda sql: commits.append(sql) if sql == "COMMIT" else None
        )

        def change(n: int) -> Any:
            def apply(db: sqlite3.Connection) -> None:
                db.execute("INSERT INTO t (n) VALUES (?)", (n,))
                if n == 13:
                    raise ValueError("change 13 is bad")

            return apply

        results = await asyncio.gather(
            *(connection.write(change(n)) for n in range(64)), return_exceptions=True
        )
    finally:
        await connection.close()
    failed = [n for n, result in enumerate(results) if isinstance(result, BaseException)]
    assert failed == [13]
    assert "change 13 is bad" in str(results[13])
    assert 1 <= len(commits) < 64
    with sqlite3.connect(path) as db:
        stored = sorted(n for (n,) in db.execute("SELECT n FROM t"))
    assert stored == [n for n in range(64) if n != 13]


async def test_memory_store_works() -> None:
    """ ":memory:" is a valid, non-durable store."""
    store = await Store.open(":memory:")
    await store.save(record("t1"), last_success=LastSuccess("backup", 130.0))
    await store.save(record("t2"), last_success=LastSuccess("backup", 120.0))  # older: ignored
    assert await store.last_successes() == {"backup": 130.0}
    assert [r.task_id for r in await store.load_tasks()] == ["t1", "t2"]
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


# ---- migration from the previous schema ------------------------------------------------------

VERSION_1_SQL = """
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, labels TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'config', status TEXT, progress INTEGER, raw TEXT,
    first_seen REAL NOT NULL, started REAL, last_change REAL, last_progress REAL, ended REAL,
    end_reason TEXT);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
    receiver TEXT NOT NULL, task_id TEXT NOT NULL, event_type TEXT NOT NULL, body BLOB NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
    last_error TEXT, UNIQUE (event_id, receiver));
CREATE INDEX outbox_due ON outbox (receiver, next_attempt);
CREATE INDEX outbox_task ON outbox (receiver, task_id, id);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL,
    receiver TEXT NOT NULL, task_id TEXT NOT NULL, event_type TEXT NOT NULL, body BLOB NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL, last_error TEXT, dead_at REAL NOT NULL,
    reason TEXT NOT NULL);
CREATE TABLE last_success (operation_type TEXT PRIMARY KEY, ended REAL NOT NULL);
INSERT INTO tasks VALUES ('t1', '{"team": "db"}', 'api', 'running', 40,
    '{"id":"t1","status":"running"}', 100.0, 110.0, 120.0, 120.0, NULL, NULL);
INSERT INTO outbox (event_id, receiver, task_id, event_type, body, created, attempts,
    next_attempt, last_error) VALUES ('evt_1', 'ops', 't1', 'task.started', X'7B7D', 120.0, 2,
    150.0, 'HTTP 503');
INSERT INTO dead_letters VALUES (7, 'evt_0', 'ops', 't0', 'task.failed', X'7B7D', 90.0, 9,
    'HTTP 500', 95.0, 'max_age');
INSERT INTO last_success VALUES ('backup', 99.0);
PRAGMA user_version = 1;
"""
"""A state file as the first released schema wrote it, with one row of every kind."""


async def test_a_version_1_state_file_is_migrated_without_loss(tmp_path: Path) -> None:
    """Upgrading keeps every task, queued event, dead letter and last success, and adds the
    new tables empty."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(VERSION_1_SQL)
    db.close()

    store = await Store.open(str(path))
    try:
        assert await store.load_tasks() == [record("t1")]
        [due] = await store.due("ops", 200.0, limit=10)
        assert (due.event_id, due.body, due.attempts) == ("evt_1", b"{}", 2)
        assert await store.dead_letters() == [("evt_0", "ops", "max_age", "HTTP 500")]
        assert await store.last_successes() == {"backup": 99.0}
        assert await store.resource_statuses() == []
        assert await store.tombstones() == set()
        assert await store.get_meta("discovery.cursor") is None
        await store.set_meta("discovery.cursor", "{}")
        assert await store.inventory_records() == []
        assert await store.missed_counts() == {}
        assert await store.checked_until() is None
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()
    store = await Store.open(str(path))  # a migrated file opens again as it is
    assert await store.get_meta("discovery.cursor") == "{}"
    await store.close()


# ---- the recorder: task state, outbox rows and bookkeeping in one commit ----------------------


def ended_event(
    task_id: str,
    status: str,
    ended_at: str,
    *,
    resource_id: str = "r-1",
    operation_type: str = "backup",
    at: float = 2000.0,
) -> TaskEvent:
    """The event of a task that ended with CBR status `status` at `ended_at` (RFC 3339)."""
    raw: dict[str, Any] = {
        "id": task_id,
        "status": status,
        "operation_type": operation_type,
        "vault_id": "v-1",
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": ended_at,
        "extra_info": {
            "resource": {"id": resource_id, "name": "web-01", "type": "OS::Nova::Server"}
        },
    }
    return TaskEvent(
        type=TERMINAL_EVENT_FOR_STATUS[status],
        task_id=task_id,
        occurred_at=at,
        status=status,
        previous_status="running",
        progress=100,
        operation_log=OperationLog.from_raw(raw),
    )


def ended_row(event: TaskEvent) -> WatchedTask:
    """The task-table row the engine commits with `event`."""
    return WatchedTask(
        task_id=event.task_id,
        labels={},
        source="config",
        added_wall=1000.0,
        status=event.status,
        progress=event.progress,
        operation_log=event.operation_log,
        ended_wall=event.occurred_at,
        end_reason=event.status,
    )


async def commit(recorder: StateRecorder, *events: TaskEvent) -> None:
    """Record each event with its task's row, as the engine does."""
    for event in events:
        await recorder(ended_row(event), [event])


def jan1(hhmm: str) -> float:
    """2026-01-01T{hhmm}:00Z in wall seconds."""
    hours, minutes = hhmm.split(":")
    return 1767225600.0 + int(hours) * 3600 + int(minutes) * 60


async def test_recorder_commits_rows_and_wakes_their_receivers() -> None:
    """The recorder writes the task, one row per interested receiver, then wakes those."""
    store = await Store.open(":memory:")
    woken: list[set[str]] = []
    outbox = Outbox([Route("ops", ("task.*",)), Route("audit", ("watch.*",))], project_id="p")
    recorder = StateRecorder(store, outbox, wake=lambda names: woken.append(set(names)))
    event = ended_event("t1", "success", "2026-01-01T01:00:00Z")
    await commit(recorder, event)
    assert [r.task_id for r in await store.load_tasks()] == ["t1"]
    assert await store.queue_depths() == {"ops": 1}
    [due] = await store.due("ops", 1e12, limit=5)
    assert due.body == outbox.entries(event)[0].body
    assert woken == [{"ops"}]
    await store.close()


async def test_resource_status_is_kept_across_restarts(tmp_path: Path) -> None:
    """Every terminal task updates its resource's status; a restarted recorder folds new ends
    into what the file holds: the newest end decides, the last success only moves forward."""
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    recorder = StateRecorder(store)
    await commit(
        recorder,
        ended_event("t1", "success", "2026-01-01T01:00:00Z"),
        ended_event("t2", "success", "2026-01-01T00:30:00Z", operation_type="replication"),
        ended_event("t3", "failed", "2026-01-01T02:00:00Z", resource_id="r-2"),
    )
    await store.close()

    store = await Store.open(path)
    backup = ResourceStatus(
        key=ResourceKey("r-1", "backup"),
        resource_name="web-01",
        resource_type="OS::Nova::Server",
        vault_id="v-1",
        last_status="success",
        last_ended=jan1("01:00"),
        last_success_ended=jan1("01:00"),
    )
    statuses = await store.resource_statuses()
    assert [s.key for s in statuses] == [
        ResourceKey("r-1", "backup"),
        ResourceKey("r-1", "replication"),
        ResourceKey("r-2", "backup"),
    ]
    assert statuses[0] == backup
    assert (statuses[2].last_status, statuses[2].last_success_ended) == ("failed", None)

    restarted = StateRecorder(store)
    await commit(
        restarted,
        ended_event("t4", "failed", "2026-01-01T03:00:00Z"),
        ended_event("t5", "success", "2026-01-01T00:10:00Z"),  # reported late: older
    )
    await store.close()
    store = await Store.open(path)
    [newest, *_] = await store.resource_statuses()
    assert newest.last_status == "failed"
    assert newest.last_ended == jan1("03:00")
    assert newest.last_success_ended == jan1("01:00")
    await store.close()


async def test_concurrent_ends_of_one_resource_both_count() -> None:
    """Two tasks of one resource committed at the same time: neither end is lost."""
    store = await Store.open(":memory:")
    recorder = StateRecorder(store)
    success = ended_event("t1", "success", "2026-01-01T01:00:00Z")
    failure = ended_event("t2", "failed", "2026-01-01T02:00:00Z")
    await asyncio.gather(
        recorder(ended_row(success), [success]), recorder(ended_row(failure), [failure])
    )
    [status] = await store.resource_statuses()
    assert (status.last_status, status.last_success_ended) == ("failed", jan1("01:00"))
    await store.close()


async def test_last_success_is_recorded_per_operation_type() -> None:
    """A task that ended in success moves its operation type's last success (for the metric
    restored at start-up); failures and events without a CBR answer do not."""
    store = await Store.open(":memory:")
    recorder = StateRecorder(store)
    await commit(
        recorder,
        ended_event("t1", "success", "2026-01-01T01:00:00Z", at=5000.0),
        ended_event("t2", "failed", "2026-01-01T02:00:00Z", at=6000.0),
        ended_event("t3", "success", "2026-01-01T01:00:00Z", operation_type="restore", at=10.0),
    )
    assert await store.last_successes() == {"backup": 5000.0, "restore": 10.0}
    await store.close()


async def test_a_failed_commit_writes_nothing() -> None:
    """Task state, outbox rows and bookkeeping are one transaction: all or none."""
    store = await Store.open(":memory:")
    entry = OutboxEntry("evt_1", "ops", "t1", "task.succeeded", b"{}", 1.0)
    # A NULL end time breaks the last statement of the transaction.
    broken = ResourceStatus(ResourceKey("r-1", "backup"), "", "", "", "success", None, 1.0)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        await store.save(
            record("t1"), [entry], last_success=LastSuccess("backup", 1.0), resources=[broken]
        )
    assert await store.load_tasks() == []
    assert await store.last_successes() == {}
    assert await store.resource_statuses() == []
    assert await store.queue_depths() == {}
    await store.close()


# ---- discovery's storage ----------------------------------------------------------------------


async def test_meta_round_trip_is_durable(tmp_path: Path) -> None:
    """A value set under a key is read back, replaced by the next set, and kept on disk."""
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    assert await store.get_meta("discovery.cursor") is None
    await store.set_meta("discovery.cursor", '{"since": 1}')
    await store.set_meta("discovery.cursor", '{"since": 2, "name": "żółw"}')
    await store.set_meta("other", "")
    await store.close()
    store = await Store.open(path)
    assert await store.get_meta("discovery.cursor") == '{"since": 2, "name": "żółw"}'
    assert await store.get_meta("other") == ""
    await store.close()


async def test_tombstones_survive_restart_and_are_pruned(world: World, tmp_path: Path) -> None:
    """Removed tasks stay known to `restore` for ENDED_TASK_RETENTION, then are forgotten."""
    path = str(tmp_path / "state.db")
    now = world.clock.wall()
    store = await Store.open(path)
    await store.save(record("t-old"))
    await store.delete_task("t-old", tombstone_at=now - ENDED_TASK_RETENTION - 1)
    await store.add_tombstone("t-new", now - 60)
    await store.delete_task("t-plain")  # no tombstone: not removed on purpose
    await store.close()

    store = await Store.open(path)
    assert await store.tombstones() == {"t-old", "t-new"}
    assert await store.load_tasks() == []
    restored = await restore(make_engine(world), store, now=now)
    assert restored.tombstones == {"t-new"}
    await store.close()
    store = await Store.open(path)
    assert await store.tombstones() == {"t-new"}
    await store.close()


async def test_a_task_api_delete_leaves_a_tombstone(world: World, tmp_path: Path) -> None:
    """DELETE /v1/tasks/{id} forgets the task and remembers it was removed, across a restart."""
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    recorder = StateRecorder(store)
    engine = make_engine(world, record=recorder, forget=recorder.forget)
    listener = await start_task_api(engine, listen="127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.put(f"{listener.url}/v1/tasks/t-1")).status == 201
            assert (await http.put(f"{listener.url}/v1/tasks/t-2")).status == 201
            assert (await http.delete(f"{listener.url}/v1/tasks/t-1")).status == 204
    finally:
        await listener.close()
        await store.close()
    store = await Store.open(path)
    restored = await restore(make_engine(world), store, now=world.clock.wall())
    assert restored.tombstones == {"t-1"}
    assert restored.resumed == ["t-2"]
    await store.close()
