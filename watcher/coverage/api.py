"""The CBR calls coverage makes (ListVaults, ListPolicies, ListBackups, ListOpLogs), and the
client wrapped so each request counts as under way in the scheduler (what lets a test clock wait
for it, as for every other request)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from watcher.cbr.inventory import BackupPage, PolicyPage, VaultPage
from watcher.cbr.models import OpLogPage
from watcher.engine.listing import ListApi
from watcher.engine.scheduler import Scheduler


class CoverageApi(ListApi, Protocol):
    """The CBR calls coverage makes."""

    async def list_vaults(
        self, *, limit: int | None = None, offset: int | None = None, vault_id: str | None = None
    ) -> VaultPage:
        """One page of ListVaults."""
        ...

    async def list_policies(self, *, operation_type: str | None = None) -> PolicyPage:
        """ListPolicies."""
        ...

    async def list_backups(
        self,
        *,
        resource_id: str | None = None,
        status: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> BackupPage:
        """One page of ListBackups."""
        ...


class UnderWay:
    """The API with every request counted as under way, so test clocks wait for it."""

    def __init__(self, api: CoverageApi, scheduler: Scheduler) -> None:
        self._api = api
        self._scheduler = scheduler

    async def list_vaults(
        self, *, limit: int | None = None, offset: int | None = None, vault_id: str | None = None
    ) -> VaultPage:
        with self._scheduler.requests_under_way():
            return await self._api.list_vaults(limit=limit, offset=offset, vault_id=vault_id)

    async def list_policies(self, *, operation_type: str | None = None) -> PolicyPage:
        with self._scheduler.requests_under_way():
            return await self._api.list_policies(operation_type=operation_type)

    async def list_backups(
        self,
        *,
        resource_id: str | None = None,
        status: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> BackupPage:
        with self._scheduler.requests_under_way():
            return await self._api.list_backups(
                resource_id=resource_id, status=status, sort=sort, limit=limit
            )

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
        with self._scheduler.requests_under_way():
            return await self._api.list_op_logs(
                status=status,
                operation_type=operation_type,
                vault_id=vault_id,
                limit=limit,
                offset=offset,
                extra=extra,
            )
