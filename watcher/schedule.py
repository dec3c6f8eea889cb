"""When to poll a task next: pure functions of (policy, per-task poll state, outcome, now).

No I/O and no clock of its own. Every decision returns the delay *and* the reason, so the
engine can log and count why a task waits as long as it does.

The cadence:

* first poll at once;
* after a poll that saw nothing move, the next delay is drawn uniformly from
  [poll_interval_min, cap], where the cap doubles with every quiet poll up to
  poll_interval_max ("full jitter" above the floor, so thousands of tasks added together
  spread out instead of polling in lock-step);
* when progress or status moves, the cap drops back to poll_interval_min;
* transient errors and throttling grow their own cap the same way; a Retry-After header is
  a floor under whatever the backoff says;
* nothing is scheduled past the task's deadline: the last poll happens at the deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum


class Reason(StrEnum):
    """Why the next poll is as far away as it is."""

    FIRST = "first"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    ERROR = "error"
    THROTTLED = "throttled"
    RETRY_AFTER = "retry_after"
    AUTH_RETRY = "auth_retry"
    NOT_FOUND = "not_found"
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs from `[watch]`, in seconds."""

    interval_min: float = 5.0
    interval_max: float = 60.0
    deadline: float = 48 * 3600.0
    not_found_grace: float = 120.0


@dataclass(frozen=True, slots=True)
class PollState:
    """What the schedule remembers about one task between polls."""

    quiet_polls: int = 0
    """Successful polls in a row that saw no change."""
    error_streak: int = 0
    """Failed polls in a row (transient, throttled, auth, fatal)."""
    not_found_since: float | None = None
    """Monotonic time of the first 404 in the current run of 404s."""
    auth_retry_spent: bool = False
    """Whether the one immediate retry after reloading credentials was used."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a scheduling decision: the new state and when to poll again."""

    state: PollState
    delay: float
    reason: Reason


def _capped(policy: Policy, steps: int) -> float:
    """interval_min · 2^steps, never above interval_max (and safe for huge `steps`)."""
    if steps >= 63:
        return policy.interval_max
    return min(policy.interval_max, policy.interval_min * float(2**steps))


def _jittered(policy: Policy, steps: int, rng: random.Random) -> float:
    cap = _capped(policy, steps)
    return policy.interval_min + rng.random() * (cap - policy.interval_min)


def after_success(
    policy: Policy, state: PollState, *, changed: bool, rng: random.Random
) -> Decision:
    """A poll returned the task. `changed`: status or progress differs from the last look."""
    if changed:
        fresh = PollState()
        return Decision(fresh, policy.interval_min, Reason.CHANGED)
    quiet = state.quiet_polls + 1
    fresh = PollState(quiet_polls=quiet)
    return Decision(fresh, _jittered(policy, quiet - 1, rng), Reason.UNCHANGED)


def after_error(policy: Policy, state: PollState, *, rng: random.Random) -> Decision:
    """A transient or fatal failure: back off with jitter, growing with the error streak."""
    streak = state.error_streak + 1
    # A 5xx between two 404s says nothing about the task existing: the grace keeps running.
    new = replace(state, error_streak=streak, auth_retry_spent=False)
    return Decision(new, _jittered(policy, streak, rng), Reason.ERROR)


def after_throttled(
    policy: Policy, state: PollState, *, retry_after: float | None, rng: random.Random
) -> Decision:
    """429: back off like an error, but never sooner than Retry-After when the cloud sent one."""
    streak = state.error_streak + 1
    new = replace(state, error_streak=streak)
    delay = _jittered(policy, streak, rng)
    if retry_after is not None and retry_after > delay:
        return Decision(new, retry_after, Reason.RETRY_AFTER)
    return Decision(new, delay, Reason.THROTTLED)


def after_auth_failure(policy: Policy, state: PollState, *, rng: random.Random) -> Decision:
    """401: retry at once after a credential reload, once; after that, back off."""
    if not state.auth_retry_spent:
        return Decision(replace(state, auth_retry_spent=True), 0.0, Reason.AUTH_RETRY)
    streak = state.error_streak + 1
    new = replace(state, error_streak=streak, auth_retry_spent=True)
    return Decision(new, _jittered(policy, streak, rng), Reason.ERROR)


def after_not_found(
    policy: Policy, state: PollState, *, now: float, rng: random.Random
) -> Decision | None:
    """404: keep trying for `not_found_grace` from the first 404; None once it has run out."""
    since = state.not_found_since if state.not_found_since is not None else now
    if now - since >= policy.not_found_grace:
        return None
    streak = state.error_streak + 1
    new = replace(state, error_streak=streak, not_found_since=since)
    delay = _jittered(policy, streak, rng)
    # One last look exactly when the grace runs out, so a late task is still caught.
    delay = min(delay, since + policy.not_found_grace - now)
    return Decision(new, max(delay, 0.0), Reason.NOT_FOUND)


def expired(policy: Policy, *, started: float, now: float) -> bool:
    """Whether the watch has outlived its deadline."""
    return now - started >= policy.deadline


def clamp_to_deadline(
    policy: Policy, decision: Decision, *, started: float, now: float
) -> Decision:
    """Never sleep past the deadline: the final poll is made exactly at it."""
    remaining = started + policy.deadline - now
    if decision.delay > remaining:
        return Decision(decision.state, max(remaining, 0.0), Reason.DEADLINE)
    return decision
