"""`cbr-watcher tasks list|add|remove`: a thin client of a running daemon's task API
(see docs/task-api.md).

The address is `--url`, else `server.api_listen` (a wildcard host means this machine); the
bearer token is `server.api_token`. Exit codes: 0 done, 1 the API could not be reached or
answered with an error, 2 usage, 78 configuration.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp

from watcher.cli.commands.table import format_table
from watcher.cli.commands.wait_output import printable
from watcher.config import ConfigError, Settings
from watcher.net.listener import parse_listen

EXIT_OK = 0
EXIT_FAILURE = 1
REQUEST_TIMEOUT = 10.0


def api_base_url(settings: Settings, url: str | None = None) -> str:
    """Where the task API answers: `url`, else from `server.api_listen`; ConfigError if off."""
    if url:
        return url.rstrip("/")
    listen = settings.server.api_listen
    if not listen:
        raise ConfigError(
            "server.api_listen = '': the task API is disabled (set it, or pass --url)"
        )
    host, port = parse_listen(listen)
    try:
        address = ipaddress.ip_address(host) if host else None
    except ValueError:
        address = None
    if not host or (address is not None and address.is_unspecified):
        host = "::1" if address is not None and address.version == 6 else "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class ApiFailure(Exception):
    """The task API could not be reached, or answered with an error."""


class TaskApiClient:
    """Requests to the task API with the configured bearer token."""

    def __init__(self, base_url: str, token: str = "") -> None:
        self.base_url = base_url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None); ApiFailure when the API cannot be reached."""
        url = self.base_url + path
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session,
                session.request(method, url, json=body, allow_redirects=False) as response,
            ):
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            detail = str(error) or type(error).__name__
            raise ApiFailure(f"cannot reach the task API at {self.base_url}: {detail}") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return status, payload


def _error_text(status: int, payload: Any) -> str:
    if status == 401:
        return "the task API rejected the token (401): set server.api_token to the daemon's"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code, message = printable(str(error.get("code"))), printable(str(error.get("message")))
        return f"{status} {code}: {message}"
    return f"the task API answered {status}"


def _labels(task: Mapping[str, Any]) -> str:
    labels = task.get("labels") or {}
    return ",".join(f"{printable(str(k))}={printable(str(v))}" for k, v in labels.items()) or "-"


def _task_cells(task: Mapping[str, Any]) -> tuple[str, ...]:
    progress = task.get("progress")
    status = task.get("end_reason") or task.get("status") or "-"
    return (
        printable(str(task.get("task_id"))),
        printable(str(status)),
        "-" if progress is None else f"{progress}%",
        printable(str(task.get("operation_type") or "-")),
        printable(str(task.get("source") or "-")),
        _labels(task),
    )


def format_tasks(tasks: list[Mapping[str, Any]]) -> list[str]:
    """The `tasks list` table: one header and one line per task."""
    header = ("TASK", "STATUS", "PROGRESS", "OPERATION", "SOURCE", "LABELS")
    return format_table(header, map(_task_cells, tasks))


async def run_tasks_command(
    settings: Settings,
    action: str,
    *,
    task_id: str | None = None,
    labels: Mapping[str, str] | None = None,
    url: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`tasks list`, `tasks add ID [--label K=V]...` or `tasks remove ID`; the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    token = settings.server.api_token.get_secret_value()
    client = TaskApiClient(api_base_url(settings, url), token)
    try:
        if action == "list":
            status, payload = await client.request("GET", "/v1/tasks")
            if status == 200 and isinstance(payload, dict):
                for line in format_tasks(list(payload.get("tasks") or [])):
                    out.write(line.rstrip() + "\n")
                return EXIT_OK
        elif action == "add":
            body = {"labels": dict(labels)} if labels else None
            status, payload = await client.request("PUT", f"/v1/tasks/{task_id}", body)
            if status in (200, 201):
                verb = "now watching" if status == 201 else "already watching"
                out.write(f"{verb} {task_id}\n")
                return EXIT_OK
        elif action == "remove":
            status, payload = await client.request("DELETE", f"/v1/tasks/{task_id}")
            if status == 204:
                out.write(f"stopped watching {task_id}\n")
                return EXIT_OK
        else:
            raise AssertionError(f"unknown tasks action {action!r}")
    except ApiFailure as failure:
        err.write(f"cbr-watcher: {failure}\n")
        return EXIT_FAILURE
    err.write(f"cbr-watcher: tasks {action}: {_error_text(status, payload)}\n")
    return EXIT_FAILURE
