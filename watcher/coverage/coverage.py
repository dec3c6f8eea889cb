"""Coverage (see docs/coverage.md): the inventory every `coverage.interval`, each new
resource's newest backup, and `backup.missed` for scheduled starts that passed without one.

Two loops share one quarter of the request budget (a `RequestBudget` at a quarter of the rate,
in front of the engine's), so watching tasks never starves:

- the inventory loop reads vaults and policies (`watcher.coverage.inventory`), publishes the
  result only when it is complete (a failed inventory keeps the last one's series), then asks
  ListBackups about each newly seen resource (`watcher.coverage.seeding`) until the next
  inventory is due; what is left is asked after it;
- the check loop wakes when a scheduled start's grace ends and judges it
  (`watcher.coverage.missed`); announcements are committed with their outbox rows through the
  recorder before anything else sees them.

What the inventory learned (first seen, seeds), which starts were announced and how far they
were judged are kept in the state file, so a restart asks no resource again and announces
nothing twice. Bad input is a `Problem`: logged once, counted, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

import structlog

from watcher.cbr.errors import CbrError, ThrottledError
from watcher.cbr.paging import IncompletePagingError
from watcher.clock import Clock
from watcher.config.model import CoverageSettings
from watcher.coverage.api import CoverageApi, UnderWay
from watcher.coverage.freshness import ResourceStatus
from watcher.coverage.inventory import Inventory, Problem, Protected, read_inventory
from watcher.coverage.missed import (
    CREATED_BEFORE,
    MAX_CATCH_UP,
    BackupMissed,
    Occurrence,
    Sightings,
    due,
    next_deadline,
)
from watcher.coverage.seeding import Seed, ask_again, freshness_of, newest_backup
from watcher.coverage.view import CoverageView, ViewBuilder
from watcher.engine import listing as batch
from watcher.engine.budget import RequestBudget
from watcher.engine.engine import Engine
from watcher.engine.events import TaskEvent
from watcher.state.rows import InventoryRecord

log = structlog.get_logger("watcher.coverage")

COMPONENT = "coverage"
"""Its name in `cbr_watcher_list_refused_total` and `cbr_watcher_internal_errors_total`."""
BUDGET_SHARE = 0.25
"""The most of `watch.max_requests_per_second` coverage may use."""
SAVE_EVERY = 200
"""Seeds written to the state file together."""
RETRY_CHECK = 60.0
"""After a check that could not finish (listing or state write failed), the next try."""
REFUSED_PAUSE = 3600.0
"""After a 403 on ListBackups or ListOpLogs, that part is tried again this much later."""
LOGGED_MEMORY = 10_000
"""Problems remembered as logged (and counted); past that they are only counted."""


class CoverageStore(Protocol):
    """What coverage keeps in the state file (`watcher.state.sqlite.Store`)."""

    async def inventory_records(self) -> list[InventoryRecord]:
        """Every resource seen."""
        ...

    async def save_inventory(
        self, records: Iterable[InventoryRecord], *, removed: Iterable[str] = ()
    ) -> None:
        """Store records, forget removed resources."""
        ...

    async def missed_since(self, since: float) -> set[tuple[str, float]]:
        """Announced (resource, start) pairs."""
        ...

    async def missed_counts(self) -> dict[tuple[str, str], int]:
        """Announcements per (resource, vault)."""
        ...

    async def checked_until(self) -> float | None:
        """How far starts were judged."""
        ...


MissedRecorder = Callable[..., Awaitable[int]]
"""`StateRecorder.record_missed(events, checked_until=, now=)`: commits announcements."""


class CoverageObserver(Protocol):
    """Where coverage feeds the freshness series and counters (`watcher.observe.metrics`)."""

    def seed_resource(self, status: ResourceStatus) -> None:
        """A last success learned from a backup."""
        ...

    def retain_resources(self, keep: Callable[[ResourceStatus], bool]) -> list[str]:
        """Drop every freshness row `keep` refuses; returns their resource IDs."""
        ...

    def count_inventory_skipped(self, kind: str) -> None:
        """One inventory entry left out (see PROBLEM_KINDS)."""
        ...

    def count_resources_dropped(self, count: int) -> None:
        """Resources newly left out of the series by the cap."""
        ...


class Coverage:
    """The inventory, the seeds and the missed-backup checks of one daemon."""

    def __init__(
        self,
        *,
        api: CoverageApi,
        engine: Engine,
        clock: Clock,
        settings: CoverageSettings,
        observer: CoverageObserver,
        record_missed: MissedRecorder,
        store: CoverageStore | None = None,
        max_series: int = 10_000,
    ) -> None:
        self._api = UnderWay(api, engine.scheduler)
        self._engine = engine
        self._clock = clock
        self.settings = settings
        self._observer = observer
        self._record_missed = record_missed
        self._store = store
        self._budget = RequestBudget(engine.budget.rate * BUDGET_SHARE)
        self._views = ViewBuilder(
            max_series=max_series, on_dropped=observer.count_resources_dropped
        )
        self.inventory: Inventory | None = None
        """The last complete inventory."""
        self.completed: float | None = None
        """Wall-clock seconds the last complete inventory finished."""
        self.records: dict[str, InventoryRecord] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.announced: set[tuple[str, float]] = set()
        self.checked_until: float | None = None
        self.sightings = Sightings()
        self.requests = 0
        """Requests made so far (inventory, seeds and listings)."""
        self.inventories = 0
        self._logged: set[str] = set()
        self._failing: dict[str, bool] = {}
        self._refused_until: dict[str, float] = {}
        self._view: CoverageView | None = None
        self._published = asyncio.Event()
        self._next_inventory = math.inf
        """When the inventory loop reads again (monotonic): seeding yields to it."""

    # ---- start-up ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Load what the state file kept: resources seen, counts, announcements, progress."""
        if self._store is None:
            return
        self.records = {r.resource_id: r for r in await self._store.inventory_records()}
        self.counts = await self._store.missed_counts()
        self.checked_until = await self._store.checked_until()
        since = self._clock.wall() - MAX_CATCH_UP - 2 * 86_400.0
        self.announced = await self._store.missed_since(since)

    # ---- the loops --------------------------------------------------------------------------

    async def run(self) -> None:
        """Both loops, until cancelled; never raises."""
        checking = asyncio.create_task(self._check_loop(), name="coverage checks")
        try:
            await self._inventory_loop()
        finally:
            checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checking

    async def _inventory_loop(self) -> None:
        while True:
            started = self._clock.monotonic()
            self._next_inventory = started + self.settings.interval
            await self._guarded(self.inventory_once)
            await self._guarded(self.seed)
            await self._clock.sleep(max(0.0, self._next_inventory - self._clock.monotonic()))

    async def _check_loop(self) -> None:
        await self._published.wait()
        while True:
            finished = await self._guarded(self.check)
            now = self._clock.wall()
            wake = self.next_check() if finished else None
            delay = RETRY_CHECK if not finished else self.settings.interval
            if wake is not None:
                delay = min(delay, wake - now)
            self._published.clear()
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(max(1.0, delay)):
                    await self._published.wait()

    async def _guarded(self, work: Callable[[], Awaitable[bool]]) -> bool:
        try:
            return await work()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug here must not end coverage
            self._engine.stats.internal_errors[COMPONENT] += 1
            log.error(
                "coverage.internal_error",
                step=getattr(work, "__name__", "?"),
                error_type=type(error).__name__,
                error=str(error)[:200],
            )
            return False

    async def _acquire(self) -> None:
        """Wait for the coverage quarter of the budget, then for the shared budget."""
        while True:
            now = self._clock.monotonic()
            allowed = self._budget.next_allowed(now)
            if allowed <= now and self._budget.try_acquire(now):
                break
            await self._clock.sleep(max(allowed - now, 0.001))
        await self._engine.acquire_request()
        self.requests += 1

    # ---- the inventory ----------------------------------------------------------------------

    async def inventory_once(self) -> bool:
        """Read the inventory and, when complete, publish it; False when it failed."""
        started = self._clock.wall()
        known = self.inventory.vault_ids if self.inventory is not None else ()
        try:
            inventory = await read_inventory(
                self._api,
                acquire=self._acquire,
                vault_ids=self.settings.vault_ids,
                known_vaults=known,
            )
        except (CbrError, IncompletePagingError) as error:
            self._failed("inventory", error)
            return False
        self._recovered("inventory")
        await self._publish(inventory, started)
        return True

    async def _publish(self, inventory: Inventory, started: float) -> None:
        self._problems(inventory.problems)
        previous = self.records
        new = [
            InventoryRecord(resource_id, first_seen=started)
            for resource_id in inventory.resources
            if resource_id not in previous
        ]
        gone = [resource_id for resource_id in previous if resource_id not in inventory.resources]
        whole_project = not self.settings.vault_ids

        def keep(row: ResourceStatus) -> bool:
            if row.key.resource_id in inventory.resources:
                return True
            return not whole_project and row.vault_id not in inventory.vault_ids

        dropped = self._observer.retain_resources(keep)
        removed = sorted(set(gone) | set(dropped))
        try:
            if self._store is not None and (new or removed):
                await self._store.save_inventory(new, removed=removed)
        except Exception as error:
            # Kept in memory; a restart sees these resources as new (later first_seen: fewer
            # starts judged, never more).
            log.warning("coverage.state_not_saved", error_type=type(error).__name__)
        records = {r: previous[r] for r in inventory.resources if r in previous}
        records.update((record.resource_id, record) for record in new)
        self.records = records
        gone_set = set(removed)
        self.counts = {key: n for key, n in self.counts.items() if key[0] not in gone_set}
        for resource in inventory.resources.values():
            self._seed_metrics(resource, records[resource.id])
        self.inventory = inventory
        self.completed = self._clock.wall()
        self.inventories += 1
        self._view = None
        self.view(self.completed)  # the series cap chooses now, not at the next scrape
        self._published.set()
        log.info(
            "coverage.inventory",
            vaults=len(inventory.vault_ids),
            resources=len(inventory.resources),
            policies=len(inventory.policies),
            new=len(new),
            unbound=len(gone),
            requests=inventory.requests,
        )

    def _seed_metrics(self, resource: Protected, record: InventoryRecord) -> None:
        if record.newest_backup is None:
            return
        seed = Seed(resource.id, record.asked or 0.0, True, record.newest_backup)
        status = freshness_of(resource, seed)
        if status is not None:
            self._observer.seed_resource(status)

    # ---- seeds ------------------------------------------------------------------------------

    def to_seed(self) -> list[Protected]:
        """Resources whose newest backup is to be asked now (`seeding.ask_again`); only those
        the series cap exports."""
        if self.inventory is None:
            return []
        now = self._clock.wall()
        self.view(now)  # brings the cap's choice up to date
        return [
            resource
            for resource in self.inventory.resources.values()
            if (record := self.records.get(resource.id)) is not None
            and ask_again(resource, record, now, grace=self.settings.schedule_grace)
            and self._views.exported(resource.id)
        ]

    async def seed(self) -> bool:
        """Ask ListBackups about the resources `to_seed`, until the next inventory is due."""
        if self._clock.monotonic() < self._refused_until.get("seed", -math.inf):
            return True
        pending: list[InventoryRecord] = []
        finished = True
        try:
            for resource in self.to_seed():
                if self._clock.monotonic() >= self._next_inventory:
                    break
                await self._acquire()
                try:
                    seed, problems = await newest_backup(
                        self._api, resource.id, now=self._clock.wall()
                    )
                except CbrError as error:
                    self._failed("seed", error)
                    finished = False
                    break
                self._recovered("seed")
                self._problems(problems)
                record = self.records.get(resource.id)
                if record is None:
                    continue
                record = replace(
                    record, asked=seed.asked, backed_up=seed.backed_up, newest_backup=seed.newest
                )
                self.records[resource.id] = record
                pending.append(record)
                self._seed_metrics(resource, record)
                self._view = None
                if len(pending) >= SAVE_EVERY:
                    await self._save(pending)
                    pending = []
        finally:
            await self._save(pending)
        return finished

    async def _save(self, records: Sequence[InventoryRecord]) -> None:
        if not records or self._store is None:
            return
        try:
            await self._store.save_inventory(records)
        except Exception as error:
            log.warning("coverage.state_not_saved", error_type=type(error).__name__)

    # ---- missed backups ---------------------------------------------------------------------

    async def on_event(self, event: TaskEvent) -> None:
        """An EventSink: remember when backup tasks were created."""
        self.sightings.add_log(event.operation_log)

    def next_check(self) -> float | None:
        """When the next scheduled start's grace ends (wall seconds), None if none will."""
        if self.inventory is None:
            return None
        after = self.checked_until if self.checked_until is not None else self._clock.wall()
        return next_deadline(
            self.inventory.resources.values(), after=after, grace=self.settings.schedule_grace
        )

    async def check(self) -> bool:
        """Judge the starts whose grace ended since the last check; False when it could not
        finish (it is then tried again, nothing lost)."""
        inventory = self.inventory
        if inventory is None:
            return True
        now = self._clock.wall()
        if self.checked_until is None:
            # The very first check: starts before the watcher ran are not its to judge.
            return await self._commit([], now)
        since = max(self.checked_until, now - MAX_CATCH_UP)
        first_seen = {r: record.first_seen for r, record in self.records.items()}
        found = due(
            inventory.resources.values(),
            since=since,
            until=now,
            grace=self.settings.schedule_grace,
            first_seen=first_seen,
        )
        pending = [o for o in found if o.key not in self.announced]
        for row in self._engine.tasks.values():
            self.sightings.add_log(row.operation_log)
        suspects = [o for o in pending if not self.sightings.seen(o)]
        if suspects:
            if not await self._confirm(min(o.scheduled_at for o in suspects) - CREATED_BEFORE):
                return False
            suspects = [o for o in suspects if not self.sightings.seen(o)]
        if not await self._commit(suspects, now):
            return False
        longest = max((o.deadline - o.scheduled_at for o in found), default=0.0)
        self.sightings.forget_before(now - MAX_CATCH_UP - longest - CREATED_BEFORE)
        return True

    async def _confirm(self, since: float) -> bool:
        """List the backup tasks created since `since` (ListOpLogs), for the starts that look
        missed; False when that listing failed (nothing is announced then)."""
        if self._clock.monotonic() < self._refused_until.get("list", -math.inf):
            return False
        listing = batch.Listing({"operation_type": "backup", "start_time": batch.cbr_time(since)})
        try:
            result = await batch.list_all(self._api, listing, acquire=self._acquire)
        except (CbrError, batch.IncompleteListingError) as error:
            if isinstance(error, CbrError) and error.http_status == 403:
                self._engine.stats.list_refused[COMPONENT] += 1
            self._failed("list", error)
            return False
        self._recovered("list")
        if result.malformed:
            self._engine.stats.list_malformed[COMPONENT] += result.malformed
        for operation_log in result.found.values():
            self.sightings.add_log(operation_log)
        return True

    async def _commit(self, occurrences: Sequence[Occurrence], now: float) -> bool:
        events = [o.event() for o in occurrences]
        try:
            await self._record_missed(events, checked_until=now, now=now)
        except Exception as error:
            self._failed("store", error)
            return False
        self._recovered("store")
        self.checked_until = now
        for event in events:
            self._announce(event)
        if events:
            self._view = None
        return True

    def _announce(self, event: BackupMissed) -> None:
        key = (event.resource_id, event.scheduled_at)
        if key in self.announced:
            return
        self.announced.add(key)
        count_key = (event.resource_id, event.vault_id)
        self.counts[count_key] = self.counts.get(count_key, 0) + 1
        log.warning(
            "backup.missed",
            resource_id=event.resource_id,
            resource_name=event.resource_name,
            vault_id=event.vault_id,
            policy_id=event.policy_id,
            scheduled_at=_iso(event.scheduled_at),
        )

    # ---- metrics ----------------------------------------------------------------------------

    def view(self, now: float) -> CoverageView:
        """What the coverage metrics export now (rebuilt only after a change)."""
        view = self._view
        if view is None or now >= view.valid_until:
            view = self._views.build(
                self.inventory,
                records=self.records,
                counts=self.counts,
                completed=self.completed,
                now=now,
            )
            self._view = view
        return view

    # ---- telling ----------------------------------------------------------------------------

    def _problems(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            key = f"{problem.kind}:{problem.key}"
            if key in self._logged:
                continue
            if len(self._logged) < LOGGED_MEMORY:
                self._logged.add(key)
            self._observer.count_inventory_skipped(problem.kind)
            log.warning("coverage.entry_skipped", kind=problem.kind, detail=problem.detail[:300])

    def _failed(self, part: str, error: BaseException) -> None:
        """A failure of one part (inventory, seed, list, store): logged once per streak."""
        if isinstance(error, ThrottledError) and error.retry_after is not None:
            self._engine.budget.pause_until(self._clock.monotonic() + error.retry_after)
        refused = isinstance(error, CbrError) and error.http_status == 403
        if refused and part in ("seed", "list"):
            self._refused_until[part] = self._clock.monotonic() + REFUSED_PAUSE
        if self._failing.get(part):
            return
        self._failing[part] = True
        log.warning(
            _EVENTS[part][0],
            error=getattr(error, "message", str(error))[:200],
            code=getattr(error, "code_label", type(error).__name__),
            detail=_FAILURE_DETAIL[part] + (" (403: the credentials may not)" if refused else ""),
        )

    def _recovered(self, part: str) -> None:
        if self._failing.pop(part, False):
            log.info(_EVENTS[part][1])


_EVENTS = {
    part: (f"coverage.{part}_failed", f"coverage.{part}_recovered")
    for part in ("inventory", "seed", "list", "store")
}
_FAILURE_DETAIL = {
    "inventory": "the last complete inventory's series stay; tried again every coverage.interval",
    "seed": "resources not asked yet have no last success or never-backed-up series; "
    "asked again after the next inventory",
    "list": "no backup.missed can be confirmed (ListOpLogs), so none is announced; "
    "the starts are judged again later",
    "store": "no backup.missed is announced until the state file accepts writes",
}


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")
