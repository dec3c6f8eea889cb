"""What the engine counts, for logs, metrics, the demo's summary and the benchmarks."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from watcher.engine import schedule

LIST_COMPONENTS = ("refresh", "discovery", "coverage")
"""Who lists operation logs: the refresh sweep, discovery, and coverage (confirming a missed
backup)."""
INTERNAL_COMPONENTS = ("poll", "store", "events", "engine", "coverage")
"""Where an unexpected exception can be caught and survived (`EngineStats.internal_errors`):
a poll (client or answer handling), a state write, an event subscriber, the scheduler loop,
coverage (inventory and missed-backup checks)."""


@dataclass(slots=True)
class EngineStats:
    """Counters for logs, metrics, the demo summary and benchmarks."""

    polls_started: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    list_pages: int = 0
    """ListOpLogs page requests started to refresh watched tasks (not discovery's)."""
    list_refreshed: int = 0
    """Task answers taken from those pages instead of a ShowOpLog each."""
    list_refused: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(LIST_COMPONENTS, 0))
    )
    """Listings the cloud refused (403: the credentials may not list), by who listed."""
    list_malformed: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(LIST_COMPONENTS, 0))
    )
    """List entries that could not be read (each spoils that entry, not its page)."""
    lag_samples: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    """Scheduling lag of recent polls: due time → request started, in seconds."""
    internal_errors: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(INTERNAL_COMPONENTS, 0))
    )
    """Unexpected exceptions survived, by component (see INTERNAL_COMPONENTS)."""
    poll_reasons: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(map(str, schedule.Reason), 0))
    )
    """Scheduled polls by why they wait as long as they do (`schedule.Reason` values)."""
