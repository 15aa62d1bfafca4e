"""Call-site input hardening: what the builders and EventQueue refuse before enqueueing.

Pure unit tests of the builders in ``_operations`` plus in-memory component tests through
``EventQueue`` with a recording sender: bad input must fail in the caller's stack with an
``InvalidEventError`` naming the field, and nothing else may escape.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, TypedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cio_queue import (
    Event,
    EventCatalog,
    EventQueue,
    InvalidEventError,
    QueueConfig,
    RetryPolicy,
    SyncEventQueue,
    Transport,
    TypedEventQueue,
)
from cio_queue import _operations as ops
from cio_queue.testing import validate_request

from .recording import RecordingSender

Build = Callable[..., ops.Operation]


def _config(transport: Transport = "batch") -> QueueConfig:
    return QueueConfig(site_id="fake-site", api_key="fake-key", base_url="http://127.0.0.1:9",
                       transport=transport, flush_interval=0.01, rate_limit=None,
                       retry=RetryPolicy(attempts=1), shutdown_timeout=5.0)


def _refused(build: Build, *args: Any) -> InvalidEventError:
    """Build and seal for each transport; both must raise the same InvalidEventError."""
    errors = []
    for batch in (False, True):
        with pytest.raises(InvalidEventError) as info:
            build(*args).seal(batch=batch)
        errors.append(info.value)
    assert str(errors[0]) == str(errors[1])
    return errors[0]


# --- dot segments (issue item 7) ------------------------------------------------------------

PATH_ID_CALLS: list[tuple[str, Build, Callable[[str], tuple[Any, ...]]]] = [
    ("id", ops.identify, lambda i: (i, {})),
    ("customer_id", ops.track, lambda i: (i, "ev", None, None, None)),
    ("customer_id", ops.pageview, lambda i: (i, "/", {})),
    ("customer_id", ops.backfill, lambda i: (i, "ev", 1_700_000_000, {})),
    ("customer_id", ops.delete, lambda i: (i,)),
    ("customer_id", ops.suppress, lambda i: (i,)),
    ("customer_id", ops.unsuppress, lambda i: (i,)),
    ("customer_id", ops.add_device, lambda i: (i, "tok", "ios", {})),
    ("customer_id", ops.delete_device, lambda i: (i, "tok")),
    ("device_id", ops.delete_device, lambda i: ("42", i)),
    ("device_id", ops.add_device, lambda i: ("42", i, "ios", {})),
]


@pytest.mark.parametrize("segment", [".", ".."])
@pytest.mark.parametrize(("field", "build", "args"), PATH_ID_CALLS,
                         ids=[f"{c[1].__name__}-{c[0]}" for c in PATH_ID_CALLS])
def test_dot_segment_ids_are_refused(segment: str, field: str, build: Build,
                                     args: Callable[[str], tuple[Any, ...]]) -> None:
    """An id that would be a '.' or '..' path segment is refused: a proxy would resolve it."""
    error = _refused(build, *args(segment))
    assert error.field == field
    assert "segment" in str(error)


@pytest.mark.parametrize("text", ["...", ".a", "a.", "a..b", " .. ", "%2E%2E", "cio_.."])
def test_ids_that_merely_contain_dots_are_accepted(text: str) -> None:
    """Only the exact dot segments are refused; other ids with dots travel percent-encoded."""
    op = ops.delete_device(text, text).seal(batch=False)
    assert op.path.count("/") == 4


def test_the_queue_refuses_a_dot_segment_device_id_before_enqueueing() -> None:
    """delete_device("42", "..") fails at the call site and sends nothing."""
    async def run() -> RecordingSender:
        sender = RecordingSender()
        async with EventQueue(_config("v1"), sender=sender) as queue:
            with pytest.raises(InvalidEventError, match="device_id"):
                await queue.delete_device("42", "..")
            assert queue.statistics().enqueued == 0
        return sender

    assert asyncio.run(run()).requests == []


# --- lone surrogates (issue item 8) ---------------------------------------------------------

class Text(str):
    """A str subclass: cleaned like str, so checked like str."""

    __slots__ = ()


SURROGATE_CALLS: list[tuple[str, Build, tuple[Any, ...]]] = [
    ("data.items[2].name", ops.track,
     ("42", "ev", {"items": [{}, {"name": "ok"}, {"name": "bad \ud800"}]}, None, None)),
    ("data", ops.track, ("42", "ev", {"\udc00": 1}, None, None)),
    ("data.a[0]", ops.track, ("42", "ev", {"a": [{"k\udfff": 1}]}, None, None)),
    ("data.t[1]", ops.track, ("42", "ev", {"t": ("fine", Text("\ud83d"))}, None, None)),
    ("data.x", ops.track_anonymous, ("anon", "ev", {"x": "\ud800"}, None, None)),
    ("attributes.nested.x", ops.identify, ("42", {"nested": {"x": "\udfff"}})),
    ("attributes.plain", ops.identify, ("42", {"plain": "\ud800"})),
    ("attributes", ops.identify, ("42", {"name\ud800": 1})),
    ("data.referrer", ops.pageview, ("42", "/", {"referrer": ["\ud800"][0]})),
    ("data.deep", ops.backfill, ("42", "ev", 1_700_000_000, {"deep": {"\ud800": 1}})),
    ("data.meta.v", ops.add_device, ("42", "tok", "ios", {"meta": {"v": "\ud800"}})),
    ("data", ops.add_device, ("42", "tok", "ios", {"\ud800": "key"})),
]


@pytest.mark.parametrize(("field", "build", "args"), SURROGATE_CALLS,
                         ids=[c[0] for c in SURROGATE_CALLS])
def test_lone_surrogates_are_refused_at_any_depth(field: str, build: Build,
                                                  args: tuple[Any, ...]) -> None:
    """A lone surrogate in a value or key at any depth is refused, naming its path."""
    error = _refused(build, *args)
    assert error.field == field
    assert "surrogate" in str(error)
    # The error itself is valid text: a log handler can write it.
    str(error).encode("utf-8")


@pytest.mark.parametrize("transport", ["v1", "batch"])
def test_the_queue_never_sends_a_lone_surrogate(transport: Transport) -> None:
    """Through EventQueue a nested surrogate fails at the call site, on either transport."""
    async def run() -> RecordingSender:
        sender = RecordingSender()
        async with EventQueue(_config(transport), sender=sender) as queue:
            with pytest.raises(InvalidEventError, match="surrogate"):
                await queue.track("42", "ev", {"items": [{"name": "\ud800"}]})
            with pytest.raises(InvalidEventError, match="surrogate"):
                await queue.identify("42", **{"name\udc00": True})
        return sender

    assert asyncio.run(run()).requests == []


def test_deeply_nested_lists_are_refused_with_their_path() -> None:
    """Lists count towards the nesting limit as dicts do."""
    value: list[Any] = []
    for _ in range(70):
        value = [value]
    assert _refused(ops.track, "42", "ev", {"l": value}, None, None).field == "data.l" + "[0]" * 64


def test_paired_surrogates_and_other_unicode_are_accepted() -> None:
    """Real astral characters (a valid pair once encoded) and other non-ASCII text pass."""
    op = ops.track("42", "ev", {"emoji": "\U0001F600", "漢字": ["ünï©ødé"]}, None, None)
    assert b"\\ud83d\\ude00" in op.seal(batch=False).body



# --- size limits on both transports (issue item 10) ----------------------------------------

def _relationships(size: int) -> dict[str, Any]:
    """A v1 cio_relationships value whose compact JSON is exactly ``size`` bytes."""
    value: dict[str, Any] = {"action": "add_relationships", "relationships": [
        {"identifiers": {"object_type_id": "1", "object_id": ""}}]}
    pad = size - len(json.dumps(value, separators=(",", ":")))
    value["relationships"][0]["identifiers"]["object_id"] = "x" * pad
    return value


def _preferences(size: int) -> dict[str, Any]:
    """A cio_subscription_preferences value whose compact JSON is exactly ``size`` bytes."""
    value: dict[str, Any] = {"topics": {"topic_1": True}, "pad": ""}
    value["pad"] = "p" * (size - len(json.dumps(value, separators=(",", ":"))))
    return value


@pytest.mark.parametrize(("name", "make"), [("cio_relationships", _relationships),
                                            ("cio_subscription_preferences", _preferences)])
def test_structured_attributes_are_bounded_by_the_100_kb_object_limit(
        name: str, make: Callable[[int], dict[str, Any]]) -> None:
    """Over 100,000 bytes of JSON a structured attribute is refused on v1 and batch alike."""
    error = _refused(ops.identify, "42", {name: make(100_001)})
    assert error.field == f"attributes.{name}"
    assert "100000" in str(error)
    op = ops.identify("42", {name: make(100_000)}).seal(batch=False)
    assert _api_problem(op) is None


def test_attribute_values_are_measured_as_the_api_measures_them() -> None:
    """A value is sized as compact JSON, so one within 1000 bytes is not refused early."""
    value = [0] * 334  # 669 bytes compact, 1002 with json.dumps' default separators
    for batch in (False, True):
        op = ops.identify("42", {"x": value}).seal(batch=batch)
        assert _api_problem(op) is None
    error = _refused(ops.identify, "42", {"x": [0] * 500})  # 1001 bytes compact
    assert error.field == "attributes.x"


@pytest.mark.parametrize("transport", ["v1", "batch"])
def test_the_queue_refuses_oversized_relationships_on_either_transport(
        transport: Transport) -> None:
    """The queue refuses at the call site what the API would reject later."""
    async def run() -> RecordingSender:
        sender = RecordingSender()
        async with EventQueue(_config(transport), sender=sender) as queue:
            with pytest.raises(InvalidEventError, match="cio_relationships"):
                await queue.identify("42", cio_relationships=_relationships(150_000))
        return sender

    assert asyncio.run(run()).requests == []



# --- the device shape on v2 (issue item 11) -------------------------------------------------

def _v2_device(*args: Any) -> dict[str, Any]:
    op = ops.add_device(*args).seal(batch=True)
    assert op.v2 is not None
    assert _api_problem(op) is None
    device: dict[str, Any] = json.loads(op.v2)["device"]
    return device


def test_a_v1_attributes_mapping_is_the_v2_device_attributes() -> None:
    """add_device(attributes={...}), the v1 device shape, is not nested twice on v2."""
    assert _v2_device("42", "tok", "ios", {"attributes": {"app_version": "1.2"}}) == {
        "token": "tok", "platform": "ios", "attributes": {"app_version": "1.2"}}


def test_other_device_keys_join_the_attributes_and_last_used_stays_on_top() -> None:
    """Extra keys join the caller's attributes (which win a clash); last_used is top-level."""
    device = _v2_device("42", "tok", "android", {
        "device_model": "Pixel", "app_version": "0.9", "last_used": 1_700_000_000,
        "attributes": {"app_version": "1.2", "push_enabled": "true"}})
    assert device == {"token": "tok", "platform": "android", "last_used": 1_700_000_000,
                      "attributes": {"device_model": "Pixel", "app_version": "1.2",
                                     "push_enabled": "true"}}
    assert _v2_device("42", "tok", "ios", {"attributes": None}) == {
        "token": "tok", "platform": "ios", "attributes": {}}


