"""The simulator's inventory bodies, read by the official SDK (huaweicloudsdkcbr, test-only).

Two readings of the same real HTTP bodies:

* a strict walk over the SDK models' `openapi_types` and `attribute_map`: every key the
  simulator sends must be one the model declares, with the JSON type the model declares
  (the SDK itself would silently turn `1` into `"1"` or `"false"` into True);
* the SDK's own deserializer (the one its client runs on every response), with its
  conversion warnings as errors, and the SDK as a real client (AK/SK-signed requests built from
  its request models), so the query parameter names it sends are the ones the simulator filters on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from watcher.sim import SimTaskSpec, Simulator
from watcher.sim.auth import AccessKey
from watcher.sim.inventory import BackupSpec, ResourceSpec, VaultSpec
from watcher.sim.policies import PolicySkip, PolicySpec
from watcher.testing import FakeClock

AK = "AKSDKMODELSCHECK0001"
SK = "sdk-models-secret-key"
HOUR = 3600.0
DAY = 24 * HOUR
DAILY_AT_2 = "FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00"
MODELS = {
    "Vault",
    "Billing",
    "ResourceResp",
    "ResourceExtraInfo",
    "VaultBindRules",
    "Policy",
    "PolicyoODCreate",
    "PolicyTriggerResp",
    "PolicyTriggerPropertiesResp",
    "PolicyAssociateVault",
    "BackupResp",
    "BackupExtendInfo",
}
LISTS = {
    "vaults": "ListVaultResponse",
    "policies": "ListPoliciesResponse",
    "backups": "ListBackupsResponse",
}


@pytest.fixture
def sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The SDK's model package and a client object whose deserializer we call; HOME aside."""
    monkeypatch.setenv("HOME", str(tmp_path))
    from huaweicloudsdkcbr.v1 import CbrClient

    return CbrClient()


def build_sim(clock: FakeClock) -> Simulator:
    """Every kind of inventory object, in every state the simulator produces, three days on."""
    sim = Simulator(clock, seed=21, access_keys=[AccessKey(AK, SK)])
    sim.inventory.add_vaults(
        [
            VaultSpec(
                id="vault-servers", name="servers", resources=(ResourceSpec(), ResourceSpec())
            ),
            VaultSpec(
                name="disks",
                resource_type="OS::Cinder::Volume",
                resources=(ResourceSpec(name="data-1", size=200),),
                enterprise_project_id="ep-7",
            ),
            VaultSpec(name="files", resource_type="OS::Sfs::Turbo", resources=(ResourceSpec(),)),
            VaultSpec(name="empty"),
        ]
    )
    sim.add_policies(
        [
            PolicySpec(
                id="p-backup",
                name="daily",
                pattern=(DAILY_AT_2, "FREQ=WEEKLY;BYDAY=SA;BYHOUR=12;BYMINUTE=30"),
                vaults=("servers", "disks", "files"),
                spread=600,
                duration=1800,
                fail_share=0.3,
                skip=(PolicySkip("ecs-v1-0002", run=1),),
            ),
            PolicySpec(
                id="p-replicate",
                pattern=(DAILY_AT_2,),
                vaults=("servers",),
                operation_type="replication",
            ),
            PolicySpec(id="p-off", pattern=(DAILY_AT_2,), vaults=("empty",), enabled=False),
        ]
    )
    sim.inventory.add_backups([BackupSpec("data-1", age=DAY), BackupSpec("data-1", status="error")])
    clock.advance(3 * DAY)
    sim.add_task(SimTaskSpec(operation_type="backup", waiting=0, running=HOUR, vault_id="x"))
    clock.advance(60)
    return sim


@pytest.fixture
def sim() -> Simulator:
    return build_sim(FakeClock())


@pytest.fixture
async def bodies(sim: Simulator) -> AsyncIterator[dict[str, Any]]:
    """The three list bodies, exactly as served, with a token."""
    async with sim.running() as base_url, aiohttp.ClientSession() as session:
        found = {}
        for collection in LISTS:
            url = f"{base_url}/v3/{sim.project_id}/{collection}"
            async with session.get(url, headers={"X-Auth-Token": "sim-token"}) as response:
                assert response.status == 200
                found[collection] = json.loads(await response.read())
        yield found


