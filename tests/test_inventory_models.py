"""The inventory as the watcher reads it: tolerant models, and the client against the simulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import World
from watcher.cbr.auth import TokenAuthenticator
from watcher.cbr.client import CbrClient
from watcher.cbr.errors import AuthError, FatalError, TransientError
from watcher.cbr.inventory import (
    Malformed,
    parse_backups_body,
    parse_policies_body,
    parse_vaults_body,
)
from watcher.cbr.models import MalformedBodyError
from watcher.sim import FaultProfile, Simulator
from watcher.sim.inventory import BackupSpec, ResourceSpec, VaultSpec
from watcher.sim.policies import PolicySkip, PolicySpec
from watcher.testing import FakeClock

DAY = 86400.0
START = datetime(2026, 1, 1, tzinfo=UTC)
DAILY_14 = "FREQ=DAILY;INTERVAL=1;BYHOUR=14;BYMINUTE=00"

# -- the models -----------------------------------------------------------------------------


def test_unknown_keys_are_kept_and_nulls_read_as_absent() -> None:
    page = parse_vaults_body(
        {
            "vaults": [
                {
                    "id": "v-1",
                    "name": None,
                    "billing": {"object_type": "server", "shiny": True},
                    "resources": [
                        {"id": "r-1", "name": "ecs-1", "size": None, "tier": "gold"},
                        {"id": "r-2", "backup_count": "3", "auto_protect": "false"},
                    ],
                    "created_at": "2020-02-05T10:38:34.209782",
                    "colour": "red",
                }
            ],
            "count": 1,
            "next_marker": "abc",
        }
    )
    (vault,) = page.vaults
    assert (vault.id, vault.name, vault.object_type, page.count) == ("v-1", None, "server", 1)
    assert vault.raw["colour"] == "red"
    assert vault.created_at == datetime(2020, 2, 5, 10, 38, 34, 209782, tzinfo=UTC)
    first, second = vault.resources
    assert (first.name, first.size, first.raw["tier"]) == ("ecs-1", None, "gold")
    assert (second.backup_count, second.auto_protect) == (3, False)
    assert page.malformed == []


def test_one_bad_entry_spoils_only_itself() -> None:
    page = parse_vaults_body(
        {
            "vaults": [
                {"id": "v-1", "resources": [{"id": "r-1"}, "junk", {"name": "no id"}]},
                {"name": "no id"},
                ["not", "an", "object"],
                {"id": 7},
                {"id": "v-2", "resources": None},
            ]
        }
    )
    assert [vault.id for vault in page.vaults] == ["v-1", "v-2"]
    assert [item.id for item in page.vaults[0].resources] == ["r-1"]
    assert page.vaults[1].resources == ()
    assert page.malformed == [
        Malformed("vaults[0].resources[1]", "is str, not an object"),
        Malformed("vaults[0].resources[2]", "id is missing"),
        Malformed("vaults[1]", "id is missing"),
        Malformed("vaults[2]", "is list, not an object"),
        Malformed("vaults[3]", "id is int, not text"),
    ]
    backups = parse_backups_body(
        {"backups": [{"id": "b-1", "resource_id": "r-1"}, {"id": "b-2"}], "count": 2}
    )
    assert [backup.id for backup in backups.backups] == ["b-1"]
    assert backups.malformed == [Malformed("backups[1]", "resource_id is missing")]


def test_a_policy_reads_its_schedule_and_vaults() -> None:
    page = parse_policies_body(
        {
            "policies": [
                {
                    "id": "p-1",
                    "enabled": "true",
                    "operation_type": "backup",
                    "trigger": {
                        "type": "time",
                        "properties": {
                            "pattern": [DAILY_14, 42, "FREQ=WEEKLY;BYDAY=SU;BYHOUR=1"],
                            "start_time": "2020-01-08 09:59:49",
                            "start_window_minutes": 60,
                        },
                    },
                    "associated_vaults": [
                        {"vault_id": "v-1", "destination_vault_id": None},
                        {"destination_vault_id": "v-far"},
                        {"vault_id": "v-2", "destination_vault_id": "v-far"},
                    ],
                },
                {"id": "p-2", "trigger": "daily", "enabled": 1},
            ],
            "count": 2,
        }
    )
    one, two = page.policies
    assert one.enabled is True
    assert one.patterns == (DAILY_14, "FREQ=WEEKLY;BYDAY=SU;BYHOUR=1")
    assert one.start_time == datetime(2020, 1, 8, 9, 59, 49, tzinfo=UTC)
    assert (one.start_window_minutes, one.trigger_type) == (60, "time")
    assert one.vault_ids == ("v-1", "v-2")
    assert one.associated_vaults[1].destination_vault_id == "v-far"
    assert (two.patterns, two.enabled, two.associated_vaults) == ((), None, ())


def test_a_backup_reads_every_timestamp_form() -> None:
    page = parse_backups_body(
        {
            "backups": [
                {
                    "id": "b-1",
                    "resource_id": "r-1",
                    "status": "available",
                    "created_at": "2020-02-05T10:38:34.209782",
                    "updated_at": "2020-02-05T10:40:00Z",
                    "protected_at": "2020-02-05T10:39:00.5+00:00",
                    "expired_at": "never",
                    "scheduled_operation_id": "p-1",
                }
            ]
        }
    )
    (backup,) = page.backups
    assert backup.created_at == datetime(2020, 2, 5, 10, 38, 34, 209782, tzinfo=UTC)
    assert backup.updated_at == datetime(2020, 2, 5, 10, 40, tzinfo=UTC)
    assert backup.protected_at == datetime(2020, 2, 5, 10, 39, 0, 500000, tzinfo=UTC)
    assert (backup.expired_at, backup.policy_id, backup.status) == (None, "p-1", "available")


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (parse_vaults_body, {"count": 0}),
        (parse_vaults_body, {"vaults": {"id": "v"}}),
        (parse_policies_body, []),
        (parse_backups_body, {"backups": None}),
    ],
)
def test_a_body_of_another_shape_is_malformed(parse: Any, body: object) -> None:
    with pytest.raises(MalformedBodyError):
        parse(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _entry(keys: list[str]) -> st.SearchStrategy[object]:
    """Objects made mostly of the keys the model reads, with any JSON as values."""
    return _JSON | st.dictionaries(st.sampled_from(keys), _JSON, max_size=len(keys))


@given(
    st.lists(
        _entry(["id", "name", "billing", "resources", "created_at", "enterprise_project_id"]),
        max_size=5,
    ),
    st.lists(
        _entry(["id", "enabled", "trigger", "associated_vaults", "operation_type"]), max_size=5
    ),
    st.lists(_entry(["id", "resource_id", "status", "created_at", "expired_at"]), max_size=5),
    _JSON,
)
@settings(max_examples=100)
def test_any_entries_are_read_or_reported(
    vaults: list[object], policies: list[object], backups: list[object], count: object
) -> None:
    """Whatever CBR puts in the lists: every entry is either read or reported, nothing raises."""
    vault_page = parse_vaults_body({"vaults": vaults, "count": count})
    policy_page = parse_policies_body({"policies": policies, "count": count})
    backup_page = parse_backups_body({"backups": backups, "count": count})
    top_level = [item for item in vault_page.malformed if "." not in item.where]
    assert len(vault_page.vaults) + len(top_level) == len(vaults)
    assert len(policy_page.policies) + len(policy_page.malformed) == len(policies)
    assert len(backup_page.backups) + len(backup_page.malformed) == len(backups)
    assert vault_page.count is None or isinstance(vault_page.count, int)
    for vault in vault_page.vaults:
        assert isinstance(vault.id, str)
        json.dumps(dict(vault.raw))  # the raw object is kept as plain JSON


# -- the client against the simulator -------------------------------------------------------


@pytest.fixture
def inventory(world: World) -> Simulator:
    """Two vaults, a daily 14:00 UTC policy that skips one resource once, a backup from
    before the start; three days on."""
    sim = world.sim
    sim.inventory.add_vaults(
        [
            VaultSpec(id="vault-web", name="web", resources=(ResourceSpec(), ResourceSpec())),
            VaultSpec(
                name="disks",
                resource_type="OS::Cinder::Volume",
                resources=(ResourceSpec(id="disk-1", name="data-1"),),
            ),
        ]
    )
    sim.add_policy(
        PolicySpec(
            id="p-daily",
            pattern=(DAILY_14,),
            vaults=("web", "disks"),
            skip=(PolicySkip("data-1", run=1),),
        )
    )
    sim.add_policy(
        PolicySpec(id="p-copy", pattern=(DAILY_14,), vaults=("web",), operation_type="replication")
    )
    sim.inventory.add_backups([BackupSpec("data-1", age=DAY)])
    world.clock.advance(3 * DAY)
    return sim


async def test_list_vaults_reads_vaults_and_their_resources(
    world: World, inventory: Simulator
) -> None:
    page = await world.client.list_vaults()
    assert (page.count, page.limit, page.offset, page.malformed) == (2, 1000, 0, [])
    web, disks = page.vaults
    assert (web.id, web.name, web.object_type, web.protect_type) == (
        "vault-web",
        "web",
        "server",
        "backup",
    )
    assert web.created_at == START
    assert [(item.name, item.type, item.backup_count) for item in web.resources] == [
        ("ecs-v1-0001", "OS::Nova::Server", 3),
        ("ecs-v1-0002", "OS::Nova::Server", 3),
    ]
    (disk,) = disks.resources
    assert (disk.id, disk.backup_count) == ("disk-1", 3)  # one from before, two runs
    second = await world.client.list_vaults(limit=1, offset=1)
    assert [vault.name for vault in second.vaults] == ["disks"]
    by_policy = await world.client.list_vaults(policy_id="p-copy")
    assert [vault.name for vault in by_policy.vaults] == ["web"]
    by_resource = await world.client.list_vaults(resource_ids=["nope", "disk-1"])
    assert [vault.name for vault in by_resource.vaults] == ["disks"]
    by_type = await world.client.list_vaults(object_type="disk", vault_id=disks.id)
    assert [vault.name for vault in by_type.vaults] == ["disks"]


async def test_list_policies_reads_schedules(world: World, inventory: Simulator) -> None:
    page = await world.client.list_policies()
    assert [policy.id for policy in page.policies] == ["p-daily", "p-copy"]
    daily = page.policies[0]
    assert (daily.enabled, daily.operation_type, daily.patterns) == (True, "backup", (DAILY_14,))
    assert daily.start_time == START
    disks = inventory.inventory.vault("disks").id
    assert daily.vault_ids == ("vault-web", disks)
    copies = await world.client.list_policies(operation_type="replication", vault_id="vault-web")
    assert [policy.id for policy in copies.policies] == ["p-copy"]
    assert copies.policies[0].associated_vaults[0].destination_vault_id


async def test_list_backups_shows_the_skipped_day(world: World, inventory: Simulator) -> None:
    page = await world.client.list_backups(
        resource_id="disk-1", status="available", sort="created_at:desc"
    )
    assert page.count == 3
    days = [backup.created_at.date().isoformat() for backup in page.backups if backup.created_at]
    assert days == ["2026-01-03", "2026-01-01", "2025-12-31"]  # nothing on the 2nd: skipped
    newest = page.backups[0]
    assert (newest.resource_id, newest.vault_id, newest.policy_id) == (
        "disk-1",
        inventory.inventory.vault("disks").id,
        "p-daily",
    )
    both = await world.client.list_backups(status=["available", "error"], limit=2, offset=1)
    assert (both.count, len(both.backups), both.limit, both.offset) == (9, 2, 2, 1)
    web = await world.client.list_backups(vault_id="vault-web", extra={"sort": "created_at:asc"})
    created = [backup.created_at for backup in web.backups if backup.created_at is not None]
    assert len(created) == web.count == 6
    assert created == sorted(created)


async def test_inventory_errors_map_like_list_op_logs(world: World, inventory: Simulator) -> None:
    with pytest.raises(FatalError) as refused:
        await world.client.list_backups(sort="size")
    assert (refused.value.http_status, refused.value.error_code) == (400, "BackupService.9900")
    with pytest.raises(FatalError):
        await world.client.list_vaults(limit=0)
    world.token_file.write_text("not-the-token\n")
    with pytest.raises(AuthError):
        await world.client.list_policies()


async def test_inventory_requests_are_counted_by_operation(world: World) -> None:
    seen: list[tuple[str, str]] = []
    client = CbrClient(
        endpoint=world.base_url,
        project_id=world.sim.project_id,
        auth=TokenAuthenticator(token_file=world.token_file),
        clock=world.clock,
        observe=lambda operation, code, _: seen.append((operation, code)),
    )
    async with client:
        await client.list_vaults()
        await client.list_policies()
        await client.list_backups()
    assert seen == [("list_vaults", "200"), ("list_policies", "200"), ("list_backups", "200")]


async def test_a_failing_inventory_request_is_transient() -> None:
    clock = FakeClock()
    sim = Simulator(clock, tokens=["t"], faults=FaultProfile(error_rate=1.0))
    async with sim.running() as base_url:
        client = CbrClient(
            endpoint=base_url,
            project_id=sim.project_id,
            auth=TokenAuthenticator(token="t"),
            clock=clock,
        )
        async with client:
            with pytest.raises(TransientError):
                await client.list_backups()
