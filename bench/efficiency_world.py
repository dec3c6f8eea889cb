"""One system watching one population, for `bench/efficiency.py`: the real `Engine` on a
`FakeClock`, against the CBR simulator.

**Transports.** `socket` is the real `CbrClient` on a real socket to the simulator in this
process. `direct` (the default) serves the same answers in process: the simulator's own query
parsing, body builder (`watcher.sim.bodies`, in the simulator's dialect) and errors, read by the
client's own tolerant models (`OperationLog.from_raw`), with no HTTP and no JSON in between.
The engine cannot tell the difference (it sees `OperationLog`s, `OpLogPage`s and `CbrError`s)
and a request takes no fake time either way; what `direct` saves is CPU: a steady state of
10,000 tasks lists about 100,000 entries every 10 s (see `efficiency_population`), which would
take longer to encode, send and parse than the bench may run. Two shortcuts make that
affordable, both exact for this population:

* an answer is built and parsed once per (task, state, dialect): a task whose status,
  progress and timestamps did not change gets the very object it got last time (`OperationLog`
  is immutable to the engine);
* a page is cut from the simulator's newest-first order by bisection instead of by scanning
  every task before the offset, which `watcher.sim.listing.select` does and which costs
  O(offset) per page. Exact when every task matches the query's filters (one vault, one
  operation type, visible at once): `uniform` asserts it for every task the bench creates. A
  `status=running` page is cut the same way from an index of the tasks running now
  (`RunningIndex`, kept up to date as the clock moves). The bench's smoke test compares both
  cuts with `select`.

**The clock.** `drive` jumps the fake clock to its next timer only once every coroutine waits
on it (CPython's ready queue is empty twice in a row) and, over a socket, no request is on
the wire: a request starts at the fake instant the engine started it and is answered at that
same instant.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import heapq
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from efficiency_population import PopTask, Population

from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.cbr.errors import FatalError, NotFoundError
from watcher.cbr.models import OperationLog, OpLogPage
from watcher.cli import gc_tuning
from watcher.engine import schedule
from watcher.engine.engine import Engine
from watcher.engine.events import TaskEvent
from watcher.engine.poll import CbrApi
from watcher.engine.schedule import Decision, Policy, PollState
from watcher.sim import DEFAULT_TOKENS, Dialect, SimTaskSpec, Simulator, bodies
from watcher.sim.listing import ListQuery, parse_list_query
from watcher.sim.tasks import TERMINAL, SimTask, TaskState, realize, task_state
from watcher.testing import FakeClock

Transport = Literal["direct", "socket"]
OPERATION_TYPE = "backup"


# ---- the transports ------------------------------------------------------------------------


def uniform(spec: SimTaskSpec) -> bool:
    """Whether `spec` is a task the direct transport's page cut is exact for."""
    return (
        spec.operation_type == OPERATION_TYPE
        and spec.vault_id is None
        and spec.vault_name is None
        and spec.visible_after == 0
        and spec.enterprise_project_id == "0"
    )


def _negated_creation(task: SimTask) -> float:
    return -task.created_wall


