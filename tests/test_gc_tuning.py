"""The collector is kept off the long-lived task table: frozen after start-up and growth."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import start_daemon
from watcher.cli import gc_tuning
from watcher.cli.gc_tuning import GcTuner, PauseRecorder
from watcher.clock import RealClock
from watcher.config import load_settings
from watcher.sim import Simulator
from watcher.testing import FakeClock, drive_until


@pytest.fixture(autouse=True)
def _restore_the_collector() -> Iterator[None]:
    """Every test leaves the collector as it found it."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_up_freezes_what_exists_and_tunes_the_thresholds() -> None:
    """After start-up nothing that exists yet is walked by a collection again."""
    table = [{"task": n} for n in range(1000)]
    GcTuner().after_startup()
    assert gc.get_freeze_count() >= len(table)
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS)


def test_large_additions_freeze_small_ones_wait() -> None:
    """A freeze after every `freeze_after` added tasks, counted across small batches."""
    tuner = GcTuner(freeze_after=100)
    tuner.note_added(60)
    assert (tuner.freezes, gc.get_freeze_count()) == (0, 0)
    tuner.note_added(40)
    assert tuner.freezes == 1
    assert gc.get_freeze_count() > 0


async def test_growth_from_any_source_is_frozen_on_the_next_look() -> None:
    """Tasks added through the API (not the file) are frozen within a check interval."""
    clock = FakeClock()
    table: list[int] = []
    tuner = GcTuner(freeze_after=100)
    follower = asyncio.create_task(tuner.follow(lambda: len(table), clock))
    await asyncio.sleep(0)
    table.extend(range(50))
    await drive_until(
        clock, lambda: clock.monotonic() >= 1000.0 + 3 * gc_tuning.GROWTH_CHECK_INTERVAL
    )
    assert tuner.freezes == 0
    table.extend(range(60))
    await drive_until(
        clock, lambda: tuner.freezes > 0, max_seconds=gc_tuning.GROWTH_CHECK_INTERVAL * 2
    )
    follower.cancel()
    assert tuner.freezes == 1


def test_the_pause_recorder_sees_collections() -> None:
    """`PauseRecorder` (the benchmark's probe) records each collection's generation."""
    recorder = PauseRecorder()
    recorder.install()
    try:
        gc.collect(0)
        gc.collect()
    finally:
        recorder.uninstall()
    assert [generation for generation, _ in recorder.pauses][-2:] == [0, 2]
    assert recorder.longest() >= 0.0


async def test_the_daemon_freezes_its_task_table_once_started(tmp_path: Path) -> None:
    """A daemon started with 1,500 tasks from a task file has frozen them by the time it is
    ready: later full collections skip the table."""
    sim = Simulator(RealClock(), tokens=["t0ken"], seed=2)
    task_file = tmp_path / "tasks.txt"
    task_file.write_text("\n".join(f"absent-{n:05d}" for n in range(1500)) + "\n")
    async with sim.running() as base_url:
        settings = load_settings(
            overrides={
                "cbr": {"endpoint": base_url, "project_id": sim.project_id},
                "auth": {"method": "token", "token": "t0ken"},
                "watch": {"task_file": str(task_file), "max_requests_per_second": 1},
                "state": {"path": ":memory:"},
                "server": {"listen": "127.0.0.1:0", "api_listen": ""},
            },
            environ={},
            secrets_dirs=[],
        )
        daemon, handle = await start_daemon(settings)
        try:
            async with asyncio.timeout(30), aiohttp.ClientSession() as session:
                async with session.get(handle.metrics_url + "/readyz") as response:
                    assert response.status == 200
                assert len(handle.engine.tasks) == 1500
                assert gc.get_freeze_count() > 1500
        finally:
            handle.engine.stop()
            await asyncio.wait_for(daemon, 30)
