"""When to look at a task next, on its own: pure functions of (policy, per-task poll state,
outcome, now).

No I/O and no clock of its own. Every decision returns the delay *and* the reason, so the
engine can log and count why a task waits as long as it does. Most watched tasks are looked
at by the refresh sweep (`watcher.engine.refresh`); this cadence is for the rest, and is the
backstop under the sweep.

Two hard rules first. No gap between two looks at an active task exceeds `poll_interval_max`
(`bounded`): back-off, stalls, `progress_interval` and Retry-After all stop there, so an end
nobody can predict (a failure mid-run) is never seen later than a plain poller at
`poll_interval_max` would see it. And after an answer no own look comes sooner either
(`on_grid`), except one brought forward to a predicted end: a task watched alone costs no
more than that plain poller, and a predicted end is seen at once.

What the estimate (see `watcher.engine.estimator`) wishes for, before `on_grid` (its
predicted end is what `on_grid` aligns to; the reasons name why):

* first look at once; running before progress first moves: the time it has run so far
  (`no_rate`);
* far from the estimated end, every `progress_interval` (`progress`), sooner while the
  estimate is young (`estimate`) or the plateau (99 %) approaches (`approach`);
* on the plateau, inside the window around the estimated end (the built-in tail band plus
  what the samples disagree on), every 2.6 × `poll_interval_min`, tightening to
  `poll_interval_min` at the estimate itself (`near_end`); once the window has passed, growth
  back toward `poll_interval_max` (`overdue`); progress that stopped where the rate said it
  would move: `stalled`.

Tasks without progress: after a quiet look the next delay is drawn from
[poll_interval_min, cap], the cap doubling with every quiet look ("full jitter", so tasks
added together spread out); a change of status or progress drops it back. Errors and
throttling grow their own cap the same way (`watcher.backoff.full_jitter`); a
Retry-After is a floor under the backoff (itself capped); nothing is scheduled past the
task's deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum

from watcher.backoff import capped_exponential, full_jitter
from watcher.engine import estimator
from watcher.engine.estimator import Estimate, Track


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
    PROGRESS = "progress"
    """Far from the estimated end: refreshing progress every progress_interval."""
    ESTIMATE = "estimate"
    """The estimate is young: polled sooner than progress_interval to firm it up."""
    APPROACH = "approach"
    """Closing in on the plateau or on the window around the estimated end."""
    NEAR_END = "near_end"
    """Within the uncertainty window around the estimated end: densest polling."""
    OVERDUE = "overdue"
    """The estimated end has passed without an end: growing toward poll_interval_max."""
    STALLED = "stalled"
    """Progress stopped where the rate said it would move: growing toward poll_interval_max."""
    SWEEP = "sweep"
    """Refreshed by a listing that comes round again: the task's own look is only a backstop."""
    HANDED_BACK = "handed_back"
    """A refresh listing failed or missed the task: its own look, spread over an interval."""
    NO_RATE = "no_rate"
    """Running, but progress has not moved yet: half the time it has run, up to
    progress_interval (a task sitting at 0 % may leap at any moment, but rarely ends there)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs from `[watch]`, in seconds."""

    interval_min: float = 5.0
    interval_max: float = 15.0
    """The longest gap between two looks at an active task: nothing waits longer."""
    deadline: float = 48 * 3600.0
    not_found_grace: float = 120.0
    progress_interval: float = 120.0
    """A running task's progress is refreshed at least this often (far from its end)."""
    list_interval: float = 10.0
    """How often the refresh sweep lists the watched tasks."""


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
    track: Track | None = None
    """Progress samples of the current status (bounded); None for tasks without progress."""
    estimated_end: float | None = None
    """Wall time the task is expected to end, when the last decision had an estimate."""
    aligned_end: float | None = None
    """The predicted end a look was last brought forward to (`on_grid`)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a scheduling decision: the new state and when to poll again."""

    state: PollState
    delay: float
    reason: Reason


def _capped(policy: Policy, steps: int) -> float:
    """interval_min · 2^steps, never above interval_max."""
    return capped_exponential(steps, base=policy.interval_min, cap=policy.interval_max)


