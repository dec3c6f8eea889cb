"""Coverage with hostile or odd inventories: logged once, counted, never a crash or a dead
inventory, and the last good inventory's series stay until a new one completes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from watcher.cbr.errors import FatalError, TransientError
from watcher.cbr.inventory import (
    BackupPage,
    PolicyPage,
    VaultPage,
    parse_backups_body,
    parse_policies_body,
    parse_vaults_body,
)
from watcher.cbr.models import OpLogPage, parse_list_body
from watcher.config.model import CoverageSettings
from watcher.coverage import inventory as inventory_module
from watcher.coverage.coverage import Coverage
from watcher.engine.engine import Engine
from watcher.engine.schedule import Policy
from watcher.observe.metrics import Metrics
from watcher.safetext import clean
from watcher.testing import FakeClock, drive_until

DAILY = "FREQ=DAILY;BYHOUR=14;BYMINUTE=0"


def vault(vault_id: str, *resource_ids: str) -> dict[str, Any]:
    return {
        "id": vault_id,
        "name": f"name-{vault_id}",
        "resources": [
            {"id": r, "name": f"n-{r}", "type": "OS::Nova::Server"} for r in resource_ids
        ],
    }


def policy(
    policy_id: str, *vault_ids: str, pattern: tuple[str, ...] | list[str] = (DAILY,), **extra: Any
) -> Any:
    body: dict[str, Any] = {
        "id": policy_id,
        "name": policy_id,
        "enabled": True,
        "operation_type": "backup",
        "trigger": {"properties": {"pattern": list(pattern), "start_time": "2025-01-01 00:00:00"}},
        "associated_vaults": [{"vault_id": v} for v in vault_ids],
    }
    body.update(extra)
    return body


class FakeApi:
    """Serves inventory bodies as given, through the real parsers; pages vaults by offset."""

    def __init__(self) -> None:
        self.vaults: list[Any] = []
        self.policies: list[Any] = []
        self.backups: dict[str, list[Any]] = {}
        self.op_logs: list[Any] = []
        self.fail: Exception | None = None
        self.on_vault_page: Callable[[int], None] | None = None
        self.calls: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.fail is not None:
            raise self.fail

    async def list_vaults(
        self, *, limit: int | None = None, offset: int | None = None, vault_id: str | None = None
    ) -> VaultPage:
        self._maybe_fail("vaults")
        if vault_id is not None:
            found = [v for v in self.vaults if isinstance(v, dict) and v.get("id") == vault_id]
            return parse_vaults_body({"vaults": found})
        start = offset or 0
        page = self.vaults[start : start + (limit or 1000)]
        if self.on_vault_page is not None:
            self.on_vault_page(start)
        return parse_vaults_body({"vaults": page, "count": len(self.vaults)})

    async def list_policies(self, *, operation_type: str | None = None) -> PolicyPage:
        self._maybe_fail("policies")
        return parse_policies_body({"policies": self.policies})

    async def list_backups(
        self,
        *,
        resource_id: str | None = None,
        status: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> BackupPage:
        self._maybe_fail("backups")
        return parse_backups_body({"backups": self.backups.get(resource_id or "", [])[:1]})

    async def list_op_logs(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        vault_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OpLogPage:
        self._maybe_fail("op_logs")
        start = offset or 0
        return parse_list_body({"operation_logs": self.op_logs[start : start + (limit or 1000)]})


class Rig:
    """Coverage on a fake API, an idle engine for the request budget, and its metrics."""

    def __init__(self, api: FakeApi, *, max_series: int = 10_000, **cov: Any) -> None:
        self.clock = FakeClock()
        self.api = api
        self.metrics = Metrics(clock=self.clock, process_metrics=False)
        self.engine = Engine(
            client=None,  # type: ignore[arg-type]  # no task is watched
            clock=self.clock,
            policy=Policy(interval_min=5, interval_max=60, deadline=3600, not_found_grace=60),
            rng=random.Random(1),
        )
        self.recorded: list[Any] = []

        async def record(events: Any, *, checked_until: float, now: float) -> int:
            self.recorded.extend(events)
            return len(events)

        self.coverage = Coverage(
            api=api,
            engine=self.engine,
            clock=self.clock,
            settings=CoverageSettings.model_validate({"enabled": True, **cov}),
            observer=self.metrics,
            record_missed=record,
            max_series=max_series,
        )
        self.metrics.attach_coverage(self.coverage)

    async def call(self, work: Callable[[], Awaitable[Any]]) -> Any:
        running = asyncio.ensure_future(self.engine.run())
        task = asyncio.ensure_future(work())
        try:
            await drive_until(self.clock, task.done, max_seconds=86_400)
        finally:
            self.engine.stop()
            await drive_until(self.clock, running.done)
        return task.result()

    def samples(self, name: str) -> dict[str, float]:
        body, _ = self.metrics.render()
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name:
                    out[sample.labels.get("resource_id") or sample.labels.get("kind", "")] = (
                        sample.value
                    )
        return out


async def test_odd_inventories_are_logged_once_counted_and_the_rest_kept() -> None:
    """A resource in two vaults counts in the first; a vault with no resources list, a policy
    on no vault, an unsupported schedule and a backup without created_at are each logged once
    and counted once, however many inventories repeat them."""
    api = FakeApi()
    api.vaults = [
        vault("v1", "r1", "r2"),
        vault("v2", "r2", "r3"),
        {"id": "v3", "name": "empty"},
        {"name": "no id"},
    ]
    api.policies = [
        policy("p1", "v1"),
        policy("p2", "v2", pattern=["FREQ=HOURLY"]),
        policy("p3"),  # on no vault
    ]
    api.backups = {"r1": [{"id": "b1", "resource_id": "r1", "status": "available"}]}
    rig = Rig(api)
    with capture_logs() as logs:
        for _ in range(3):
            assert await rig.call(rig.coverage.inventory_once)
            assert await rig.call(rig.coverage.seed)
    protected = rig.samples("cbr_watcher_resource_protected")
    assert sorted(protected) == ["r1", "r2", "r3"]
    body, _ = rig.metrics.render()
    assert (
        b'resource_id="r2",resource_name="n-r2",resource_type="OS::Nova::Server",vault_id="v1"'
        in body
    )
    skipped = [e for e in logs if e["event"] == "coverage.entry_skipped"]
    kinds = sorted(e["kind"] for e in skipped)
    assert kinds == ["backup", "resource", "schedule", "vault", "vault"]
    assert rig.samples("cbr_watcher_inventory_entries_skipped_total") == {
        "vault": 2,
        "resource": 1,
        "policy": 0,
        "schedule": 1,
        "backup": 1,
    }
    # r1's backup has no date: it has one (not never backed up), but no last success.
    assert rig.samples("cbr_watcher_resource_never_backed_up") == {"r1": 0, "r2": 1, "r3": 1}
    assert rig.samples("cbr_watcher_resource_last_success_timestamp_seconds") == {}
    # p2's schedule is unreadable: it still applies (policy_id), but has no next start.
    assert sorted(rig.samples("cbr_watcher_resource_next_backup_timestamp_seconds")) == [
        "r1",
        "r2",
    ]


async def test_a_failed_inventory_keeps_the_last_series_and_is_logged_once() -> None:
    api = FakeApi()
    api.vaults = [vault("v1", "r1")]
    api.policies = [policy("p1", "v1")]
    rig = Rig(api)
    assert await rig.call(rig.coverage.inventory_once)
    completed = rig.samples("cbr_watcher_inventory_last_success_timestamp_seconds")
    api.vaults = []
    api.fail = TransientError("HTTP 503", http_status=503)
    with capture_logs() as logs:
        assert not await rig.call(rig.coverage.inventory_once)
        assert not await rig.call(rig.coverage.inventory_once)
    assert [e["event"] for e in logs] == ["coverage.inventory_failed"]
    assert sorted(rig.samples("cbr_watcher_resource_protected")) == ["r1"]
    assert rig.samples("cbr_watcher_inventory_last_success_timestamp_seconds") == completed
    api.fail = None
    with capture_logs() as logs:
        assert await rig.call(rig.coverage.inventory_once)
    assert "coverage.inventory_recovered" in [e["event"] for e in logs]
    assert rig.samples("cbr_watcher_resource_protected") == {}  # now it is really gone


async def test_an_unbound_resource_loses_all_its_series_at_the_next_inventory() -> None:
    api = FakeApi()
    api.vaults = [vault("v1", "r1", "r2")]
    api.policies = [policy("p1", "v1")]
    api.backups = {
        r: [{"id": f"b-{r}", "resource_id": r, "created_at": "2025-12-31T10:00:00Z"}]
        for r in ("r1", "r2")
    }
    rig = Rig(api)
    await rig.call(rig.coverage.inventory_once)
    await rig.call(rig.coverage.seed)
    assert sorted(rig.samples("cbr_watcher_resource_last_success_timestamp_seconds")) == [
        "r1",
        "r2",
    ]
    api.vaults = [vault("v1", "r1")]
    await rig.call(rig.coverage.inventory_once)
    for name in (
        "cbr_watcher_resource_protected",
        "cbr_watcher_resource_last_success_timestamp_seconds",
        "cbr_watcher_resource_never_backed_up",
        "cbr_watcher_resource_next_backup_timestamp_seconds",
        "cbr_watcher_resource_missed_backups_total",
    ):
        assert sorted(rig.samples(name)) == ["r1"], name


async def test_a_vault_deleted_between_pages_does_not_drop_the_one_it_shifted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v1 is deleted right after the first page (two vaults a page): the next page starts one
    vault later and skips v3, which is looked up by ID instead of being taken for unbound. The
    next inventory no longer has v1."""
    monkeypatch.setattr(inventory_module, "VAULT_PAGE_LIMIT", 2)
    api = FakeApi()
    api.vaults = [vault(f"v{n}", f"r{n}") for n in range(1, 5)]
    rig = Rig(api)
    assert await rig.call(rig.coverage.inventory_once)
    assert len(rig.samples("cbr_watcher_resource_protected")) == 4

    def delete_v1(offset: int) -> None:
        if offset == 0:
            del api.vaults[0]
            api.on_vault_page = None

    api.on_vault_page = delete_v1
    api.calls.clear()
    assert await rig.call(rig.coverage.inventory_once)
    assert sorted(rig.samples("cbr_watcher_resource_protected")) == ["r1", "r2", "r3", "r4"]
    assert api.calls == ["vaults"] * 4 + ["policies"]  # three pages, one look-up
    assert await rig.call(rig.coverage.inventory_once)
    assert sorted(rig.samples("cbr_watcher_resource_protected")) == ["r2", "r3", "r4"]


