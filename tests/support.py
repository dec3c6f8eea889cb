"""Test helpers shared by the engine, daemon and demo tests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.cbr.client import CbrClient
from watcher.clock import FakeClock, drive_until
from watcher.engine import Engine
from watcher.schedule import Policy
from watcher.sim import Simulator


@dataclass
class World:
    """A fake clock, a simulator on a real socket, and a client pointed at it."""

    clock: FakeClock
    sim: Simulator
    base_url: str
    client: CbrClient
    token_file: Path


def make_engine(world: World, **overrides: Any) -> Engine:
    """An engine on the world's clock and client, with test-friendly defaults."""
    options: dict[str, Any] = {
        "policy": Policy(interval_min=5, interval_max=60, deadline=6 * 3600, not_found_grace=120),
        "max_concurrency": 32,
        "max_requests_per_second": 50,
        "rng": random.Random(5),
    }
    options.update(overrides)
    return Engine(client=world.client, clock=world.clock, **options)


class Running:
    """An engine running in the background on the world's fake clock."""

    def __init__(self, world: World, engine: Engine) -> None:
        self.world = world
        self.engine = engine
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.engine.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        self.engine.stop()
        await drive_until(self.world.clock, self.task.done, busy=self._busy)
        await self.task

    def _busy(self) -> bool:
        return self.engine.in_flight > 0

    async def until(self, done: Callable[[], bool], *, max_seconds: float = 86_400) -> None:
        """Advance the fake clock whenever the engine is idle, until `done()`."""
        task = self.task
        assert task is not None
        await drive_until(
            self.world.clock,
            lambda: done() or task.done(),
            busy=self._busy,
            max_seconds=max_seconds,
        )
        if task.done():
            task.result()


async def run_until(
    world: World, engine: Engine, done: Callable[[], bool], *, max_seconds: float = 86_400
) -> None:
    """Run the engine on the fake clock until `done()`, then stop it and wait for it."""
    async with Running(world, engine) as running:
        await running.until(done, max_seconds=max_seconds)