def test_v1_keeps_the_device_exactly_as_the_official_sdk_sends_it() -> None:
    """Over v1 the attributes mapping stays a top-level key of the device, as in the SDK."""
    op = ops.add_device("42", "tok", "ios", {"attributes": {"app_version": "1.2"}})
    assert op.seal(batch=False).body == (
        b'{"device": {"attributes": {"app_version": "1.2"}, "id": "tok", "platform": "ios"}}')


@pytest.mark.parametrize(("field", "data"), [
    ("data.attributes", {"attributes": ["app_version", "1.2"]}),
    ("data.attributes", {"attributes": "1.2"}),
    ("data.last_used", {"last_used": "yesterday"}),
    ("data.last_used", {"last_used": 1.7e9}),
    ("data.last_used", {"last_used": True}),
    ("data.last_used", {"last_used": 1_700_000_000_000}),
])
def test_device_fields_the_api_cannot_take_are_refused(field: str, data: dict[str, Any]) -> None:
    """attributes must be a mapping and last_used unix seconds, on both transports."""
    assert _refused(ops.add_device, "42", "tok", "ios", data).field == field



def test_a_replayed_device_the_v2_form_cannot_carry_goes_by_v1() -> None:
    """A dead-letter record from before this check, with non-mapping attributes, uses v1."""
    op = ops.Operation("add_device", "/customers/42/devices",
                       {"device": {"attributes": "1.2", "id": "tok", "platform": "ios"}},
                       customer_id="42")
    assert ops.to_v2(op) is None
    assert op.seal(batch=True).v2 is None
    assert op.body == b'{"device": {"attributes": "1.2", "id": "tok", "platform": "ios"}}'