async def test_a_missed_start_is_not_announced_when_it_cannot_be_confirmed() -> None:
    """With ListOpLogs refused (403), nothing is announced, nothing is lost: the start is
    announced once the listing works again."""
    api = FakeApi()
    api.vaults = [vault("v1", "r1")]
    api.policies = [policy("p1", "v1")]
    rig = Rig(api)
    coverage = rig.coverage
    assert await rig.call(coverage.inventory_once)
    assert await rig.call(coverage.check)  # the first check: the starting point
    rig.clock.advance(16 * 3600)  # 14:00 + 1h has passed
    api.fail = FatalError("HTTP 403", http_status=403)
    with capture_logs() as logs:
        assert not await rig.call(coverage.check)
    assert [e["event"] for e in logs] == ["coverage.list_failed"]
    assert rig.recorded == []
    assert rig.engine.stats.list_refused["coverage"] == 1
    api.fail = None
    rig.clock.advance(3601)  # past the pause after a refusal
    assert await rig.call(coverage.check)
    assert [(m.resource_id, m.scheduled_at) for m in rig.recorded] == [
        ("r1", 1_767_276_000.0)  # 2026-01-01 14:00 UTC
    ]


async def test_inventory_requests_take_at_most_a_quarter_of_the_budget() -> None:
    """Seeding 40 resources at max_requests_per_second = 20 takes at least 40 / 5 seconds."""
    api = FakeApi()
    api.vaults = [vault("v1", *(f"r{n}" for n in range(40)))]
    rig = Rig(api)
    assert await rig.call(rig.coverage.inventory_once)
    started = rig.clock.monotonic()
    assert await rig.call(rig.coverage.seed)
    assert api.calls.count("backups") == 40
    assert rig.clock.monotonic() - started >= 40 / 5 - 1.2


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_IDS = st.sampled_from(["v1", "v2", "r1", "r2", "p1", "", "x" * 200])
_RESOURCE = st.fixed_dictionaries(
    {"id": _IDS | _JSON}, optional={"name": _JSON, "type": _JSON, "size": _JSON}
)
_VAULT = st.fixed_dictionaries(
    {"id": _IDS | _JSON},
    optional={"name": _JSON, "resources": st.lists(_RESOURCE | _JSON, max_size=4) | _JSON},
)
_PATTERN = st.sampled_from(
    [DAILY, "FREQ=WEEKLY;BYDAY=MO", "FREQ=HOURLY", "garbage", "FREQ=DAILY;INTERVAL=0", ""]
)
_POLICY = st.fixed_dictionaries(
    {"id": _IDS | _JSON},
    optional={
        "enabled": st.booleans() | _JSON,
        "operation_type": st.sampled_from(["backup", "replication"]) | _JSON,
        "trigger": st.fixed_dictionaries(
            {},
            optional={
                "properties": st.fixed_dictionaries(
                    {},
                    optional={
                        "pattern": st.lists(_PATTERN | _JSON, max_size=3) | _JSON,
                        "start_time": st.sampled_from(
                            ["2025-01-01 00:00:00", "2025-01-01 00:00:61", "soon", ""]
                        )
                        | _JSON,
                        "start_window_minutes": st.integers(-10, 10**31) | _JSON,
                    },
                )
            },
        )
        | _JSON,
        "associated_vaults": st.lists(
            st.fixed_dictionaries({"vault_id": _IDS | _JSON}) | _JSON, max_size=3
        )
        | _JSON,
    },
)
_BACKUP = st.fixed_dictionaries(
    {"id": _IDS | _JSON, "resource_id": _IDS | _JSON},
    optional={
        "created_at": st.sampled_from(["2025-12-31T10:00:00Z", "yesterday", ""]) | _JSON,
        "status": st.sampled_from(["available", "error"]) | _JSON,
    },
)


