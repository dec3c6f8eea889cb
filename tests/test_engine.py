"""The engine against the simulator on a real socket, all on one fake clock."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math

import pytest
from structlog.testing import capture_logs

from tests.support import Events, Running, World, make_engine, run_until
from watcher.cbr.ids import InvalidTaskIdError
from watcher.engine.schedule import Policy
from watcher.sim import FaultProfile, SimTaskSpec


@pytest.mark.parametrize(
    ("outcome", "final_event"),
    [
        ("success", "task.succeeded"),
        ("failed", "task.failed"),
        ("skipped", "task.skipped"),
        ("timeout", "task.timed_out"),
    ],
)
async def test_every_terminal_status_ends_the_watch(
    world: World, outcome: str, final_event: str
) -> None:
    """Each CBR terminal status produces its event and ends the watch with that status."""
    task_id = world.sim.add_task(
        SimTaskSpec(id=f"task-{outcome}", outcome=outcome, waiting=30, running=600)
    )
    events = Events()
    engine = make_engine(world, on_event=events)
    engine.add(task_id, labels={"team": "db"})
    with capture_logs() as logs:
        await run_until(world, engine, engine.all_done)

    task = engine.tasks[task_id]
    assert task.end_reason == outcome
    assert events.of(task_id)[-1] == final_event
    final = events.events[-1]
    assert final.status == outcome
    assert final.labels == {"team": "db"}
    assert final.operation_log is not None
    assert final.operation_log.raw["id"] == task_id
    if outcome != "skipped":
        assert events.of(task_id)[0] == "task.started"
    if outcome == "failed":
        assert final.operation_log.error is not None
    finals = [entry for entry in logs if entry.get("final")]
    assert [(e["event"], e["task_id"], e["status"]) for e in finals] == [
        ("task.status_changed", task_id, outcome)
    ]
    # Detected promptly: the sim ended it at created + waiting + running.
    assert task.ended_wall is not None
    assert task.ended_wall - task.added_wall <= 630 + 60


async def test_progress_is_followed_and_polling_stays_modest(world: World) -> None:
    """Progress events rise monotonically to the end; a 10-minute task costs few polls."""
    task_id = world.sim.add_task(SimTaskSpec(id="b1", waiting=10, running=600))
    events = Events()
    engine = make_engine(world, on_event=events)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)

    progress_events = [e for e in events.events if e.type == "task.progress"]
    progress = [e.progress for e in progress_events if e.progress is not None]
    assert len(progress) == len(progress_events) >= 5
    assert progress == sorted(progress)
    assert all(0 <= p <= 100 for p in progress)
    # A fixed 5 s loop would poll 122 times; the adaptive cadence does far less but
    # still catches progress moving.
    assert world.sim.request_count(task_id) < 122
    assert engine.tasks[task_id].status == "success"


async def test_unknown_status_is_pending_and_warned_once(world: World) -> None:
    """A status CBR may add later keeps the watch going, with one warning."""
    task_id = world.sim.add_task(
        SimTaskSpec(
            id="odd",
            phases=[("waiting", 20, None), ("frozen", 200, 40), ("success", 0, 100)],
        )
    )
    events = Events()
    engine = make_engine(world, on_event=events)
    engine.add(task_id)
    with capture_logs() as logs:
        await run_until(world, engine, engine.all_done)
    warnings = [e for e in logs if e["event"] == "task.unknown_status"]
    assert [(w["task_id"], w["status"]) for w in warnings] == [(task_id, "frozen")]
    assert engine.tasks[task_id].end_reason == "success"
    assert events.of(task_id)[-1] == "task.succeeded"


async def test_not_found_is_retried_within_grace(world: World) -> None:
    """A task that becomes visible 60 s after creation is still watched to the end."""
    task_id = world.sim.add_task(SimTaskSpec(id="late", visible_after=60, waiting=5, running=60))
    engine = make_engine(world)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    assert engine.tasks[task_id].end_reason == "success"


async def test_not_found_after_grace_ends_as_watch_not_found(world: World) -> None:
    """A task CBR never knows ends as watch.not_found once not_found_grace has passed."""
    events = Events()
    engine = make_engine(world, on_event=events)
    started = world.clock.monotonic()
    engine.add("no-such-task")
    await run_until(world, engine, engine.all_done)
    assert engine.tasks["no-such-task"].end_reason == "not_found"
    assert events.of("no-such-task") == ["watch.not_found"]
    elapsed = world.clock.monotonic() - started
    assert 120 <= elapsed < 130
    assert engine.outcome("no-such-task") == "not_found"


async def test_deadline_ends_as_watch_expired(world: World) -> None:
    """A task still running at the deadline ends as watch.expired, checked at the deadline."""
    task_id = world.sim.add_task(SimTaskSpec(id="slow", waiting=10, running=7200))
    events = Events()
    policy = Policy(interval_min=5, interval_max=60, deadline=1800, not_found_grace=120)
    engine = make_engine(world, on_event=events, policy=policy)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    task = engine.tasks[task_id]
    assert task.end_reason == "expired"
    assert events.of(task_id)[-1] == "watch.expired"
    assert task.ended_wall is not None
    assert task.ended_wall - task.added_wall == pytest.approx(1800, abs=1)


async def test_401_then_token_file_rotation(world: World) -> None:
    """The cloud rotates the token: 401s back off and log once, the new file is picked up."""
    task_id = world.sim.add_task(SimTaskSpec(id="rot", waiting=10, running=300))
    world.sim.set_tokens(["token-2"])
    engine = make_engine(world)
    engine.add(task_id)
    with capture_logs() as logs:
        async with Running(world, engine) as running:
            await running.until(lambda: world.sim.request_count(task_id) >= 4)
            assert engine.tasks[task_id].status is None
            world.token_file.write_text("token-2\n")
            await running.until(engine.all_done)
    assert engine.tasks[task_id].end_reason == "success"
    names = [e["event"] for e in logs]
    assert names.count("upstream.failing") == 1
    assert names.count("upstream.recovered") == 1
    failing = next(e for e in logs if e["event"] == "upstream.failing")
    assert failing["kind"] == "auth"
    statuses = [r.status for r in world.sim.request_log if r.task_id == task_id]
    # The first 401 is retried at once (after reloading the file), then backoff.
    assert statuses[:2] == [401, 401]
    first, second = (r.monotonic for r in world.sim.request_log[:2])
    assert second - first < 1


async def test_429_with_retry_after_is_a_floor(world: World) -> None:
    """Retry-After: 45 (under poll_interval_max) means no request for that task sooner than
    45 s later."""
    task_id = world.sim.add_task(
        SimTaskSpec(id="thr", waiting=5, running=300, faults=["throttle:45"])
    )
    engine = make_engine(world)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    times = [r.monotonic for r in world.sim.request_log if r.task_id == task_id]
    assert times[1] - times[0] >= 45
    assert engine.tasks[task_id].end_reason == "success"


async def test_429_without_retry_after_backs_off_and_completes(world: World) -> None:
    """429s without the header back off with jitter; the task still finishes."""
    task_id = world.sim.add_task(
        SimTaskSpec(id="thr2", waiting=5, running=300, faults=["throttle"] * 4)
    )
    engine = make_engine(world)
    engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    requests = [r for r in world.sim.request_log if r.task_id == task_id]
    assert [r.status for r in requests[:4]] == [429] * 4
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(requests[:5])]
    assert all(gap >= 5 for gap in gaps)
    assert engine.tasks[task_id].end_reason == "success"


async def test_bursts_of_5xx_and_hung_requests_do_not_lose_the_task(world: World) -> None:
    """Gateway errors and requests that never answer are retried until the task completes."""
    faults = ["http_503", "http_500", "hang", "http_502", "hang", "http_504"]
    task_id = world.sim.add_task(SimTaskSpec(id="flaky", waiting=5, running=120, faults=faults))
    engine = make_engine(world)
    engine.add(task_id)
    with capture_logs() as logs:
        await run_until(world, engine, engine.all_done)
    assert engine.tasks[task_id].end_reason == "success"
    assert engine.stats.polls_failed == len(faults)
    names = [e["event"] for e in logs]
    assert names.count("upstream.failing") == 1
    assert names.count("upstream.recovered") == 1


async def test_malformed_body_is_logged_counted_and_retried(world: World) -> None:
    """A 200 with a body that is not the documented JSON is an upstream error, not a crash."""
    task_id = world.sim.add_task(
        SimTaskSpec(id="garbled", waiting=5, running=60, faults=["malformed", "malformed:shape"])
    )
    engine = make_engine(world)
    engine.add(task_id)
    with capture_logs() as logs:
        await run_until(world, engine, engine.all_done)
    assert engine.tasks[task_id].end_reason == "success"
    assert engine.stats.polls_failed == 2
    failing = next(e for e in logs if e["event"] == "upstream.failing")
    assert failing["code"] == "malformed"


async def test_random_fault_profile_still_finishes_everything(world: World) -> None:
    """With 30 % of requests failing in assorted ways, every task still reaches its end."""
    world.sim.faults.profile = FaultProfile(
        error_rate=0.15, throttle_rate=0.1, throttle_retry_after_ratio=0.5, malformed_rate=0.05
    )
    ids = [
        world.sim.add_task(SimTaskSpec(id=f"noisy-{n}", waiting=5, running=100 + 10 * n))
        for n in range(20)
    ]
    engine = make_engine(world)
    for task_id in ids:
        engine.add(task_id)
    await run_until(world, engine, engine.all_done)
    assert all(engine.tasks[t].end_reason == "success" for t in ids)
    assert engine.stats.polls_failed > 0


def test_invalid_task_ids_are_rejected(world: World) -> None:
    """IDs that could not come from CBR never reach a URL."""
    engine = make_engine(world)
    for bad in ["", "../etc/passwd", "a/b", "-leading-dash", "x" * 129, "sp ace", "ü"]:
        with pytest.raises(InvalidTaskIdError):
            engine.add(bad)
    assert engine.tasks == {}


async def test_shutdown_cancels_hung_requests_within_the_grace(world: World) -> None:
    """stop() with a request hanging returns within shutdown_grace (fake) seconds."""
    task_id = world.sim.add_task(SimTaskSpec(id="stuck", faults=["hang"] * 5))
    engine = make_engine(world, shutdown_grace=3.0)
    engine.add(task_id)
    runner = asyncio.create_task(engine.run())
    # Real I/O must happen here while the fake clock stands still.
    while world.sim.request_count(task_id) == 0:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    assert engine.in_flight == 1
    stop_at = world.clock.monotonic()
    engine.stop()
    while not runner.done():
        await asyncio.sleep(0.005)
        world.clock.advance(0.5)
    await runner
    assert engine.in_flight == 0
    assert world.clock.monotonic() - stop_at <= 3.5


async def test_request_budget_is_never_exceeded_across_500_tasks(world: World) -> None:
    """500 tasks with max_requests_per_second=20: no simulated second sees more than 20."""
    ids = [
        world.sim.add_task(
            SimTaskSpec(id=f"bulk-{n:03d}", waiting=n % 30, running=120 + (n % 50) * 6)
        )
        for n in range(500)
    ]
    # One by one (no refresh sweep, which would refresh all 500 with a page or two).
    engine = make_engine(world, max_requests_per_second=20, max_concurrency=16, batch_refresh=False)
    for task_id in ids:
        engine.add(task_id)
    await run_until(world, engine, engine.all_done, settle_real=5.0)
    assert all(engine.tasks[t].end_reason == "success" for t in ids)
    per_second = collections.Counter(math.floor(r.monotonic) for r in world.sim.request_log)
    assert max(per_second.values()) <= 20
    # The budget is used, not wasted: the first seconds run at the full rate.
    assert max(per_second.values()) == 20
    sliding_max = 0
    times = sorted(r.monotonic for r in world.sim.request_log)
    left = 0
    for right, t in enumerate(times):
        while times[left] <= t - 1.0:
            left += 1
        sliding_max = max(sliding_max, right - left + 1)
    assert sliding_max <= 20


async def test_removed_task_is_no_longer_polled(world: World) -> None:
    """remove() stops the watch: no request for it after that."""
    task_id = world.sim.add_task(SimTaskSpec(id="gone", waiting=5, running=3000))
    engine = make_engine(world)
    engine.add(task_id)
    async with Running(world, engine) as running:
        await running.until(lambda: world.sim.request_count(task_id) >= 3)
        engine.remove(task_id)
        seen = world.sim.request_count(task_id)
        await running.until(lambda: world.clock.monotonic() > 2000, max_seconds=3000)
    assert world.sim.request_count(task_id) == seen
