"""Property tests of everything that reads what CBR sends: bodies, numbers, dates, headers.

The promise under test (DESIGN.md, "tolerant reader", "the engine is total"): for any input,
the readers answer a valid value or raise the one error they document, and no lone surrogate
reaches a typed field. Each property runs EXAMPLES (300) examples with no deadline and no
example database; TOTAL_EXAMPLES (3,000) per run, in a few seconds.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.cbr.client import decode_json
from watcher.cbr.errors import TransientError
from watcher.cbr.models import (
    MalformedBodyError,
    OperationLog,
    OpErrorInfo,
    OpExtendInfoCommon,
    OpLogPage,
    Resource,
    parse_list_body,
    parse_show_body,
    parse_timestamp,
)
from watcher.net.client import RETRY_AFTER_CAP, parse_retry_after
from watcher.safetext import has_surrogates
from watcher.sim import PRESETS, Dialect, bodies
from watcher.sim.tasks import SimTaskSpec, realize, task_state

EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTIES = 10
TOTAL_EXAMPLES = EXAMPLES * PROPERTIES
"""Examples per full run; kept in step with the number of @FUZZ properties below."""

# Text as JSON can carry it: any code point, lone surrogates included.
TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=30)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=10,
)
STATUSES = st.sampled_from(["waiting", "running", "success", "failed", "skipped", "timeout"])
STAMPS = st.one_of(
    st.sampled_from(
        [
            "2020-02-23T01:00:32Z",
            "2019-05-23T14:35:23.584+00:00",
            "9999-12-31T23:59:59-05:00",
            "0001-01-01T00:00:00+05:00",
            "",
            "yesterday",
        ]
    ),
    TEXT,
    JSON_VALUES,
)


EXTRA_KEYS = st.dictionaries(TEXT, JSON_VALUES, max_size=3)


def _with_extras(known: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """`known` plus unknown keys of any text (lone surrogates included) and value."""
    return st.builds(lambda extra, fields: {**extra, **fields}, EXTRA_KEYS, known)


def _optional(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return _with_extras(st.fixed_dictionaries({}, optional=fields))


def _field(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes anything at all."""
    return st.one_of(typed, typed, JSON_VALUES)


TEXT_FIELD = _field(TEXT)
COMMON = _optional({"progress": _field(NUMBERS), "request_id": TEXT_FIELD, "task_id": TEXT_FIELD})
RESOURCE = _optional({"id": TEXT_FIELD, "name": TEXT_FIELD, "type": TEXT_FIELD})
EXTRA_INFO = _optional(
    {"common": _field(COMMON), "resource": _field(RESOURCE), "backup": JSON_VALUES}
)
LOG_LIKE = _with_extras(
    st.fixed_dictionaries(
        {"id": _field(TEXT), "status": _field(st.one_of(STATUSES, TEXT))},
        optional={
            **{
                key: TEXT_FIELD
                for key in (
                    "operation_type",
                    "project_id",
                    "vault_id",
                    "vault_name",
                    "provider_id",
                    "checkpoint_id",
                    "policy_id",
                )
            },
            **{key: STAMPS for key in ("created_at", "started_at", "updated_at", "ended_at")},
            "error_info": _field(_optional({"code": TEXT_FIELD, "message": TEXT_FIELD})),
            "extra_info": _field(EXTRA_INFO),
            "raw": JSON_VALUES,
            "unknown": JSON_VALUES,
        },
    )
)


def typed_texts(log: OperationLog) -> list[str]:
    """Every declared text field of the model (not the kept extras, which are CBR's own)."""
    found: list[str] = []
    parts: list[object] = [log, log.error_info, log.extra_info]
    if log.extra_info is not None:
        parts += [log.extra_info.common, log.extra_info.resource]
    for part in parts:
        if isinstance(part, OperationLog | OpErrorInfo | OpExtendInfoCommon | Resource):
            found += [
                value for name in part.FIELDS if isinstance(value := getattr(part, name), str)
            ]
    found += [text for text in (log.resource.id, log.resource.name, log.resource.type) if text]
    return found + list(log.error or ())


def check_log(log: OperationLog) -> None:
    """What every parsed log guarantees to the engine, metrics and store."""
    assert isinstance(log.id, str)
    assert isinstance(log.status, str)
    assert not any(has_surrogates(text) for text in typed_texts(log))
    assert log.progress is None or (isinstance(log.progress, int) and 0 <= log.progress <= 100)
    for stamp in (log.created_at, log.started_at, log.updated_at, log.ended_at):
        assert stamp is None or stamp.utcoffset() == timedelta(0)
    assert isinstance(log.raw, dict)


