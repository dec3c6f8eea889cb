"""The engine's batched refresh: many due tasks, one ListOpLogs listing (`watcher.engine.listing`).

A listing is started when a batchable task is due and the pages it is expected to take are
fewer than the tasks due within `poll_interval_max` (each of which would otherwise cost one
ShowOpLog). It refreshes every watched task whose creation time is known, due or not, so the
tasks drift into one rhythm and later rounds stay cheap. A task the listing missed gets one
ShowOpLog; a failed listing sends every task back to ShowOpLogs for `LIST_FAILURE_PAUSE`.
"""

from __future__ import annotations

import structlog

from watcher.cbr.errors import CbrError, InternalError
from watcher.engine import listing as batch
from watcher.engine import schedule
from watcher.engine.core import EngineCore, Slot

log = structlog.get_logger("watcher.engine")

LIST_FAILURE_PAUSE = 300.0
"""After a failed listing, tasks are refreshed one by one for this long."""
BATCH_HORIZON_FACTOR = 1.0
"""Tasks due within this many `poll_interval_max` count as the ShowOpLogs a listing saves."""


class BatchingEngine(EngineCore):
    """EngineCore plus refreshing many tasks with one listing."""

    # ---- many tasks, one listing -------------------------------------------------------------

    def _start_batch(self, trigger: Slot, now: float) -> bool:
        """Refresh every batchable task with ListOpLogs pages, if that is cheaper than the
        ShowOpLogs due soon; True when a listing was started (it covers `trigger`)."""
        if (
            not self._batching
            or self._batch_running
            or trigger.confirm
            or trigger.row.created_wall is None
            or now < max(self._batch_paused_until, self._batch_not_worth_until)
        ):
            return False
        if now < self._next_batch_at:
            # Listings at most every poll_interval_min: the task joins the next one.
            self._schedule(trigger, self._next_batch_at - now)
            return True
        horizon = now + BATCH_HORIZON_FACTOR * self.policy.interval_max
        members = [trigger]
        due_soon = 1
        for slot in self._slots.values():
            if slot is trigger or slot.in_flight or slot.confirm or slot.row.ended:
                continue
            if slot.row.created_wall is None:
                continue
            members.append(slot)
            due_soon += slot.due <= horizon
        listing = batch.plan([slot.row for slot in members])
        pages = (
            batch.pages_for(self._list_counts.get(listing.key), len(members))
            if listing is not None
            else due_soon
        )
        if listing is None or pages >= due_soon:
            # Not worth it now; look again (an O(tasks) scan) only a little later.
            self._batch_not_worth_until = now + self.policy.interval_min
            return False
        self._batch_running = True
        self._next_batch_at = now + self.policy.interval_min
        for slot in members:
            slot.generation += 1  # their places on the heap are taken by this listing
            slot.in_flight = True
        held = [(slot, slot.generation) for slot in members]
        self._spawn(self._refresh(listing, held), f"list {len(held)} tasks")
        return True

    async def _acquire_page(self) -> None:
        await self.acquire_request()
        self.stats.list_pages += 1

    async def _refresh(self, listing: batch.Listing, held: list[tuple[Slot, int]]) -> None:
        """One listing for the held tasks; whatever happens, each gets a next poll."""
        try:
            wanted = [slot.row.task_id for slot, _ in held]
            try:
                result = await batch.list_all(
                    self._client,  # type: ignore[arg-type]
                    listing,
                    wanted=wanted,
                    acquire=self._acquire_page,
                )
            except Exception as error:
                await self._listing_failed(error, held)
                return
            self._list_counts[listing.key] = result.count
            self.upstream.ok()
            for slot, generation in held:
                answer = result.found.get(slot.row.task_id)
                if not self._current(slot, generation):
                    continue
                if answer is None:
                    slot.confirm = True  # ended and deleted, or skipped by a shifting list
                    self._schedule(slot, 0.0)
                    continue
                self.stats.list_refreshed += 1
                try:
                    await self._poll_answered(slot, generation, answer)
                finally:
                    self._ensure_next(slot, generation)
        finally:
            self._batch_running = False
            for slot, generation in held:
                self._ensure_next(slot, generation)

    async def _listing_failed(self, error: Exception, held: list[tuple[Slot, int]]) -> None:
        failure = error if isinstance(error, CbrError) else InternalError.wrap(error)
        log.warning(
            "batch.list_failed",
            tasks=len(held),
            error_type=type(error).__name__,
            error=str(error)[:200],
            detail=f"refreshing one by one for {LIST_FAILURE_PAUSE:g}s",
        )
        self._batch_paused_until = self._clock.monotonic() + LIST_FAILURE_PAUSE
        await self._after_request_failed(failure, schedule.PollState())
        for slot, generation in held:
            if self._current(slot, generation):
                slot.confirm = True
                self._schedule(slot, 0.0)
