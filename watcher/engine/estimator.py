"""When will a task end? Pure estimates from its progress samples (no I/O, no clock).

A `Track` holds a bounded handful of (wall time, progress) samples of one task in one status:
the first look, the last few changes, the first look at the plateau and the time of the last
look. `observe` folds one poll into it; `estimate` turns it into an `Estimate`.

The model, and why:

* CBR's progress is not linear and is not a clock. It can sit at 0 and then leap, stall,
  jump, or move backwards when a step is retried. So the rate is measured twice, over the
  whole track and over the last few changes, and the two are compared: their disagreement is
  part of the uncertainty, and it shrinks as the samples come to agree.
* CBR's progress reaches 99 % before the task ends and sits there while the backup is
  committed ("the plateau"). The end is therefore not where the rate says 100 % would be but
  a while after: the last per cent at the latest rate (a curve that slows toward its end
  takes longer), then a share of the time the task took to reach the plateau, somewhere in a
  `TailBand`. CBR's backups sit at 99 % for the last few per cent of the run: the built-in
  band, `DEFAULT_TAIL`, is 3–9 % of the time before the plateau (a tail of 3–8 % of the run).
  A `TailPrior` learns the band from the tasks that ended in this process, per operation type
  (`tail_ratio` measures one), so a fleet whose tails are narrower is polled in a narrower
  window, and one whose tails are wider is not caught late over and over.
* A sample's time is the poll that saw it; the value changed somewhere after the poll before
  (`Sample.after`). Where that matters (when the task started running, when it reached the
  plateau) the middle of that gap is used and half of it is added to the uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

PLATEAU = 99
"""Progress at and above which a running task is in its final stretch."""
RECENT = 4
"""Changes remembered besides the first look: enough for a recent rate, bounded for 50k tasks."""
STALL_STEPS = 3.0
"""A track is stalled once progress has not moved for this many expected one-per-cent steps."""
MIN_SPAN = 8
"""Per cent the recent changes must span before the recent rate is trusted on its own."""


class TailBand(NamedTuple):
    """Where the tail ends: time after 100 % would have been reached at the latest rate, as a
    share of the time the task ran before the plateau (lowest and highest plausible)."""

    low: float
    high: float

    @property
    def middle(self) -> float:
        """The most likely share (the band is treated as flat)."""
        return (self.low + self.high) / 2

    @property
    def half_width(self) -> float:
        """How far the real share may be from `middle`."""
        return (self.high - self.low) / 2


DEFAULT_TAIL = TailBand(0.03, 0.09)
"""The built-in band, used until a `TailPrior` has learned one."""


class Sample(NamedTuple):
    """One progress value and when it was seen (wall seconds)."""

    seen: float
    """The poll that saw it."""
    after: float
    """The poll before, which had not seen it yet (== seen when there is nothing before)."""
    progress: int


@dataclass(frozen=True, slots=True)
class Track:
    """What the estimator remembers about one task in one status (a bounded number of samples)."""

    status: str
    first: Sample
    """The first look in this status (or since progress last went backwards)."""
    changes: tuple[Sample, ...] = ()
    """The last RECENT progress changes after `first`, oldest first."""
    plateau: Sample | None = None
    """The first look at PLATEAU or above."""
    last_look: float = 0.0
    """The latest poll that returned the task."""

    @property
    def last(self) -> Sample:
        """The latest change (or the first look when nothing changed yet)."""
        return self.changes[-1] if self.changes else self.first


@dataclass(frozen=True, slots=True)
class Estimate:
    """Where a task's end is expected, and how sure that is (wall seconds)."""

    end: float
    """The most likely end."""
    uncertainty: float
    """Half-width of the window the end is expected in."""
    plateau_at: float
    """When the task reaches (or reached) PLATEAU; the end follows a tail after it."""
    plateau_early: float
    """The earliest plausible plateau time, from the faster of the two rates."""
    run_start: float
    """When the task started making progress in this status (estimated)."""
    rate: float | None
    """Per cent per second (None once on the plateau with no rate measured)."""
    stalled: bool
    """Progress should have moved by now and has not."""
    on_plateau: bool


