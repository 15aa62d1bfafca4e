"""Property tests: any input either raises InvalidEventError or makes a valid request.

Random nested inputs go through every EventQueue method on a queue with an in-memory
sender, for both transports. Each request an accepted call produced is checked against
the FakeTrackAPI's own validation at once (so hypothesis can shrink a failure), and at the
end every accepted call is replayed over real HTTP to a FakeTrackAPI, where none may be
refused.
"""

from __future__ import annotations

import asyncio
import decimal
import enum
import json
import math
import os
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cio_queue import (
    EventQueue,
    InvalidEventError,
    OutcomeStatus,
    QueueConfig,
    Request,
    RetryPolicy,
)
from cio_queue import _operations as ops
from cio_queue._apirules import json_fits, json_size
from cio_queue._operations import Operation
from cio_queue._ulid import new_ulid
from cio_queue._validation import clean_mapping, ready_as_is
from cio_queue.testing import FakeTrackAPI, validate_request

from .recording import RecordingSender

TRANSPORTS = ("v1", "batch")
HUGE_INT = 10**5000  # more digits than int() / str() convert by default (sys.int_info)


class HugeInt(int):
    """An int too long for str() or JSON, with a repr hypothesis can print."""

    def __repr__(self) -> str:
        return f"HugeInt({'-' if self < 0 else ''}10**5000)"


HUGE = HugeInt(HUGE_INT)


class Colour(enum.Enum):
    """A plain enum: not JSON, so it must be refused."""

    RED = "red"


class Size(enum.IntEnum):
    """An int enum: encodes as its value."""

    LARGE = 3


class Label(enum.StrEnum):
    """A str enum: encodes as its value."""

    HOT = "hot"


class Plan(str, enum.Enum):  # noqa: UP042 - the mixin (not StrEnum) is the point
    """A str-mixin enum: json.dumps, so the official SDK, sends its value."""

    PRO = "pro"


class Tier(int, enum.Enum):
    """An int-mixin enum: json.dumps sends its value."""

    GOLD = 2


# --- strategies ------------------------------------------------------------------------------

surrogate_text = st.text(st.characters(blacklist_categories=()), max_size=12)
any_text = st.one_of(st.text(max_size=20), surrogate_text,
                     st.text(min_size=95, max_size=160), st.text(st.characters(), min_size=30,
                                                                   max_size=60))
tricky_strings = st.sampled_from([
    "", " ", "\t\n", ".", "..", "a/b", "%2F", "?q=1", "#frag", "cio_", "cio_abc",
    "someone@example.com", "@", "a@b", "\x00", "\ud800", "é" * 80, "x" * 150, "x" * 151,
    "null", "1e5", "-0", " 12 ", "١٢٣",
])
timezones = st.one_of(st.none(), st.just(UTC), st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))))
leaves = st.one_of(
    st.text(max_size=20), surrogate_text, tricky_strings,
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.just(HUGE), st.just(HugeInt(-HUGE_INT)),
    st.floats(), st.booleans(), st.none(),
    st.datetimes(timezones=timezones), st.dates(), st.decimals(),
    st.binary(max_size=10), st.sets(st.integers(), max_size=3), st.builds(object),
    st.sampled_from([Colour.RED, Size.LARGE, Label.HOT, Plan.PRO, Tier.GOLD]),
)
keys = st.one_of(st.text(max_size=12), surrogate_text, tricky_strings, st.integers(),
                 st.none(), st.tuples(st.integers()))
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)
data_values = st.one_of(st.none(), st.dictionaries(keys, values, max_size=5), values)
ids = st.one_of(st.text(max_size=20), surrogate_text, tricky_strings, st.integers(),
                st.just(HUGE), st.floats(), st.none(), st.booleans(), st.binary(max_size=5),
                st.sampled_from([Size.LARGE, Label.HOT]))
names = st.one_of(any_text, tricky_strings, st.none(), st.integers(), st.binary(max_size=5))
ascii_text = st.text(st.characters(min_codepoint=9, max_codepoint=126), max_size=12)
plain_data = st.dictionaries(  # mostly JSON-ready as given: str keys, scalars, dicts of them
    st.one_of(st.text(max_size=6), surrogate_text),
    st.recursive(st.one_of(st.text(max_size=10), surrogate_text, st.booleans(), st.none(),
                           st.integers(min_value=-(2**64), max_value=2**65), st.floats()),
                 lambda children: st.dictionaries(st.one_of(st.text(max_size=6),
                                                            surrogate_text), children,
                                                  max_size=4),
                 max_leaves=10),
    max_size=5)