class DirectCbr:
    """The CBR operation-log API served straight from a Simulator (see the module docstring)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._answers: dict[str, tuple[TaskState, Dialect, OperationLog]] = {}
        self._final: dict[str, tuple[Dialect, OperationLog]] = {}
        self.running = RunningIndex(sim)

    async def show_op_log(self, task_id: str) -> OperationLog:
        """ShowOpLog: the task as the simulator has it now."""
        sim = self.sim
        now = sim.clock.wall()
        task = sim.tasks.get(task_id)
        if task is None or not task.visible(now):
            raise NotFoundError(
                "HTTP 404 BackupService.6500: Operation log does not exist.",
                http_status=404,
                error_code="BackupService.6500",
            )
        return self._answer(task, now)

    async def list_op_logs(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        vault_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OpLogPage:
        """ListOpLogs: one page, filtered and cut as the simulator's `select` would."""
        sim = self.sim
        dialect = sim.dialect
        if dialect.list_forbidden:
            raise FatalError(
                "HTTP 403 APIGW.0302: The IAM user is not authorized to access the API.",
                http_status=403,
                error_code="APIGW.0302",
            )
        given = {
            "status": status,
            "operation_type": operation_type,
            "vault_id": vault_id,
            "limit": None if limit is None else str(limit),
            "offset": None if offset is None else str(offset),
        }
        params = {key: value for key, value in given.items() if value is not None}
        params.update(extra or {})
        try:
            query = parse_list_query(params, dialect)
        except ValueError as error:
            raise FatalError(f"HTTP 400 BackupService.9900: {error}", http_status=400) from None
        now = sim.clock.wall()
        if query.status is None:
            count, page = cut_page(sim, query, dialect)
        else:
            count, page = self.running.cut_page(query, dialect, now)
        logs = [self._answer(task, now) for task in page]
        return OpLogPage(logs, count=count, limit=query.limit, offset=query.offset)

    async def reload_credentials(self) -> None:
        """Nothing to reload: the direct transport has no credentials."""

    def _answer(self, task: SimTask, now: float) -> OperationLog:
        dialect = self.sim.dialect
        final = self._final.get(task.id)
        if final is not None and final[0] is dialect:
            return final[1]
        state = task_state(task, now)
        known = self._answers.get(task.id)
        if known is not None and known[1] is dialect and known[0] == state:
            return known[2]
        body = bodies.operation_log(task, state, self.sim.project_id, dialect)
        answer = OperationLog.from_raw(body)
        if state.status in TERMINAL:
            # A terminal status is the last answer a simulated task ever gives.
            self._final[task.id] = (dialect, answer)
            self._answers.pop(task.id, None)
        else:
            self._answers[task.id] = (state, dialect, answer)
        return answer


def cut_page(sim: Simulator, query: ListQuery, dialect: Dialect) -> tuple[int, list[SimTask]]:
    """(count, page) for `query`, as `watcher.sim.listing.select` answers it when every task
    is `uniform` and the query has no status filter (see `RunningIndex` for one)."""
    if query.status is not None:
        raise ValueError("the direct transport cuts pages without a status filter only")
    if query.by_vault and OPERATION_TYPE in dialect.null_vault_for:
        return 0, []
    tasks = sim.listing().tasks
    low = 0 if query.end is None else bisect.bisect_left(tasks, -query.end, key=_negated_creation)
    high = (
        len(tasks)
        if query.start is None
        else bisect.bisect_right(tasks, -query.start, key=_negated_creation)
    )
    size = query.limit if dialect.limit_cap is None else min(query.limit, dialect.limit_cap)
    start, stop = _cut(low, high, query.offset, size, dialect)
    page = list(tasks[start:stop])
    if dialect.order == "oldest":
        page.reverse()
    return (len(page) if dialect.count == "page" else high - low), page


def _cut(low: int, high: int, offset: int, size: int, dialect: Dialect) -> tuple[int, int]:
    """The slice of a newest-first list [low, high) that a page at `offset` holds."""
    if dialect.order == "oldest":
        last = high - offset
        return (max(low, last - size), last) if last > low else (low, low)
    first = low + offset
    return (first, min(high, first + size)) if first < high else (low, low)


def running_span(task: SimTask) -> tuple[float, float] | None:
    """(first instant running, first instant ended) of a task, as
    `watcher.sim.tasks.status_at` reports it; None when it never runs."""
    spec = task.spec
    phases = spec.phases
    if phases is None:
        if spec.outcome == "skipped":
            return None
        start = task.created_wall + spec.waiting
        return start, start + spec.running
    at, started = task.created_wall, None
    for position, (status, seconds, _) in enumerate(phases):
        if status in TERMINAL or position == len(phases) - 1:
            return None if started is None else (started, at)
        if status == "running" and started is None:
            started = at
        at += seconds
    return None


