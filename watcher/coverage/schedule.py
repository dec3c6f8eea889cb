"""Backup policy schedules: the start times a policy's iCalendar RRULE pattern stands for.

How a pattern is read (docs/coverage.md, "How schedule times are derived"), shared with the
simulator so the two cannot drift apart:

- every time is UTC, whatever `operation_definition.timezone` says;
- DTSTART is the policy's `trigger.properties.start_time` with its seconds dropped, so a
  BYHOUR or BYMINUTE left out takes the start's hour or minute (RFC 5545);
- the first start is the first occurrence at or after `start_time` itself;
- only what CBR documents is accepted: FREQ (DAILY or WEEKLY), INTERVAL, BYDAY, BYHOUR and
  BYMINUTE, each once per rule, at most 24 rules. Anything else is unsupported, never guessed.

The watcher reads patterns leniently where the meaning is not in doubt (spaces, a trailing `;`,
an `RRULE:` prefix, lower case); the simulator, which stands for CBR's own validation, checks
the strict form with the same key and value rules (`RULE_VALUES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from heapq import merge
from itertools import islice

from dateutil.rrule import rrule, rruleset, rrulestr

MAX_RULES = 24
MAX_INTERVAL = 100
WEEKDAYS = frozenset({"MO", "TU", "WE", "TH", "FR", "SA", "SU"})
MAX_OCCURRENCES = 20_000
"""The most start times one question about a schedule returns (a safety stop)."""
_ANCHOR = datetime(2000, 1, 3, tzinfo=UTC)
"""DTSTART for a policy without a readable start_time (a Monday at midnight): used only for
rules whose times do not depend on DTSTART."""


def _numbers(low: int, high: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        items = value.split(",")
        return all(item.isascii() and item.isdigit() and len(item) <= 3 for item in items) and all(
            low <= int(item) <= high for item in items
        )

    return check


RULE_VALUES: dict[str, Callable[[str], bool]] = {
    "FREQ": lambda value: value in ("DAILY", "WEEKLY"),
    "INTERVAL": _numbers(1, MAX_INTERVAL),
    "BYDAY": lambda value: bool(value) and set(value.split(",")) <= WEEKDAYS,
    "BYHOUR": _numbers(0, 23),
    "BYMINUTE": _numbers(0, 59),
}
"""What CBR accepts in a pattern, and what each key's value may be."""
RULE_EXPECTATIONS = {
    "FREQ": "DAILY or WEEKLY",
    "INTERVAL": f"a whole number from 1 to {MAX_INTERVAL}",
    "BYDAY": "days among MO, TU, WE, TH, FR, SA, SU",
    "BYHOUR": "hours from 0 to 23",
    "BYMINUTE": "minutes from 0 to 59",
}


class UnsupportedScheduleError(ValueError):
    """A pattern whose start times cannot be worked out without guessing."""


def rule_set(patterns: Sequence[str], dtstart: datetime) -> rruleset:
    """Every rule of a pattern as one set of UTC start times, DTSTART `dtstart`."""
    lines = "\n".join(f"RRULE:{pattern}" for pattern in patterns)
    return rrulestr(lines, dtstart=dtstart, forceset=True)


def dtstart_of(start: datetime) -> datetime:
    """A policy's DTSTART: its start time in UTC with the seconds dropped."""
    return start.astimezone(UTC).replace(second=0, microsecond=0)


def read_rule(rule: str) -> dict[str, str]:
    """One RRULE as its KEY → VALUE parts, read leniently (spaces, case, a trailing `;`, an
    `RRULE:` prefix); UnsupportedScheduleError for anything outside what CBR documents."""
    text = "".join(rule.split()).upper().removeprefix("RRULE:")
    parts: dict[str, str] = {}
    for part in filter(None, text.split(";")):
        key, sep, value = part.partition("=")
        if not sep or key not in RULE_VALUES:
            raise UnsupportedScheduleError(
                f"{rule[:80]!r}: {key[:20] or part[:20]!r} is not one of {', '.join(RULE_VALUES)}"
            )
        if key in parts:
            raise UnsupportedScheduleError(f"{rule[:80]!r}: {key} given twice")
        if not RULE_VALUES[key](value):
            raise UnsupportedScheduleError(
                f"{rule[:80]!r}: {key}={value[:20]} is not {RULE_EXPECTATIONS[key]}"
            )
        parts[key] = value
    if "FREQ" not in parts:
        raise UnsupportedScheduleError(f"{rule[:80]!r}: FREQ is required")
    return parts


