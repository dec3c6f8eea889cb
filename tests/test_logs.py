"""Logging is total: no stream, encoding or value makes a log call raise (SPEC §8)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import structlog

from tests.daemon_process import clean_env, spawned
from tests.support import fake_clock_now
from watcher.observe.logs import SafeLogger, configure_logging
from watcher.sim import SimTaskSpec, Simulator
from watcher.testing import FakeClock

FORMATS = ["json", "console"]
TOKEN = "logs-test-token"


class Unprintable:
    """A value whose repr and str both fail: every renderer trips over it."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


def log_everything() -> None:
    """One call of each awkward kind; none may raise."""
    log = structlog.get_logger("watcher.test")
    log.info("plain", count=1)
    log.warning("non_ascii", value="caf\u00e9 \u2603 \U0001f4be")
    log.error("surrogate", value="\ud800 lone", key_too="\udfff")
    log.info("unprintable", value=Unprintable())
    log.info(Unprintable())
    try:
        raise ValueError("with a traceback")
    except ValueError:
        log.exception("exception")


def written(raw: io.BytesIO) -> list[str]:
    """The non-empty lines written so far."""
    return [line for line in raw.getvalue().decode("ascii").splitlines() if line]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_stream_that_only_speaks_ascii_gets_escapes(fmt: str) -> None:
    """A non-UTF-8 stdout (LANG=C) and lone surrogates: backslash escapes, every line out."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    configure_logging(fmt=fmt, stream=stream)
    log_everything()
    lines = written(raw)
    assert len(lines) >= 6
    text = "\n".join(lines)
    assert "plain" in text
    assert "\\ud800" in text
    assert "caf" in text
    if fmt == "json":
        records = [json.loads(line) for line in lines if line.startswith("{")]
        surrogate = next(r for r in records if r.get("event") == "surrogate")
        assert surrogate["value"] == "\ud800 lone"
        assert next(r for r in records if r.get("event") == "non_ascii")["value"].startswith(
            "caf\u00e9"
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failing_renderer_writes_a_fallback_line(fmt: str) -> None:
    """A value no renderer can print: one minimal line naming the event and the error."""
    raw = io.BytesIO()
    configure_logging(fmt=fmt, stream=io.TextIOWrapper(raw, encoding="utf-8", write_through=True))
    structlog.get_logger().info("odd_value", value=Unprintable())
    structlog.get_logger().info(Unprintable())
    first, second = (json.loads(line) for line in raw.getvalue().decode().splitlines())
    assert first == {
        "event": "odd_value",
        "level": "info",
        "log_error": "RuntimeError: no repr for you",
    }
    assert second["event"] == "<unprintable Unprintable>"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_closed_stream_is_skipped(fmt: str) -> None:
    """Logging to a closed file object loses the line and nothing else."""
    stream = io.StringIO()
    configure_logging(fmt=fmt, stream=stream)
    stream.close()
    log_everything()


@pytest.fixture
def broken_pipe() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A text stream on the write end of a pipe whose read end is already closed."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    stream = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115 - closed by the fixture
    try:
        yield stream, write_fd
    finally:
        stream.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_broken_pipe_silences_the_logger_and_points_the_fd_at_devnull(
    fmt: str, broken_pipe: tuple[io.TextIOWrapper, int]
) -> None:
    """`... | head`: the first failed write silences logging and the descriptor is moved to
    /dev/null, so the final flush at exit has nowhere to fail."""
    stream, fd = broken_pipe
    configure_logging(fmt=fmt, stream=stream)
    log_everything()
    logger = structlog.get_config()["logger_factory"].logger
    assert isinstance(logger, SafeLogger)
    assert logger.silenced
    assert os.path.samestat(os.fstat(fd), os.stat(os.devnull))
    stream.write("buffered leftovers\n")
    stream.flush()  # would raise BrokenPipeError without the redirection


def test_no_stdout_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """pythonw, or a daemon started with stdout closed: sys.stdout is None."""
    monkeypatch.setattr(sys, "stdout", None)
    configure_logging(fmt="auto")
    log_everything()


def test_safe_logger_survives_os_errors() -> None:
    """ENOSPC/EIO from the stream: the line is lost, the caller carries on."""

    class Full(io.StringIO):
        def write(self, _text: str) -> int:
            raise OSError(28, "No space left on device")

    logger = SafeLogger(Full())
    logger.msg("one")
    logger.error("two")
    assert not logger.silenced


def test_fields_named_like_secrets_are_blanked_and_paths_are_kept() -> None:
    """A log field whose name says "secret" (the rule check-config uses) never shows its
    value; a field naming where a secret is kept, or no secret at all, is shown as it is."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    structlog.get_logger("watcher.test").warning(
        "credentials",
        api_token="tok-123",
        auth_password="pw-456",
        access_key="AK-789",
        x_api_key="key-000",
        signature="sig-abc",
        token_file="/run/secrets/token",
        region="ap-southeast-1",
        empty_secret="",
    )
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    for field in ("api_token", "auth_password", "access_key", "x_api_key", "signature"):
        assert record[field] == "**********", field
    assert record["token_file"] == "/run/secrets/token"
    assert record["region"] == "ap-southeast-1"
    assert record["empty_secret"] == ""
    for value in ("tok-123", "pw-456", "AK-789", "key-000", "sig-abc"):
        assert value not in stream.getvalue()