class RunningIndex:
    """The tasks running now, newest first, kept up to date as the fake clock moves on: a
    `status=running` page cut by bisection instead of a scan of every task (exact for the
    bench's `uniform` tasks with phases; the smoke test compares it with `select`)."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._indexed = 0
        self._events: list[tuple[float, int, float, str]] = []
        """Heap of (when, +1 starts / -1 ends, -created, id)."""
        self._keys: list[tuple[float, str]] = []
        """(-created, id) of every running task: newest first."""

    def _advance(self, now: float) -> None:
        tasks = self._sim.listing().tasks
        fresh = len(tasks) - self._indexed
        for task in tasks[:fresh]:  # the newest are at the front
            span = running_span(task)
            if span is not None:
                key = -task.created_wall
                heapq.heappush(self._events, (span[0], 1, key, task.id))
                heapq.heappush(self._events, (span[1], -1, key, task.id))
        self._indexed = len(tasks)
        while self._events and self._events[0][0] <= now:
            _, change, key, task_id = heapq.heappop(self._events)
            if change > 0:
                bisect.insort(self._keys, (key, task_id))
            else:
                at = bisect.bisect_left(self._keys, (key, task_id))
                if at < len(self._keys) and self._keys[at] == (key, task_id):
                    del self._keys[at]

    def cut_page(self, query: ListQuery, dialect: Dialect, now: float) -> tuple[int, list[SimTask]]:
        """(count, page) of a `status=running` query at `now`."""
        if query.status != "running":
            raise ValueError("the direct transport filters on status=running only")
        self._advance(now)
        if query.by_vault and OPERATION_TYPE in dialect.null_vault_for:
            return 0, []
        keys = self._keys
        low = 0 if query.end is None else bisect.bisect_left(keys, (-query.end, ""))
        high = (
            len(keys)
            if query.start is None
            else bisect.bisect_right(keys, (-query.start, "\uffff"))
        )
        size = query.limit if dialect.limit_cap is None else min(query.limit, dialect.limit_cap)
        start, stop = _cut(low, high, query.offset, size, dialect)
        tasks = self._sim.tasks
        page = [tasks[task_id] for _, task_id in keys[start:stop]]
        if dialect.order == "oldest":
            page.reverse()
        return (len(page) if dialect.count == "page" else high - low), page


class Recorder:
    """Wraps a transport: when (fake monotonic seconds) every request started, and how many
    are under way."""

    def __init__(self, inner: CbrApi, clock: FakeClock) -> None:
        self._inner = inner
        self._clock = clock
        self.shows: list[float] = []
        self.pages: list[float] = []
        self.shows_by_task: Counter[str] = Counter()
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def _under_way(self) -> Iterator[None]:
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until no request is under way."""
        await self._idle.wait()

    async def show_op_log(self, task_id: str) -> OperationLog:
        """ShowOpLog through the wrapped transport, recorded."""
        self.shows.append(self._clock.monotonic())
        self.shows_by_task[task_id] += 1
        with self._under_way():
            return await self._inner.show_op_log(task_id)

    async def list_op_logs(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        vault_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OpLogPage:
        """One ListOpLogs page through the wrapped transport, recorded."""
        self.pages.append(self._clock.monotonic())
        with self._under_way():
            return await self._inner.list_op_logs(
                status=status,
                operation_type=operation_type,
                vault_id=vault_id,
                limit=limit,
                offset=offset,
                extra=extra,
            )

    async def reload_credentials(self) -> None:
        """Passed on."""
        await self._inner.reload_credentials()


# ---- the simulator's population ------------------------------------------------------------


_realized: dict[tuple[int, int, float, float, str, str], list[SimTask]] = {}


def preload(sim: Simulator, population: Population, start_wall: float) -> None:
    """Create the tasks of `population` that exist at time 0 (its history and the tasks
    running then) in the simulator, with their own past creation times, in one batch.

    `Simulator.add_tasks` creates every task at the clock's present and keeps the listing
    order by putting each batch in front: fine for the arrivals, quadratic for the 100,000
    tasks of a 10,000-slot history created one instant at a time. So this realizes them the
    way `add_tasks` does (once per population: realized tasks are immutable, and every run
    starts at the same fake instant) and hands the simulator's newest-first order one batch.
    """
    key = (
        population.slots,
        population.seed,
        population.failed_share,
        start_wall,
        *sim.default_vault,
    )
    realized = _realized.get(key)
    if realized is None:
        _realized.clear()
        rng = random.Random(f"cbr-watcher-frontier-sim-{population.seed}")
        realized = []
        for index, task in enumerate([*population.history, *population.running]):
            if not uniform(task.spec):
                raise ValueError(f"{task.task_id}: the direct transport needs uniform tasks")
            realized.append(
                realize(
                    task.spec,
                    index=index,
                    created_wall=start_wall + task.created,
                    rng=rng,
                    default_vault=sim.default_vault,
                )
            )
        _realized[key] = realized
    if sim.tasks:
        raise ValueError("preload needs an empty simulator")
    sim._tasks.update((task.id, task) for task in realized)
    sim._order.add(realized)


# ---- the fake clock ------------------------------------------------------------------------


async def settle(io: Recorder | None = None) -> None:
    """Run the event loop until every coroutine waits on the fake clock (and, with `io`,
    until no request is under way)."""
    loop = asyncio.get_running_loop()
    # CPython's queue of runnable callbacks: empty means everyone waits on something.
    ready = getattr(loop, "_ready", None)
    quiet, spins = 0, 0
    while quiet < 2:
        await asyncio.sleep(0)
        spins += 1
        if io is not None and io.in_flight:
            await io.wait_idle()
            quiet = 0
        elif ready is None:
            quiet = 2 if spins >= 64 else 0
        elif ready:
            quiet = 0
        else:
            quiet += 1


async def drive(clock: FakeClock, until: float, io: Recorder | None = None) -> None:
    """Jump the fake clock from timer to timer up to `until` (monotonic seconds), letting
    everything settle at every instant."""
    while True:
        await settle(io)
        deadline = clock.next_deadline()
        if deadline is None or deadline > until:
            clock.advance_to(max(until, clock.monotonic()))
            await settle(io)
            return
        clock.advance_to(deadline)


# ---- the cadences --------------------------------------------------------------------------


class AfterSuccess(Protocol):
    """The signature of `schedule.after_success`."""

    def __call__(
        self,
        policy: Policy,
        state: PollState,
        *,
        changed: bool,
        rng: random.Random,
        status: str | None = None,
        progress: int | None = None,
        now: float | None = None,
    ) -> Decision:
        """The next poll after a successful one."""
        ...


@contextlib.contextmanager
def cadence(after_success: AfterSuccess | None) -> Iterator[None]:
    """Make the engine use `after_success` (the engine calls `schedule.after_success`), as
    it is: a baseline's cadence also replaces `schedule.on_grid`, cbr-watcher's own rule."""
    original, original_grid = schedule.after_success, schedule.on_grid
    if after_success is not None:
        schedule.after_success = after_success
        schedule.on_grid = _as_wished
    try:
        yield
    finally:
        schedule.after_success = original
        schedule.on_grid = original_grid


def _as_wished(policy: Policy, previous: PollState, decision: Decision, *, now: float) -> Decision:
    """`schedule.on_grid` for a baseline: its cadence's decision, unchanged."""
    return decision


# ---- one run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """How one system runs: its engine settings, the simulator's dialect, the windows."""

    policy: Policy
    after_success: AfterSuccess | None
    batch_refresh: bool
    dialect: Dialect
    warmup: float
    measure: float
    grace: float
    rps: float = 1e6
    refuse_at: float | None = None
    """Seconds after the start at which the simulator starts refusing ListOpLogs (403)."""
    transport: Transport = "direct"
    seed: int = 1
    concurrency: int = 64

    @property
    def window(self) -> tuple[float, float]:
        """The measurement window, in seconds after the start."""
        return self.warmup, self.warmup + self.measure


@dataclass
class Watched:
    """What happened to one watched task (times in seconds after the start)."""

    task_id: str
    kind: str
    failed: bool
    created: float
    ends: float
    shows: int
    seen: float | None
    """When the first terminal event came (None: never)."""
    terminal_events: list[str]


@dataclass
class Run:
    """Everything one run measured."""

    setup: dict[str, object]
    tasks: list[Watched]
    shows: list[float]
    """Start of every ShowOpLog, seconds after the start."""
    pages: list[float]
    lag: dict[str, list[float]]
    """Scheduling lag samples (due → start, seconds) by phase: "window", or "before" and
    "after" the refusal."""
    reasons: dict[str, int]
    list_refreshed: int
    list_refused: int
    active: list[tuple[float, int]]
    """(seconds after the start, tasks the engine was watching), once a minute."""
    fake_seconds: float
    real_seconds: float


@contextlib.asynccontextmanager
async def _transport(setup: Setup, sim: Simulator, clock: FakeClock) -> AsyncIterator[CbrApi]:
    if setup.transport == "direct":
        yield DirectCbr(sim)
        return
    async with sim.running() as base_url:
        client = CbrClient(
            endpoint=base_url,
            project_id=sim.project_id,
            auth=TokenAuthenticator(token=DEFAULT_TOKENS[0]),
            clock=clock,
            max_connections=setup.concurrency,
        )
        async with client:
            yield client


async def _at(
    clock: FakeClock, start: float, offsets: Iterable[float], act: Callable[[float], None]
) -> None:
    """Call `act(offset)` at `start` + each of `offsets` (ascending) on the fake clock."""
    for offset in offsets:
        await clock.sleep(start + offset - clock.monotonic())
        act(offset)


class _Trial:
    """One run's simulator, engine and records (`run` plays it)."""

    def __init__(
        self,
        population: Population,
        setup: Setup,
        sim: Simulator,
        clock: FakeClock,
        transport: CbrApi,
    ) -> None:
        self.population = population
        self.setup = setup
        self.sim = sim
        self.clock = clock
        self.start, self.start_wall = clock.monotonic(), clock.wall()
        self.terminal: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)
        self.created_wall = {t.task_id: self.start_wall + t.created for t in population.running}
        self.lag: dict[str, list[float]] = {}
        self.active: list[tuple[float, int]] = []
        self.recorder = Recorder(transport, clock)
        self.engine = Engine(
            client=self.recorder,
            clock=clock,
            policy=setup.policy,
            max_concurrency=setup.concurrency,
            max_requests_per_second=setup.rps,
            batch_refresh=setup.batch_refresh,
            on_event=self.on_event,
            rng=random.Random(setup.seed),
        )
        self.samples: deque[float] = deque()
        self.engine.stats.lag_samples = self.engine.scheduler.lag_samples = self.samples
        self.arriving: defaultdict[float, list[PopTask]] = defaultdict(list)
        for task in population.arrivals:
            self.arriving[task.created].append(task)

    async def on_event(self, event: TaskEvent) -> None:
        """The engine's subscriber: keep every terminal event (to count them per task)."""
        if event.ends_watch:
            self.terminal[event.task_id].append((event.type, event.occurred_at))

    def arrive(self, offset: float) -> None:
        """Create the tasks of this instant in the simulator and hand them to the engine."""
        ids = self.sim.add_tasks([task.spec for task in self.arriving[offset]])
        for task_id in ids:
            self.created_wall[task_id] = self.sim.tasks[task_id].created_wall
            self.engine.add(task_id)

    def mark(self, offset: float) -> None:
        """At the window's edges and at the refusal: collect the lag samples; refuse."""
        t0, t1 = self.setup.window
        if offset == t0:
            self.samples.clear()
        if offset == self.setup.refuse_at:
            self.lag["before"] = list(self.samples)
            self.samples.clear()
            self.sim.dialect = replace(self.sim.dialect, list_forbidden=True)
        if offset == t1:
            self.lag["after" if self.setup.refuse_at is not None else "window"] = list(self.samples)

    def count_active(self, offset: float) -> None:
        """Once a minute: how many tasks the engine watches."""
        self.active.append((offset, self.engine.active_count()))

    async def play(self) -> None:
        """From time 0 to the end of the grace period, then the engine's drain."""
        setup, clock, start, engine = self.setup, self.clock, self.start, self.engine
        t0, t1 = setup.window
        refusal = [] if setup.refuse_at is None else [setup.refuse_at]
        minutes = [60.0 * k for k in range(1, int((t1 + setup.grace) // 60) + 1)]
        helpers = [
            asyncio.create_task(_at(clock, start, sorted(self.arriving), self.arrive)),
            asyncio.create_task(_at(clock, start, sorted({t0, t1, *refusal}), self.mark)),
            asyncio.create_task(_at(clock, start, minutes, self.count_active)),
        ]
        for task in self.population.running:
            engine.add(task.task_id)
        io = self.recorder if setup.transport == "socket" else None
        runner = asyncio.create_task(engine.run())
        await drive(clock, start + t1 + setup.grace, io)
        engine.stop()
        while not runner.done():
            await settle(io)
            if not runner.done():
                clock.advance_to_next()
        await runner
        for helper in helpers:
            helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await helper

    def watched(self) -> list[Watched]:
        """What happened to every task the engine was handed."""
        tasks = []
        for task in self.population.watched:
            events = self.terminal.get(task.task_id, [])
            created = self.created_wall[task.task_id] - self.start_wall
            tasks.append(
                Watched(
                    task_id=task.task_id,
                    kind=task.kind,
                    failed=task.failed,
                    created=created,
                    ends=created + task.ends_after,
                    shows=self.recorder.shows_by_task[task.task_id],
                    seen=events[0][1] - self.start_wall if events else None,
                    terminal_events=[kind for kind, _ in events],
                )
            )
        return tasks


async def run(population: Population, setup: Setup) -> Run:
    """Watch `population` with one system from time 0 to the end of the window plus grace."""
    started = time.perf_counter()
    if setup.transport == "direct" and not all(uniform(t.spec) for t in population.arrivals):
        raise ValueError("the direct transport's page cut needs uniform tasks")
    clock = FakeClock()
    sim = Simulator(clock, seed=setup.seed, dialect=setup.dialect)
    preload(sim, population, clock.wall())
    threshold = gc.get_threshold()
    try:
        with cadence(setup.after_success):
            async with _transport(setup, sim, clock) as transport:
                trial = _Trial(population, setup, sim, clock, transport)
                # As the daemon does after start-up (watcher.cli.gc_tuning): a 10,000-slot
                # history is 100,000 simulated tasks that full collections would walk in vain.
                gc_tuning.apply_thresholds()
                gc_tuning.freeze_long_lived()
                await trial.play()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    engine = trial.engine
    return Run(
        setup={
            "policy": repr(setup.policy),
            "batch_refresh": setup.batch_refresh,
            "dialect": setup.dialect.summary(),
            "warmup": setup.warmup,
            "measure": setup.measure,
            "grace": setup.grace,
            "rps": setup.rps,
            "refuse_at": setup.refuse_at,
            "transport": setup.transport,
            "seed": setup.seed,
        },
        tasks=trial.watched(),
        shows=[at - trial.start for at in trial.recorder.shows],
        pages=[at - trial.start for at in trial.recorder.pages],
        lag=trial.lag,
        reasons={reason: count for reason, count in engine.stats.poll_reasons.items() if count},
        list_refreshed=engine.stats.list_refreshed,
        list_refused=engine.stats.list_refused["refresh"],
        active=trial.active,
        fake_seconds=clock.monotonic() - trial.start,
        real_seconds=time.perf_counter() - started,
    )
