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
PROGRESS_VARIANTS = ("Infinity", "-Infinity", "NaN", "1e999", "huge", "superscript")
RETRY_AFTER_VARIANTS = ("minus0000", "superscript", "huge", "garbage", "rfc850", "asctime")
HOSTILE_FAULTS = (
    "deep_json",
    "oversized",
    "oversized:chunked",
    *(f"progress:{variant}" for variant in PROGRESS_VARIANTS),
    "far_date",
    "far_date:past",
    "surrogate",
    "surrogate:status",
    *(f"throttle_odd:{variant}" for variant in RETRY_AFTER_VARIANTS),
)
"""Valid-looking answers no faithful CBR sends, drawn by `FaultProfile.hostile_rate`."""
FAULT_RULE = (
    "http_500, http_502, http_503, http_504, throttle, throttle:N, malformed, "
    "malformed:shape, hang, reset, unauthorized or not_found; hostile (opt-in): "
    "reset:reused, deep_json, oversized, oversized:chunked, "
    f"progress:{{{','.join(PROGRESS_VARIANTS)}}}, far_date, far_date:past, surrogate, "
    f"surrogate:status, throttle_odd:{{{','.join(RETRY_AFTER_VARIANTS)}}}"
)
# Kinds with variants: the first one is the default, spelled without ":variant".
_VARIANTS: dict[str, tuple[str, ...]] = {
    "malformed": ("truncated", "shape"),
    "reset": ("immediate", "reused"),
    "oversized": ("length", "chunked"),
    "far_date": ("future", "past"),
    "surrogate": ("fields", "status"),
    "progress": PROGRESS_VARIANTS,
    "throttle_odd": RETRY_AFTER_VARIANTS,
}
_VARIANT_REQUIRED = frozenset({"progress", "throttle_odd"})
_PLAIN_KINDS = frozenset({"hang", "unauthorized", "not_found", "deep_json"})


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour.

    Faithful kinds: "http" (answer `status` with an error body), "throttle" (429, with a
    `Retry-After: retry_after` header when that is set), "malformed" (`variant` "truncated":
    the real 200 body cut short; "shape": valid JSON of the wrong shape), "hang", "reset"
    (drop the connection unanswered), "unauthorized" or "not_found".

    Hostile kinds, for testing the watcher's defences (opt-in; each hits one request, and a
    body fault only replaces a 200: the status in a mutated body is the task's true one):

    - "reset" variant "reused": drop the request only if it came on a kept-alive connection
      that already carried one (a scripted one waits for such a request);
    - "deep_json": the body nests 100,000 arrays deep;
    - "oversized": the real body padded past 9 MiB ("length": with Content-Length,
      "chunked": chunked, without one);
    - "progress": `extra_info.common.progress` written as raw JSON text: `Infinity`,
      `-Infinity`, `NaN`, `1e999`, a 400-digit integer ("huge") or `"²"` ("superscript");
    - "far_date": every timestamp `9999-12-31T23:59:59-05:00` ("future") or
      `0001-01-01T00:00:00+05:00` ("past"), both beyond what UTC can represent;
    - "surrogate": lone UTF-16 surrogates (`"\\ud800"` escapes) in operation_type,
      vault_name, the resource name and type, error_info.message and a new key ("fields"),
      or appended to the status ("status");
    - "throttle_odd": 429 with an odd `Retry-After`: `Wed, 21 Oct 2015 07:28:00 -0000`
      ("minus0000"), `²`, `99999999999` ("huge"), garbage, or a date a minute ahead in the
      RFC 850 or asctime form.
    """

    kind: str
    status: int | None = None
    retry_after: float | None = None
    variant: str = ""

    def __post_init__(self) -> None:
        if not self.variant and self.kind in _VARIANTS:
            object.__setattr__(self, "variant", _VARIANTS[self.kind][0])

    @property
    def name(self) -> str:
        """The script spelling of this fault, e.g. "http_503" or "throttle:2"."""
        if self.kind == "http":
            return f"http_{self.status}"
        if self.kind == "throttle" and self.retry_after is not None:
            return f"throttle:{self.retry_after:g}"
        variants = _VARIANTS.get(self.kind)
        if variants and (self.kind in _VARIANT_REQUIRED or self.variant != variants[0]):
            return f"{self.kind}:{self.variant}"
        return self.kind

    @property
    def needs_reused_connection(self) -> bool:
        """Whether this fault only applies to a request on a reused keep-alive connection."""
        return self.kind == "reset" and self.variant == "reused"


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
    elif head in _VARIANTS:
        if arg in _VARIANTS[head] or (not arg and head not in _VARIANT_REQUIRED):
            return Fault(head, variant=arg)
    elif head in _PLAIN_KINDS and not arg:
        return Fault(head)
    raise ValueError(f"unknown fault {name!r}: expected one of {FAULT_RULE}")


@dataclass
class FaultProfile:
    """Random faults applied to every API request not covered by a script. Rates are 0..1.

    `latency` (+ up to `latency_jitter`) seconds are added to every response, slept on the
    simulator's clock. At most one of error/throttle/hang/malformed/reset/hostile/reused_reset
    hits a request, so their rates must add up to at most 1.

    Hostile, both 0 by default: `hostile_rate` draws one of HOSTILE_FAULTS at random;
    `reused_reset_rate` drops requests that arrive on a reused keep-alive connection.
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
    hostile_rate: float = 0.0
    reused_reset_rate: float = 0.0

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
            raise ValueError(
                "error, throttle, hang, malformed, reset, hostile and reused_reset rates "
                "add up to over 1"
            )

    def exclusive_rates(self) -> tuple[float, ...]:
        """Rates of the mutually exclusive faults: reset, hang, error, throttle, malformed,
        hostile, reused_reset (the new ones last, so older seeds draw the same faults)."""
        return (
            self.reset_rate,
            self.hang_rate,
            self.error_rate,
            self.throttle_rate,
            self.malformed_rate,
            self.hostile_rate,
            self.reused_reset_rate,
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

    def next_fault(self, task_id: str | None, *, reused: bool = False) -> Fault | None:
        """The fault for this request: the task's script first, then the random profile.

        `reused`: the request came on a keep-alive connection that already carried one; a
        scripted fault that needs such a connection waits for one.
        """
        if task_id is not None:
            script = self._scripts.get(task_id)
            if script and (reused or not script[0].needs_reused_connection):
                return script.popleft()
        return self._random_fault(reused)

    def latency(self) -> float:
        """Seconds to delay this response by."""
        profile = self.profile
        if profile.latency_jitter > 0:
            return profile.latency + self._rng.uniform(0, profile.latency_jitter)
        return profile.latency

    def _random_fault(self, reused: bool) -> Fault | None:
        profile = self.profile
        if not any(profile.exclusive_rates()):
            return None
        draw = self._rng.random()
        reset, hang, error, throttle, malformed, hostile, reused_reset = profile.exclusive_rates()
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
        draw -= malformed
        if draw < hostile:
            return parse_fault(self._rng.choice(HOSTILE_FAULTS))
        draw -= hostile
        if draw < reused_reset and reused:
            return Fault("reset", variant="reused")
        return None