timestamps = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=12),
                       tricky_strings, st.datetimes(timezones=timezones), st.booleans(),
                       st.just(HUGE))


def kwargs_without(*reserved: str) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments with any str names, except the method's own parameter names."""
    names_ = st.one_of(st.text(max_size=12), surrogate_text, tricky_strings).filter(
        lambda name: name not in reserved)
    return st.dictionaries(names_, values, max_size=4)


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def call(method: str, *args: st.SearchStrategy[Any],
         kwargs: st.SearchStrategy[dict[str, Any]] | None = None) -> st.SearchStrategy[Call]:
    return st.tuples(st.just(method), st.tuples(*args),
                     st.just({}) if kwargs is None else kwargs)


calls = st.one_of(
    call("identify", ids, kwargs=kwargs_without("id")),
    call("track", ids, names, data_values, st.one_of(st.none(), ids), timestamps),
    call("track_anonymous", ids, names, data_values, st.one_of(st.none(), ids), timestamps),
    call("pageview", ids, names, kwargs=kwargs_without("customer_id", "page")),
    call("backfill", ids, names, timestamps,
         kwargs=kwargs_without("customer_id", "name", "timestamp")),
    call("delete", ids),
    call("suppress", ids),
    call("unsuppress", ids),
    call("add_device", ids, ids, st.one_of(st.sampled_from(["ios", "android", "web"]), names),
         kwargs=kwargs_without("customer_id", "device_id", "platform")),
    call("delete_device", ids, ids),
    call("merge_customers", st.one_of(st.sampled_from(["id", "email", "cio_id"]), names), ids,
         st.one_of(st.sampled_from(["id", "email", "cio_id"]), names), ids),
)


# --- checking one request the way the fake API would -----------------------------------------

def strict_json(body: bytes) -> Any:
    """Parse JSON as the standard defines it: no NaN or Infinity."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(body, parse_constant=refuse)


def api_problems(request: Request) -> list[str]:
    """What the FakeTrackAPI's validation would refuse in this request (empty: nothing)."""
    try:
        strict_json(request.body)
    except ValueError as exc:
        return [f"body is not valid JSON: {exc}"]
    return validate_request(request.method, request.path, request.body)


def config(transport: str, url: str = "http://127.0.0.1:9", **overrides: Any) -> QueueConfig:
    values_: dict[str, Any] = {
        "site_id": "fake-site", "api_key": "fake-key", "base_url": url,
        "transport": transport, "flush_interval": 0.01, "rate_limit": None,
        "retry": RetryPolicy(attempts=1), "shutdown_timeout": 5.0,
    }
    values_.update(overrides)
    return QueueConfig(**values_)


async def enqueue_each(queue: EventQueue, batch: Iterable[Call]) -> list[Call]:
    """Make each call; return the accepted ones. Anything but InvalidEventError escapes."""
    accepted = []
    for method, args, kwargs in batch:
        try:
            await getattr(queue, method)(*args, **kwargs)
        except InvalidEventError:
            continue
        accepted.append((method, args, kwargs))
    return accepted


async def run_in_memory(batch: list[Call], transport: str) -> tuple[list[Call], list[Request]]:
    sender = RecordingSender()
    async with EventQueue(config(transport), sender=sender) as queue:
        accepted = await enqueue_each(queue, batch)
    stats = queue.statistics()
    assert stats.enqueued == len(accepted) == stats.delivered
    return accepted, sender.requests


# --- the properties ---------------------------------------------------------------------------