def observe(track: Track | None, *, status: str, progress: int | None, now: float) -> Track | None:
    """Fold one successful poll into `track`. None when the task reports no progress.

    A new status, or progress going backwards, starts a new track (the old rate says nothing
    about the new phase); the poll before bounds when that happened.
    """
    if progress is None:
        return None
    previous_look = track.last_look if track is not None else now
    if track is None or track.status != status or progress < track.last.progress:
        first = Sample(now, min(previous_look, now), progress)
        plateau = first if progress >= PLATEAU else None
        return Track(status, first, (), plateau, now)
    if progress == track.last.progress:
        return Track(track.status, track.first, track.changes, track.plateau, now)
    change = Sample(now, track.last_look, progress)
    changes = (*track.changes, change)[-RECENT:]
    plateau = track.plateau
    if plateau is None and progress >= PLATEAU:
        plateau = change
    return Track(track.status, track.first, changes, plateau, now)


def _rate(old: Sample, new: Sample) -> float | None:
    elapsed = new.seen - old.seen
    if elapsed <= 0 or new.progress <= old.progress:
        return None
    return (new.progress - old.progress) / elapsed


def rates(track: Track) -> tuple[float | None, float | None]:
    """(over the whole track, over the last changes) in per cent per second."""
    if not track.changes:
        return None, None
    whole = _rate(track.first, track.last)
    window = (track.first, *track.changes)[-RECENT:]
    recent = _rate(window[0], window[-1]) if len(window) >= 2 else whole
    return whole, recent


def _blended(track: Track, whole: float, recent: float) -> float:
    """The recent rate follows a curve's bends, but over a few one-per-cent steps seen at poll
    times it is coarse: until the last changes span MIN_SPAN per cent, blend in the whole."""
    window = (track.first, *track.changes)[-RECENT:]
    weight = min(1.0, (window[-1].progress - window[0].progress) / MIN_SPAN)
    return weight * recent + (1 - weight) * whole


def _run_start(track: Track, rate: float | None) -> float:
    """When progress started counting: the first look if it was at 0, else extrapolated back."""
    first = track.first
    midpoint = (first.after + first.seen) / 2
    if first.progress == 0 or rate is None:
        return midpoint
    return min(midpoint, first.seen - first.progress / rate)


def _last_percent(progress: int, rate: float | None) -> float:
    """Seconds from `progress` to 100 % at `rate`: a curve that slows down toward its end
    spends longer between 99 and 100 than one that does not."""
    if rate is None or progress >= 100:
        return 0.0
    return (100 - progress) / rate


def estimate(
    track: Track, now: float, *, min_uncertainty: float = 0.0, tail: TailBand = DEFAULT_TAIL
) -> Estimate | None:
    """The expected end of a pending task, or None while there is nothing to go on.

    Nothing to go on: progress has not moved in this status and is not on the plateau (a task
    sitting at 0 may leap at any moment, so no rate can be trusted yet).
    """
    whole, recent = rates(track)
    plateau = track.plateau
    if plateau is not None:
        onset = (plateau.after + plateau.seen) / 2
        start = min(_run_start(track, whole), onset)
        ran = onset - start
        uncertainty = tail.half_width * ran + (plateau.seen - plateau.after) / 2
        return Estimate(
            end=onset + _last_percent(plateau.progress, recent) + tail.middle * ran,
            uncertainty=max(uncertainty, min_uncertainty),
            plateau_at=onset,
            plateau_early=onset,
            run_start=start,
            rate=recent,
            stalled=False,
            on_plateau=True,
        )
    if whole is None or recent is None:
        return None
    last = track.last
    step = 1 / recent
    stalled = now - last.seen > STALL_STEPS * step
    # A stalled task is assumed to resume now: the time already lost is not made up.
    base = now if stalled else last.seen
    left = PLATEAU - last.progress
    point = base + left / _blended(track, whole, recent)
    early = base + left / max(whole, recent)
    start = _run_start(track, whole)
    ran = max(point - start, 0.0)
    # Integer progress: each value may have been reached up to one step before it was seen,
    # and a rate measured over few steps is off by up to one step in that many.
    quantum = min(step, last.seen - last.after)
    coarse = (point - base) / max(last.progress - track.first.progress, 1)
    uncertainty = (point - early) + tail.half_width * ran + quantum + coarse
    return Estimate(
        end=point + _last_percent(PLATEAU, recent) + tail.middle * ran,
        uncertainty=max(uncertainty, min_uncertainty),
        plateau_at=point,
        plateau_early=max(early, now),
        run_start=start,
        rate=recent,
        stalled=stalled,
        on_plateau=False,
    )