@given(
    vaults=st.lists(_VAULT | _JSON, max_size=5),
    policies=st.lists(_POLICY | _JSON, max_size=4),
    backups=st.dictionaries(st.sampled_from(["r1", "r2"]), st.lists(_BACKUP | _JSON, max_size=2)),
    hours=st.floats(0, 72),
)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_inventory_bodies_never_crash_coverage(
    vaults: list[Any], policies: list[Any], backups: dict[str, list[Any]], hours: float
) -> None:
    """Whatever the bodies hold, inventory, seeds, checks and a scrape finish; every resource
    that could be read is protected."""

    async def scenario() -> None:
        api = FakeApi()
        api.vaults, api.policies, api.backups = vaults, policies, backups
        rig = Rig(api)
        assert await rig.call(rig.coverage.inventory_once)
        assert await rig.call(rig.coverage.seed)
        assert await rig.call(rig.coverage.check)
        rig.clock.advance(hours * 3600)
        assert await rig.call(rig.coverage.check)
        assert rig.engine.stats.internal_errors["coverage"] == 0
        body, _ = rig.metrics.render()
        list(text_string_to_metric_families(body.decode()))
        # A vault listed twice (pages shifted) counts as its later answer.
        latest = {
            clean(v["id"]): v
            for v in vaults
            if isinstance(v, dict) and isinstance(v.get("id"), str)
        }
        expected = {
            clean(r["id"])
            for v in latest.values()
            if v["id"] and isinstance(v.get("resources"), list)
            for r in v["resources"]
            if isinstance(r, dict) and isinstance(r.get("id"), str) and r["id"]
        }
        assert set(rig.coverage.inventory.resources if rig.coverage.inventory else ()) == expected

    asyncio.run(scenario())


