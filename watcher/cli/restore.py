"""Start-up: resume the unfinished watches of a previous run, tell which tasks already ended,
and hand back what discovery must not bring back."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from watcher.engine.engine import Engine
from watcher.state.records import to_watched
from watcher.state.sqlite import Store

log = structlog.get_logger("watcher.state")

ENDED_TASK_RETENTION = 30 * 86400.0
"""Ended tasks (and tombstones of removed ones) are kept this long, so a restart, a task list
that still names them, or discovery does not watch them again."""


@dataclass(frozen=True, slots=True)
class Restored:
    """What `restore` found."""

    resumed: list[str]
    ended: set[str]
    outcomes: dict[str, str] = field(default_factory=dict)
    """How each ended task ended (its stored `end_reason`)."""
    tombstones: frozenset[str] = frozenset()
    """Tasks removed through the task API within the retention: discovery skips them."""


async def restore(engine: Engine, store: Store, *, now: float) -> Restored:
    """Resume every unfinished watch; mark ended ones, with their outcomes, so nothing
    watches them again and `--exit-when-done` still counts how they ended. Prunes ended
    tasks and tombstones older than ENDED_TASK_RETENTION first."""
    pruned = await store.prune_ended(now - ENDED_TASK_RETENTION)
    pruned_tombstones = await store.prune_tombstones(now - ENDED_TASK_RETENTION)
    records = await store.load_tasks()
    outcomes = {
        record.task_id: record.end_reason for record in records if record.end_reason is not None
    }
    ended = set(outcomes)
    engine.remember_ended(outcomes)
    resumed = [
        record.task_id
        for record in records
        if record.end_reason is None and engine.restore(to_watched(record))
    ]
    tombstones = frozenset(await store.tombstones())
    engine.mark_removed(tombstones)
    log.info(
        "state.restored",
        resumed=len(resumed),
        ended=len(ended),
        pruned=pruned,
        tombstones=len(tombstones),
        pruned_tombstones=pruned_tombstones,
    )
    return Restored(resumed=resumed, ended=ended, outcomes=outcomes, tombstones=tombstones)
