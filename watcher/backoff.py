"""Exponential backoff with full jitter: the one retry rule every loop in cbr-watcher uses.

Polls after errors (`watcher.engine.schedule`), webhook attempts (`watcher.delivery.webhooks`)
and IAM token
requests (`watcher.cbr.iam`) all wait `capped_exponential` (deterministic) or `full_jitter`
(random in [floor, cap]) — "full jitter" in the AWS Architecture Blog's sense, so thousands of
retries spread out instead of arriving in lock-step.
"""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 62
"""2**62 · base overflows nothing and exceeds any cap: larger attempts are clamped to it."""


def capped_exponential(attempt: int, *, base: float, cap: float) -> float:
    """`base · 2**attempt`, never above `cap` (and safe for any `attempt` ≥ 0)."""
    if attempt >= _MAX_DOUBLINGS:
        return cap
    return min(cap, base * float(2 ** max(0, attempt)))


def full_jitter(
    attempt: int, *, base: float, cap: float, rng: random.Random, floor: float = 0.0
) -> float:
    """A delay drawn uniformly from [floor, max(floor, capped_exponential(attempt))]."""
    ceiling = max(floor, capped_exponential(attempt, base=base, cap=cap))
    return floor + rng.random() * (ceiling - floor)
