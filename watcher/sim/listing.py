"""ListOpLogs as the simulator answers it: the query, the filters, the order and the page.

Our reading of the ListOpLogs reference, with what it leaves open marked as inference (the
guesses a `Dialect` can switch are marked "dialect"):

- Filters `status`, `operation_type`, `vault_id`, `vault_name`, `resource_id`,
  `resource_name`, `provider_id` and `enterprise_project_id` are exact string matches, all of
  them at once. An unknown `status` or `operation_type` is not rejected (the Python SDK does not
  validate them and nothing shows CBR answering 400): it matches nothing, unless a task with
  `phases` reports that very status. (inference)
- `enterprise_project_id=all_granted_eps` matches every enterprise project; without the
  parameter no enterprise-project filter applies. A task's own is "0" unless set. (inference
  for the missing parameter)
- `start_time` / `end_time` (`%Y-%m-%dT%H:%M:%SZ`, UTC) bound the task's creation time,
  both inclusive. Which timestamp CBR compares is UNVERIFIED; creation time is our reading.
- A string filter or time given with an empty value counts as not given. (inference)
- `limit` is an integer 1–1000 (default 1000) and `offset` an integer ≥ 0 (default 0), both
  plain ASCII digits; anything else is a 400 `BackupService.9900`. (dialect `limit_cap`: any
  positive `limit` is accepted, and a page holds at most the cap.)
- `count` is the total number of matches, not the length of the page (UNVERIFIED upstream;
  dialect `count`); `limit` and `offset` are echoed as asked.
- A task whose vault the dialect shows as null (`null_vault_for`) matches no `vault_id` or
  `vault_name` filter.
- Order: newest first by creation time, ties by task ID ascending (the real order is
  UNVERIFIED; CBR has no sort parameter); dialect `order = "oldest"` reverses it.
- Every request sees the tasks as they are at its own instant, so a task that ends between two
  page requests leaves a `status=running` listing and the later offsets shift under the pager.

`NewestFirst` keeps the tasks in that order as they are added, so a request only scans (and
bisects the time window), never sorts.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

from watcher.sim.dialects import DEFAULT_DIALECT, Dialect
from watcher.sim.tasks import FILTER_FIELDS, SimTask, status_at

MAX_LIMIT = 1000
ALL_GRANTED_EPS = "all_granted_eps"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LIST_FILTERS = ("status", *FILTER_FIELDS)
VAULT_FILTERS = ("vault_id", "vault_name")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# 18 digits: any offset a client could mean, and never a slow or failing int() conversion.
_INTEGER = re.compile(r"[0-9]{1,18}")

Getter = Callable[[SimTask], str]


@dataclass(frozen=True)
class ListQuery:
    """A validated ListOpLogs query."""

    limit: int = MAX_LIMIT
    offset: int = 0
    start: float | None = None
    end: float | None = None
    status: str | None = None
    fields: tuple[tuple[Getter, str], ...] = ()
    by_vault: bool = False
    """Whether `fields` filters on the vault (its ID or name)."""


def parse_list_query(query: Mapping[str, str], dialect: Dialect = DEFAULT_DIALECT) -> ListQuery:
    """The query string's parameters (first value of each); ValueError with a CBR-style message
    naming the parameter when `limit`, `offset`, `start_time` or `end_time` is invalid."""
    fields = tuple(
        (getter, query[name])
        for name, getter in FILTER_FIELDS.items()
        if query.get(name)
        and not (name == "enterprise_project_id" and query[name] == ALL_GRANTED_EPS)
    )
    highest = MAX_LIMIT if dialect.limit_cap is None else None
    return ListQuery(
        limit=_integer(query.get("limit"), "limit", MAX_LIMIT, highest, low=1),
        offset=_integer(query.get("offset"), "offset", 0, None, low=0),
        start=_time(query.get("start_time"), "start_time"),
        end=_time(query.get("end_time"), "end_time"),
        status=query.get("status") or None,
        fields=fields,
        by_vault=any(query.get(name) for name in VAULT_FILTERS),
    )


def _integer(raw: str | None, name: str, default: int, high: int | None, *, low: int) -> int:
    if raw is None:
        return default
    value = int(raw) if _INTEGER.fullmatch(raw) else -1
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"Invalid parameter {name}: expected an integer {bounds}, got {raw!r}.")
    return value


def _time(raw: str | None, name: str) -> float | None:
    if not raw:
        return None
    try:
        if not _TIME.fullmatch(raw):
            raise ValueError(raw)
        return datetime.strptime(raw, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(
            f"Invalid parameter {name}: expected a time like 2018-02-01T12:00:00Z, got {raw!r}."
        ) from None


def listing_key(task: SimTask) -> tuple[float, str]:
    """Where a task sorts in a listing: newest first, ties by ID."""
    return (-task.created_wall, task.id)


class NewestFirst:
    """Every task in listing order, kept up to date as tasks are added.

    New tasks are nearly always the newest, so a batch is sorted on its own and put in front;
    only a batch that interleaves with the tasks already held costs a full sort.
    """

    def __init__(self) -> None:
        self._tasks: list[SimTask] = []
        # -created_wall of each task, ascending: what the time window bisects.
        self._keys: list[float] = []

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> Sequence[SimTask]:
        """The tasks, newest first."""
        return self._tasks

    def add(self, batch: Iterable[SimTask]) -> None:
        """Take in newly created tasks."""
        fresh = sorted(batch, key=listing_key)
        if not fresh:
            return
        if not self._tasks or listing_key(fresh[-1]) < listing_key(self._tasks[0]):
            self._tasks = fresh + self._tasks
            self._keys = [-task.created_wall for task in fresh] + self._keys
        else:
            self._tasks = sorted([*fresh, *self._tasks], key=listing_key)
            self._keys = [-task.created_wall for task in self._tasks]

    def window(self, start: float | None, end: float | None) -> Iterable[SimTask]:
        """The tasks created from `start` to `end` (inclusive; None = unbounded), newest first."""
        low = 0 if end is None else bisect_left(self._keys, -end)
        high = len(self._keys) if start is None else bisect_right(self._keys, -start)
        return islice(self._tasks, low, max(low, high))


def select(
    tasks: NewestFirst, query: ListQuery, now: float, dialect: Dialect = DEFAULT_DIALECT
) -> tuple[int, list[SimTask]]:
    """The `count` to report for `query` at `now` (every match, or the page's length when
    the dialect says so), and the page of matching tasks it asks for."""
    size = query.limit if dialect.limit_cap is None else min(query.limit, dialect.limit_cap)
    first, stop = query.offset, query.offset + size
    no_vault = dialect.null_vault_for if query.by_vault else frozenset()
    count = 0
    page: list[SimTask] = []
    window = tasks.window(query.start, query.end)
    if dialect.order == "oldest":
        window = reversed(list(window))
    for task in window:
        if now - task.created_wall < task.spec.visible_after:
            continue
        if no_vault and task.spec.operation_type in no_vault:
            continue
        if any(get(task) != wanted for get, wanted in query.fields):
            continue
        if query.status is not None and status_at(task, now) != query.status:
            continue
        if first <= count < stop:
            page.append(task)
        count += 1
    return (len(page) if dialect.count == "page" else count), page