def _jittered(policy: Policy, steps: int, rng: random.Random) -> float:
    """Full jitter above interval_min, under a cap that doubles with `steps`."""
    return full_jitter(
        steps,
        base=policy.interval_min,
        cap=policy.interval_max,
        rng=rng,
        floor=policy.interval_min,
    )


def after_success(
    policy: Policy,
    state: PollState,
    *,
    changed: bool,
    rng: random.Random,
    status: str | None = None,
    progress: int | None = None,
    now: float | None = None,
) -> Decision:
    """A poll returned a pending task. `changed`: status or progress differs from the last look.

    With `status` and `now` (wall seconds) the progress samples drive the cadence (see the
    module docstring); without them, the cadence for tasks without progress.
    """
    if status is None or now is None:
        return _unchanged_or_changed(policy, state, changed=changed, rng=rng, track=None)
    track = estimator.observe(state.track, status=status, progress=progress, now=now)
    if track is None:
        return _unchanged_or_changed(policy, state, changed=changed, rng=rng, track=None)
    estimate = estimator.estimate(track, now, min_uncertainty=policy.interval_min)
    if estimate is None:
        if track.status != RUNNING:
            return _unchanged_or_changed(policy, state, changed=changed, rng=rng, track=track)
        ran = now - (track.first.after + track.first.seen) / 2
        delay = min(max(YOUNG_SHARE * ran, policy.interval_min), _far(policy, rng))
        return Decision(PollState(track=track), delay, Reason.NO_RATE)
    delay, reason, growth = _by_estimate(policy, state, estimate, now=now, rng=rng)
    new = PollState(quiet_polls=growth, track=track, estimated_end=estimate.end)
    return Decision(new, min(delay, policy.progress_interval), reason)


def on_grid(policy: Policy, previous: PollState, decision: Decision, *, now: float) -> Decision:
    """A task's own looks after an answer: every min(interval_max, progress_interval), as a
    fixed poller's are.

    Between two looks that far apart, a look sooner costs a request the fixed poller does not
    make, and buys something only when it lands on an end. So the estimate's wish
    (`after_success`) may bring one look forward to its predicted end (never sooner than
    interval_min) — once per prediction: when the task is still running there, the estimate
    moved, and looking again at once would only pay twice — and nothing else comes sooner.
    """
    grid = min(policy.interval_max, policy.progress_interval)
    if decision.delay >= grid:
        return decision
    state = replace(decision.state, aligned_end=previous.aligned_end)
    end = state.estimated_end
    if end is not None and 0.0 < end - now < grid:
        done = previous.aligned_end
        if done is None or abs(end - done) > grid:
            delay = min(max(end - now, policy.interval_min), grid)
            return Decision(replace(state, aligned_end=end), delay, Reason.NEAR_END)
    return Decision(state, grid, decision.reason)


def _unchanged_or_changed(
    policy: Policy, state: PollState, *, changed: bool, rng: random.Random, track: Track | None
) -> Decision:
    """The cadence without an estimate: interval_min after a change, else jittered growth."""
    if changed:
        return Decision(PollState(track=track), policy.interval_min, Reason.CHANGED)
    quiet = state.quiet_polls + 1
    fresh = PollState(quiet_polls=quiet, track=track)
    return Decision(fresh, _jittered(policy, quiet - 1, rng), Reason.UNCHANGED)


RUNNING = "running"
NEAR_END_EDGE = 2.6
"""Polling interval inside the uncertainty window (bar the estimate itself), in multiples of
interval_min: under the fixed 15 s poller's, so the delay there is no worse than its."""
NEAR_END_RAMP = 2.0
"""Distance from the estimate, in multiples of interval_min, over which the interval grows
from interval_min to the edge interval."""
APPROACH_SHARE = 0.7
"""Closing in: sleep this share of the time left to the plateau's earliest plausible start."""
PRECISION_SHARE = 0.02
"""Before the plateau, the interval never drops below this share of the run so far: knowing
when the plateau starts more precisely than the tail after it is known buys nothing."""
YOUNG_SHARE = 1.0
"""Without a rate, never sleep longer than this share of the time the task has run."""
ESTIMATE_SHARE = 1.0
"""With a rate, likewise: early rates are noisy, and a stall or a leap distorts them."""
OVERDUE_START = 2
"""Growth steps already taken when a window runs out: the first overdue cap is 4 × min."""
STALL_JITTER = 0.1
"""A stalled task waits its cap minus up to this share of it, at random."""
FAR_JITTER = 0.01
"""Far from the end the interval is progress_interval minus up to this share, at random."""