def test_only_invalid_event_error_escapes_and_every_accepted_operation_is_valid() -> None:
    """Random input: calls raise InvalidEventError or enqueue ops the API accepts, over HTTP."""
    collected: dict[str, list[Call]] = {transport: [] for transport in TRANSPORTS}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(st.lists(calls, min_size=1, max_size=8))
    @example([("track", ("a", "ev", {"n": HUGE}, None, None), {})])
    @example([("track", ("a", "ev", {"n": -(2**63) - 1, "m": [2**64]}, None, None), {})])
    @example([("identify", (HUGE,), {})])
    @example([("add_device", ("a", 12345, "ios"), {})])
    @example([("identify", ("cio_",), {})])
    @example([("delete", ("line\nbreak",), {})])
    def check(batch: list[Call]) -> None:
        for transport in TRANSPORTS:
            accepted, requests = asyncio.run(run_in_memory(batch, transport))
            for request in requests:
                assert api_problems(request) == [], (transport, request)
            collected[transport].extend(accepted)

    check()

    async def over_http() -> None:
        async with FakeTrackAPI() as fake:
            for transport, accepted in collected.items():
                cfg = config(transport, fake.url, batch_size=100, max_concurrency=8,
                             max_queue_size=max(100, len(accepted)))
                with anyio.fail_after(60):
                    async with EventQueue(cfg) as queue:
                        replayed = await enqueue_each(queue, accepted)
                stats = queue.statistics()
                assert len(replayed) == len(accepted), transport
                assert (stats.rejected, stats.failed) == (0, 0), (transport, stats, [
                    (r.path, r.status, r.body[:300]) for r in fake.log if r.status >= 400])
                assert stats.delivered == len(accepted)
            assert all(record.status == 200 for record in fake.log)

    asyncio.run(over_http())


KEEPS_ONLY_ITS_BYTES = {"identify", "track", "track_anonymous", "backfill", "pageview"}
"""What a batch-transport operation keeps once sealed: these drop their payload dict."""