def check_body(body: object) -> None:
    """Either parser: a valid model, or MalformedBodyError and nothing else; a page accounts
    for every entry sent, read or reported malformed."""
    for parse in (parse_show_body, parse_list_body):
        try:
            parsed: OperationLog | OpLogPage = parse(body)
        except MalformedBodyError:
            continue
        if isinstance(parsed, OpLogPage):
            assert isinstance(body, dict)
            assert parsed.returned == len(body["operation_logs"])
            assert not any(has_surrogates(reason) for reason in parsed.malformed)
        logs = parsed.operation_logs if isinstance(parsed, OpLogPage) else [parsed]
        for log in logs:
            check_log(log)


def check_bytes(raw: bytes) -> None:
    """The client's 200-body path: a malformed TransientError, or a body `check_body` accepts."""
    try:
        body = decode_json(raw)
    except TransientError as error:
        label = error.code_label
    else:
        check_body(body)
        return
    assert label == "malformed"


@FUZZ
@given(JSON_VALUES)
def test_any_json_value_is_a_model_or_malformed(body: object) -> None:
    check_body(body)


@FUZZ
@given(LOG_LIKE)
def test_log_shaped_junk_is_a_model_or_malformed(log: dict[str, Any]) -> None:
    check_body({"operation_log": log})


@FUZZ
@given(LOG_LIKE, TEXT, TEXT)
def test_string_id_and_status_are_all_a_log_needs(
    log: dict[str, Any], id_: str, status: str
) -> None:
    """Tolerant down to fields: whatever else is in it, such a log parses."""
    check_log(parse_show_body({"operation_log": {**log, "id": id_, "status": status}}))


@FUZZ
@given(st.lists(LOG_LIKE, max_size=2), JSON_VALUES)
def test_list_shaped_junk_is_a_page_or_malformed(logs: list[dict[str, Any]], count: object) -> None:
    check_body({"operation_logs": logs, "count": count, "limit": count, "offset": count})


def _real_bodies() -> list[bytes]:
    """Simulator bodies in both task styles and, as the official examples spell them, with
    zoneless timestamps and nulls."""
    rng = random.Random(1)
    found = []
    examples = PRESETS["examples"]
    for n, (outcome, style, kind, dialect) in enumerate(
        [
            ("success", "seed", "backup", Dialect()),
            ("failed", "compact", "backup", Dialect()),
            ("skipped", "seed", "backup", Dialect()),
            ("success", "compact", "restore", examples),
            ("timeout", "seed", "backup", examples),
        ]
    ):
        spec = SimTaskSpec(operation_type=kind, outcome=outcome, style=style)
        task = realize(spec, index=n, created_wall=1.7e9, rng=rng, default_vault=("v", "vault"))
        log = bodies.operation_log(task, task_state(task, 1.7e9 + 100), "p" * 32, dialect)
        found.append(json.dumps({"operation_log": log}).encode())
        found.append(json.dumps({"operation_logs": [log], "count": 1}).encode())
    return found


REAL_BODIES = _real_bodies()
MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "replace"]),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, steps: list[tuple[str, float, bytes]]) -> bytes:
    """Apply byte-level edits at relative positions."""
    out = bytearray(data)
    for kind, where, chunk in steps:
        at = int(where * len(out)) if out else 0
        if kind == "flip" and out:
            out[at] ^= chunk[0] or 1
        elif kind == "insert":
            out[at:at] = chunk
        elif kind == "delete":
            del out[at : at + len(chunk)]
        else:
            out[at : at + len(chunk)] = chunk
    return bytes(out)


