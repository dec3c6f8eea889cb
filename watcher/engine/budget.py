"""One request budget shared by every watch.

A sliding window: a request may start at time t only if fewer than `rate` requests started
in (t - W, t]. Unlike a token bucket (which lets a full bucket plus a second's refill through
in one window), this never exceeds `rate` in *any* window of W seconds.

W is one second plus SEND_JITTER_ALLOWANCE. The budget decides when a request *starts*; the
request reaches the wire a little later (connection set-up, a busy loop), and that delay
varies. Measured on loopback it was 1-6 ms on warm connections and 25-50 ms on new ones, which
was enough for two full bursts exactly one second apart to land in one second on the wire.
Widening the window by the allowance keeps the cloud's count within `rate` as long as send
delays differ by less than the allowance, at the cost of about 9 % of the throughput.
"""

from __future__ import annotations

import math
from collections import deque

SEND_JITTER_ALLOWANCE = 0.1
WINDOW = 1.0 + SEND_JITTER_ALLOWANCE
_EPSILON = 1e-6
"""Keeps float rounding from letting a start land exactly on a window edge twice."""


class RequestBudget:
    """At most `rate` request starts in any WINDOW; `pause_until` for 429s."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._capacity = max(1, math.floor(rate))
        self._spacing = WINDOW / rate if rate < 1 else 0.0
        self._starts: deque[float] = deque()
        self._paused_until = -math.inf
        self._last_start = -math.inf

    @property
    def sustained_rate(self) -> float:
        """Requests per second the budget serves when it is always full (`rate` per WINDOW)."""
        return self.rate / WINDOW

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
