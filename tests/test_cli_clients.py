"""`cbr-watcher tasks ...` and `cbr-watcher dead-letters ...` end to end, and the new run flags.

`tasks` talks to a real daemon subprocess; `dead-letters` reads a real state file, also while
a daemon holds its lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemon_process import DaemonProcess, clean_env, fast_daemon_env, run_cli
from tests.support import TestReceiver
from watcher.clock import RealClock
from watcher.sim import SimTaskSpec, Simulator
from watcher.state.rows import OutboxEntry
from watcher.state.sqlite import Store

TOKEN = "cli-cl1ent-token"
API_TOKEN = "api-bearer-s3cret"
WITHIN = 60.0


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time, for a daemon in another process."""
    sim = Simulator(RealClock(), tokens=[TOKEN], seed=5)
    async with sim.running() as base_url:
        yield sim, base_url


def daemon_env(sim: Simulator, base_url: str, **extra: str) -> dict[str, str]:
    """Environment for a daemon pointed at `sim`, with the task API on a free port."""
    settings = {
        "CBR_WATCHER_SERVER__API_LISTEN": "127.0.0.1:0",
        "CBR_WATCHER_SERVER__API_TOKEN": API_TOKEN,
        "CBR_WATCHER_WATCH__NOT_FOUND_GRACE": "2m",
    }
    return fast_daemon_env(base_url, sim.project_id, TOKEN, **{**settings, **extra})


# ---- tasks -------------------------------------------------------------------------------


async def test_tasks_add_list_remove_against_a_running_daemon(
    live_sim: tuple[Simulator, str],
) -> None:
    """add (new, then known), list with labels and status, remove, remove again."""
    sim, base_url = live_sim
    task_id = sim.add_task(SimTaskSpec(id="api-added", waiting=0.1, running=3600))
    env = daemon_env(sim, base_url)
    async with DaemonProcess(env) as daemon:
        url = await daemon.url("task_api.listening")
        client = clean_env(CBR_WATCHER_SERVER__API_TOKEN=API_TOKEN)

        code, out, err = await run_cli(
            "tasks",
            "add",
            task_id,
            "--label",
            "team=db",
            "--label",
            "env=prod",
            "--url",
            url,
            env=client,
        )
        assert (code, out) == (0, f"now watching {task_id}\n"), err
        code, out, _ = await run_cli("tasks", "add", task_id, "--url", url, env=client)
        assert (code, out) == (0, f"already watching {task_id}\n")

        await daemon.wait_for(
            lambda: daemon.logged("task.status_changed", task_id=task_id, status="running"),
            "the added task running",
        )
        code, out, err = await run_cli("tasks", "list", "--url", url, env=client)
        assert code == 0, err
        header, row = out.splitlines()
        assert header.split() == ["TASK", "STATUS", "PROGRESS", "OPERATION", "SOURCE", "LABELS"]
        cells = row.split()
        assert cells[0] == task_id
        assert cells[1] == "running"
        assert cells[3:] == ["backup", "api", "team=db,env=prod"]

        code, out, _ = await run_cli("tasks", "remove", task_id, "--url", url, env=client)
        assert (code, out) == (0, f"stopped watching {task_id}\n")
        code, out, err = await run_cli("tasks", "remove", task_id, "--url", url, env=client)
        assert code == 1
        assert out == ""
        assert err == "cbr-watcher: tasks remove: 404 not_found: this task is not watched\n"

        # The wrong bearer token is an error answer, named as such.
        wrong = clean_env(CBR_WATCHER_SERVER__API_TOKEN="not-it")
        code, _, err = await run_cli("tasks", "list", "--url", url, env=wrong)
        assert code == 1
        assert "rejected the token (401)" in err
        assert "not-it" not in err
    assert API_TOKEN not in daemon.stderr