# --- any Python value: only InvalidEventError escapes (issue item 9) ---------------------------

class Hostile:
    """A value whose comparison, hash, truth, str and format all raise."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("Hostile.__eq__")

    def __hash__(self) -> int:
        raise RuntimeError("Hostile.__hash__")

    def __bool__(self) -> bool:
        raise RuntimeError("Hostile.__bool__")

    def __str__(self) -> str:
        raise RuntimeError("Hostile.__str__")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("Hostile.__format__")

    def __repr__(self) -> str:
        return "Hostile()"


class BrokenTz(tzinfo):
    """A time zone whose utcoffset is out of range (or not even a timedelta)."""

    def __init__(self, offset: object = timedelta(hours=25)) -> None:
        self.offset = offset

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        """Return the broken offset."""
        return self.offset  # type: ignore[return-value]

    def dst(self, dt: datetime | None) -> timedelta | None:
        """No daylight saving time."""
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        """Nameless."""
        return None

    def __repr__(self) -> str:
        return f"BrokenTz({self.offset!r})"


class HugeInt(int):
    """An int too long for str(), with a repr hypothesis can print."""

    def __repr__(self) -> str:
        return "HugeInt(10**5000)"


class Colour(enum.Enum):
    """A plain enum: not JSON."""

    RED = "red"


class Size(enum.IntEnum):
    """An int enum."""

    LARGE = 3


class Platform(enum.StrEnum):
    """A str enum whose values are valid platforms."""

    IOS = "ios"


HUGE = HugeInt(10**5000)
tricky_text = st.sampled_from([
    "", " ", ".", "..", "...", "cio_", "cio_1", "a/b", "%2E%2E", "\ud800", "x\udfffy", "\x00",
    "ios", "android", "id", "email", "cio_id", "attributes", "last_used", "recipient",
    "cio_relationships", "a@b.co", "1700000000", "é" * 80, "x" * 151, "1" * 5000,
])
texts = st.one_of(st.text(max_size=12), st.text(st.characters(blacklist_categories=()),
                                                max_size=8), tricky_text)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.just(HUGE), st.floats(), st.complex_numbers(max_magnitude=10), texts,
    st.binary(max_size=4), st.builds(bytearray, st.binary(max_size=4)),
    st.dates(), st.times(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), st.sampled_from(
        [BrokenTz(), BrokenTz("+01:00"), BrokenTz(None)]))),
    st.timedeltas(), st.decimals(), st.fractions(), st.uuids(),
    st.sampled_from([Colour.RED, Size.LARGE, Platform.IOS, Ellipsis, NotImplemented, int, len,
                     range(3)]),
    st.builds(object), st.builds(Hostile),
)
hashables = st.one_of(st.none(), st.booleans(), st.integers(), texts, st.tuples(st.integers()),
                      st.builds(object), st.frozensets(st.integers(), max_size=2))
anything = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.tuples(children, children),
        st.dictionaries(hashables, children, max_size=4),
        st.builds(collections.OrderedDict, st.dictionaries(texts, children, max_size=3)),
        st.sets(hashables, max_size=3), st.frozensets(hashables, max_size=3),
    ),
    max_leaves=10,
)
def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value three times in four, else any value: so later checks are reached too."""
    return st.sampled_from((False, False, False, True)).flatmap(
        lambda wild: anything if wild else valid)


