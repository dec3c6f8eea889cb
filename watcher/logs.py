"""structlog set-up (SPEC §8): JSON lines when stdout is not a terminal, console otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
REDACTED = "**********"
_SENSITIVE_WORDS = ("token", "password", "secret", "authorization", "signature", "credential")


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: blank any field whose *name* says it holds a secret."""
    for key in list(event_dict):
        lowered = key.lower()
        if any(word in lowered for word in _SENSITIVE_WORDS) and event_dict[key]:
            event_dict[key] = REDACTED
    return event_dict


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process; `fmt` is auto, json or console."""
    out = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
