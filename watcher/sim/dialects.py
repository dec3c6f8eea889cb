"""Dialects: the simulator's answer to each question the official API reference leaves open.

Where the reference is silent, whatever the simulator does is a guess about the real cloud.
Each guess is a field of `Dialect`, so a test (or a trial with `cbr-watcher simulate
--dialect NAME`) can run a client against every plausible answer. The default `Dialect()`
is the simulator as it always behaved.

- `count`: what ListOpLogs' `count` means. "total" (every match) or "page" (this page's
  length). The reference only says "number of tasks".
- `limit_cap`: the most entries a ListOpLogs page holds, whatever `limit` asks. None: `limit`
  must be 1–1000 (else 400 `BackupService.9900`) and is honoured. A number: any positive
  `limit` is accepted, a page holds at most the smaller of the two, and the `limit` asked for
  is echoed, so a short page is not the end of the list.
- `timestamps`: how every timestamp in an operation log is written. "task" (each task's own
  `style`: `2019-05-23T14:35:23.584+00:00` or `2020-02-23T01:00:32Z`), "Z"
  (`2020-02-23T01:00:32Z`), "+00:00" (`2019-05-23T14:35:23.584+00:00`) or "zoneless"
  (`2019-05-23T14:31:36.039365`, as in the official examples).
- `null_policy`: a task without a policy says `"policy_id": null` instead of leaving the key
  out. `null_vault_for`: the operation types whose `vault_id` and `vault_name` are `null`
  (the official examples show both null); such a task matches no `vault_id`/`vault_name`
  filter, since the listing knows no vault for it either.
- `retry_after`: the `Retry-After` header of a 429 `throttle` fault. "fault" (as the fault
  says: `throttle:N` sends N, `throttle` and the random profile's share send none), "never"
  (what the real gateway seems to do) or "always" (a plain `throttle` sends the fault
  profile's `retry_after_seconds`). Hostile `throttle_odd` faults are not affected.
- `order`: the order ListOpLogs lists tasks in. "newest" (newest first, as the simulator always
  did) or "oldest" (oldest first). The reference names no sort parameter and no order.
- `list_forbidden`: ListOpLogs answers 403 `APIGW.0302` (credentials without the list
  permission) while ShowOpLog keeps working. Switchable at run time, like every field,
  through `PUT /_sim/dialect`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Literal, get_args

CountMode = Literal["total", "page"]
TimeStyle = Literal["task", "Z", "+00:00", "zoneless"]
RetryAfterMode = Literal["fault", "never", "always"]
ListOrder = Literal["newest", "oldest"]
COUNT_MODES: tuple[str, ...] = get_args(CountMode)
TIME_STYLES: tuple[str, ...] = get_args(TimeStyle)
RETRY_AFTER_MODES: tuple[str, ...] = get_args(RetryAfterMode)
LIST_ORDERS: tuple[str, ...] = get_args(ListOrder)
PRESET_KEY = "preset"
# The operation types whose vault the official examples leave null, in our reading: a
# restore writes to a resource outside the vault, a vault deletion removes the vault itself.
EXAMPLE_NULL_VAULT_TYPES = frozenset({"restore", "vault_delete"})


def _types(value: object, name: str) -> frozenset[str]:
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise ValueError(f"{name} must be a list of operation types")
    return frozenset(value)


def _choice(name: str, value: object, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, not {value!r}")


def _shown(value: object) -> str:
    if isinstance(value, list):
        return "+".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Dialect:
    """One answer to every open question about the real cloud (see the module docstring)."""

    count: CountMode = "total"
    limit_cap: int | None = None
    timestamps: TimeStyle = "task"
    null_policy: bool = False
    null_vault_for: frozenset[str] = frozenset()
    retry_after: RetryAfterMode = "fault"
    order: ListOrder = "newest"
    list_forbidden: bool = False

    def __post_init__(self) -> None:
        _choice("count", self.count, COUNT_MODES)
        _choice("timestamps", self.timestamps, TIME_STYLES)
        _choice("retry_after", self.retry_after, RETRY_AFTER_MODES)
        _choice("order", self.order, LIST_ORDERS)
        cap = self.limit_cap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError("limit_cap must be a positive integer")
        for name in ("null_policy", "list_forbidden"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        # Any collection of names will do (a set, a TOML list); kept as a frozenset.
        object.__setattr__(self, "null_vault_for", _types(self.null_vault_for, "null_vault_for"))

    def summary(self) -> str:
        """A preset's name when the dialect is exactly one (the default is "default"), else
        the fields that differ from the default, e.g. "count:page,limit_cap:7"."""
        for name, known in PRESETS.items():
            if known == self:
                return name
        changed = [
            f"{key}:{_shown(value)}"
            for key, value in self.as_json().items()
            if value != _DEFAULTS[key]
        ]
        return ",".join(changed)

    def as_json(self) -> dict[str, Any]:
        """The dialect as a JSON object (the control API's form; `null_vault_for` sorted)."""
        data = asdict(self)
        data["null_vault_for"] = sorted(self.null_vault_for)
        return data


DEFAULT_DIALECT = Dialect()
_EXAMPLES = Dialect(
    timestamps="zoneless", null_policy=True, null_vault_for=EXAMPLE_NULL_VAULT_TYPES
)
PRESETS: Mapping[str, Dialect] = MappingProxyType(
    {
        "default": DEFAULT_DIALECT,
        # Bodies spelled as the official examples are: no zone, nulls for what does not apply.
        "examples": _EXAMPLES,
        "page-count": Dialect(count="page"),
        "capped": Dialect(limit_cap=100),
        "no-retry-after": Dialect(retry_after="never"),
        "no-list": Dialect(list_forbidden=True),
        "oldest-first": Dialect(order="oldest"),
        # Every unkind but plausible answer at once, short of refusing the listing.
        "worst-case": replace(_EXAMPLES, count="page", limit_cap=100, retry_after="never"),
    }
)
DIALECT_KEYS = frozenset(item.name for item in fields(Dialect))
_DEFAULTS = DEFAULT_DIALECT.as_json()


def preset(name: str) -> Dialect:
    """The named preset; ValueError listing the names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dialect {name!r}: expected one of {', '.join(PRESETS)}"
        ) from None


def dialect_from_mapping(
    data: object, where: str = "dialect", base: Dialect = DEFAULT_DIALECT
) -> Dialect:
    """A Dialect from a table (TOML `[dialect]`, or a JSON object for `PUT /_sim/dialect`):
    `preset` (a name) replaces `base`, every other key changes that one field. ValueError
    naming the key otherwise, e.g. `dialect.count: ...`."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table of dialect settings")
    if PRESET_KEY in data:
        name = data[PRESET_KEY]
        if not isinstance(name, str):
            raise ValueError(f"{where}.{PRESET_KEY}: expected a dialect name")
        try:
            base = preset(name)
        except ValueError as error:
            raise ValueError(f"{where}.{PRESET_KEY}: {error}") from None
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == PRESET_KEY:
            continue
        if key not in DIALECT_KEYS:
            known = ", ".join(sorted(DIALECT_KEYS | {PRESET_KEY}))
            raise ValueError(f"{where}.{key}: unknown key (known: {known})")
        changes[key] = value
    try:
        return replace(base, **changes)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
