"""One request budget shared by every watch.

A sliding one-second window: a request may start at time t only if fewer than `rate`
requests started in (t - 1, t]. Unlike a token bucket (which lets a full bucket plus a
second's refill through in one window), this never exceeds `rate` in *any* one-second
window, which is what a cloud API quota counts.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 1.0
_EPSILON = 1e-6
"""Keeps float rounding from letting a start land exactly on a window edge twice."""


class RequestBudget:
    """At most `rate` request starts in any window of one second; `pause_until` for 429s."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._capacity = max(1, math.floor(rate))
        self._spacing = 1.0 / rate if rate < 1 else 0.0
        self._starts: deque[float] = deque()
        self._paused_until = -math.inf
        self._last_start = -math.inf

    def next_allowed(self, now: float) -> float:
        """The earliest time (>= now) at which one more request may start."""
        earliest = max(now, self._paused_until)
        if self._spacing:
            earliest = max(earliest, self._last_start + self._spacing + _EPSILON)
        while self._starts and self._starts[0] <= earliest - WINDOW:
            self._starts.popleft()
        if len(self._starts) >= self._capacity:
            oldest_counted = self._starts[len(self._starts) - self._capacity]
            earliest = max(earliest, oldest_counted + WINDOW + _EPSILON)
        return earliest

    def try_acquire(self, now: float) -> bool:
        """Record a request start at `now` if the budget allows it."""
        if self.next_allowed(now) > now:
            return False
        self._starts.append(now)
        self._last_start = now
        return True

    def pause_until(self, until: float) -> None:
        """Let no request start before `until` (the cloud said it is throttling us)."""
        self._paused_until = max(self._paused_until, until)