def _anchor_free(parts: dict[str, str]) -> bool:
    """Whether a rule's times are the same whatever its DTSTART."""
    weekday_known = parts["FREQ"] == "DAILY" or "BYDAY" in parts
    return (
        "BYHOUR" in parts
        and "BYMINUTE" in parts
        and parts.get("INTERVAL", "1").lstrip("0") == "1"
        and weekday_known
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    parts: dict[str, str]
    text: str
    period: timedelta
    """FREQ × INTERVAL: shifting DTSTART by a multiple of this keeps every occurrence."""


class Schedule:
    """The start times of one policy: its rules from DTSTART on, none before `start`."""

    def __init__(self, patterns: Sequence[str], start: datetime | None) -> None:
        """UnsupportedScheduleError when a rule is unreadable or unsupported, when there are
        none or more than MAX_RULES, or (without `start`) when a rule's times would depend on
        the missing start time."""
        if not patterns:
            raise UnsupportedScheduleError("the policy has no pattern")
        if len(patterns) > MAX_RULES:
            raise UnsupportedScheduleError(f"{len(patterns)} rules (CBR allows {MAX_RULES})")
        rules = []
        for pattern in patterns:
            parts = read_rule(pattern)
            if start is None and not _anchor_free(parts):
                raise UnsupportedScheduleError(
                    f"{pattern[:80]!r} depends on the policy's start_time, which is missing"
                )
            days = 7 if parts["FREQ"] == "WEEKLY" else 1
            text = ";".join(f"{key}={value}" for key, value in parts.items())
            rules.append(_Rule(parts, text, timedelta(days=days * int(parts.get("INTERVAL", 1)))))
        self.patterns = tuple(rule.text for rule in rules)
        self.start = _ANCHOR if start is None else start.astimezone(UTC)
        self._dtstart = dtstart_of(self.start)
        self._rules = tuple(rules)

    def __repr__(self) -> str:
        return f"Schedule({list(self.patterns)!r}, start={self.start.isoformat()})"

    def _iter_from(self, moment: datetime) -> Iterator[datetime]:
        """Start times at or after `moment` (and at or after `start`), in order."""
        since = max(moment, self.start)
        streams = []
        for rule in self._rules:
            dtstart = self._dtstart
            # Iterating from a DTSTART years back is slow; a whole number of periods later
            # the rule yields the very same times (same weekday, hour, minute and phase).
            periods = math.floor((since - dtstart) / rule.period) - 1
            if periods > 0:
                dtstart += rule.period * periods
            streams.append(rrule_of(rule.text, dtstart).xafter(since, inc=True))
        last = None
        for moment_ in merge(*streams):
            if moment_ != last:
                last = moment_
                yield moment_

    def between(self, after: float, until: float) -> list[float]:
        """Start times in (after, until], epoch seconds, at most MAX_OCCURRENCES of them."""
        if until <= after:
            return []
        first = datetime.fromtimestamp(after, UTC)
        out = []
        for moment in islice(self._iter_from(first), MAX_OCCURRENCES):
            stamp = moment.timestamp()
            if stamp > until:
                break
            if stamp > after:
                out.append(stamp)
        return out

    def next_after(self, moment: float) -> float | None:
        """The first start time after `moment` (epoch seconds), None when there is none."""
        for found in islice(self._iter_from(datetime.fromtimestamp(moment, UTC)), 3):
            if found.timestamp() > moment:
                return found.timestamp()
        return None


def rrule_of(text: str, dtstart: datetime) -> rrule:
    """One rule (`FREQ=...;...`) from `dtstart`."""
    made = rrulestr(text, dtstart=dtstart)
    assert isinstance(made, rrule)
    return made
