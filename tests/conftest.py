"""Shared fixtures, and the CI rule that a skipped test is a failed test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest
import structlog

from tests.daemon_process import kill_leftovers
from tests.support import LISTING_DIALECTS, World, open_world
from watcher.sim.dialects import preset


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """In CI (CBR_WATCHER_FAIL_ON_SKIP=1) a skip means a missing tool: report it as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CBR_WATCHER_FAIL_ON_SKIP") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must have every tool: {report.longrepr}"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Generator[None, None, None]:
    """Tests capture logs with structlog.testing; start each from structlog's defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Generator[None, None, None]:
    """A test must end every process it starts; any it left running is killed and reported."""
    yield
    leaked = kill_leftovers()
    if leaked:
        pytest.fail(f"the test left processes running (now killed): {leaked}", pytrace=False)


@pytest.fixture
def dialect() -> str:
    """The simulator dialect of `world` (see LISTING_DIALECTS); modules marked
    `every_dialect` get each of them."""
    return "default"


@pytest.fixture
async def world(tmp_path: Path, dialect: str) -> AsyncIterator[World]:
    """Everything on one FakeClock; the client reads its token from a file that tests rotate."""
    async with open_world(tmp_path, dialect=preset(dialect)) as world:
        yield world


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take `world` in a module marked `every_dialect` run once per dialect."""
    if "world" in metafunc.fixturenames and metafunc.definition.get_closest_marker("every_dialect"):
        metafunc.parametrize("dialect", LISTING_DIALECTS)
