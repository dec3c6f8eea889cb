"""structlog set-up (see docs/logs.md): JSON lines when stdout is not a terminal, console otherwise.

Logging is total: nothing a log call does can raise into the program. A closed or broken
stdout (`cbr-watcher run | head -n 2`), a stream that cannot encode a character, or a
processor that fails on an odd value all end in at most a lost or simplified line, never in an
exception at the call site — a signal handler that logs must still stop the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from watcher.redaction import REDACTED, is_secret_key

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FALLBACK_TEXT_LIMIT = 200


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: blank any field whose *name* says it holds a secret
    (`watcher.redaction.is_secret_key`: "token", "api_key", "X-Auth-Token"; not "token_file")."""
    for key in list(event_dict):
        if is_secret_key(key) and event_dict[key]:
            event_dict[key] = REDACTED
    return event_dict


class SafeLogger:
    """A structlog logger that writes one line per call and never raises.

    It replaces `structlog.PrintLogger`. Text the stream cannot encode (lone surrogates, or a
    non-UTF-8 stdout) is written with backslash escapes; a closed stream is skipped silently.
    After a broken pipe the file descriptor is pointed at /dev/null, so later writes and the
    interpreter's final flush succeed quietly instead of printing "Exception ignored ...".
    """

    def __init__(self, file: TextIO | None) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._silenced = file is None

    def __repr__(self) -> str:
        return f"<SafeLogger(file={self._file!r})>"

    @property
    def silenced(self) -> bool:
        """Whether output has stopped for good (the reader went away or there is no stream)."""
        return self._silenced

    def msg(self, message: object) -> None:
        """Write `message` and a newline, and flush; never raises."""
        if self._silenced:
            return
        try:
            text = message if isinstance(message, str) else _safe_str(message)
            with self._lock:
                self._write(text + "\n")
        except BrokenPipeError:
            self._silence()
        except (OSError, ValueError):
            # ENOSPC, EIO, a closed stream (ValueError): lose the line, keep the program.
            pass

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def _write(self, text: str) -> None:
        assert self._file is not None
        try:
            self._file.write(text)
        except UnicodeEncodeError:
            # TextIOWrapper encodes the whole string before writing, so nothing went out yet.
            encoding = getattr(self._file, "encoding", None) or "utf-8"
            self._file.write(text.encode(encoding, "backslashreplace").decode(encoding))
        self._file.flush()

    def _silence(self) -> None:
        self._silenced = True
        file = self._file
        if file is None:
            return
        try:
            fd = file.fileno()
        except (AttributeError, OSError, ValueError):
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
        finally:
            os.close(devnull)


class SafeLoggerFactory:
    """Hands every structlog logger the same SafeLogger, so one broken pipe silences all."""

    def __init__(self, file: TextIO | None) -> None:
        self.logger = SafeLogger(file)

    def __call__(self, *_args: Any) -> SafeLogger:
        """The shared logger (structlog passes the logger name, which is not needed)."""
        return self.logger


class _TotalBoundLogger(structlog.BoundLoggerBase):
    """Mixed in front of structlog's filtering bound logger: processing errors never escape.

    A processor or renderer that raises (an object whose `__repr__` fails, a key that is
    not a string, ...) gets one fallback line naming the event and the error instead.
    """

    def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
        try:
            return super()._proxy_to_logger(method_name, event, **event_kw)
        except structlog.DropEvent:
            return None
        except Exception as error:  # the point: logging must never break the caller
            _write_fallback(self._logger, method_name, event, error)
            return None


def _write_fallback(logger: Any, method_name: str, event: object, error: BaseException) -> None:
    line = json.dumps(
        {
            "event": _safe_str(event),
            "level": method_name if method_name in LEVELS else "error",
            "log_error": f"{type(error).__name__}: {_safe_str(error)}",
        }
    )
    # A logger other than SafeLogger failed too: there is nowhere left to report it.
    with contextlib.suppress(Exception):
        logger.msg(line)


def _safe_str(value: object) -> str:
    """`str(value)`, shortened; a placeholder if even that fails."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    if len(text) > _FALLBACK_TEXT_LIMIT:
        text = text[: _FALLBACK_TEXT_LIMIT - 3] + "..."
    return text


def _is_terminal(stream: TextIO | None) -> bool:
    if stream is None:
        return False
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process; `fmt` is auto, json or console.

    Output goes to `stream` (default: stdout) through a SafeLogger: no log call raises.
    """
    out = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and _is_terminal(out))
    renderer: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    filtering = structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO))
    wrapper = type("TotalFilteringBoundLogger", (_TotalBoundLogger, filtering), {})
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=wrapper,
        logger_factory=SafeLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