plain_text = st.text(string.ascii_letters + string.digits + "@._-", min_size=1, max_size=12)
ids = mostly(st.one_of(st.sampled_from(["42", "a@b.co", "cio_1"]), plain_text,
                       st.integers(0, 2**63)))
names = mostly(st.one_of(plain_text, st.sampled_from(["purchase", "anything"])))
data = mostly(st.one_of(st.none(), st.dictionaries(texts, anything, max_size=4)))
event_ids = mostly(st.none())
timestamps = mostly(st.sampled_from([None, 1_700_000_000]))
platforms = mostly(st.sampled_from(["ios", "android"]))
id_types = mostly(st.sampled_from(["id", "email", "cio_id"]))
keyword_names = st.one_of(texts, st.sampled_from(["attributes", "last_used", "id", "platform",
                                                  "cio_relationships", "_timestamp"]))


def keywords(*reserved: str) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword data with any str names except the method's own parameter names."""
    return st.dictionaries(keyword_names.filter(lambda n: n not in reserved),
                           st.one_of(anything, st.dictionaries(texts, anything, max_size=3)),
                           max_size=4)


# batch()'s v2 elements: documented shapes mostly, any value in any field now and then.
person_ids = st.dictionaries(st.sampled_from(["id", "email", "cio_id", "phone", "anonymous_id"]),
                             ids, min_size=1, max_size=2)