@FUZZ
@given(st.sampled_from(REAL_BODIES), st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_real_bodies_are_a_model_or_malformed(
    data: bytes, steps: list[tuple[str, float, bytes]]
) -> None:
    check_bytes(mutate(data, steps))


JSON_TOKENS = st.sampled_from(
    [
        b"Infinity",
        b"-Infinity",
        b"NaN",
        b"1e999",
        b"9" * 500,
        b'"\\ud800"',
        b'"\\udfff"',
        b"[" * 100,
        b"{}",
        b'"\xff"',
        b"\x00",
        b"null",
        b"true",
        b'"\\u00b2"',
    ]
)


@FUZZ
@given(st.sampled_from(REAL_BODIES), st.floats(0, 1, exclude_max=True), JSON_TOKENS)
def test_hostile_tokens_spliced_into_real_bodies(data: bytes, where: float, token: bytes) -> None:
    # Splice after a ':' so the token usually replaces the start of a value.
    colons = [n for n, byte in enumerate(data) if byte == ord(":")]
    at = colons[int(where * len(colons))] + 1
    check_bytes(data[:at] + token + data[at:])


@FUZZ
@given(st.one_of(NUMBERS, TEXT, JSON_VALUES))
def test_any_progress_is_unknown_or_within_0_to_100(value: object) -> None:
    body = {
        "operation_log": {
            "id": "t",
            "status": "running",
            "extra_info": {"common": {"progress": value}},
        }
    }
    progress = parse_show_body(body).progress
    assert progress is None or 0 <= progress <= 100
    if isinstance(value, int) and not isinstance(value, bool):
        assert progress == max(0, min(100, value))
    if isinstance(value, float):
        assert progress == (max(0, min(100, int(value))) if math.isfinite(value) else None)


OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timedelta(minutes=minutes)
)
"""UTC offsets as timestamps carry them: whole minutes (a seconds-precise offset is not one)."""


@FUZZ
@given(st.datetimes(), OFFSETS, st.sampled_from(["seconds", "milliseconds", "microseconds"]))
def test_any_dated_timestamp_is_the_instant_or_unknown(
    moment: datetime, offset: timedelta, spec: str
) -> None:
    aware = moment.replace(tzinfo=timezone(offset))
    text = aware.isoformat(timespec=spec)
    log = parse_show_body({"operation_log": {"id": "t", "status": "running", "created_at": text}})
    shown = {"seconds": 0, "milliseconds": aware.microsecond // 1000 * 1000}
    try:
        expected: datetime | None = aware.replace(
            microsecond=shown.get(spec, aware.microsecond)
        ).astimezone(UTC)
    except OverflowError:
        expected = None
    assert log.created_at == expected
    assert log.raw["created_at"] == text


@FUZZ
@given(st.one_of(TEXT, JSON_VALUES))
def test_parse_timestamp_raises_only_value_error(value: object) -> None:
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        return
    assert parsed is None or parsed.utcoffset() == timedelta(0)


HTTP_DATES = st.builds(
    lambda moment, form: moment.strftime(form),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31)),
    st.sampled_from(
        [
            "%a, %d %b %Y %H:%M:%S GMT",
            "%A, %d-%b-%y %H:%M:%S GMT",
            "%a %b %d %H:%M:%S %Y",
            "%a, %d %b %Y %H:%M:%S -0000",
            "%a, %d %b %Y %H:%M:%S +0530",
        ]
    ),
)
RETRY_AFTER_TEXT = st.one_of(
    TEXT,
    st.from_regex(r"\A\s*[0-9]{1,40}(\.[0-9]{1,5})?\s*\Z"),
    HTTP_DATES,
    st.sampled_from(["\u00b2", "99999999999", "inf", "NaN", "-1", "1e3", "\u0663", ""]),
)
NOW = st.floats(min_value=-1e11, max_value=1e11)


@FUZZ
@given(st.one_of(st.none(), RETRY_AFTER_TEXT), NOW)
def test_retry_after_never_raises_and_stays_within_the_cap(value: str | None, now: float) -> None:
    seconds = parse_retry_after(value, now=now)
    assert seconds is None or 0.0 <= seconds <= RETRY_AFTER_CAP
    if value is not None and value.strip().isascii() and value.strip().isdigit():
        assert seconds == min(float(value.strip()), RETRY_AFTER_CAP)


def test_the_example_count_is_what_the_docstring_says() -> None:
    """Keeps TOTAL_EXAMPLES honest: one count per @FUZZ property in this module."""
    properties = [
        name
        for name, item in globals().items()
        if name.startswith("test_") and hasattr(item, "hypothesis")
    ]
    assert len(properties) == PROPERTIES
    assert TOTAL_EXAMPLES == 3000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),
        ("Sun Nov  6 08:49:37 1994", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
        ("\u00b2", None),
        ("99999999999", RETRY_AFTER_CAP),
        ("9" * 10_000, RETRY_AFTER_CAP),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP),
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
        ("soon", None),
        ("  42 ", 42.0),
        ("2.5", 2.5),
    ],
)
def test_retry_after_examples(value: str, expected: float | None) -> None:
    """The forms the issue names, on a fixed wall clock (2026-01-01)."""
    assert parse_retry_after(value, now=1_767_225_600.0) == expected