async def test_tasks_reads_address_and_token_from_the_config_file(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """Without --url: `server.api_listen` (wildcard host → this machine) and its token."""
    sim, base_url = live_sim
    env = daemon_env(sim, base_url)
    async with DaemonProcess(env) as daemon:
        port = (await daemon.url("task_api.listening")).rsplit(":", 1)[1]
        config = tmp_path / "cbr-watcher.toml"
        config.write_text(f'[server]\napi_listen = "0.0.0.0:{port}"\napi_token = "{API_TOKEN}"\n')
        code, out, err = await run_cli("tasks", "list", "--config", str(config), env=clean_env())
    assert code == 0, err
    assert out.split() == ["TASK", "STATUS", "PROGRESS", "OPERATION", "SOURCE", "LABELS"]


@pytest.mark.parametrize(
    ("args", "env", "code", "expected"),
    [
        (["list", "--url", "http://127.0.0.1:9"], {}, 1, "cannot reach the task API"),
        (["list"], {"CBR_WATCHER_SERVER__API_LISTEN": ""}, 78, "server.api_listen"),
        (["add"], {}, 2, "the following arguments are required: ID"),
        (["add", "bad/id"], {}, 2, "invalid task ID 'bad/id'"),
        (["add", "fine", "--label", "novalue"], {}, 2, "expected KEY=VALUE"),
        (["frobnicate"], {}, 2, "invalid choice"),
        ([], {}, 2, "the following arguments are required: ACTION"),
    ],
)
async def test_tasks_errors(args: list[str], env: dict[str, str], code: int, expected: str) -> None:
    """Unreachable → 1, no address configured → 78, usage → 2; one clear line each."""
    got, out, err = await run_cli("tasks", *args, env=clean_env(**env))
    assert got == code
    assert out == ""
    assert expected in err
    assert "Traceback" not in err


# ---- dead letters ------------------------------------------------------------------------


async def make_dead_letter(path: Path, *, receiver: str = "ops", task_id: str = "t-1") -> str:
    """A state file holding one dead letter; returns its event ID."""
    event_id = f"evt_dead_{task_id}"
    store = await Store.open(str(path))
    try:
        body = b'{"type":"task.failed","data":{"task_id":"%s"}}' % task_id.encode()
        await store.enqueue(
            [OutboxEntry(event_id, receiver, task_id, "task.failed", body, created=1000.0)]
        )
        [row] = await store.due(receiver, 2000.0, limit=10)
        await store.retry_later(row.row_id, next_attempt=1500.0, error="HTTP 503")
        await store.dead_letter(row.row_id, now=2000.0, reason="max_age", error="HTTP 500")
    finally:
        await store.close()
    return event_id


async def test_store_dead_letter_rows_and_replay(tmp_path: Path) -> None:
    """dead_letter_rows has the details; replay moves rows back with attempts reset."""
    path = tmp_path / "state.db"
    first = await make_dead_letter(path, task_id="t-1")
    second = await make_dead_letter(path, task_id="t-2")
    store = await Store.open(str(path))
    try:
        rows = await store.dead_letter_rows()
        assert [row.event_id for row in rows] == [first, second]
        assert (rows[0].receiver, rows[0].task_id, rows[0].event_type) == (
            "ops",
            "t-1",
            "task.failed",
        )
        assert (rows[0].attempts, rows[0].reason, rows[0].last_error) == (2, "max_age", "HTTP 500")
        assert await store.replay_dead_letters("evt_unknown", now=5000.0) == 0
        assert await store.replay_dead_letters(first, now=5000.0) == 1
        [pending] = await store.due("ops", 5000.0, limit=10)
        assert (pending.event_id, pending.attempts, pending.created) == (first, 0, 5000.0)
        assert [row.event_id for row in await store.dead_letter_rows()] == [second]
        assert await store.replay_dead_letters(None, now=6000.0) == 1
        assert await store.dead_letter_rows() == []
        assert await store.queue_depths() == {"ops": 2}
    finally:
        await store.close()


async def test_dead_letters_list_and_replay(tmp_path: Path) -> None:
    """list shows id, receiver, type, task, attempts, reason, last error; replay re-queues."""
    path = tmp_path / "state.db"
    event_id = await make_dead_letter(path)
    env = clean_env(CBR_WATCHER_STATE__PATH=str(path))

    code, out, err = await run_cli("dead-letters", "list", env=env)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:6] == ["EVENT", "RECEIVER", "TYPE", "TASK", "ATTEMPTS", "REASON"]
    assert row.split() == [
        event_id,
        "ops",
        "task.failed",
        "t-1",
        "2",
        "max_age",
        "1970-01-01T00:33:20.000Z",
        "HTTP",
        "500",
    ]

    code, out, err = await run_cli("dead-letters", "replay", "evt_nope", env=env)
    assert code == 1
    assert "no dead letter 'evt_nope'" in err
    code, out, err = await run_cli("dead-letters", "replay", event_id, env=env)
    assert (code, out) == (0, "re-queued 1 dead letter(s); the daemon delivers them next\n"), err
    code, out, _ = await run_cli("dead-letters", "list", env=env)
    assert (code, out) == (0, "no dead letters\n")

    store = await Store.open(str(path))
    try:
        [pending] = await store.due("ops", 1e12, limit=10)
        assert (pending.event_id, pending.attempts) == (event_id, 0)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("state_path", "expected"),
    [(":memory:", "nothing is kept on disk"), ("missing.db", "no state file there")],
)
async def test_dead_letters_without_a_state_file_exit_78(
    tmp_path: Path, state_path: str, expected: str
) -> None:
    """Nothing to inspect is a configuration problem: exit 78, one line."""
    path = state_path if state_path == ":memory:" else str(tmp_path / state_path)
    code, out, err = await run_cli(
        "dead-letters", "list", env=clean_env(CBR_WATCHER_STATE__PATH=path)
    )
    assert code == 78
    assert out == ""
    assert expected in err
    assert not (tmp_path / state_path).exists()