async def test_a_resource_without_a_backup_is_asked_again_only_after_a_scheduled_start() -> None:
    """Nothing is asked again in steady state, until a start of the resource's policy (14:00
    UTC, 1h grace) has passed: then its backup may exist. No policy, never again."""
    api = FakeApi()
    api.vaults = [vault("v1", "r1"), vault("v2", "r2")]
    api.policies = [policy("p1", "v1")]
    rig = Rig(api)
    assert await rig.call(rig.coverage.inventory_once)
    assert await rig.call(rig.coverage.seed)
    assert api.calls.count("backups") == 2
    rig.clock.advance(14.5 * 3600)  # 14:30: the start passed, its grace not yet
    assert rig.coverage.to_seed() == []
    rig.clock.advance(3600)  # 15:30
    assert [r.id for r in rig.coverage.to_seed()] == ["r1"]
    api.backups = {"r1": [{"id": "b", "resource_id": "r1", "created_at": "2026-01-01T14:05:00Z"}]}
    assert await rig.call(rig.coverage.seed)
    assert rig.samples("cbr_watcher_resource_never_backed_up") == {"r1": 0, "r2": 1}
    rig.clock.advance(3 * 86_400)
    assert rig.coverage.to_seed() == []


async def test_coverage_series_are_capped_like_task_series() -> None:
    """Past the cap, the resources already exported keep their series (none flaps), the rest
    are counted once and not asked about."""
    api = FakeApi()
    api.vaults = [vault("v1", "r1", "r2")]
    rig = Rig(api, max_series=2)
    assert await rig.call(rig.coverage.inventory_once)
    api.vaults = [vault("v0", "r0"), vault("v1", "r1", "r2")]
    for _ in range(2):
        assert await rig.call(rig.coverage.inventory_once)
        assert await rig.call(rig.coverage.seed)
    assert sorted(rig.samples("cbr_watcher_resource_protected")) == ["r1", "r2"]
    assert rig.samples("cbr_watcher_resource_series_dropped_total") == {"": 1}
    assert api.calls.count("backups") == 2
