"""Raw JSON bodies as CBR and its API gateway send them, built as plain dicts.

The simulator deliberately does not use `watcher.cbr.models`: the client's models and these
bodies are written independently, so testing one against the other is a real cross-check.

Documented (the ShowOpLog reference and the gateway's error table): the OperationLog field
set, the 404 `BackupService.6500` body, 401 `APIGW.0301` and 429 `APIGW.0308` with a
`request_id`, and the generic invalid-parameter code `BackupService.9900`. How timestamps are
spelled and which absent fields are sent as `null` follow the simulator's `Dialect`.
Inference (not documented for CBR): the 5xx bodies, the 403 body for a project the caller may
not use, and the 404 for a path the gateway does not know. They follow the API gateway error
table (`APIGW.0101` 404, `APIGW.0202` 502, `APIGW.0203` 504, `APIGW.0302` 403); 500 and 503 use
CBR-service-shaped bodies with codes we made up.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from watcher.sim.dialects import DEFAULT_DIALECT, Dialect
from watcher.sim.tasks import SimTask, TaskState, error_info

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
NOT_FOUND = {"error_code": "BackupService.6500", "error_msg": "Operation log does not exist."}
UNAUTHORIZED_PREFIX = "Incorrect IAM authentication information: "
THROTTLED_MSG = (
    "The throttling threshold has been reached: policy user over ratelimit,limit:20,time:1 second"
)


# The timestamp spelling of each task style, when the dialect leaves it to the task.
STYLE_SPELLING = {"seed": "+00:00", "compact": "Z"}


# Cached: a listing of 1,000 tasks formats 3,000 timestamps, most of them (creation and start
# times) the same on every page request.
@functools.lru_cache(maxsize=1 << 16)
def timestamp(epoch: float, spelling: str) -> str:
    """The three spellings seen in the documentation: "+00:00" →
    `2019-05-23T14:35:23.584+00:00`, "zoneless" → `2019-05-23T14:31:36.039365`, else
    `2020-02-23T01:00:32Z`. A task style ("seed", "compact") stands for its spelling."""
    moment = datetime.fromtimestamp(epoch, UTC)
    spelling = STYLE_SPELLING.get(spelling, spelling)
    if spelling == "+00:00":
        return moment.isoformat(timespec="milliseconds")
    if spelling == "zoneless":
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def operation_log(
    task: SimTask, state: TaskState, project_id: str, dialect: Dialect = DEFAULT_DIALECT
) -> dict[str, Any]:
    """One OperationLog object with the field set of the ShowOpLog example, in `dialect`."""
    spec = task.spec
    spelling = task.style if dialect.timestamps == "task" else dialect.timestamps
    no_vault = spec.operation_type in dialect.null_vault_for

    def ts(epoch: float) -> str:
        return timestamp(epoch, spelling)

    common: dict[str, Any] = {"request_id": task.request_id, "task_id": task.backend_task_id}
    if state.progress is not None:
        common["progress"] = state.progress
    resource = {"type": spec.resource_type, "id": task.resource_id, "name": task.resource_name}
    extra_info: dict[str, Any] = {"resource": resource, "common": common}
    extra_info.update(_operation_details(task))
    body: dict[str, Any] = {
        "id": task.id,
        "status": state.status,
        "operation_type": spec.operation_type,
        "project_id": project_id,
        "provider_id": task.provider_id,
        "checkpoint_id": task.checkpoint_id,
        "vault_id": None if no_vault else task.vault_id,
        "vault_name": None if no_vault else task.vault_name,
        "created_at": ts(task.created_wall),
        "started_at": ts(state.started),
        "updated_at": ts(state.updated),
        "error_info": error_info(task, state.status),
        "extra_info": extra_info,
    }
    if state.ended is not None:
        body["ended_at"] = ts(state.ended)
    if spec.policy_id:
        body["policy_id"] = spec.policy_id
    elif dialect.null_policy:
        body["policy_id"] = None
    if task.style == "compact" or spec.enterprise_project_id != "0":
        # Not in the seed field set: the real cloud adds keys like this one over time.
        body["enterprise_project_id"] = spec.enterprise_project_id
    body.update(spec.extra)
    return body


def _operation_details(task: SimTask) -> dict[str, Any]:
    """The `extra_info` section named after the operation type (as the SDK models it)."""
    kind = task.spec.operation_type
    backup_name = f"manualbk_{task.backup_id[:4]}"
    if kind == "backup":
        return {
            "backup": {
                "backup_id": task.backup_id,
                "backup_name": backup_name,
                "app_consistency_status": "0",
                "app_consistency_error_code": "",
                "app_consistency_error_message": "",
                "incremental": "true" if task.index % 3 else "false",
            }
        }
    if kind == "restore":
        return {
            "restore": {
                "backup_id": task.backup_id,
                "backup_name": backup_name,
                "target_resource_id": task.resource_id,
                "target_resource_name": task.resource_name,
            }
        }
    if kind == "delete":
        return {"delete": {"backup_id": task.backup_id, "backup_name": backup_name}}
    if kind in ("replication", "copy"):
        return {
            "replication": {
                "source_region": "ap-southeast-1",
                "destination_region": "ap-southeast-3",
                "source_backup_id": task.backup_id,
                "source_checkpoint_id": task.checkpoint_id,
                "source_backup_name": backup_name,
            }
        }
    if kind == "sync":
        return {"sync": {"sync_backup_num": 3, "delete_backup_num": 0, "err_sync_backup_num": 0}}
    if kind == "vault_delete":
        return {"vault_delete": {"fail_count": 0, "total_count": 4}}
    if kind == "remove_resource":
        resource = {"id": task.resource_id, "name": task.resource_name, "type": "OS::Nova::Server"}
        return {"remove_resources": {"fail_count": 0, "total_count": 1, "resources": [resource]}}
    return {}


def gateway_error(code: str, message: str, request_id: str) -> dict[str, str]:
    """An API gateway error: `error_code`, `error_msg` and the gateway's `request_id`."""
    return {"error_code": code, "error_msg": message, "request_id": request_id}