def unbuffered_reader(fd: int) -> BinaryIO:
    """A file object over `fd` for `connect_read_pipe`, which owns (and closes) it."""
    return os.fdopen(fd, "rb", buffering=0)


# ---- end to end: `cbr-watcher run | head -n 2`, then SIGTERM -----------------------------------


async def test_sigterm_after_the_reader_went_away_exits_0_quietly(tmp_path: Path) -> None:
    """stdout is a pipe whose reader quits after two lines (like `head -n 2`); the daemon keeps
    working, and SIGTERM still stops it by itself: exit 0, no traceback on stderr."""
    sim = Simulator(fake_clock_now(), tokens=[TOKEN], seed=3)
    sim.add_task(SimTaskSpec(id="piped", phases=[("waiting", 60, 0), ("running", 60, 30)]))
    loop = asyncio.get_running_loop()
    async with sim.running() as base_url:
        env = clean_env(
            CBR_WATCHER_CBR__ENDPOINT=base_url,
            CBR_WATCHER_CBR__PROJECT_ID=sim.project_id,
            CBR_WATCHER_AUTH__TOKEN=TOKEN,
            CBR_WATCHER_WATCH__TASKS='["piped"]',
            CBR_WATCHER_WATCH__POLL_INTERVAL_MIN="0.1s",
            CBR_WATCHER_WATCH__POLL_INTERVAL_MAX="0.3s",
            CBR_WATCHER_STATE__PATH=str(tmp_path / "state.db"),
            CBR_WATCHER_SERVER__LISTEN="127.0.0.1:0",
            CBR_WATCHER_LOG__FORMAT="json",
        )
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), unbuffered_reader(read_fd)
        )
        try:
            async with spawned(
                sys.executable, "-m", "watcher", "run", env=env, stdout=write_fd
            ) as proc:
                os.close(write_fd)
                write_fd = -1
                head = [await asyncio.wait_for(reader.readline(), 60) for _ in range(2)]
                assert all(json.loads(line)["event"] for line in head)
                transport.close()  # `head -n 2` exits

                # The daemon logs into the dead pipe (status changes) and keeps polling.
                await until(lambda: sim.request_count("piped") >= 1, proc)
                clock = sim.clock
                assert isinstance(clock, FakeClock)
                clock.advance(60)
                seen = sim.request_count("piped")
                await until(lambda: sim.request_count("piped") >= seen + 2, proc)

                proc.send_signal(signal.SIGTERM)
                assert proc.stderr is not None
                err, code = await asyncio.wait_for(
                    asyncio.gather(proc.stderr.read(), proc.wait()), 30
                )
        finally:
            transport.close()
            if write_fd >= 0:
                os.close(write_fd)
    stderr = err.decode(errors="replace")
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert "BrokenPipeError" not in stderr


async def until(condition: Callable[[], bool], proc: asyncio.subprocess.Process) -> None:
    """Wait (at most 60 s) for `condition()`, failing at once if the process ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not condition():
        assert proc.returncode is None, f"the daemon exited early ({proc.returncode})"
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)
