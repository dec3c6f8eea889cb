"""AK/SK signing: the reference's five vectors, the official SDK signer on generated requests,
and the simulator's independent verifier on the same requests."""

from __future__ import annotations

import random
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDict
from yarl import URL

from watcher.cbr import signer
from watcher.sim.signature import SignedCall, verify

AK, SK = "AccessKey", "SecretKey"
PROJECT = "04f1829c788037ac2fb8c01eb2b04b95"
CBR = f"https://cbr.ap-southeast-1.myhuaweicloud.com/v3/{PROJECT}/operation-logs"
TASK = "4827f2da-b008-4507-ab7d-42d0df5ed912"
SERVICE = "https://service.endpoint.myhuaweicloud.com/resources?size=1"


def cbr_headers(**extra: str) -> dict[str, str]:
    """The headers of vectors #3–#5."""
    return {
        "Content-Type": "application/json",
        "X-Project-Id": PROJECT,
        "X-Sdk-Date": "20240101T000000Z",
        **extra,
    }


VECTORS = [
    pytest.param(
        "GET",
        SERVICE,
        {"X-Sdk-Date": "20200608T023900Z", "TEST_UNDERSCORE": "TEST_VALUE"},
        b"",
        "host;x-sdk-date",
        "cfb4171acec81de07d50e53d57eb77edd537414d66ddb1d7d780f128e12cd842",
        id="1-sdk-get",
    ),
    pytest.param(
        "POST",
        SERVICE,
        {"X-Sdk-Date": "20200608T023900Z", "TEST_UNDERSCORE": "TEST_VALUE"},
        b'{"name":"test","id":1}',
        "host;x-sdk-date",
        "436b1ac0a1ae03705934bb70ef2f2e09f7bfed2117d731a38235053199323a1f",
        id="2-sdk-post",
    ),
    pytest.param(
        "GET",
        f"{CBR}/{TASK}",
        cbr_headers(),
        b"",
        "content-type;host;x-project-id;x-sdk-date",
        "7fc670264ef977d2f405975193ebf8c65a62788268c9ce6da02645f69bf9ce62",
        id="3-show-op-log",
    ),
    pytest.param(
        "GET",
        f"{CBR}?limit=100&offset=0&start_time=2024-01-01T00%3A00%3A00Z&status=running",
        cbr_headers(),
        b"",
        "content-type;host;x-project-id;x-sdk-date",
        "538abdd9ab3f6d1878f6cccb4c938a31c29dc3b576b8e430c2ecb0d0a87257ce",
        id="4-list-op-logs",
    ),
    pytest.param(
        "GET",
        f"{CBR}/{TASK}",
        cbr_headers(**{"X-Security-Token": "TOKEN123"}),
        b"",
        "content-type;host;x-project-id;x-sdk-date;x-security-token",
        "49b20a7375d8f1afa0738eb68062587e4faf02f39e98278b7fa9f90ae4f89c5d",
        id="5-security-token",
    ),
]


@pytest.mark.parametrize(("method", "url", "headers", "body", "signed", "signature"), VECTORS)
def test_reference_vectors(
    method: str, url: str, headers: dict[str, str], body: bytes, signed: str, signature: str
) -> None:
    """Each vector gives exactly the documented Authorization header."""
    signer.sign(
        method, URL(url, encoded=True), headers, body, access_key=AK, secret_key=SK, now=0.0
    )
    assert headers["Authorization"] == (
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders={signed}, Signature={signature}"
    )


def test_vector_3_canonical_request_and_string_to_sign() -> None:
    """The intermediate steps of vector #3, for debugging a mismatch."""
    headers = cbr_headers()
    headers["Host"] = "cbr.ap-southeast-1.myhuaweicloud.com"
    names = signer.signed_header_names(headers)
    canonical = signer.canonical_request("GET", URL(f"{CBR}/{TASK}"), headers, b"", names)
    assert canonical.split("\n") == [
        "GET",
        f"/v3/{PROJECT}/operation-logs/{TASK}/",
        "",
        "content-type:application/json",
        "host:cbr.ap-southeast-1.myhuaweicloud.com",
        f"x-project-id:{PROJECT}",
        "x-sdk-date:20240101T000000Z",
        "",
        "content-type;host;x-project-id;x-sdk-date",
        signer.EMPTY_BODY_SHA256,
    ]
    text = signer.string_to_sign(canonical, "20240101T000000Z")
    assert text.split("\n")[2] == "592ceac9a4210dc9064032056c7b636535c20aa6e64efef9a47513fad82d135e"


def test_date_and_host_are_added_from_the_clock_and_url() -> None:
    """Without X-Sdk-Date the injected time is used; the Host carries a non-default port."""
    headers: dict[str, str] = {}
    signer.sign(
        "GET",
        URL("http://127.0.0.1:8080/x"),
        headers,
        b"",
        access_key=AK,
        secret_key=SK,
        now=1_704_067_200.0,
    )
    assert headers["X-Sdk-Date"] == "20240101T000000Z"
    assert headers["Host"] == "127.0.0.1:8080"


def test_query_is_encoded_like_the_sdk() -> None:
    """':' and '/' are encoded, a space is %20 (never '+'), pairs are sorted before encoding."""
    pairs = [("start_time", "2024-01-01T00:00:00Z"), ("a b", "x+y/é"), ("a", "2"), ("a", "10")]
    assert signer.encode_query(pairs) == (
        "a=10&a=2&a%20b=x%2By%2F%C3%A9&start_time=2024-01-01T00%3A00%3A00Z"
    )
    assert signer.query_pairs("a%20b=x%2By&k=&flag") == [("a b", "x+y"), ("k", ""), ("flag", "")]