other_ids = st.sampled_from([{"object_type_id": "1", "object_id": "acme"},
                             {"cio_object_id": "o1"}, {"object_id": "acme"}, {"id": "RPIy"}])
single_ids = st.dictionaries(st.sampled_from(["id", "email", "cio_id"]), ids, min_size=1,
                             max_size=1)
relationships = st.sampled_from([[{"identifiers": {"id": "42"}}], [],
                                 [{"identifiers": {"object_type_id": "1", "object_id": "a"},
                                   "relationship_attributes": {"role": "admin"}}]])
v2_element = st.fixed_dictionaries(
    {"type": mostly(st.sampled_from(["person", "object", "delivery"])),
     "action": mostly(st.sampled_from([
         "identify", "identify_anonymous", "delete", "event", "page", "screen", "add_device",
         "delete_device", "merge", "suppress", "unsuppress", "add_relationships",
         "delete_relationships", "bogus"]))},
    optional={
        "identifiers": mostly(st.one_of(person_ids, other_ids)),
        "name": names, "attributes": data, "id": event_ids, "anonymous_id": names,
        "timestamp": mostly(st.sampled_from([1_700_000_000, datetime(2024, 1, 1), "soon", 1.5])),
        "device": mostly(st.fixed_dictionaries(
            {"token": names, "platform": platforms},
            optional={"last_used": timestamps, "attributes": st.just({"app_version": "1.2"})})),
        "cio_relationships": mostly(relationships),
        "primary": mostly(single_ids), "secondary": mostly(single_ids),
    },
)
operations = mostly(st.lists(mostly(v2_element), max_size=3))

Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def call(method: str, *args: st.SearchStrategy[Any],
         kwargs: st.SearchStrategy[dict[str, Any]] | None = None) -> st.SearchStrategy[Call]:
    return st.tuples(st.just(method), st.tuples(*args),
                     st.just({}) if kwargs is None else kwargs)


