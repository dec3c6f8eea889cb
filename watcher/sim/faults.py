"""Fault injection: scripted faults per task, and a seeded random profile for everything else.

A scripted fault list is consumed one entry per ShowOpLog request for that task; once it is
used up the task behaves normally. Scripts take precedence over the random profile, whose
every decision comes from one `random.Random(seed)` so a run is reproducible request for
request.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields

SERVER_ERRORS = (500, 502, 503, 504)
FAULT_RULE = (
    "http_500, http_502, http_503, http_504, throttle, throttle:N, malformed, "
    "malformed:shape, hang, reset, unauthorized or not_found"
)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour.

    `kind` is one of "http" (answer `status` with an error body), "throttle" (429, with a
    `Retry-After: retry_after` header when that is set), "malformed" (`variant` "truncated":
    the real 200 body cut short; "shape": valid JSON of the wrong shape), "hang", "reset",
    "unauthorized" or "not_found".
    """

    kind: str
    status: int | None = None
    retry_after: float | None = None
    variant: str = "truncated"

    @property
    def name(self) -> str:
        """The script spelling of this fault, e.g. "http_503" or "throttle:2"."""
        if self.kind == "http":
            return f"http_{self.status}"
        if self.kind == "throttle" and self.retry_after is not None:
            return f"throttle:{self.retry_after:g}"
        if self.kind == "malformed" and self.variant != "truncated":
            return f"malformed:{self.variant}"
        return self.kind


def parse_fault(name: str) -> Fault:
    """A Fault from its script name; ValueError naming the accepted spellings otherwise."""
    text = name.strip()
    head, _, arg = text.partition(":")
    if head.startswith("http_") and not arg:
        code = head.removeprefix("http_")
        if code.isdigit() and int(code) in SERVER_ERRORS:
            return Fault("http", status=int(code))
    elif head == "throttle":
        if not arg:
            return Fault("throttle")
        try:
            seconds = float(arg)
        except ValueError:
            seconds = -1.0
        if math.isfinite(seconds) and seconds >= 0:
            return Fault("throttle", retry_after=seconds)
    elif head == "malformed" and arg in ("", "truncated", "shape"):
        return Fault("malformed", variant=arg or "truncated")
    elif head in ("hang", "reset", "unauthorized", "not_found") and not arg:
        return Fault(head)
    raise ValueError(f"unknown fault {name!r}: expected one of {FAULT_RULE}")


@dataclass
class FaultProfile:
    """Random faults applied to every API request not covered by a script. Rates are 0..1.

    `latency` (+ up to `latency_jitter`) seconds are added to every response, slept on the
    simulator's clock. At most one of error/throttle/hang/malformed/reset hits a request, so
    their rates must add up to at most 1.
    """

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    throttle_retry_after_ratio: float = 0.0
    retry_after_seconds: float = 2.0
    latency: float = 0.0
    latency_jitter: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    reset_rate: float = 0.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{item.name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{item.name} must be a non-negative number")
            if item.name.endswith(("_rate", "_ratio")) and value > 1:
                raise ValueError(f"{item.name} must be between 0 and 1")
        if sum(self.exclusive_rates()) > 1:
            raise ValueError("error, throttle, hang, malformed and reset rates add up to over 1")

    def exclusive_rates(self) -> tuple[float, ...]:
        """Rates of the mutually exclusive faults: reset, hang, error, throttle, malformed."""
        return (
            self.reset_rate,
            self.hang_rate,
            self.error_rate,
            self.throttle_rate,
            self.malformed_rate,
        )


class FaultInjector:
    """Decides, request by request, which fault (if any) to inject."""

    def __init__(self, profile: FaultProfile | None, seed: int) -> None:
        self.profile = profile or FaultProfile()
        self._rng = random.Random(seed)
        self._scripts: dict[str, deque[Fault]] = {}

    def script(self, task_id: str, faults: Iterable[str]) -> None:
        """Queue scripted faults for the next ShowOpLog requests of `task_id`."""
        parsed = [parse_fault(name) for name in faults]
        if parsed:
            self._scripts.setdefault(task_id, deque()).extend(parsed)

    def pending(self, task_id: str) -> list[str]:
        """The scripted faults still waiting for `task_id`, by name."""
        return [fault.name for fault in self._scripts.get(task_id, ())]

    def next_fault(self, task_id: str | None) -> Fault | None:
        """The fault for this request: the task's script first, then the random profile."""
        if task_id is not None:
            script = self._scripts.get(task_id)
            if script:
                return script.popleft()
        return self._random_fault()

    def latency(self) -> float:
        """Seconds to delay this response by."""
        profile = self.profile
        if profile.latency_jitter > 0:
            return profile.latency + self._rng.uniform(0, profile.latency_jitter)
        return profile.latency

    def _random_fault(self) -> Fault | None:
        profile = self.profile
        if not any(profile.exclusive_rates()):
            return None
        draw = self._rng.random()
        reset, hang, error, throttle, malformed = profile.exclusive_rates()
        if draw < reset:
            return Fault("reset")
        draw -= reset
        if draw < hang:
            return Fault("hang")
        draw -= hang
        if draw < error:
            return Fault("http", status=self._rng.choice(SERVER_ERRORS))
        draw -= error
        if draw < throttle:
            with_header = self._rng.random() < profile.throttle_retry_after_ratio
            retry_after = profile.retry_after_seconds if with_header else None
            return Fault("throttle", retry_after=retry_after)
        draw -= throttle
        if draw < malformed:
            return Fault("malformed", variant=self._rng.choice(("truncated", "shape")))
        return None