# --- generated requests: our signer vs the official SDK vs the simulator's verifier ---------


@dataclass
class Generated:
    """One random request, in the shapes each signer wants."""

    method: str
    host: str
    raw_path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    @property
    def url(self) -> URL:
        query = signer.encode_query(self.query)
        return URL(
            f"https://{self.host}{self.raw_path}" + (f"?{query}" if query else ""), encoded=True
        )


_TEXT = [
    "a",
    "Z",
    "0",
    "-",
    "_",
    ".",
    "~",
    " ",
    ":",
    "/",
    "?",
    "#",
    "[",
    "]",
    "@",
    "!",
    "$",
    "&",
    "'",
    "(",
    ")",
    "*",
    "+",
    ",",
    ";",
    "=",
    "%",
    "é",
    "ü",
    "中",
    "😀",
    '"',
    "<",
    "^",
]


def _text(rng: random.Random, low: int = 1, high: int = 8) -> str:
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(low, high)))


def generate(rng: random.Random) -> Generated:
    """A request with nested paths, awkward queries, extra headers and sometimes a body."""
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    segments = [_text(rng) for _ in range(rng.randint(1, 5))]
    raw_path = "/" + "/".join(quote(segment, safe="") for segment in segments)
    if rng.random() < 0.3:
        raw_path += "/"
    query = [(_text(rng), _text(rng, 0, 6)) for _ in range(rng.randint(0, 5))]
    if query and rng.random() < 0.3:
        query.append((query[0][0], _text(rng, 0, 4)))  # a repeated key
    headers = {
        "X-Sdk-Date": f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}00Z"
    }
    if rng.random() < 0.8:
        headers["Content-Type"] = rng.choice(
            ["application/json", "application/json;charset=UTF-8", "text/plain", "application/bson"]
        )
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(["X-Project-Id", "X-Security-Token", "X-Custom", "Accept", "X_Skipped"])
        headers[name] = rng.choice(["  padded value ", "v", PROJECT, "tok/en+=="])
    body = b""
    if method in ("POST", "PUT", "PATCH") and rng.random() < 0.8:
        body = _text(rng, 0, 40).encode()
    host = rng.choice(["cbr.ap-southeast-1.myhuaweicloud.com", "iam.myhuaweicloud.com"])
    return Generated(method, host, raw_path, query, headers, body)


def generated_requests(count: int = 400) -> Iterator[Generated]:
    """A reproducible stream of requests."""
    rng = random.Random(20240101)
    for _ in range(count):
        yield generate(rng)


@pytest.fixture
def sdk_signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The official huaweicloudsdkcore signer class (test-only dependency), HOME kept aside."""
    monkeypatch.setenv("HOME", str(tmp_path))
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    def sign(request: Generated) -> tuple[str, str]:
        sdk_request = SdkRequest(
            method=request.method,
            schema="https",
            host=request.host,
            resource_path=request.raw_path,
            query_params=list(request.query),
            header_params=dict(request.headers),
            body=request.body,
        )
        Signer(types.SimpleNamespace(ak=AK, sk=SK)).sign(sdk_request)
        return sdk_request.header_params["Authorization"], sdk_request.uri

    return sign


def test_matches_the_official_sdk_signer(sdk_signer: Any) -> None:
    """Hundreds of generated requests: same Authorization, and the URI the SDK would send is
    the one our URL carries (path and canonical query)."""
    compared = 0
    for request in generated_requests():
        expected_authorization, expected_uri = sdk_signer(request)
        headers = dict(request.headers)
        signer.sign(
            request.method,
            request.url,
            headers,
            request.body,
            access_key=AK,
            secret_key=SK,
            now=0.0,
        )
        assert headers["Authorization"] == expected_authorization, request
        assert request.url.raw_path_qs == expected_uri, request
        compared += 1
    assert compared == 400


def test_simulator_verifier_accepts_every_generated_signature() -> None:
    """The simulator's independent implementation agrees with the signer, and catches a change
    to the method, path, query, a signed header or the body."""
    for request in generated_requests(200):
        headers = dict(request.headers)
        url = request.url
        signer.sign(
            request.method, url, headers, request.body, access_key=AK, secret_key=SK, now=0.0
        )
        call = SignedCall(
            request.method, url.raw_path, url.raw_query_string, CIMultiDict(headers), request.body
        )
        when = signer_time(headers["X-Sdk-Date"])
        assert verify(call, {AK: SK}, when).reason is None, request
        tampered = [
            SignedCall("OPTIONS", call.raw_path, call.raw_query, call.headers, call.body),
            SignedCall(call.method, call.raw_path + "x", call.raw_query, call.headers, call.body),
            SignedCall(
                call.method, call.raw_path, call.raw_query + "&extra=1", call.headers, call.body
            ),
            SignedCall(
                call.method,
                call.raw_path,
                call.raw_query,
                CIMultiDict({**headers, "Host": "evil.example"}),
                call.body,
            ),
        ]
        if request.body and "X-Sdk-Content-Sha256" not in headers:
            tampered.append(
                SignedCall(
                    call.method, call.raw_path, call.raw_query, call.headers, call.body + b"!"
                )
            )
        for bad in tampered:
            assert verify(bad, {AK: SK}, when).reason is not None, (request, bad)
        assert verify(call, {AK: "other"}, when).reason is not None


def signer_time(sdk_date: str) -> float:
    """X-Sdk-Date back to Unix seconds (so the verifier's 15-minute window is satisfied)."""
    from datetime import UTC, datetime

    return datetime.strptime(sdk_date, signer.DATE_FORMAT).replace(tzinfo=UTC).timestamp()