async def test_dead_letters_work_while_a_daemon_holds_the_lock(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """list and replay next to a running daemon, which then delivers the replayed event."""
    sim, base_url = live_sim
    path = tmp_path / "state.db"
    event_id = await make_dead_letter(path)
    async with TestReceiver() as receiver:
        env = daemon_env(
            sim,
            base_url,
            CBR_WATCHER_STATE__PATH=str(path),
            CBR_WATCHER_WEBHOOKS=f'[{{"name": "ops", "url": "{receiver.url}"}}]',
        )
        async with DaemonProcess(env) as daemon:
            await daemon.ready()
            # The lock is real: a second daemon on the same file is refused.
            code, _, err = await run_cli("run", env=env)
            assert code == 78, err

            code, out, err = await run_cli("dead-letters", "list", env=env)
            assert code == 0, err
            assert event_id in out
            code, out, err = await run_cli("dead-letters", "replay", env=env)
            assert code == 0, err
            assert out.startswith("re-queued 1 ")

            # The daemon's deliverer looks at the outbox at least every 30 seconds.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WITHIN
            while not receiver.delivered:
                assert loop.time() < deadline, "the replayed event was not delivered"
                await asyncio.sleep(0.1)
            assert receiver.delivered[0].headers["webhook-id"] == event_id
            await daemon.stop()


# ---- run flags ---------------------------------------------------------------------------


async def test_run_flags_override_environment(live_sim: tuple[Simulator, str]) -> None:
    """--listen, --log-level and --log-format beat the environment (flags > env)."""
    sim, base_url = live_sim
    env = daemon_env(
        sim,
        base_url,
        CBR_WATCHER_SERVER__LISTEN="127.0.0.1:1",
        CBR_WATCHER_LOG__LEVEL="error",
        CBR_WATCHER_LOG__FORMAT="console",
    )
    async with DaemonProcess(
        env, "--listen", "127.0.0.1:0", "--log-level", "info", "--log-format", "json"
    ) as daemon:
        url = await daemon.ready()
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":1")
        assert daemon.logged("daemon.started")  # info, as JSON
        await daemon.stop()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--listen", "nowhere"], "--listen: expected HOST:PORT"),
        (["--log-level", "chatty"], "--log-level: invalid choice"),
        (["--log-format", "xml"], "--log-format: invalid choice"),
    ],
)
async def test_run_flag_values_are_checked(args: list[str], expected: str) -> None:
    """A bad flag value is a usage error (2), naming the flag."""
    code, out, err = await run_cli("run", *args, env=clean_env())
    assert code == 2
    assert out == ""
    assert expected in err
