"""Durations as people write them in config files: "30s", "5m", "2h", "1d", or plain seconds."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DURATION_RULE = 'a duration such as "30s", "5m", "2h", "1d" or a number of seconds'


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "1.5s", "5m", "2h", "1d"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_RULE}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected {DURATION_RULE}")
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    else:
        raise ValueError(f"expected {DURATION_RULE}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected {DURATION_RULE}, not negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 90 → "90s", 300 → "5m", 7200 → "2h", 0.5 → "0.5s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
