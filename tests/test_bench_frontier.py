"""bench/efficiency.py (the frontier benchmark) runs, and its parts say what they promise.

Smoke tests only: a tiny run's output has the expected shape. No timing and no target is
asserted here; the numbers are the benchmark's to report.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import efficiency
from efficiency_population import population
from efficiency_world import DirectCbr, cut_page, preload

from watcher.sim import PRESETS, Simulator
from watcher.sim.listing import parse_list_query, select
from watcher.testing import FakeClock


def test_population_keeps_exactly_n_pending_and_slots_do_not_depend_on_n() -> None:
    pop = population(10, seed=3, until=7200.0)
    watched = pop.watched
    for at in (0.0, 1.5, 600.0, 3599.0, 7200.0):
        assert sum(task.created <= at < task.ends for task in watched) == 10
    assert all(task.ends <= 0 for task in pop.history)
    small = population(3, seed=3, until=7200.0)
    assert [t.task_id for t in small.running] == [t.task_id for t in pop.running[:3]]
    assert [t.ends for t in small.running] == [t.ends for t in pop.running[:3]]


@pytest.mark.parametrize("dialect", ["default", "capped", "page-count", "examples", "oldest-first"])
def test_the_direct_transport_cuts_pages_as_the_simulator_selects(dialect: str) -> None:
    clock = FakeClock()
    sim = Simulator(clock, dialect=PRESETS[dialect])
    pop = population(20, seed=1, until=600.0)
    preload(sim, pop, clock.wall())
    now = clock.wall()
    oldest = min(task.created_wall for task in sim.tasks.values())
    vault = sim.default_vault[0]
    for start in (None, oldest, now - 3600.0):
        for offset in (0, 7, 150, 10_000):
            params = {"limit": "1000", "offset": str(offset), "vault_id": vault}
            if start is not None:
                params["start_time"] = efficiency_time(start)
            query = parse_list_query(params, sim.dialect)
            count, page = cut_page(sim, query, sim.dialect)
            expected_count, expected = select(sim.listing(), query, now, sim.dialect)
            assert count == expected_count
            assert [task.id for task in page] == [task.id for task in expected]


@pytest.mark.parametrize("dialect", ["default", "capped", "page-count", "oldest-first"])
def test_the_direct_transport_lists_running_tasks_as_the_simulator_selects(dialect: str) -> None:
    """The running index follows the clock: tasks start and end as the simulator says."""
    clock = FakeClock()
    sim = Simulator(clock, dialect=PRESETS[dialect])
    pop = population(20, seed=1, until=600.0)
    preload(sim, pop, clock.wall())
    direct = DirectCbr(sim)
    vault = sim.default_vault[0]
    checked = 0
    for step in range(12):
        if step == 6:
            sim.add_tasks([task.spec for task in pop.arrivals[:5]])
        now = clock.wall()
        for start in (None, now - 3600.0):
            for offset in (0, 3, 500):
                params = {"limit": "1000", "offset": str(offset), "vault_id": vault}
                params["status"] = "running"
                if start is not None:
                    params["start_time"] = efficiency_time(start)
                query = parse_list_query(params, sim.dialect)
                count, page = direct.running.cut_page(query, sim.dialect, now)
                expected_count, expected = select(sim.listing(), query, now, sim.dialect)
                assert count == expected_count
                assert [task.id for task in page] == [task.id for task in expected]
                checked += len(page)
        clock.advance(57.0)
    assert checked > 100


def efficiency_time(wall: float) -> str:
    """A ListOpLogs time parameter (as the engine's refresh sweep writes it)."""
    from watcher.engine.listing import cbr_time

    return cbr_time(wall)


def test_a_tiny_run_reports_every_system_dialect_scenario_and_target(tmp_path: Path) -> None:
    out = tmp_path / "frontier.json"
    threshold = gc.get_threshold()
    assert (
        efficiency.main(
            [
                "--sizes",
                "10",
                "--windows",
                "10:300",
                "--warmup",
                "60",
                "--dialects",
                "default,capped",
                "--refused-size",
                "10",
                "--refused-rps",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert gc.get_threshold() == threshold
    payload = json.loads(out.read_text())
    labels = [row["label"] for row in payload["systems"]]
    assert labels == [system.name for system in efficiency.SYSTEMS] + [efficiency.LIMIT]
    assert [row["dialect"] for row in payload["dialects"]] == ["default", "capped"]
    assert len(payload["refused"]) == 2
    assert [row["dialect"] for row in payload["budget"]] == ["default", "capped"]
    everything = [*payload["systems"], *payload["dialects"], *payload["budget"]]
    for row in [*everything, *payload["refused"]]:
        assert row["size"] == 10
        assert row["task_hours"] > 0
        assert {"delays", "failed_delays", "missed", "duplicates", "lag"} <= set(row)
    assert payload["targets"]
    assert all({"target", "met", "measured"} == set(item) for item in payload["targets"])