def test_a_sealed_operation_gives_back_its_payload_as_it_was_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued operation keeps only its wire bytes; the payload made from them is the same.

    The same values, nested keys in the same order: a dead letter or a before_send copy
    of a waiting operation reads exactly what the builder made.
    """
    seal = Operation.seal
    seen: list[tuple[str, str, str, bool]] = []

    def checked_seal(op: Operation, *, batch: bool) -> Operation:
        if op.v2 is not None and op._payload is None:
            # Built sealed (an event on the batch transport): it never had a payload.
            # test_an_event_built_sealed_is_what_sealing_its_v1_form_makes covers it.
            seen.append((op.kind, "", "", True))
            return seal(op, batch=batch)
        built = json.dumps(op.payload)  # key order kept: the record's text, not just its values
        seal(op, batch=batch)
        dropped = op._payload is None
        seen.append((op.kind, built, json.dumps(op.payload), dropped))
        return op

    monkeypatch.setattr(Operation, "seal", checked_seal)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(st.lists(calls, min_size=1, max_size=8))
    @example([("track", ("a", "ev", {"n": 1.5, "d": {"z": [1, "é"], "a": None}}, "e1", 7), {}),
              ("backfill", ("a", "ev", 7), {"b": 2, "a": 1}), ("pageview", ("a", "/p"), {"q": 1}),
              ("identify", ("a",), {"z": 1, "a": {"y": 2, "b": 3}}),
              ("track_anonymous", ("x", "ev", {"n": -(2**64 - 1)}, None, None), {})])
    def check(batch: list[Call]) -> None:
        for transport in TRANSPORTS:
            seen.clear()
            accepted, _ = asyncio.run(run_in_memory(batch, transport))
            assert len(seen) == len(accepted)
            for kind, built, after, dropped in seen:
                assert after == built, (transport, kind)
                # Every v1 body, and the v2 elements that give their payload back exactly.
                assert dropped == (transport == "v1" or kind in KEEPS_ONLY_ITS_BYTES), kind

    check()


def _build_event(kind: str, args: tuple[Any, Any, Any, Any], event_id: object, *,
                 batch: bool = False) -> Operation:
    """Build an event with its builder; ``args`` are the person, name, data and timestamp."""
    person, name, data, timestamp = args
    if kind == "track":
        return ops.track(person, name, data, event_id, timestamp, batch=batch)
    if kind == "pageview":
        return ops.pageview(person, name, data, event_id, batch=batch)
    return ops.backfill(person, name, timestamp, data, event_id, batch=batch)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(["backfill", "pageview", "track"]),
       st.tuples(ids, names, st.one_of(st.dictionaries(keys, values, max_size=5), data_values),
                 timestamps),
       st.one_of(st.none(), ids))
@example("track", ("a", "ev", {"n": 1.5, "d": {"z": [1, "é"], "a": None}}, 7), "e1")
@example("backfill", ("someone@example.com", "ev", {"b": 2, "a": 1}, 7.9), None)
@example("pageview", ("cio_abc", "/p", {"q": datetime(2026, 1, 1)}, None), None)
def test_an_event_built_sealed_is_what_sealing_its_v1_form_makes(
        kind: str, args: tuple[Any, Any, Any, Any], event_id: object) -> None:
    """On the batch transport an event is built sealed; nothing else may differ.

    The same wire bytes as its v1 form sealed for the batch transport, the same payload
    (text and key order) made from them, no payload dict kept, and for bad input the same
    InvalidEventError naming the same field.
    """
    eid = event_id if event_id is not None else new_ulid()
    refused: str | None
    try:
        v1_form = _build_event(kind, args, eid)
        expected = json.dumps(v1_form.payload)
        sealed_later = v1_form.seal(batch=True)
    except InvalidEventError as error:
        refused = error.field
    else:
        refused = None
    if refused is not None:
        with pytest.raises(InvalidEventError) as info:
            _build_event(kind, args, eid, batch=True)
        assert info.value.field == refused
        return
    built = _build_event(kind, args, eid, batch=True)
    assert (built.kind, built.customer_id, built.event_id) == (
        sealed_later.kind, sealed_later.customer_id, sealed_later.event_id)
    assert built.v2 == sealed_later.v2
    assert built._payload is None
    assert json.dumps(built.payload) == expected


def _half_plain(others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """ASCII text half of the time (plain, mostly), ``others`` the other half."""
    return st.booleans().flatmap(lambda plain: ascii_text if plain else others)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(["pageview", "track"]),
       st.tuples(_half_plain(st.one_of(ids, st.sampled_from(
                     ["cio_", "cio_x", ".", "..", "a@b.co", "x" * 150, "x" * 151]))),
                 _half_plain(st.one_of(names, st.sampled_from(["n" * 100, "n" * 101]))),
                 st.booleans().flatmap(lambda plain: plain_data if plain else data_values)))
@example("track", ("user-1", "purchase", {"price": 9.5, "sku": "A-1"}))
@example("pageview", ("cio_abc", "/p", {"q": {"r": None}}))
@example("track", ("..", "ev", {}))
@example("track", ("cio_", "ev", {}))
@example("track", (" \t", "ev", {}))
@example("track", ("x" * 150, "n" * 100, {}))
@example("track", ("x" * 151, "ev", {}))
@example("track", ("a@b.co", "e" * 101, {}))
@example("pageview", ("a", "", {}))
@example("track", ("a", "ev", {"x": float("inf")}))
def test_an_event_built_in_one_step_is_what_the_long_way_builds(
        kind: str, args: tuple[Any, Any, Any]) -> None:
    """Without an event id or timestamp, a plain event is built in one step: no difference.

    The long way (taken whenever an event id is given) must build the same wire bytes and
    payload with that id, and refuse exactly the input the one-step build refuses.
    """
    person, name, data = args
    refused: str | None = None
    try:
        built = _build_event(kind, (person, name, data, None), None, batch=True)
    except InvalidEventError as error:
        refused = str(error)
    if refused is not None:
        with pytest.raises(InvalidEventError) as info:
            _build_event(kind, (person, name, data, None), new_ulid(), batch=True)
        assert str(info.value) == refused
        return
    assert built.event_id is not None
    long_way = _build_event(kind, (person, name, data, None), built.event_id, batch=True)
    assert (built.kind, built.customer_id, built.v2) == (
        long_way.kind, long_way.customer_id, long_way.v2)
    assert json.dumps(built.payload) == json.dumps(long_way.payload)


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(st.dictionaries(keys, values, max_size=5), data_values, plain_data))
@example({"price": 9.5, "sku": "A-1", "n": {"deep": True, "é": "ü"}})
@example({"a": {"b": {"c": float("nan")}}})
@example({"k": 2**64 - 1, "m": -(2**63)})
def test_data_ready_as_is_is_what_its_clean_copy_would_be(data: Any) -> None:
    """Data that ready_as_is passes is encoded as given: clean_mapping's copy is the same.

    The same JSON from orjson (the wire) and from json (with its types), and no refusal:
    the usual event skips the copy on this say-so alone.
    """
    if not (isinstance(data, dict) and ready_as_is(data)):
        return  # the long way decides
    copy = clean_mapping(data, "data")
    assert orjson.dumps(data) == orjson.dumps(copy)
    assert json.dumps(data) == json.dumps(copy)


@pytest.mark.parametrize(("data", "ready"), [
    ({"price": 9.5, "sku": "A-1", "n": {"deep": None, "é": "ü", "k": -(2**63)}}, True),
    ({"items": [1, 2]}, False),  # a list: copied by the cleaner
    ({"at": datetime(2026, 1, 1)}, False),  # sent as unix seconds
    ({"x": float("nan")}, False),  # sent as null
    ({"x": Size.LARGE}, False),  # an int subclass
    ({"x": 2**64}, False),  # refused
    ({"\ud800": 1}, False),  # refused
    ({1: "a"}, False),  # refused
])
def test_ready_as_is_says_yes_only_to_what_needs_no_cleaning(data: dict[Any, Any],
                                                             ready: bool) -> None:
    assert ready_as_is(data) is ready


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("call_", [
    ("identify", (HUGE_INT,), {}),
    ("identify", ("a",), {"n": HUGE_INT}),
    ("track", ("a", "ev", {"n": HUGE_INT}, None, None), {}),
    ("track", ("a", "ev", {"n": [1, {"m": -HUGE_INT}]}, None, None), {}),
    ("merge_customers", ("id", HUGE_INT, "id", "b"), {}),
], ids=["id", "attribute", "data", "nested-data", "merge-id"])
def test_integers_too_long_for_json_are_refused_with_invalid_event_error(
        transport: str, call_: Call) -> None:
    """An int beyond Python's str-conversion limit raises InvalidEventError, not ValueError."""
    with pytest.raises(InvalidEventError):
        asyncio.run(_one_call(call_, transport))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("call_", [
    ("add_device", ("a", 12345, "ios"), {}),
    ("identify", ("cio_",), {}),
    ("delete", ("cio_",), {}),
], ids=["int-device-id", "identify-cio_", "delete-cio_"])
def test_an_accepted_operation_is_never_refused_by_the_api(transport: str, call_: Call) -> None:
    """Input the client accepts must make a request the API validates; else refuse it early."""
    async def run() -> tuple[list[Call], list[Request]]:
        return await run_in_memory([call_], transport)

    accepted, requests = asyncio.run(run())
    assert [api_problems(request) for request in requests] == [[] for _ in requests]
    assert len(requests) == (1 if accepted else 0)


