"""Batched refresh: many watched tasks, one ListOpLogs listing (`watcher.engine.listing`).

A listing is started when a task whose creation time is known is due and the pages it is
expected to take are fewer than the tasks due within `poll_interval_max` (each of which would
otherwise cost one ShowOpLog). It refreshes every such task, due or not, so the tasks drift
into one rhythm and later rounds stay cheap. A task the listing missed gets one ShowOpLog; a
failed listing sends every task back to ShowOpLogs for `LIST_FAILURE_PAUSE`.
"""

from __future__ import annotations

import structlog

from watcher.cbr.errors import CbrError, InternalError
from watcher.clock import Clock
from watcher.engine import listing, schedule
from watcher.engine.poll import PollPath
from watcher.engine.scheduler import Scheduler, Slot
from watcher.engine.stats import EngineStats
from watcher.engine.table import TaskTable

log = structlog.get_logger("watcher.engine")

LIST_FAILURE_PAUSE = 300.0
"""After a failed listing, tasks are refreshed one by one for this long."""
BATCH_HORIZON_FACTOR = 1.0
"""Tasks due within this many `poll_interval_max` count as the ShowOpLogs a listing saves."""


class BatchRefresh:
    """Decides when a listing is cheaper than ShowOpLogs, and runs it."""

    def __init__(
        self,
        *,
        poll: PollPath,
        table: TaskTable,
        scheduler: Scheduler,
        clock: Clock,
        stats: EngineStats,
        enabled: bool = True,
    ) -> None:
        self._poll = poll
        self._table = table
        self._scheduler = scheduler
        self._clock = clock
        self._stats = stats
        self.enabled = enabled
        self._running = False
        self._paused_until = 0.0
        self._next_at = 0.0
        self._not_worth_until = 0.0
        self._list_counts: dict[tuple[tuple[str, str], ...], int | None] = {}

    def start(self, trigger: Slot, now: float) -> bool:
        """Refresh every batchable task with ListOpLogs pages, if that is cheaper than the
        ShowOpLogs due soon; True when `trigger` is taken care of (listed or postponed)."""
        policy = self._poll.policy
        row = self._table.get(trigger.task_id)
        if (
            not self.enabled
            or self._running
            or trigger.confirm
            or row is None
            or row.created_wall is None
            or now < max(self._paused_until, self._not_worth_until)
        ):
            return False
        if now < self._next_at:
            # Listings at most every poll_interval_min: the task joins the next one.
            self._scheduler.schedule(trigger, self._next_at - now)
            return True
        horizon = now + BATCH_HORIZON_FACTOR * policy.interval_max
        members = [trigger]
        rows = [row]
        due_soon = 1
        for slot in self._scheduler.slots():
            if slot is trigger or slot.in_flight or slot.confirm:
                continue
            member = self._table.get(slot.task_id)
            if member is None or member.created_wall is None:
                continue
            members.append(slot)
            rows.append(member)
            due_soon += slot.due <= horizon
        plan = listing.plan(rows)
        pages = (
            listing.pages_for(self._list_counts.get(plan.key), len(members))
            if plan is not None
            else due_soon
        )
        if plan is None or pages >= due_soon:
            # Not worth it now; look again (an O(tasks) scan) only a little later.
            self._not_worth_until = now + policy.interval_min
            return False
        self._running = True
        self._next_at = now + policy.interval_min
        held = [(slot, self._scheduler.hold(slot)) for slot in members]
        self._scheduler.spawn(self._refresh(plan, held), f"list {len(held)} tasks")
        return True

    async def _acquire_page(self) -> None:
        await self._scheduler.acquire_request()
        self._stats.list_pages += 1

    async def _refresh(self, plan: listing.Listing, held: list[tuple[Slot, int]]) -> None:
        """One listing for the held tasks; whatever happens, each gets a next look."""
        try:
            wanted = [slot.task_id for slot, _ in held]
            try:
                result = await listing.list_all(
                    self._poll.client, plan, wanted=wanted, acquire=self._acquire_page
                )
            except Exception as error:
                await self._failed(error, held)
                return
            self._list_counts[plan.key] = result.count
            self._poll.upstream.ok()
            for slot, generation in held:
                answer = result.found.get(slot.task_id)
                if not self._scheduler.current(slot, generation):
                    continue
                if answer is None:
                    slot.confirm = True  # ended and deleted, or skipped by a shifting list
                    self._scheduler.schedule(slot, 0.0)
                    continue
                self._stats.list_refreshed += 1
                try:
                    await self._poll.answered(slot, generation, answer)
                finally:
                    self._poll.ensure_next(slot, generation)
        finally:
            self._running = False
            for slot, generation in held:
                self._poll.ensure_next(slot, generation)

    async def _failed(self, error: Exception, held: list[tuple[Slot, int]]) -> None:
        failure = error if isinstance(error, CbrError) else InternalError.wrap(error)
        log.warning(
            "batch.list_failed",
            tasks=len(held),
            error_type=type(error).__name__,
            error=str(error)[:200],
            detail=f"refreshing one by one for {LIST_FAILURE_PAUSE:g}s",
        )
        self._paused_until = self._clock.monotonic() + LIST_FAILURE_PAUSE
        await self._poll.request_failed(failure, schedule.PollState())
        for slot, generation in held:
            if self._scheduler.current(slot, generation):
                slot.confirm = True
                self._scheduler.schedule(slot, 0.0)