def unauthorized(reason: str, request_id: str) -> dict[str, str]:
    """401 `APIGW.0301` with the gateway's reason (e.g. "x-auth-token not found")."""
    return gateway_error("APIGW.0301", UNAUTHORIZED_PREFIX + reason, request_id)


def throttled(request_id: str) -> dict[str, str]:
    """429 `APIGW.0308`, message as quoted from a real throttled call."""
    return gateway_error("APIGW.0308", THROTTLED_MSG, request_id)


def forbidden(request_id: str) -> dict[str, str]:
    """403 for a project the token does not cover, or an API its user may not call
    (inference: the gateway's `APIGW.0302`)."""
    return gateway_error(
        "APIGW.0302", "The IAM user is not authorized to access the API.", request_id
    )


def unknown_api(request_id: str) -> dict[str, str]:
    """404 for a path no API matches (inference: the gateway's `APIGW.0101`)."""
    return gateway_error(
        "APIGW.0101",
        "The API does not exist or has not been published in the environment.",
        request_id,
    )


def bad_parameter(message: str) -> dict[str, str]:
    """400 from CBR itself: the generic invalid-parameter code `BackupService.9900`."""
    return {"error_code": "BackupService.9900", "error_msg": message}


def server_error(status: int, request_id: str) -> dict[str, str]:
    """A plausible 5xx body (inference: CBR does not document its 5xx bodies)."""
    if status == 502:
        return gateway_error("APIGW.0202", "Backend unavailable.", request_id)
    if status == 504:
        return gateway_error("APIGW.0203", "Backend timeout.", request_id)
    if status == 503:
        return {
            "error_code": "BackupService.9998",
            "error_msg": "The service is temporarily unavailable. Try again later.",
        }
    return {"error_code": "BackupService.9999", "error_msg": "Internal server error."}
