"""Policy schedules: the watcher expects backups exactly when the simulator (standing for CBR)
starts them, reads what CBR documents, and refuses to guess the rest."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.cbr.inventory import parse_policies_body
from watcher.coverage.schedule import Schedule, UnsupportedScheduleError, dtstart_of, rule_set
from watcher.sim import Simulator
from watcher.sim.inventory import ResourceSpec, VaultSpec, policy_body
from watcher.sim.policies import PolicySpec
from watcher.testing import FakeClock

DAY = 86_400.0


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


PATTERNS = [
    ("FREQ=DAILY;BYHOUR=14;BYMINUTE=0",),
    ("FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=3;BYMINUTE=15", "FREQ=DAILY;INTERVAL=3;BYHOUR=20;BYMINUTE=30"),
    ("FREQ=WEEKLY;INTERVAL=2;BYHOUR=23",),  # the start's weekday and minute
    ("FREQ=DAILY",),  # the start's hour and minute, every day
    ("FREQ=WEEKLY;BYDAY=SA,SU;BYHOUR=0,12;BYMINUTE=5",),
]


@pytest.mark.parametrize("patterns", PATTERNS, ids=lambda p: " + ".join(p))
@pytest.mark.parametrize("offset", [0.0, 37.5, 3 * 3600 + 125.0])
def test_the_watcher_expects_backups_when_the_simulator_starts_them(
    patterns: tuple[str, ...], offset: float
) -> None:
    """The policy as ListPolicies shows it gives the simulator's run times, for 60 days."""
    clock = FakeClock(start_wall=utc("2026-01-01 00:00") + offset)
    sim = Simulator(clock, seed=3)
    sim.inventory.add_vaults([VaultSpec(name="web", resources=(ResourceSpec(name="a"),))])
    sim.add_policy(PolicySpec(id="p", pattern=patterns, vaults=("web",)))
    policy = sim.policies[0]
    listed = parse_policies_body({"policies": [policy_body(policy, sim)]}).policies[0]
    schedule = Schedule(listed.patterns, listed.start_time)
    expected = []
    for run in range(400):
        at = policy.run_time(run)
        if at > clock.wall() + 60 * DAY:
            break
        expected.append(at)
    assert schedule.between(clock.wall() - DAY, clock.wall() + 60 * DAY) == expected
    assert schedule.next_after(clock.wall() - 1) == expected[0]
    assert schedule.next_after(expected[1]) == expected[2]


def test_a_policy_started_years_ago_is_read_quickly_and_in_phase() -> None:
    """INTERVAL keeps its phase from DTSTART, however long ago it was."""
    start = datetime(2019, 3, 7, 9, 59, 49, tzinfo=UTC)  # a Thursday
    schedule = Schedule(["FREQ=DAILY;INTERVAL=3;BYHOUR=1;BYMINUTE=0"], start)
    found = schedule.between(utc("2026-01-01 00:00"), utc("2026-01-10 00:00"))
    # Days count from DTSTART's day (RFC 5545): 7 March, 10 March, ...; the 7th's 01:00 was
    # before the start, so the first backup ran on the 10th.
    day_one = datetime(2019, 3, 7, 1, tzinfo=UTC)
    for stamp in found:
        days = (datetime.fromtimestamp(stamp, UTC) - day_one).days
        assert days % 3 == 0
    assert len(found) == 3


@st.composite
def rules(draw: st.DrawFn) -> str:
    parts = [f"FREQ={draw(st.sampled_from(['DAILY', 'WEEKLY']))}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.integers(1, 9))}")
    if draw(st.booleans()):
        days = draw(
            st.sets(st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]), min_size=1)
        )
        parts.append("BYDAY=" + ",".join(sorted(days)))
    if draw(st.booleans()):
        hours = draw(st.sets(st.integers(0, 23), min_size=1, max_size=3))
        parts.append("BYHOUR=" + ",".join(map(str, sorted(hours))))
    if draw(st.booleans()):
        parts.append(f"BYMINUTE={draw(st.integers(0, 59))}")
    return ";".join(parts)


