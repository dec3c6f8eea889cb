"""Shared fixtures, and the CI rule that a skipped test is a failed test."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
import structlog


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