# Every public enqueue method of EventQueue, each argument drawn from any Python value.
calls = st.one_of(
    call("identify", ids, kwargs=keywords("id")),
    call("track", ids, names, data, event_ids, timestamps),
    call("track_anonymous", st.one_of(st.none(), ids), names, data, event_ids, timestamps),
    call("pageview", ids, names, kwargs=keywords("customer_id", "page")),
    call("backfill", ids, names, mostly(st.just(1_700_000_000)),
         kwargs=keywords("customer_id", "name", "timestamp")),
    call("delete", ids),
    call("suppress", ids),
    call("unsuppress", ids),
    call("add_device", ids, ids, platforms, kwargs=keywords("customer_id", "device_id",
                                                              "platform")),
    call("delete_device", ids, ids),
    call("merge_customers", id_types, ids, id_types, ids),
    call("batch", operations),
)
KNOWN: list[Call] = [
    ("add_device", ("42", "tok", ["ios"]), {}),
    ("merge_customers", (["id"], "1", "id", "2"), {}),
    ("merge_customers", ("id", "1", {"id"}, "2"), {}),
    ("track", ("42", "ev", None, None, HUGE), {}),
    ("backfill", ("42", "ev", 10**5000), {}),
    ("track", ("42", "ev", None, None, "9" * 5000), {}),
    ("track_anonymous", (Hostile(), "ev", {"recipient": "a@b.co"}, None, None), {}),
    ("add_device", ("42", "tok", Hostile()), {}),
    ("merge_customers", (Hostile(), "1", "id", "2"), {}),
    ("track", ("42", "ev", {"at": datetime(2024, 1, 1, tzinfo=BrokenTz())}, None, None), {}),
    ("track", ("42", "ev", None, None, datetime(2024, 1, 1, tzinfo=BrokenTz("x"))), {}),
    ("identify", ("42",), {"seen": [datetime(2024, 1, 1, tzinfo=BrokenTz(5))]}),
]
SWEEP = settings(max_examples=300, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


def _as_builder_call(method: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The builder's arguments for an EventQueue call (keyword data becomes one dict)."""
    if method in ("identify", "pageview", "backfill", "add_device"):
        return (*args, kwargs)
    return args


def _api_problem(op: ops.Operation) -> str | None:
    """What the fake Track API's validation refuses in the sealed operation, if anything."""
    if op.v2 is not None:
        problems = validate_request("POST", "/api/v2/batch", b'{"batch":[' + op.v2 + b"]}")
    else:
        problems = validate_request(op.method, "/api/v1" + op.path, op.body)
    return "; ".join(problems) or None


def _build_raw(operations: object) -> None:
    """Build and seal batch()'s elements; each one accepted must pass the API."""
    if not isinstance(operations, list | tuple):
        return  # batch() refuses it whole
    for index, element in enumerate(operations):
        try:
            op = ops.raw_v2(element, f"operations[{index}]").seal(batch=True)
        except InvalidEventError as error:
            str(error).encode("utf-8")
            continue
        assert _api_problem(op) is None, (element, _api_problem(op))


def _build_each_way(call_: Call) -> None:
    """Build and seal the call for both transports; accepted forms must pass the API."""
    method, args, kwargs = call_
    if method == "batch":
        _build_raw(*args)
        return
    build: Build = getattr(ops, method)
    for batch in (False, True):
        try:
            op = build(*_as_builder_call(method, args, kwargs)).seal(batch=batch)
        except InvalidEventError as error:
            str(error).encode("utf-8")  # the message is printable text
            continue
        assert _api_problem(op) is None, (call_, batch, _api_problem(op))


@SWEEP
@given(calls)
def test_builders_raise_only_invalid_event_error_for_any_value(call_: Call) -> None:
    """Any value for any builder argument: an accepted operation or InvalidEventError."""
    _build_each_way(call_)


@pytest.mark.parametrize("call_", KNOWN, ids=[f"{i}-{c[0]}" for i, c in enumerate(KNOWN)])
def test_known_offenders_raise_invalid_event_error(call_: Call) -> None:
    """Values that once raised TypeError or ValueError now raise InvalidEventError."""
    method, args, kwargs = call_
    with pytest.raises(InvalidEventError):
        getattr(ops, method)(*_as_builder_call(method, args, kwargs))


class SweepPurchase(TypedDict, total=False):
    """A declared event's data."""

    price: float
    sku: str


class SweepPerson(TypedDict, total=False):
    """A declared person."""

    email: str
    plan: str


class SweepEvents(EventCatalog):
    """The sweep's catalog: one event with a TypedDict, one that takes any mapping."""

    purchase: Event[SweepPurchase]
    anything: Event[dict[str, Any]]


def _typed_calls(method: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """A TypedEventQueue's forms of a call: identify takes its attributes as one mapping too."""
    if method == "identify":
        return [(args, kwargs), ((*args, kwargs), {})]
    return [(args, kwargs)]


@pytest.fixture(scope="module")
def sync_queues() -> Iterator[dict[Transport, SyncEventQueue]]:
    """A SyncEventQueue per transport, shared by the sweep's examples (each starts a thread)."""
    queues: dict[Transport, SyncEventQueue] = {
        transport: SyncEventQueue(_config(transport), sender=RecordingSender())
        for transport in ("v1", "batch")}
    yield queues
    for queue in queues.values():
        queue.close()


@SWEEP
@given(batch=st.lists(calls, min_size=1, max_size=5))
def test_event_queue_raises_only_invalid_event_error_for_any_value(
        sync_queues: dict[Transport, SyncEventQueue], batch: list[Call]) -> None:
    """Any value for any method argument, batch() included: a receipt or InvalidEventError.

    For EventQueue, TypedEventQueue (checking events at run time) and SyncEventQueue.
    """
    async def run(transport: Transport) -> None:
        async with EventQueue(_config(transport), sender=RecordingSender()) as queue, \
                TypedEventQueue(_config(transport), events=SweepEvents, person=SweepPerson,
                                validate_events=True, sender=RecordingSender()) as typed:
            for method, args, kwargs in batch:
                with contextlib.suppress(InvalidEventError):
                    await getattr(queue, method)(*args, **kwargs)
                for typed_args, typed_kwargs in _typed_calls(method, args, kwargs):
                    with contextlib.suppress(InvalidEventError):
                        await getattr(typed, method)(*typed_args, **typed_kwargs)

    transports: tuple[Transport, ...] = ("v1", "batch")
    for transport in transports:
        asyncio.run(run(transport))
        for method, args, kwargs in batch:
            with contextlib.suppress(InvalidEventError):
                getattr(sync_queues[transport], method)(*args, **kwargs)