@given(
    patterns=st.lists(rules(), min_size=1, max_size=3),
    start=st.datetimes(datetime(2015, 1, 1), datetime(2026, 1, 1), timezones=st.just(UTC)),
    later=st.floats(0, 3 * 365 * DAY),
)
@settings(max_examples=150, deadline=None)
def test_the_shortcut_gives_the_same_times_as_iterating_from_dtstart(
    patterns: list[str], start: datetime, later: float
) -> None:
    """Starting the rules near the asked-for time changes none of the times."""
    schedule = Schedule(patterns, start)
    after = start.timestamp() + later
    found = schedule.between(after, after + 15 * DAY)
    full = rule_set(patterns, dtstart_of(start))
    lower = max(datetime.fromtimestamp(after, UTC), start)
    naive = [
        moment.timestamp()
        for moment in full.between(lower, lower + timedelta(days=16), inc=True)
        if after < moment.timestamp() <= after + 15 * DAY and moment >= start
    ]
    assert found == naive


@pytest.mark.parametrize(
    ("patterns", "start", "message"),
    [
        (["FREQ=HOURLY"], True, "FREQ=HOURLY is not DAILY or WEEKLY"),
        (["FREQ=MONTHLY;BYMONTHDAY=1"], True, "is not DAILY or WEEKLY"),
        (["FREQ=DAILY;BYSETPOS=1"], True, "'BYSETPOS' is not one of"),
        (["FREQ=DAILY;COUNT=3"], True, "'COUNT' is not one of"),
        (["FREQ=DAILY;BYHOUR=3;BYHOUR=4"], True, "BYHOUR given twice"),
        (["BYHOUR=3"], True, "FREQ is required"),
        (["FREQ=DAILY;INTERVAL=0"], True, "INTERVAL=0"),
        (["FREQ=DAILY;BYHOUR=25"], True, "BYHOUR=25"),
        (["not a rule at all"], True, "is not one of"),
        ([], True, "no pattern"),
        (["FREQ=DAILY"] * 25, True, "25 rules"),
        (["FREQ=DAILY;BYHOUR=1"], False, "depends on the policy's start_time"),
        (["FREQ=DAILY;INTERVAL=2;BYHOUR=1;BYMINUTE=0"], False, "depends on"),
        (["FREQ=WEEKLY;BYHOUR=1;BYMINUTE=0"], False, "depends on"),
    ],
)
def test_what_cbr_does_not_document_is_refused_not_guessed(
    patterns: list[str], start: bool, message: str
) -> None:
    with pytest.raises(UnsupportedScheduleError, match=message):
        Schedule(patterns, datetime(2026, 1, 1, tzinfo=UTC) if start else None)


def test_spelling_is_read_leniently_where_the_meaning_is_certain() -> None:
    start = datetime(2026, 1, 1, 8, tzinfo=UTC)
    loose = Schedule([" rrule:freq=daily; byhour=14 ;byminute=00; "], start)
    strict = Schedule(["FREQ=DAILY;BYHOUR=14;BYMINUTE=00"], start)
    assert loose.patterns == strict.patterns
    assert loose.next_after(start.timestamp()) == utc("2026-01-01 14:00")


def test_without_a_start_time_only_start_independent_rules_count() -> None:
    schedule = Schedule(["FREQ=WEEKLY;BYDAY=FR;BYHOUR=2;BYMINUTE=30"], None)
    assert schedule.next_after(utc("2026-01-01 00:00")) == utc("2026-01-02 02:30")


@given(st.lists(st.text(max_size=60), min_size=1, max_size=4), st.booleans())
@settings(max_examples=300, deadline=1000)
def test_any_pattern_text_is_read_or_refused_quickly(patterns: list[str], start: bool) -> None:
    try:
        schedule = Schedule(patterns, datetime(2026, 1, 1, tzinfo=UTC) if start else None)
    except UnsupportedScheduleError:
        return
    nxt = schedule.next_after(utc("2026-01-01 00:00"))
    assert nxt is None or math.isfinite(nxt)