ODD_IDS = ["line\nbreak", "cr\rhere", "tab\there", "nul\x00", "a/b", "%2F", "...", "?x=1#y",
           "é", "emoji \U0001F600", "x\u2028y", " padded "]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_any_id_the_client_accepts_reaches_the_api_over_http(transport: str) -> None:
    """Ids with odd characters travel percent-encoded and arrive intact, never refused."""
    async with FakeTrackAPI() as fake:
        cfg = config(transport, fake.url, retry=RetryPolicy(attempts=1))
        with anyio.fail_after(10):
            async with EventQueue(cfg) as queue:
                receipts = []
                for customer in ODD_IDS:
                    receipts.append(await queue.identify(customer, plan="pro"))
                    receipts.append(await queue.track(customer, "ev"))
                    receipts.append(await queue.delete_device(customer, customer))
        refused = [(r.kind, o.customer_id, str(o.error)) for r in receipts
                   if (o := r.outcome) is not None and o.status is not OutcomeStatus.DELIVERED]
        assert refused == []
        events = fake.accepted_events()
    assert sorted(event["customer"] for event in events) == sorted(ODD_IDS)


json_leaves = st.one_of(
    st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.sampled_from([Size.LARGE, Label.HOT, Plan.PRO, Tier.GOLD]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.tuples(children, children),
                               st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
@example({"plan": Plan.PRO, "tier": Tier.GOLD, "label": Label.HOT, "size": Size.LARGE})
@example({"self": []})  # an attribute named like the method's own first parameter
def test_json_ready_data_reaches_the_wire_as_json_dumps_writes_it(data: dict[str, Any]) -> None:
    """Data JSON can already encode (enum members too) is sent as json.dumps encodes it."""
    # Attributes within the API's 1000-byte value limit ("id" is identify's own argument).
    attributes = {k: v for k, v in data.items() if k != "id" and (
        len(v.encode()) if isinstance(v, str) else len(json.dumps(v))) <= 1000}

    async def run() -> list[Request]:
        sender = RecordingSender()
        async with EventQueue(config("v1"), sender=sender) as queue:
            await queue.track("a", "ev", data)
            await queue.identify("a", **attributes)
        return sender.requests

    track, identify = asyncio.run(run())
    # What the official SDK (requests' json=) sends: json.dumps of the same values.
    assert strict_json(track.body)["data"] == json.loads(json.dumps(data))
    assert strict_json(identify.body) == json.loads(json.dumps(attributes))


parsed_leaves = st.one_of(  # what json.loads can give the fake: lone surrogates, NaN, any int
    surrogate_text, tricky_strings, st.text(st.characters(max_codepoint=0x7F), max_size=8),
    st.text(st.characters(min_codepoint=0x10000), max_size=4), st.integers(),
    st.just(10**400), st.floats(), st.sampled_from([1e16, 1e-7, -1.5e300, 5e-324]),
    st.booleans(), st.none(),
)
parsed_values = st.recursive(
    parsed_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(surrogate_text, children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None, database=None)
@given(parsed_values, st.integers(min_value=0, max_value=400))
@example("\x7f" * 40, 241)  # DEL: 6 bytes escaped by json, 1 by orjson (242 against 42)
@example("\x01" * 40, 240)  # control characters: 6 bytes each in both encodings
@example("\U0001F600" * 20, 240)  # astral: 12 bytes escaped, 4 as UTF-8
@example([1e16] * 10, 59)  # json writes 1e+16, orjson 1e16
def test_json_fits_answers_what_json_size_would(value: Any, limit: int) -> None:
    """The fake's size checks answer as json.dumps' compact ASCII size would, always."""
    assert json_fits(value, limit) is (json_size(value) <= limit)


def test_event_ids_stay_unique_in_a_forked_child() -> None:
    """A child forked from a process that made event ids must not make the same ids."""
    if not hasattr(os, "fork"):
        pytest.skip("os.fork is POSIX-only")
    new_ulid()  # the parent has used the generator before the fork, as a web app would
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its ids through the pipe and leave at once
        try:
            os.write(write_end, " ".join(new_ulid() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    parent = [new_ulid() for _ in range(50)]
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    child = b"".join(chunks).decode().split()
    assert len(child) == 50
    # The first 10 characters are the millisecond; the other 16 must be random in each.
    assert not {u[10:] for u in parent} & {u[10:] for u in child}


def test_datetimes_and_floats_become_plain_json_numbers() -> None:
    """NaN becomes null, datetimes unix seconds, and every body parses as strict JSON."""
    async def run() -> list[Request]:
        sender = RecordingSender()
        async with EventQueue(config("v1"), sender=sender) as queue:
            await queue.track("a", "ev", {"nan": math.nan, "when": datetime(2024, 1, 2, tzinfo=UTC),
                                          "naive": datetime(2024, 1, 2), "x": 1.5})
        return sender.requests

    (request,) = asyncio.run(run())
    data = strict_json(request.body)["data"]
    assert data == {"nan": None, "when": 1704153600, "naive": 1704153600, "x": 1.5}
    with pytest.raises(InvalidEventError):
        asyncio.run(_one_call(("track", ("a", "ev", {"d": date(2024, 1, 2)}, None, None), {})))
    with pytest.raises(InvalidEventError):
        asyncio.run(_one_call(("track", ("a", "ev", {"d": decimal.Decimal(1)}, None, None), {})))


async def _one_call(call_: Call, transport: str = "v1") -> None:
    method, args, kwargs = call_
    async with EventQueue(config(transport), sender=RecordingSender()) as queue:
        await getattr(queue, method)(*args, **kwargs)


def test_strict_json_refuses_nan() -> None:
    """The checker itself: NaN is not JSON."""
    with pytest.raises(ValueError, match="NaN"):
        strict_json(b'{"a": NaN}')
