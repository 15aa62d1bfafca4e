"""Tests of `cio_queue.testing.FakeTrackAPI` over real loopback HTTP (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import gc
import json
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from yarl import URL

from cio_queue.testing import (
    AcceptedOperation,
    FakeTrackAPI,
    Fault,
    FaultRates,
    RecordedRequest,
    refused_url,
    reserved_port,
    validate_request,
)

pytestmark = pytest.mark.anyio

WAIT = 5.0  # upper bound for every wait in this module


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeTrackAPI]:
    """Serve a fault-free fake for one test."""
    async with FakeTrackAPI() as server:
        yield server


@pytest.fixture
async def session(anyio_backend: str) -> AsyncIterator[aiohttp.ClientSession]:
    """Give each test a plain client session with a bounded timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        yield client


async def call(
    session: aiohttp.ClientSession,
    fake: FakeTrackAPI,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    """Send one request, path bytes exactly as written, and return (status, payload, headers).

    `encoded=True` stops yarl from normalising the path (it would turn %40 into @).
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    send_headers = fake.auth_headers if headers is None else headers
    if data is not None:
        send_headers = {**send_headers, "Content-Type": "application/json"}
    with anyio.fail_after(WAIT):
        async with session.request(
            method,
            URL(fake.url + path, encoded=True),
            data=data,
            headers=send_headers,
        ) as response:
            text = await response.text()
            try:
                payload: Any = json.loads(text) if text else None
            except ValueError:
                payload = text
            return response.status, payload, response.headers


@contextlib.asynccontextmanager
async def abandoned_on_exit(
    session: aiohttp.ClientSession, fake: FakeTrackAPI, method: str, path: str, body: Any
) -> AsyncIterator[None]:
    """Send a request, wait until the server is handling it, and give it up when the block ends.

    Giving up cancels the client call, which closes its connection mid-request.
    """
    in_flight = fake.in_flight
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, session, fake, method, path, body)
        with anyio.fail_after(WAIT):
            await fake.wait_until(lambda: fake.in_flight > in_flight)
        yield
        tg.cancel_scope.cancel()


def person(action: str, **fields: Any) -> dict[str, Any]:
    """Build a v2 person op identified by id 42."""
    return {"type": "person", "action": action, "identifiers": {"id": "42"}, **fields}


# --- v1: happy paths and recording -------------------------------------------------------------


async def test_identify_is_accepted_and_recorded_with_raw_path(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """An identify answers 200 {} and is recorded with its raw path, query, body and headers."""
    status, payload, _ = await call(
        session, fake, "PUT", "/api/v1/customers/ada%40example.com?x=1", {"plan": "pro"}
    )
    assert (status, payload) == (200, {})
    [record] = fake.requests
    assert record.method == "PUT"
    assert record.path == "/api/v1/customers/ada%40example.com"
    assert record.query == "x=1"
    assert record.json == {"plan": "pro"}
    assert record.headers["Authorization"] == fake.auth_headers["Authorization"]
    assert (record.status, record.fault) == (200, None)
    assert fake.log == [record]
    assert fake.operations == [
        AcceptedOperation("v1", {"method": "PUT", "path": record.path, "body": {"plan": "pro"}})
    ]


async def test_encoded_slash_stays_inside_one_segment(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """%2F in an id or device id is one path segment, not a route separator."""
    assert (await call(session, fake, "PUT", "/api/v1/customers/a%2Fb", {}))[0] == 200
    path = "/api/v1/customers/a%2Fb/devices/tok%2F1"
    assert (await call(session, fake, "DELETE", path))[0] == 200
    assert [r.path for r in fake.requests] == ["/api/v1/customers/a%2Fb", path]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/api/v1/customers/42", {}),
        ("POST", "/api/v1/customers/42/events", {"name": "buy", "data": {"a": 1}, "id": "x"}),
        ("POST", "/api/v1/customers/42/events", {"name": "/home", "type": "page"}),
        ("POST", "/api/v1/customers/42/events", {"name": "old", "timestamp": 1700000000}),
        ("POST", "/api/v1/events", {"name": "invite", "anonymous_id": "anon-1"}),
        ("DELETE", "/api/v1/customers/42", None),
        ("PUT", "/api/v1/customers/42/devices", {"device": {"id": "tok", "platform": "ios"}}),
        ("DELETE", "/api/v1/customers/42/devices/tok", None),
        ("POST", "/api/v1/customers/42/suppress", {}),
        ("POST", "/api/v1/customers/42/unsuppress", None),
        ("POST", "/api/v1/merge_customers", {"primary": {"id": "1"}, "secondary": {"email": "e"}}),
    ],
)
async def test_every_v1_endpoint_accepts_a_valid_request(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, method: str, path: str, body: Any
) -> None:
    """Each documented v1 endpoint answers 200 {} and records one v1 operation."""
    status, payload, _ = await call(session, fake, method, path, body)
    assert (status, payload) == (200, {})
    assert [op.op["body"] for op in fake.operations] == [body]


async def test_bodyless_request_records_json_as_none(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A request without a body is accepted and its RecordedRequest.json is None."""
    await call(session, fake, "DELETE", "/api/v1/customers/42")
    assert fake.requests[0].body == b""
    assert fake.requests[0].json is None


async def test_limits_are_inclusive(fake: FakeTrackAPI, session: aiohttp.ClientSession) -> None:
    """Values exactly at the documented byte and count limits are accepted."""
    attrs = {f"k{i}": "v" for i in range(299)} | {"n" * 150: "é" * 500}
    assert (await call(session, fake, "PUT", "/api/v1/customers/" + "a" * 150, attrs))[0] == 200
    event = {"name": "n" * 100, "data": {"d": "x" * (100_000 - 8)}}
    assert len(json.dumps(event["data"], separators=(",", ":"))) == 100_000
    assert (await call(session, fake, "POST", "/api/v1/customers/1/events", event))[0] == 200


async def test_structured_attributes_skip_the_value_limit(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """cio_relationships may exceed 1000 bytes (structured), other objects may not."""
    rels = {
        "action": "add_relationships",
        "relationships": [
            {"identifiers": {"object_type_id": "1", "object_id": f"a{i}"}} for i in range(40)
        ],
    }
    body = {"cio_relationships": rels}
    assert (await call(session, fake, "PUT", "/api/v1/customers/1", body))[0] == 200
    assert (await call(session, fake, "PUT", "/api/v1/customers/1", {"other": rels}))[0] == 400


# --- v1: errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"fake-site:wrong").decode()},
        {"Authorization": "Bearer fake-key"},
        {"Authorization": "Basic !!not-base64!!"},
    ],
    ids=["missing", "wrong-key", "bearer", "garbage"],
)
async def test_bad_credentials_are_401(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """Missing or wrong Basic credentials answer 401 and nothing is accepted."""
    status, payload, _ = await call(
        session, fake, "PUT", "/api/v1/customers/1", {}, headers=headers
    )
    assert (status, payload) == (401, {"meta": {"error": "Unauthorized request"}})
    assert fake.requests == []
    assert [r.status for r in fake.log] == [401]


async def test_unknown_path_is_404_and_wrong_method_is_405(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """Unknown paths answer 404; a known path with the wrong method answers 405."""
    assert (await call(session, fake, "POST", "/api/v1/nope", {}))[0] == 404
    assert (await call(session, fake, "PUT", "/api/v1/customers", {}))[0] == 404
    assert (await call(session, fake, "GET", "/"))[0] == 404
    status, _, headers = await call(session, fake, "GET", "/api/v1/customers/1")
    assert status == 405
    assert headers["Allow"] == "DELETE, PUT"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/api/v1/customers/", {}, "customer id"),
        ("PUT", "/api/v1/customers/" + "a" * 151, {}, "customer id"),
        ("PUT", "/api/v1/customers/" + "%C3%A9" * 76, {}, "customer id"),
        ("PUT", "/api/v1/customers/1", {"n" * 151: 1}, "attribute name"),
        ("PUT", "/api/v1/customers/1", {"bio": "é" * 501}, "bio"),
        ("PUT", "/api/v1/customers/1", {"nums": list(range(300))}, "nums"),
        ("PUT", "/api/v1/customers/1", {f"k{i}": 1 for i in range(301)}, "attributes"),
        ("PUT", "/api/v1/customers/1", [1, 2], "body"),
        ("POST", "/api/v1/customers/1/events", {"data": {}}, "name"),
        ("POST", "/api/v1/customers/1/events", {"name": ""}, "name"),
        ("POST", "/api/v1/customers/1/events", {"name": "n" * 101}, "name"),
        ("POST", "/api/v1/customers/1/events", {"name": "e", "data": [1]}, "data"),
        ("POST", "/api/v1/customers/1/events", {"name": "e", "data": {"d": "x" * 99_993}}, "data"),
        ("POST", "/api/v1/customers/1/events", {"name": "e", "type": "click"}, "type"),
        ("POST", "/api/v1/customers/1/events", {"name": "e", "timestamp": "1"}, "timestamp"),
        ("POST", "/api/v1/customers/1/events", {"name": "e", "id": 5}, "id"),
        ("POST", "/api/v1/events", {"name": "e", "anonymous_id": 5}, "anonymous_id"),
        ("PUT", "/api/v1/customers/1/devices", {"device": {"id": "t"}}, "device.platform"),
        ("PUT", "/api/v1/customers/1/devices", {"device": {"platform": "ios"}}, "device.id"),
        ("PUT", "/api/v1/customers/1/devices", {}, "device"),
        ("DELETE", "/api/v1/customers/1/devices/", None, "device id"),
    ],
)
async def test_v1_validation_errors_name_the_field(
    fake: FakeTrackAPI,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    """Each v1 validation failure answers 400 {"meta": {"errors": [...]}} naming the field."""
    status, payload, _ = await call(session, fake, method, path, body)
    assert status == 400
    [message] = payload["meta"]["errors"]
    assert field in message
    assert fake.requests == []
    assert fake.operations == []


async def test_v1_body_that_is_not_json_is_400(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A body that is not JSON is rejected with 400, even on body-optional endpoints."""
    for method, path in [("PUT", "/api/v1/customers/1"), ("DELETE", "/api/v1/customers/1")]:
        status, payload, _ = await call(session, fake, method, path, raw=b"{nope")
        assert status == 400
        assert payload["meta"]["errors"]
    assert (await call(session, fake, "PUT", "/api/v1/customers/1", raw=b""))[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        {"primary": {"id": "1", "email": "a@b"}, "secondary": {"id": "2"}},
        {"primary": {"phone": "+1"}, "secondary": {"id": "2"}},
        {"primary": {"id": ""}, "secondary": {"id": "2"}},
        {"primary": {"id": "1"}},
        {},
    ],
)
async def test_merge_errors_use_the_single_error_shape(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    """Invalid merges answer 400 {"meta": {"error": "..."}} (not the errors list)."""
    status, payload, _ = await call(session, fake, "POST", "/api/v1/merge_customers", body)
    assert status == 400
    assert isinstance(payload["meta"]["error"], str)
    assert fake.requests == []


# --- v2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        person("identify", attributes={"plan": "pro"}, timestamp=1700000000),
        person("delete"),
        person("event", name="buy", attributes={"p": 1}, id="01H", timestamp=1),
        person("page", name="/home"),
        person("screen", name="Home"),
        person("add_device", device={"token": "t", "platform": "android", "last_used": 1}),
        person("delete_device", device={"token": "t"}),
        person("suppress"),
        person("unsuppress"),
        person("add_relationships", cio_relationships=[{"identifiers": {"object_id": "o"}}]),
        person("delete_relationships", cio_relationships=[{"identifiers": {"object_id": "o"}}]),
        {"type": "person", "action": "merge", "primary": {"id": "1"}, "secondary": {"cio_id": "a"}},
        {"type": "person", "action": "identify", "identifiers": {"email": "a@b"}},
        {"type": "person", "action": "identify", "identifiers": {"phone": "+15550100"}},
    ],
)
async def test_v2_entity_accepts_every_person_action(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, op: dict[str, Any]
) -> None:
    """/api/v2/entity answers 200 {} for each valid person action and records the op."""
    status, payload, _ = await call(session, fake, "POST", "/api/v2/entity", op)
    assert (status, payload) == (200, {})
    assert fake.operations == [AcceptedOperation("v2", op)]


@pytest.mark.parametrize(
    "op",
    [
        {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"},
         "action": "identify", "attributes": {"name": "Acme"},
         "cio_relationships": [{"identifiers": {"id": "42"}}]},
        {"type": "object", "identifiers": {"cio_object_id": "o1"}, "action": "delete"},
        {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"},
         "action": "identify_anonymous", "anonymous_id": "anon-1"},
        {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"},
         "action": "add_relationships", "cio_relationships": [{"identifiers": {"id": "42"}}]},
        {"type": "delivery", "identifiers": {"id": "RPIy"}, "action": "event", "name": "opened",
         "attributes": {"device_token": "t"}},
    ],
)
async def test_v2_entity_accepts_object_and_delivery_operations(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, op: dict[str, Any]
) -> None:
    """Objects and deliveries, which the Track API documents too, are accepted and recorded."""
    status, payload, _ = await call(session, fake, "POST", "/api/v2/entity", op)
    assert (status, payload) == (200, {})
    assert fake.operations == [AcceptedOperation("v2", op)]
    assert fake.accepted_events() == []  # a delivery's event is a metric, not a person's


@pytest.mark.parametrize(
    ("op", "field"),
    [
        ({"type": "account", "action": "identify", "identifiers": {"id": "1"}}, "type"),
        ({"type": "object", "action": "identify", "identifiers": {"object_id": "1"}},
         "identifiers"),
        ({"type": "object", "action": "add_device",
          "identifiers": {"object_type_id": "1", "object_id": "1"}}, "action"),
        ({"type": "delivery", "action": "event", "identifiers": {"id": "d"}}, "name"),
        (person("explode"), "action"),
        ({"type": "person", "action": "delete"}, "identifiers"),
        ({**person("delete"), "identifiers": {"id": "1", "email": "e"}}, "identifiers"),
        ({**person("delete"), "identifiers": {"anonymous_id": "a"}}, "identifiers.anonymous_id"),
        ({**person("delete"), "identifiers": {"email": ""}}, "identifiers.email"),
        ({**person("delete"), "identifiers": {"id": 42}}, "identifiers.id"),
        ({**person("delete"), "identifiers": {"id": "x" * 151}}, "identifiers.id"),
        (person("event"), "name"),
        (person("event", name="n" * 101), "name"),
        (person("page", name="p", attributes="x"), "attributes"),
        (person("screen", name="s", timestamp=1.5), "timestamp"),
        (person("identify", attributes={"a": "x" * 1001}), "attributes.a"),
        (person("add_device", device={"platform": "ios"}), "device.token"),
        (person("add_device", device={"token": "t", "platform": "web"}), "device.platform"),
        (person("delete_device"), "device"),
        (person("add_relationships"), "cio_relationships"),
        (person("merge", primary={"id": "1"}, secondary={"id": "2"}), "identifiers"),
        ({"type": "person", "action": "merge", "primary": {"id": "1"}}, "secondary"),
    ],
)
async def test_v2_entity_rejects_invalid_ops_with_v2_error_shape(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, op: dict[str, Any], field: str
) -> None:
    """An invalid entity op answers 400 {"errors": [{reason, field, message}]} naming the field."""
    status, payload, _ = await call(session, fake, "POST", "/api/v2/entity", op)
    assert status == 400
    [error] = payload["errors"]
    assert error["field"] == field
    assert error["reason"]
    assert error["message"]
    assert fake.operations == []


async def test_v2_entity_over_32k_is_too_large(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """An entity body over 32 KiB answers 400 with reason too_large."""
    op = person("event", name="big", attributes={"d": "x" * (32 * 1024)})
    status, payload, _ = await call(session, fake, "POST", "/api/v2/entity", op)
    assert status == 400
    assert payload["errors"][0]["reason"] == "too_large"


async def test_v2_batch_all_valid_is_200(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A batch of valid ops answers 200 {} and records every op in order."""
    ops = [person("identify"), person("event", name="a"), person("delete")]
    status, payload, _ = await call(session, fake, "POST", "/api/v2/batch", {"batch": ops})
    assert (status, payload) == (200, {})
    assert [o.op for o in fake.operations] == ops
    assert [r.status for r in fake.requests] == [200]


async def test_v2_batch_partial_failure_is_207_and_keeps_valid_ops(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """Invalid ops are reported by batch_index in a 207 and the valid ones are still accepted."""
    too_big = person("event", name="big", attributes={"d": "x" * (32 * 1024)})
    ops = [person("identify"), person("event"), person("delete"), too_big, "not an op"]
    status, payload, _ = await call(session, fake, "POST", "/api/v2/batch", {"batch": ops})
    assert status == 207
    assert [(e["batch_index"], e["field"]) for e in payload["errors"]] == [
        (1, "name"),
        (3, ""),
        (4, ""),
    ]
    assert payload["errors"][1]["reason"] == "too_large"
    assert [o.op for o in fake.operations] == [ops[0], ops[2]]
    assert [r.status for r in fake.requests] == [207]


async def test_v2_batch_of_500000_bytes_is_413(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A batch body of 500,000 bytes or more answers 413 too_large; one byte less is fine."""
    op = person("identify", attributes={"a": "x" * 900})

    def padded(size: int) -> bytes:
        body = json.dumps({"batch": [op] * 400, "pad": ""}, separators=(",", ":")).encode()
        return body.replace(b'"pad":""', b'"pad":"' + b" " * (size - len(body)) + b'"')

    status, payload, _ = await call(session, fake, "POST", "/api/v2/batch", raw=padded(500_000))
    assert status == 413
    assert payload["errors"][0]["reason"] == "too_large"
    assert fake.operations == []
    assert (await call(session, fake, "POST", "/api/v2/batch", raw=padded(499_999)))[0] == 200


@pytest.mark.parametrize(
    "raw",
    [b"{nope", b"[]", b'{"batch": []}', b'{"batch": {}}', b"{}"],
)
async def test_v2_malformed_batch_is_400(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, raw: bytes
) -> None:
    """A batch body that is not JSON or lacks a non-empty batch list answers 400 (v2 shape)."""
    status, payload, _ = await call(session, fake, "POST", "/api/v2/batch", raw=raw)
    assert status == 400
    assert set(payload["errors"][0]) == {"reason", "field", "message"}
    assert fake.requests == []


# --- validate_request: the same rules without a server ----------------------------------------


def dumps(body: Any) -> bytes:
    """Encode a body the way the tests send it (None: no body)."""
    return b"" if body is None else json.dumps(body).encode()


BIG_ATTRIBUTES = {"d": "x" * (32 * 1024)}
SAMPLE_REQUESTS: list[tuple[str, str, Any]] = [
    ("PUT", "/api/v1/customers/42", {"plan": "pro"}),
    ("PUT", "/api/v1/customers/a%2Fb", {}),
    ("DELETE", "/api/v1/customers/42", None),
    ("POST", "/api/v1/customers/42/events", {"name": "buy", "data": {"a": 1}}),
    ("POST", "/api/v1/events", {"name": "invite", "anonymous_id": "anon-1"}),
    ("PUT", "/api/v1/customers/42/devices", {"device": {"id": "t", "platform": "ios"}}),
    ("POST", "/api/v1/merge_customers", {"primary": {"id": 1}, "secondary": {"email": "e"}}),
    ("POST", "/api/v2/entity", person("event", name="e")),
    ("POST", "/api/v2/batch", {"batch": [person("identify"), person("delete")]}),
    ("PUT", "/api/v1/customers/" + "a" * 151, {}),
    ("PUT", "/api/v1/customers/42", {"bio": "é" * 501}),
    ("POST", "/api/v1/customers/42/events", {"name": ""}),
    ("POST", "/api/v1/events", {"name": "e", "anonymous_id": 5}),
    ("PUT", "/api/v1/customers/42/devices", {"device": {"id": "t", "platform": "web"}}),
    ("POST", "/api/v1/merge_customers", {"primary": {"phone": "+1"}, "secondary": {"id": "2"}}),
    ("POST", "/api/v2/entity", person("event", name="big", attributes=BIG_ATTRIBUTES)),
    ("POST", "/api/v2/entity", person("add_device", device={"token": "t", "platform": ["x"]})),
    ("POST", "/api/v2/entity", {**person("delete"), "action": ["delete"]}),
    ("POST", "/api/v1/customers/42/events", {"name": "e", "type": {"page": 1}}),
    ("POST", "/api/v2/batch", {"batch": [person("identify"), person("explode")]}),
    ("POST", "/api/v2/batch", {"batch": []}),
    ("POST", "/api/v1/nope", {}),
    ("GET", "/api/v1/customers/42", None),
]


@pytest.mark.parametrize(("method", "path", "body"), SAMPLE_REQUESTS)
async def test_validate_request_agrees_with_the_server(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, method: str, path: str, body: Any
) -> None:
    """validate_request() finds no problem exactly when the server answers 200 {}."""
    status, payload, _ = await call(session, fake, method, path, raw=dumps(body))
    problems = validate_request(method, path, dumps(body))
    assert (problems == []) == ((status, payload) == (200, {})), (problems, status, payload)


def test_validate_request_names_the_field_of_a_v1_problem() -> None:
    """A refused v1 request gives one problem that names the offending field."""
    body = json.dumps({"name": "e", "timestamp": "1"}).encode()
    assert validate_request("POST", "/api/v1/customers/1/events", body) == [
        "timestamp: timestamp must be an integer (unix seconds)"
    ]
    assert validate_request("PUT", "/api/v1/customers/%C3%A9?x=1", b"{}") == []
    assert validate_request("PUT", "/api/v1/customers/1", b"{nope") == [
        "body: body is not valid JSON"
    ]


def test_validate_request_lists_each_refused_batch_op_by_index() -> None:
    """Each invalid op of a v2 batch is listed with its index, including ops over 32 KB."""
    big = person("event", name="b", attributes=BIG_ATTRIBUTES)
    ops = [person("identify"), person("event"), big, "x"]
    assert validate_request("POST", "/api/v2/batch", dumps({"batch": ops})) == [
        "batch[1] name: name is required and must be a non-empty string",
        "batch[2] operation exceeds 32768 bytes",
        "batch[3] operation must be a JSON object",
    ]


def test_validate_request_refuses_unrouted_and_oversized_requests() -> None:
    """Unknown paths, wrong methods and batches of 500,000 bytes or more are refused."""
    assert validate_request("POST", "/api/v3/batch", b"{}") == ["no route for POST /api/v3/batch"]
    assert validate_request("GET", "/api/v2/batch", b"") == [
        "GET is not allowed on /api/v2/batch (allowed: POST)"
    ]
    padded = dumps({"batch": [person("delete")], "pad": " " * 500_000})
    assert validate_request("POST", "/api/v2/batch", padded) == [
        "batch: batch must be under 500000 bytes"
    ]


# --- poison hooks ------------------------------------------------------------------------------


async def test_reject_hook_poisons_v1_requests(session: aiohttp.ClientSession) -> None:
    """reject() sees each otherwise-valid v1 request and a string answer turns it into a 400."""
    seen: list[RecordedRequest] = []

    def reject(request: RecordedRequest) -> str | None:
        seen.append(request)
        return "poisoned" if "poison" in request.path else None

    async with FakeTrackAPI(reject=reject) as fake:
        status, payload, _ = await call(session, fake, "PUT", "/api/v1/customers/poison", {})
        assert (status, payload) == (400, {"meta": {"errors": ["poisoned"]}})
        assert (await call(session, fake, "PUT", "/api/v1/customers/ok", {}))[0] == 200
        assert (await call(session, fake, "PUT", "/api/v1/customers/poison", [1]))[0] == 400
        assert [r.path for r in seen] == ["/api/v1/customers/poison", "/api/v1/customers/ok"]
        assert [r.path for r in fake.requests] == ["/api/v1/customers/ok"]


async def test_reject_op_hook_poisons_v2_ops(session: aiohttp.ClientSession) -> None:
    """reject_op() fails single ops: 207 rejected entries in a batch, a 400 for an entity."""

    def reject_op(op: dict[str, Any]) -> str | None:
        return "poisoned" if op.get("name") == "poison" else None

    async with FakeTrackAPI(reject_op=reject_op) as fake:
        ops = [person("event", name="ok"), person("event", name="poison")]
        status, payload, _ = await call(session, fake, "POST", "/api/v2/batch", {"batch": ops})
        assert status == 207
        assert payload["errors"] == [
            {"batch_index": 1, "reason": "rejected", "field": "", "message": "poisoned"}
        ]
        status, payload, _ = await call(session, fake, "POST", "/api/v2/entity", ops[1])
        assert status == 400
        assert payload["errors"][0]["reason"] == "rejected"
        assert [o.op for o in fake.operations] == [ops[0]]


# --- faults ------------------------------------------------------------------------------------


async def test_scripted_faults_apply_in_order_then_stop(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """Scripted faults hit the next requests in order, unprocessed, then service is normal."""
    fake.script(Fault.SERVER_ERROR, Fault.RATE_LIMITED, Fault.RATE_LIMITED_NO_HEADER, 418)
    answers = [await call(session, fake, "PUT", "/api/v1/customers/1", {}) for _ in range(5)]
    assert answers[0][0] in (500, 502, 503, 504)
    assert answers[1][0] == 429
    assert answers[1][2]["Retry-After"] == "1"
    assert answers[2][0] == 429
    assert "Retry-After" not in answers[2][2]
    assert answers[3][:2] == (418, {})
    assert answers[4][:2] == (200, {})
    assert len(fake.requests) == 1
    faults = [r.fault for r in fake.log]
    assert faults == ["server_error", "rate_limited", "rate_limited_no_header", "status_418", None]


async def test_faults_are_decided_before_auth(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """An injected outage answers even a request with bad credentials or an unknown path."""
    fake.script(503, 503)
    assert (await call(session, fake, "PUT", "/api/v1/customers/1", {}, headers={}))[0] == 503
    assert (await call(session, fake, "POST", "/nowhere", {}))[0] == 503


async def test_script_rejects_ints_that_are_not_statuses(fake: FakeTrackAPI) -> None:
    """script() refuses an int that cannot be an HTTP status."""
    with pytest.raises(ValueError, match="HTTP status"):
        fake.script(42)


async def test_retry_after_is_rounded_up_to_whole_seconds(session: aiohttp.ClientSession) -> None:
    """A fractional retry_after is sent as the next whole second."""
    async with FakeTrackAPI(faults=FaultRates(rate_limited=1.0, retry_after=2.5)) as fake:
        status, _, headers = await call(session, fake, "POST", "/api/v1/events", {"name": "e"})
        assert (status, headers["Retry-After"]) == (429, "3")


def test_fault_rates_are_validated() -> None:
    """FaultRates refuses probabilities outside 0..1, a sum above 1 and negative durations."""
    with pytest.raises(ValueError, match="sum to at most 1"):
        FaultRates(server_error=0.6, drop_connection=0.5)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        FaultRates(slow=-0.1)
    with pytest.raises(ValueError, match="must be >= 0"):
        FaultRates(retry_after=-1)
    FaultRates(server_error=0.5, rate_limited=0.25, slow=0.25)


async def test_drop_connection_leaves_request_unprocessed(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A dropped connection gives the client a disconnect; nothing is accepted; log has status 0."""
    fake.script(Fault.DROP_CONNECTION)
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(session, fake, "POST", "/api/v1/customers/1/events", {"name": "e"})
    assert fake.requests == []
    assert fake.operations == []
    [record] = fake.log
    assert (record.status, record.fault, record.json) == (0, "drop_connection", {"name": "e"})


async def test_ambiguous_fault_processes_then_drops(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """An ambiguous request is delivered (recorded with status 0) but the client sees a drop."""
    fake.script(Fault.AMBIGUOUS)
    ops = {"batch": [person("event", name="e")]}
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(session, fake, "POST", "/api/v2/batch", ops)
    [record] = fake.requests
    assert (record.status, record.fault) == (0, "ambiguous")
    assert [o.op for o in fake.operations] == ops["batch"]
    assert fake.log == [record]


async def test_slow_request_abandoned_by_client_is_not_processed(
    session: aiohttp.ClientSession,
) -> None:
    """A client giving up during a slow answer cancels it: not accepted, logged with status 0."""
    async with FakeTrackAPI(faults=FaultRates(slow=1.0, slow_seconds=30)) as fake:
        async with abandoned_on_exit(session, fake, "POST", "/api/v1/events", {"name": "e"}):
            pass
        with anyio.fail_after(WAIT):
            await fake.wait_until(lambda: len(fake.log) == 1)
        assert (fake.log[0].status, fake.log[0].fault) == (0, "slow")
        assert fake.requests == []
        assert fake.in_flight == 0


async def test_slow_request_is_answered_if_the_client_waits(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A slow request whose client waits long enough is processed and answered normally."""
    fake.faults = FaultRates(slow_seconds=0.05)
    fake.script(Fault.SLOW)
    started = time.monotonic()
    status, _, _ = await call(session, fake, "POST", "/api/v1/events", {"name": "e"})
    assert status == 200
    assert time.monotonic() - started >= 0.05
    assert [(r.status, r.fault) for r in fake.requests] == [(200, "slow")]


async def test_random_faults_are_deterministic_for_a_seed(session: aiohttp.ClientSession) -> None:
    """Two servers with the same seed and rates inject the same faults in the same order."""
    rates = FaultRates(server_error=0.3, rate_limited=0.2, rate_limited_no_header=0.1)

    async def statuses(seed: int) -> list[int]:
        async with FakeTrackAPI(faults=rates, seed=seed) as fake:
            return [
                (await call(session, fake, "POST", "/api/v1/events", {"name": "e"}))[0]
                for _ in range(40)
            ]

    first = await statuses(7)
    assert first == await statuses(7)
    assert first != await statuses(8)
    assert {200, 429} <= set(first)
    assert set(first) <= {200, 429, 500, 502, 503, 504}


async def test_fault_handling_logs_no_tracebacks(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Drops, ambiguous answers and abandoned slow requests keep aiohttp's logs quiet."""
    caplog.set_level(logging.INFO)
    async with FakeTrackAPI(faults=FaultRates(slow_seconds=30)) as fake:
        fake.script(Fault.DROP_CONNECTION, Fault.AMBIGUOUS, Fault.SLOW)
        for _ in range(2):
            with pytest.raises(aiohttp.ClientConnectionError):
                await call(session, fake, "POST", "/api/v1/events", {"name": "e"})
        async with abandoned_on_exit(session, fake, "POST", "/api/v1/events", {"name": "e"}):
            pass
        with anyio.fail_after(WAIT):
            await fake.wait_until(lambda: len(fake.log) == 3)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- server behaviour --------------------------------------------------------------------------


async def test_latency_overlaps_concurrent_requests(session: aiohttp.ClientSession) -> None:
    """Latency delays every answer and concurrent requests show up in in_flight/max_in_flight."""
    async with FakeTrackAPI(latency=0.2) as fake:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(call, session, fake, "PUT", f"/api/v1/customers/{i}", {})
            with anyio.fail_after(WAIT):
                await fake.wait_until(lambda: fake.in_flight == 5)
        assert time.monotonic() - started >= 0.2
        assert (fake.in_flight, fake.max_in_flight, len(fake.requests)) == (0, 5, 5)


async def test_wait_for_requests_wakes_when_enough_arrive(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """wait_for_requests(n) blocks until the n-th accepted request, then returns."""
    done = anyio.Event()

    async def waiter() -> None:
        await fake.wait_for_requests(3)
        done.set()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            for i in range(2):
                await call(session, fake, "PUT", f"/api/v1/customers/{i}", {})
            assert not done.is_set()
            fake.script(500)
            await call(session, fake, "PUT", "/api/v1/customers/x", {})
            assert not done.is_set()
            await call(session, fake, "POST", "/api/v2/batch", {"batch": [person("delete")]})
            await done.wait()
            await fake.wait_for_operations(3)


async def test_log_is_in_arrival_order(fake: FakeTrackAPI, session: aiohttp.ClientSession) -> None:
    """A request that arrives first stays first in log even if it finishes last."""
    fake.faults = FaultRates(slow_seconds=30)
    fake.script(Fault.SLOW)
    async with abandoned_on_exit(session, fake, "PUT", "/api/v1/customers/slow", {}):
        await call(session, fake, "PUT", "/api/v1/customers/fast", {})
        assert [r.path for r in fake.log] == ["/api/v1/customers/fast"]
    with anyio.fail_after(WAIT):
        await fake.wait_until(lambda: len(fake.log) == 2)
    assert [r.path for r in fake.requests] == ["/api/v1/customers/fast"]
    assert [r.path for r in fake.log] == ["/api/v1/customers/slow", "/api/v1/customers/fast"]


async def test_stop_closes_keepalive_and_restart_reuses_the_port(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """stop() breaks pooled connections; restart() serves on the same port with records kept."""
    port = fake.port
    assert (await call(session, fake, "POST", "/api/v1/events", {"name": "a"}))[0] == 200
    await fake.stop()
    assert not fake.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(session, fake, "POST", "/api/v1/events", {"name": "b"})
    await fake.start()
    assert fake.port == port
    assert (await call(session, fake, "POST", "/api/v1/events", {"name": "c"}))[0] == 200
    await fake.restart(downtime=0.05)
    assert fake.port == port
    assert fake.running
    assert (await call(session, fake, "POST", "/api/v1/events", {"name": "d"}))[0] == 200
    assert [r.json["name"] for r in fake.requests] == ["a", "c", "d"]


async def test_waiters_survive_a_restart(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """A wait_for_requests() pending across restart() still wakes for later requests."""
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fake.wait_for_requests, 1)
            await fake.restart()
            await call(session, fake, "POST", "/api/v1/events", {"name": "after"})


async def test_stop_cuts_off_in_flight_requests(session: aiohttp.ClientSession) -> None:
    """stop() ends promptly even with a slow request in flight, which the client sees fail."""
    async with FakeTrackAPI(faults=FaultRates(slow=1.0, slow_seconds=30)) as fake:
        failures: list[BaseException] = []

        async def doomed() -> None:
            try:
                await call(session, fake, "POST", "/api/v1/events", {"name": "e"})
            except aiohttp.ClientConnectionError as exc:
                failures.append(exc)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(doomed)
                await fake.wait_until(lambda: fake.in_flight == 1)
                await fake.stop()
        assert len(failures) == 1
        assert [(r.status, r.fault) for r in fake.log] == [(0, "slow")]
        assert fake.requests == []
        assert fake.in_flight == 0


async def test_reset_clears_records_peak_and_script(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """reset() forgets requests, log, operations, the in-flight peak and queued faults."""
    await call(session, fake, "PUT", "/api/v1/customers/1", {})
    fake.script(500)
    fake.reset()
    assert (fake.requests, fake.log, fake.operations, fake.max_in_flight) == ([], [], [], 0)
    assert (await call(session, fake, "PUT", "/api/v1/customers/1", {}))[0] == 200


async def test_accepted_events_lists_v1_and_v2_events(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    """accepted_events() normalises delivered v1 and v2 events and skips other operations."""
    await call(session, fake, "PUT", "/api/v1/customers/1", {})
    await call(session, fake, "POST", "/api/v1/customers/a%40b/events", {"name": "buy", "id": "u"})
    await call(session, fake, "POST", "/api/v1/events", {"name": "anon", "type": "page"})
    batch = [person("identify"), person("screen", name="Home", attributes={"x": 1})]
    await call(session, fake, "POST", "/api/v2/batch", {"batch": batch})
    assert [(e["api"], e["customer"], e["type"], e["name"]) for e in fake.accepted_events()] == [
        ("v1", "a@b", "event", "buy"),
        ("v1", None, "page", "anon"),
        ("v2", "42", "screen", "Home"),
    ]
    assert fake.accepted_events()[2]["data"] == {"x": 1}


async def test_repr_never_shows_the_api_key(anyio_backend: str) -> None:
    """repr() names the site and address but never the API key."""
    server = FakeTrackAPI(api_key="s3cret-key")
    assert "s3cret-key" not in repr(server)
    with pytest.raises(RuntimeError):
        _ = server.url
    async with server:
        assert "s3cret-key" not in repr(server)
        assert server.url == f"http://127.0.0.1:{server.port}"


# --- sockets: nothing leaks on stop, the port stays ours ---------------------------------------


def _resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Render the ResourceWarnings among recorded warnings."""
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


async def test_stop_closes_connections_accepted_but_not_yet_attached(anyio_backend: str) -> None:
    """stop() right after the loop accepted connections closes them all (CPython gh-109564)."""
    clients: list[socket.socket] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with FakeTrackAPI() as fake:
            for _ in range(3):
                batch = [socket.create_connection(("127.0.0.1", fake.port)) for _ in range(20)]
                clients += batch
                # The connections wait in the listen queue. In the next loop turn this task
                # runs first, then the listener's reader accepts them and schedules their
                # transports behind this task; so restart() runs between accept and attach.
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
                await fake.restart()
        gc.collect()
    try:
        with anyio.fail_after(WAIT):
            for client in clients:
                await anyio.wait_readable(client)
                client.setblocking(False)
                with contextlib.suppress(ConnectionResetError):
                    assert client.recv(1) == b""  # the server closed it: end of stream
    finally:
        for client in clients:
            client.close()
    assert _resource_warnings(caught) == []


def squattable(port: int, *, reuse_address: bool) -> bool:
    """Tell whether another socket (without SO_REUSEPORT) could bind and listen on the port."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse_address)
        try:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
        return True


async def refuses_connections(port: int) -> bool:
    """Tell whether a connection to the port is refused at once (not accepted, not hanging)."""
    with anyio.fail_after(WAIT):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_stopped_fake_keeps_its_port_and_refuses_connections(anyio_backend: str) -> None:
    """While stopped, the port refuses connections at once and nobody else can take it."""
    async with FakeTrackAPI() as fake:
        port = fake.port
        await fake.stop()
        assert await refuses_connections(port)
        assert not squattable(port, reuse_address=False)
        assert not squattable(port, reuse_address=True)
        await fake.start()
        assert fake.port == port
        assert not await refuses_connections(port)


async def test_close_releases_the_port(anyio_backend: str) -> None:
    """Leaving `async with` (close()) releases the port for anyone to bind."""
    async with FakeTrackAPI() as fake:
        port = fake.port
        assert not squattable(port, reuse_address=False)
    assert squattable(port, reuse_address=False)
    await fake.start()  # reserves the same port again
    assert fake.port == port
    await fake.close()
    assert squattable(port, reuse_address=False)


async def test_a_fake_that_is_only_stopped_leaks_no_socket(anyio_backend: str) -> None:
    """A fake dropped after stop() (no close()) releases its port without a ResourceWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        fake = FakeTrackAPI()
        await fake.start()
        port = fake.port
        await fake.stop()
        del fake
        gc.collect()
    assert _resource_warnings(caught) == []
    assert squattable(port, reuse_address=False)


async def test_reserved_port_and_refused_url_stand_for_an_api_that_is_down(
    session: aiohttp.ClientSession,
) -> None:
    """reserved_port() and refused_url() give addresses that refuse connections and stay held."""
    with reserved_port() as port:
        assert await refuses_connections(port)
        assert not squattable(port, reuse_address=True)
    with refused_url() as url:
        port = URL(url).port or 0
        assert url == f"http://127.0.0.1:{port}"
        assert not squattable(port, reuse_address=True)
        with anyio.fail_after(WAIT), pytest.raises(aiohttp.ClientConnectorError):
            await session.post(url + "/api/v1/events", json={"name": "e"})
