"""Tolerant reading of CBR's OperationLog."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from watcher.cbr.models import (
    MalformedBodyError,
    parse_list_body,
    parse_show_body,
    parse_timestamp,
)

SEED_EXAMPLE: dict[str, Any] = {
    "operation_log": {
        "status": "success",
        "provider_id": "0daac4c5-6707-4851-97ba-169e36266b66",
        "checkpoint_id": "b432511f-d889-428f-8b0e-5f47c524c6b6",
        "updated_at": "2019-05-23T14:35:23.584+00:00",
        "error_info": {"message": "", "code": ""},
        "started_at": "2019-05-23T14:31:36.007+00:00",
        "id": "4827f2da-b008-4507-ab7d-42d0df5ed912",
        "extra_info": {
            "resource": {
                "type": "OS::Nova::Server",
                "id": "1dab32fa-ebf2-415a-ab0b-eabe6353bc86",
                "name": "ECS-0001",
            },
            "backup": {"backup_name": "manualbk_1234", "backup_id": "0e5d0ef6"},
            "common": {"progress": 100, "request_id": "req-cdb98cc4"},
        },
        "ended_at": "2019-05-23T14:35:23.511+00:00",
        "created_at": "2019-05-23T14:31:36.039+00:00",
        "operation_type": "backup",
        "project_id": "04f1829c788037ac2fb8c01eb2b04b95",
    }
}


def test_the_documented_example_parses() -> None:
    """The ShowOpLog example from the API page reads as a finished backup."""
    log = parse_show_body(SEED_EXAMPLE)
    assert log.status == "success"
    assert log.is_terminal
    assert log.progress == 100
    assert log.resource.name == "ECS-0001"
    assert log.error is None
    assert log.ended_at == datetime(2019, 5, 23, 14, 35, 23, 511000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-02-23T01:00:32Z", datetime(2020, 2, 23, 1, 0, 32, tzinfo=UTC)),
        ("2019-05-23T14:35:23.584+00:00", datetime(2019, 5, 23, 14, 35, 23, 584000, tzinfo=UTC)),
        ("2019-05-23T22:35:23+08:00", datetime(2019, 5, 23, 14, 35, 23, tzinfo=UTC)),
        ("2020-02-23T01:00:32", datetime(2020, 2, 23, 1, 0, 32, tzinfo=UTC)),
        ("", None),
    ],
)
def test_both_timestamp_forms(text: str, expected: datetime | None) -> None:
    """`…Z` and `….fff+00:00` (and an offset, and naive-as-UTC) all parse."""
    assert parse_timestamp(text) == expected


def test_missing_optional_parts_are_fine() -> None:
    """A running task without extra_info, progress or ended_at is normal."""
    log = parse_show_body({"operation_log": {"id": "t1", "status": "running"}})
    assert log.progress is None
    assert log.ended_at is None
    assert log.resource.id is None
    assert not log.is_terminal


def test_unknown_keys_are_kept_verbatim() -> None:
    """New fields are neither errors nor lost: the raw object is forwarded as-is."""
    raw = {
        "id": "t1",
        "status": "brand_new_status",
        "extra_info": {"update_expiration_time": {"affected_backups_count": 3}},
        "future_field": [1, 2],
    }
    log = parse_show_body({"operation_log": raw})
    assert log.raw is raw
    assert log.model_extra == {"future_field": [1, 2]}
    assert not log.is_known_status
    assert not log.is_terminal


@pytest.mark.parametrize(
    "body",
    [
        {"operation_log": "oops"},
        {"something_else": {}},
        [],
        {"operation_log": {"status": "running"}},
        {"operation_log": {"id": "t1", "status": "running", "created_at": "yesterday"}},
    ],
)
def test_malformed_bodies_raise_a_clear_error(body: object) -> None:
    """Shapes that are not an OperationLog raise MalformedBodyError naming the problem."""
    with pytest.raises(MalformedBodyError):
        parse_show_body(body)


@pytest.mark.parametrize("value", [150, -3, "42", None, "n/a", True])
def test_progress_is_clamped_or_unknown(value: object) -> None:
    """Progress outside 0-100 is clamped; non-numbers mean unknown."""
    body = {"operation_log": {"id": "t", "status": "running",
                              "extra_info": {"common": {"progress": value}}}}
    progress = parse_show_body(body).progress
    expected = {150: 100, -3: 0, "42": 42}.get(value) if not isinstance(value, bool) else None
    assert progress == expected


def test_list_body() -> None:
    """ListOpLogs: the logs and the count."""
    page = parse_list_body({"operation_logs": [SEED_EXAMPLE["operation_log"]], "count": 7})
    assert page.count == 7
    assert [log.id for log in page.operation_logs] == ["4827f2da-b008-4507-ab7d-42d0df5ed912"]
    with pytest.raises(MalformedBodyError):
        parse_list_body({"count": 1})