class StrictReader:
    """Walks a JSON value against an SDK type; remembers every model it met with content."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk
        self.models_met: set[str] = set()

    def check(self, value: object, kind: str, where: str) -> Iterator[str]:
        """Every disagreement between `value` and the SDK type `kind`, as text."""
        if value is None:
            return
        if match := re.fullmatch(r"list\[(.+)\]", kind):
            if not isinstance(value, list):
                yield f"{where}: {type(value).__name__}, the SDK says {kind}"
                return
            for index, item in enumerate(value):
                yield from self.check(item, match[1], f"{where}[{index}]")
            return
        primitive = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}
        if kind in primitive:
            wrong_bool = isinstance(value, bool) and kind != "bool"
            if wrong_bool or not isinstance(value, primitive[kind]):
                yield f"{where}: {type(value).__name__} {value!r}, the SDK says {kind}"
            return
        if kind in ("datetime", "date"):
            yield from self._check_time(value, kind, where)
            return
        if kind == "object":
            return
        model = getattr(self.sdk.model_package, kind)
        if not isinstance(value, dict):
            yield f"{where}: {type(value).__name__}, the SDK says {kind}"
            return
        by_key = {key: attr for attr, key in model.attribute_map.items()}
        if value:
            self.models_met.add(kind)
        for key, item in value.items():
            if key not in by_key:
                yield f"{where}.{key}: not a key of the SDK's {kind}"
                continue
            yield from self.check(item, model.openapi_types[by_key[key]], f"{where}.{key}")

    def _check_time(self, value: object, kind: str, where: str) -> Iterator[str]:
        if not isinstance(value, str):
            yield f"{where}: {type(value).__name__}, the SDK says {kind} (a string)"
            return
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                parsed = self.sdk._deserialize(value, kind)
            except Warning as warning:
                yield f"{where}: {value!r} is no {kind} to the SDK ({warning})"
                return
        expected = datetime if kind == "datetime" else date
        if not isinstance(parsed, expected):
            yield f"{where}: {value!r} read as {parsed!r}"


def test_every_key_and_type_is_the_sdk_models(sdk: Any, bodies: dict[str, Any]) -> None:
    """Every key of every body is declared by the SDK's model for it, with that JSON type."""
    reader = StrictReader(sdk)
    problems = [
        problem
        for collection, response in LISTS.items()
        for problem in reader.check(bodies[collection], response, collection)
    ]
    assert problems == []
    assert reader.models_met >= MODELS
    assert len(bodies["vaults"]["vaults"]) == 4
    assert {backup["status"] for backup in bodies["backups"]["backups"]} == {
        "available",
        "protecting",
        "error",
    }


def test_the_strict_reader_catches_what_the_sdk_lets_through(sdk: Any) -> None:
    """The walk is not vacuous: a bad key, a number as text, a string as a flag are caught."""
    reader = StrictReader(sdk)
    body = {
        "vaults": [{"id": "v", "colour": "red", "threshold": "80", "locked": "false"}],
        "count": 1,
    }
    problems = list(reader.check(body, "ListVaultResponse", "vaults"))
    assert len(problems) == 3, problems
    assert not list(
        reader.check(
            {"backups": [{"created_at": "2020-02-05T10:38:34.209782"}]}, "ListBackupsResponse", "b"
        )
    )
    assert list(
        reader.check(
            {"backups": [{"created_at": "2020-02-05T10:38:34+00:00"}]}, "ListBackupsResponse", "b"
        )
    )


def test_the_sdk_deserializes_every_body_without_a_warning(
    sdk: Any, sim: Simulator, bodies: dict[str, Any]
) -> None:
    """The SDK's own response reader builds its objects from the bodies, converting nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vaults = sdk._deserialize(bodies["vaults"], "ListVaultResponse")
        policies = sdk._deserialize(bodies["policies"], "ListPoliciesResponse")
        backups = sdk._deserialize(bodies["backups"], "ListBackupsResponse")
    servers = vaults.vaults[0]
    assert (servers.id, servers.billing.object_type, vaults.count) == ("vault-servers", "server", 4)
    assert [item.type for item in servers.resources] == ["OS::Nova::Server"] * 2
    assert vaults.vaults[1].resources[0].size == 200
    daily = policies.policies[0]
    assert daily.trigger.properties.pattern[0] == DAILY_AT_2
    assert daily.associated_vaults[0].vault_id == "vault-servers"
    assert policies.policies[1].associated_vaults[0].destination_vault_id
    assert policies.policies[2].enabled is False
    newest = backups.backups[0]
    assert isinstance(newest.created_at, datetime)
    assert newest.created_at.replace(tzinfo=UTC).timestamp() == pytest.approx(
        sim.clock.wall() - 60, abs=1
    )


async def test_the_sdk_as_a_client_lists_the_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's request models, signed with AK/SK and sent by the SDK: it gets the filtered
    lists back and reads them."""
    monkeypatch.setenv("HOME", str(tmp_path))
    # Three days back, so `build_sim` ends at the real time: the SDK signs with the machine's
    # clock and the simulator checks X-Sdk-Date against its own.
    sim = build_sim(FakeClock(start_wall=time.time() - 3 * DAY - 60))
    from huaweicloudsdkcbr.v1 import (
        CbrClient,
        ListBackupsRequest,
        ListPoliciesRequest,
        ListVaultRequest,
    )
    from huaweicloudsdkcore.auth.credentials import BasicCredentials

    data_1 = sim.inventory.resource("data-1").id
    async with sim.running() as base_url:
        client = (
            CbrClient.new_builder()
            .with_credentials(BasicCredentials(AK, SK, sim.project_id))
            .with_endpoint(base_url)
            .build()
        )

        def call() -> tuple[Any, Any, Any]:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                return (
                    client.list_vault(ListVaultRequest(object_type="disk", limit=10)),
                    client.list_policies(ListPoliciesRequest(operation_type="replication")),
                    client.list_backups(
                        ListBackupsRequest(
                            resource_id=data_1, status="available", sort="created_at:desc"
                        )
                    ),
                )

        vaults, policies, backups = await asyncio.to_thread(call)
    assert [vault.name for vault in vaults.vaults] == ["disks"]
    assert [policy.id for policy in policies.policies] == ["p-replicate"]
    assert backups.count == len(backups.backups) >= 1  # the scenario's, and the runs' own
    assert {backup.status for backup in backups.backups} == {"available"}
    assert {backup.resource_id for backup in backups.backups} == {data_1}
    created = [backup.created_at for backup in backups.backups]
    assert created == sorted(created, reverse=True)
