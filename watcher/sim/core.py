"""The simulator's state and behaviour: tasks, credentials, faults and the request log.

Nothing here speaks HTTP or opens a socket: `watcher.sim.app` serves a `SimCore` over HTTP,
and `watcher.sim.simulator` binds it to a socket and holds `Simulator` (the public class),
which adds both as methods. Keeping this module below them is what keeps the package free of
import cycles.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from watcher.cbr.ids import validate_task_id
from watcher.clock import Clock
from watcher.sim.auth import DEFAULT_TOKEN_LIFETIME, AccessKey, SimAuth, User
from watcher.sim.dialects import DEFAULT_DIALECT, Dialect
from watcher.sim.faults import FaultInjector, FaultProfile, parse_fault
from watcher.sim.iam import IamApi
from watcher.sim.inventory import Inventory
from watcher.sim.listing import NewestFirst
from watcher.sim.policies import PolicySchedule, PolicySpec
from watcher.sim.tasks import SimTask, SimTaskSpec, TaskState, random_uuid, realize, task_state

DEFAULT_PROJECT_ID = "04f1829c788037ac2fb8c01eb2b04b95"
DEFAULT_TOKENS = ("sim-token",)


@dataclass(slots=True)
class SimRequest:
    """One request to the CBR API. `status` stays None for a request reset or left hanging.

    `reused`: it came on a kept-alive connection that had already carried an API request.
    """

    monotonic: float
    wall: float
    method: str
    path: str
    query: str
    task_id: str | None
    status: int | None = None
    fault: str | None = None
    reused: bool = False


class SimCore:
    """The state behind a faithful fake of the CBR operation-log API, on an injected clock.

    Tasks are lazy: their state is computed from their creation time whenever asked, so the
    simulator needs no timers and a FakeClock can jump freely. Policies are lazy too: the
    tasks they start exist from the first look at the tasks (`tasks`, `state`, `listing`, any
    API request) after their creation time, each with that creation time.

    `dialect` answers what the API reference leaves open (count, page cap, timestamp spelling,
    nulls, Retry-After, listing permission); assign a new one at any time, e.g.
    `sim.dialect = dataclasses.replace(sim.dialect, list_forbidden=True)`.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        project_id: str = DEFAULT_PROJECT_ID,
        tokens: Iterable[str] = DEFAULT_TOKENS,
        faults: FaultProfile | None = None,
        seed: int = 0,
        users: Iterable[User] = (),
        access_keys: Iterable[AccessKey] = (),
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
        dialect: Dialect = DEFAULT_DIALECT,
    ) -> None:
        self.clock = clock
        self.project_id = project_id
        self.seed = seed
        self.dialect = dialect
        self.auth = SimAuth(
            clock,
            tokens=tokens,
            users=users,
            access_keys=access_keys,
            token_lifetime=token_lifetime,
        )
        self.iam = IamApi(self)
        self.faults = FaultInjector(faults, seed)
        # Separate streams, so adding a task never shifts which request gets a random fault.
        self._task_rng = random.Random(f"cbr-sim-tasks-{seed}")
        self._id_rng = random.Random(f"cbr-sim-request-ids-{seed}")
        self.default_vault = (random_uuid(self._task_rng), "vault-sim-0001")
        self._tasks: dict[str, SimTask] = {}
        self._order = NewestFirst()
        self._policies: list[PolicySchedule] = []
        self.inventory = Inventory(clock, seed)
        self._show_counts: Counter[str] = Counter()
        self.request_log: list[SimRequest] = []
        # Set when serving stops: it releases the requests a "hang" fault is holding.
        self.closing = asyncio.Event()

    # -- tasks -------------------------------------------------------------------------------

    def add_task(self, spec: SimTaskSpec) -> str:
        """Create a task now (on the simulator's clock) and return its ID."""
        return self.add_tasks([spec])[0]

    def add_tasks(self, specs: Iterable[SimTaskSpec]) -> list[str]:
        """Create several tasks at once; nothing is added if any spec is invalid."""
        specs = list(specs)
        self.materialize()
        given = [spec.id for spec in specs if spec.id is not None]
        for task_id in given:
            validate_task_id(task_id)
            if task_id in self._tasks or given.count(task_id) > 1:
                raise ValueError(f"task ID {task_id!r} already exists")
        for spec in specs:
            for name in spec.faults:
                parse_fault(name)
        ids = []
        for spec in specs:
            task = realize(
                spec,
                index=len(self._tasks),
                created_wall=self.clock.wall(),
                rng=self._task_rng,
                default_vault=self.default_vault,
            )
            self._tasks[task.id] = task
            self.faults.script(task.id, spec.faults)
            ids.append(task.id)
        self._order.add(self._tasks[task_id] for task_id in ids)
        return ids

    @property
    def tasks(self) -> Mapping[str, SimTask]:
        """Every task by ID (read-only), visible yet or not, policy tasks due by now included."""
        self.materialize()
        return MappingProxyType(self._tasks)

    def state(self, task_id: str) -> TaskState:
        """The task's state now, as the API would report it (KeyError for an unknown ID)."""
        return task_state(self.tasks[task_id], self.clock.wall())

    def listing(self) -> NewestFirst:
        """Every task in ListOpLogs order (newest first, ties by ID), policy tasks included."""
        self.materialize()
        return self._order

    # -- policies ----------------------------------------------------------------------------

    def add_policy(self, spec: PolicySpec) -> str:
        """Start a backup policy now (its first run `spec.first` from now); returns its ID."""
        return self.add_policies([spec])[0]

    def add_policies(self, specs: Iterable[PolicySpec]) -> list[str]:
        """Start several policies now; nothing is started if an ID is already taken."""
        specs = list(specs)
        self.materialize()
        taken = {policy.id for policy in self._policies}
        schedules: list[PolicySchedule] = []
        for spec in specs:
            schedule = PolicySchedule(
                spec,
                position=len(self._policies) + len(schedules),
                start_wall=self.clock.wall(),
                seed=self.seed,
                default_vault=self.default_vault,
                members=self.inventory.members,
            )
            if schedule.id in taken:
                raise ValueError(f"policy ID {schedule.id!r} already exists")
            taken.add(schedule.id)
            schedules.append(schedule)
        self._policies.extend(schedules)
        self.materialize()
        return [schedule.id for schedule in schedules]

    @property
    def policies(self) -> Sequence[PolicySchedule]:
        """The policies started so far, in the order they were added."""
        return tuple(self._policies)

    def materialize(self) -> None:
        """Create every policy task whose creation time has come (cheap when none has)."""
        now = self.clock.wall()
        for policy in self._policies:
            batch = policy.due(now)
            if batch:
                self._tasks.update((task.id, task) for task in batch)
                self._order.add(batch)

    # -- credentials -------------------------------------------------------------------------

    def set_tokens(self, tokens: Iterable[str]) -> None:
        """Replace the accepted `X-Auth-Token` values."""
        self.auth.tokens.replace(tokens)

    # -- requests ----------------------------------------------------------------------------

    def record(self, method: str, path: str, query: str, task_id: str | None) -> SimRequest:
        """Log an arriving API request; the caller fills in its status when it is answered."""
        entry = SimRequest(self.clock.monotonic(), self.clock.wall(), method, path, query, task_id)
        self.request_log.append(entry)
        if task_id is not None:
            self._show_counts[task_id] += 1
        return entry

    def request_count(self, task_id: str) -> int:
        """ShowOpLog requests seen for `task_id`, whatever they were answered with."""
        return self._show_counts[task_id]

    def stats(self) -> dict[str, object]:
        """Totals for the control API: every request, and counts per HTTP status."""
        by_status = Counter(
            "none" if entry.status is None else str(entry.status) for entry in self.request_log
        )
        return {"requests": len(self.request_log), "by_status": dict(sorted(by_status.items()))}

    def new_request_id(self) -> str:
        """A 32-hex-digit request ID, as the gateway puts in `X-Request-Id`."""
        return f"{self._id_rng.getrandbits(128):032x}"