def _by_estimate(
    policy: Policy, state: PollState, estimate: Estimate, *, now: float, rng: random.Random
) -> tuple[float, Reason, int]:
    """(delay, reason, growth steps taken) for a task with an estimate."""
    if estimate.on_plateau:
        return _on_plateau(policy, state, estimate, now=now, rng=rng)
    ran = max(estimate.plateau_at - estimate.run_start, 0.0)
    if estimate.stalled:
        # A stall can last hours, and a hung step ends the task failed: grow fast to just
        # under interval_max (STALL_JITTER, not full jitter: thousands of polls would be
        # wasted on a long stall); a short task's stall is short, so its cap stays a share of
        # the run.
        steps = max(state.quiet_polls, OVERDUE_START) + 1
        cap = min(_capped(policy, steps), max(policy.interval_min, PRECISION_SHARE * ran))
        return cap * (1 - STALL_JITTER * rng.random()), Reason.STALLED, steps
    far = _far(policy, rng)
    precision = min(far, max(policy.interval_min, PRECISION_SHARE * ran))
    approach = max(APPROACH_SHARE * (estimate.plateau_early - now), precision)
    young = max(ESTIMATE_SHARE * (now - estimate.run_start), policy.interval_min)
    delay = min(approach, young, far)
    if delay == far:
        return far, Reason.PROGRESS, 0
    return delay, Reason.APPROACH if delay == approach else Reason.ESTIMATE, 0


def _far(policy: Policy, rng: random.Random) -> float:
    """progress_interval, minus a little jitter so tasks added together drift apart."""
    return policy.progress_interval * (1 - FAR_JITTER * rng.random())


def _on_plateau(
    policy: Policy, state: PollState, estimate: Estimate, *, now: float, rng: random.Random
) -> tuple[float, Reason, int]:
    ahead = estimate.end - now
    window = estimate.uncertainty
    if ahead < -window:
        steps = OVERDUE_START + state.quiet_polls
        return _jittered(policy, steps, rng), Reason.OVERDUE, state.quiet_polls + 1
    minimum = policy.interval_min
    edge = min(NEAR_END_EDGE * minimum, policy.interval_max)
    distance = abs(ahead)
    if distance <= window:
        # interval_min at the estimate, the edge interval a short ramp away and out to the
        # edges: the end is as likely anywhere in the window, so the edge interval bounds
        # the delay and a wide window costs its width ÷ the edge interval.
        ramp = min(window, NEAR_END_RAMP * minimum)
        delay = minimum + (edge - minimum) * min(1.0, distance / ramp)
        # Never step over the estimate itself.
        if ahead > minimum:
            delay = min(delay, ahead)
        return delay, Reason.NEAR_END, 0
    # Before the window: wake up at its start, but the plateau may be shorter than the band
    # says, so never more than interval_max apart.
    delay = max(distance - window, minimum)
    return min(delay, policy.interval_max), Reason.APPROACH, 0


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


def bounded(policy: Policy, decision: Decision, *, started: float, now: float) -> Decision:
    """The hard limits on any wait: never longer than interval_max (back-off, stalls,
    progress_interval and Retry-After all stop there), never past the deadline."""
    if decision.delay > policy.interval_max:
        decision = Decision(decision.state, policy.interval_max, decision.reason)
    return clamp_to_deadline(policy, decision, started=started, now=now)


def clamp_to_deadline(
    policy: Policy, decision: Decision, *, started: float, now: float
) -> Decision:
    """Never sleep past the deadline: the final poll is made exactly at it."""
    remaining = started + policy.deadline - now
    if decision.delay > remaining:
        return Decision(decision.state, max(remaining, 0.0), Reason.DEADLINE)
    return decision
