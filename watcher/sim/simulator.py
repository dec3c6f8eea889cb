"""The Simulator: the state behind the fake CBR API (tasks, credentials, faults, request log)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType

from aiohttp import web

from watcher.clock import Clock
from watcher.sim.auth import DEFAULT_TOKEN_LIFETIME, AccessKey, SimAuth, User
from watcher.sim.faults import FaultInjector, FaultProfile, parse_fault
from watcher.sim.iam import IamApi
from watcher.sim.tasks import SimTask, SimTaskSpec, TaskState, random_uuid, realize, task_state
from watcher.task_ids import validate_task_id

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


class Simulator:
    """A faithful fake of the CBR operation-log API, driven by an injected clock.

    Tasks are lazy: their state is computed from their creation time whenever asked, so the
    simulator needs no timers and a FakeClock can jump freely.
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
    ) -> None:
        self.clock = clock
        self.project_id = project_id
        self.seed = seed
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
        self._show_counts: Counter[str] = Counter()
        self.request_log: list[SimRequest] = []
        self._app: web.Application | None = None
        self.closing = asyncio.Event()

    # -- tasks -------------------------------------------------------------------------------

    def add_task(self, spec: SimTaskSpec) -> str:
        """Create a task now (on the simulator's clock) and return its ID."""
        return self.add_tasks([spec])[0]

    def add_tasks(self, specs: Iterable[SimTaskSpec]) -> list[str]:
        """Create several tasks at once; nothing is added if any spec is invalid."""
        specs = list(specs)
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
        return ids

    @property
    def tasks(self) -> Mapping[str, SimTask]:
        """Every task by ID (read-only), visible yet or not."""
        return MappingProxyType(self._tasks)

    def state(self, task_id: str) -> TaskState:
        """The task's state now, as the API would report it (KeyError for an unknown ID)."""
        return task_state(self._tasks[task_id], self.clock.wall())

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

    # -- serving -----------------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The aiohttp application (CBR endpoints and the /_sim/ control API), built once.

        Served by something other than `running()`/`serve()`, a "hang" fault only ends when
        the client disconnects if the runner was made with `handler_cancellation=True`.
        """
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A fresh aiohttp application over this simulator."""
        from watcher.sim.app import make_app

        return make_app(self)

    @asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on a real socket; yields the base URL, e.g. "http://127.0.0.1:41234"."""
        from watcher.sim.server import serve

        server = await serve(self, host, port)
        try:
            yield server.base_url
        finally:
            await server.close()
