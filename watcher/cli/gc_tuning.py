"""Keep the cyclic garbage collector off the long-lived task table.

CPython's full (generation 2) collection walks every tracked container that survived two
younger collections. With tens of thousands of watched tasks that is the task table itself,
which is never garbage, and the walk stops the event loop long enough to become the p99
scheduling lag. What the daemon watches is built once at start-up (restored state,
`watch.tasks`, the task file) and then grows in batches (a task-file edit, a run of task-API
calls), so:

* after start-up, and again after every `FREEZE_AFTER_ADDED` additions, `gc.freeze()` moves
  every object tracked so far into the permanent generation, which collections skip (freezing
  is a list splice, not a walk). Frozen objects are still freed by reference counting as soon
  as nothing refers to them, so replaced answers do not accumulate; only reference cycles
  created before a freeze and dropped after it stay until the process ends, and the daemon's
  long-lived state has none (with the collector disabled entirely, RSS did not grow).
* the generation-0 threshold is raised from 700 to `YOUNG_THRESHOLD`: every poll allocates a
  few hundred short-lived containers (request, response, parsed JSON), and collecting them
  700 at a time promoted half-finished polls into the older generations.

Neither part is enough alone: freezing alone leaves the answers replaced since the freeze to
pile up in the old generation, which full collections still walk; the thresholds alone make
full collections rare but young collections long. The measurements are in bench/README.md
("Figures behind choices in the code").
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watcher.clock import Clock

FREEZE_AFTER_ADDED = 1000
"""Tasks added since the last freeze that make the next one worthwhile."""
GROWTH_CHECK_INTERVAL = 10.0
"""Seconds between looks at the table's size (tasks added through the task API, discovery)."""
YOUNG_THRESHOLD = 20_000
"""Generation-0 threshold: allocations minus deallocations of containers between collections."""
OLDER_THRESHOLDS = (20, 20)
"""Younger collections before the next generation is collected (CPython: 10, 10)."""


def apply_thresholds() -> None:
    """Set the tuned collection thresholds (idempotent)."""
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def freeze_long_lived() -> None:
    """Move everything the collector tracks now into the permanent generation."""
    gc.freeze()


@dataclass
class GcTuner:
    """Applies the thresholds and freezes after start-up and after large additions."""

    freeze_after: int = FREEZE_AFTER_ADDED
    freezes: int = 0
    """How many times this tuner froze (for tests and logs)."""
    _added_since_freeze: int = field(default=0, repr=False)

    def after_startup(self) -> None:
        """Start-up is over (state restored, tasks loaded): tune and freeze what exists."""
        apply_thresholds()
        self._freeze()

    def note_added(self, count: int) -> None:
        """`count` tasks were just added; freeze once enough have accumulated."""
        self._added_since_freeze += max(0, count)
        if self._added_since_freeze >= self.freeze_after:
            self._freeze()

    async def follow(self, table_size: Callable[[], int], clock: Clock) -> None:
        """Freeze whenever the table grew by `freeze_after` since the last look that froze,
        whoever added the tasks (task API, discovery), forever."""
        baseline, freezes = table_size(), self.freezes
        while True:
            await clock.sleep(GROWTH_CHECK_INTERVAL)
            size = table_size()
            if self.freezes == freezes and size - baseline >= self.freeze_after:
                self._freeze()
            if self.freezes != freezes or size < baseline:
                baseline, freezes = size, self.freezes

    def _freeze(self) -> None:
        freeze_long_lived()
        self._added_since_freeze = 0
        self.freezes += 1


@dataclass
class PauseRecorder:
    """Records the length of every collection through `gc.callbacks` (benchmarks, diagnostics)."""

    pauses: list[tuple[int, float]] = field(default_factory=list)
    """(generation, seconds) of each collection since `install`."""
    _started: float = field(default=0.0, repr=False)
    _callback: Callable[[str, dict[str, int]], None] | None = field(default=None, repr=False)

    def install(self) -> None:
        """Start recording."""

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                self._started = time.perf_counter()
            else:
                self.pauses.append((info["generation"], time.perf_counter() - self._started))

        self._callback = on_gc
        gc.callbacks.append(on_gc)

    def uninstall(self) -> None:
        """Stop recording."""
        if self._callback is not None and self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        self._callback = None

    def longest(self) -> float:
        """The longest pause recorded, in seconds (0.0 when none)."""
        return max((seconds for _, seconds in self.pauses), default=0.0)
