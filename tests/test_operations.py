"""Pure unit tests of operation validation and wire forms (no I/O)."""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from cio_queue import InvalidEventError
from cio_queue import _operations as ops
from cio_queue._ulid import new_ulid


def _refuses(field: str, build: Any, *args: Any) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        build(*args).seal(batch=False)
    assert info.value.field == field, info.value
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    ("field", "build", "args"),
    [
        ("id", ops.identify, ("", {})),
        ("id", ops.identify, ("   ", {})),
        ("id", ops.identify, (None, {})),
        ("id", ops.identify, (True, {})),
        ("id", ops.identify, (4.2, {})),
        ("id", ops.identify, ("x" * 151, {})),
        ("id", ops.identify, ("é" * 76, {})),  # 152 bytes in UTF-8
        ("customer_id", ops.track, ("", "ev", None, None, None)),
        ("customer_id", ops.track, (["42"], "ev", None, None, None)),
        ("name", ops.track, ("42", "", None, None, None)),
        ("name", ops.track, ("42", 7, None, None, None)),
        ("name", ops.track, ("42", "n" * 101, None, None, None)),
        ("data", ops.track, ("42", "ev", "not a dict", None, None)),
        ("data.when", ops.track, ("42", "ev", {"when": datetime.now().date()}, None, None)),
        ("data.items[1].price", ops.track,
         ("42", "ev", {"items": [{"price": 1}, {"price": Decimal("1.5")}]}, None, None)),
        ("data.big", ops.track, ("42", "ev", {"big": math.inf}, None, None)),
        ("data", ops.track, ("42", "ev", {1: "int key"}, None, None)),
        ("data", ops.track, ("42", "ev", {"blob": "x" * 100_001}, None, None)),
        ("id", ops.track, ("42", "ev", None, "", None)),
        ("id", ops.track, ("42", "ev", None, 17, None)),
        ("timestamp", ops.track, ("42", "ev", None, None, "yesterday")),
        ("timestamp", ops.track, ("42", "ev", None, None, 1_700_000_000_000)),
        ("timestamp", ops.track, ("42", "ev", None, None, True)),
        ("timestamp", ops.backfill, ("42", "ev", None, {})),
        ("anonymous_id", ops.track_anonymous, (None, "invite", {}, None, None)),
        ("anonymous_id", ops.track_anonymous, (["a"], "ev", {}, None, None)),
        ("anonymous_id", ops.track_anonymous, (42, "ev", {}, None, None)),
        ("page", ops.pageview, ("42", "", {})),
        ("attributes.x", ops.identify, ("42", {"x": "v" * 1001})),
        ("attributes.x", ops.identify, ("42", {"x": ["v" * 600, "w" * 600]})),
        ("attributes." + "k" * 151, ops.identify, ("42", {"k" * 151: 1})),
        ("attributes", ops.identify, ("42", {f"a{i}": i for i in range(301)})),
        ("device_id", ops.add_device, ("42", "", "ios", {})),
        ("platform", ops.add_device, ("42", "tok", "windows", {})),
        ("device_id", ops.delete_device, ("42", None)),
        ("primary_id_type", ops.merge_customers, ("phone", "1", "id", "2")),
        ("secondary_id_type", ops.merge_customers, ("id", "1", "cio", "2")),
        ("secondary_id", ops.merge_customers, ("id", "1", "id", "")),
        ("customer_id", ops.suppress, ("",)),
        ("customer_id", ops.unsuppress, (None,)),
        ("customer_id", ops.delete, ("\ud800",)),
    ],
)
def test_bad_input_is_refused_naming_the_field(field: str, build: Any,
                                               args: tuple[Any, ...]) -> None:
    """Every kind of bad input raises InvalidEventError (a ValueError) naming its field."""
    _refuses(field, build, *args)


def test_deep_nesting_and_cycles_are_refused() -> None:
    """A self-referencing or absurdly deep structure is refused instead of recursing forever."""
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    error = _refuses("data" + ".self" * 65, ops.track, "42", "ev", cyclic, None, None)
    assert "nested" in str(error)


def test_sanitising_matches_the_official_sdk() -> None:
    """datetimes become unix seconds (naive = UTC) at any depth, NaN becomes null."""
    naive = datetime(2024, 1, 2, 3, 4, 5)
    aware = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    op = ops.track("42", "ev", {"a": naive, "b": [aware, {"c": math.nan}], "d": (1, 2)},
                   "E1", None)
    assert json.loads(op.body)["data"] == {"a": 1704164645, "b": [1704157445, {"c": None}],
                                           "d": [1, 2]}


def test_structured_identify_attributes_may_exceed_the_value_limit() -> None:
    """cio_relationships is structured by design, so the 1000-byte value limit skips it."""
    relationships = {"action": "add_relationships", "relationships": [
        {"identifiers": {"object_type_id": "1", "object_id": f"acct-{i}"}} for i in range(40)]}
    op = ops.identify("42", {"cio_relationships": relationships})
    assert json.loads(op.body)["cio_relationships"] == relationships


def test_events_get_a_ulid_unless_the_caller_gave_an_id() -> None:
    """Each event is stamped with a fresh ULID, kept in its body, so retries can be deduped."""
    ids = {ops.track("42", "ev", None, None, None).event_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i or "") for i in ids)
    op = ops.pageview("42", "/", {})
    assert json.loads(op.body)["id"] == op.event_id
    assert ops.track("42", "ev", None, "mine", None).event_id == "mine"
    assert ops.identify("42", {}).event_id is None


def test_ulids_sort_by_time() -> None:
    """ULIDs start with the millisecond time, so later ones sort after earlier ones."""
    first = new_ulid()
    later = [new_ulid() for _ in range(2000)][-1]
    assert first[:10] <= later[:10]


def test_a_ulid_carries_80_random_bits() -> None:
    """Every random character takes all 32 values, and the last is not stuck below 32.

    The random part is drawn in pieces and encoded 10 bits at a time; a piece sliced at
    the wrong bit would leave a position with fewer values (2,000 ids give each of the 32
    values of a position about 62 times; missing one by chance is about 1e-25).
    """
    randoms = [new_ulid()[10:] for _ in range(2000)]
    assert [len({r[i] for r in randoms}) for i in range(16)] == [32] * 16


def test_timestamps_are_unix_seconds() -> None:
    """Timestamps accept int, float, digit strings and datetimes, and always send int seconds."""
    for given in (1_700_000_000, 1_700_000_000.9, "1700000000",
                  datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)):
        op = ops.track("42", "ev", None, "E", given)
        assert json.loads(op.body)["timestamp"] == 1_700_000_000


def test_identify_attribute_sizes_count_utf8_bytes() -> None:
    """The per-value limit is 1000 bytes of UTF-8, not 1000 characters."""
    ops.identify("42", {"bio": "a" * 1000})
    _refuses("attributes.bio", ops.identify, "42", {"bio": "é" * 501})


def test_a_payload_of_another_shape_than_the_builders_is_kept_as_given() -> None:
    """Only a payload its v2 element gives back exactly is dropped once sealed.

    A dead-letter record read back by an import may carry keys of its own; its dead
    letter must show them again, in their order.
    """
    record = {"data": {"plan": "pro"}, "name": "ev", "id": "E", "extra": "x"}
    op = ops.Operation("track", None, dict(record), customer_id="42",
                       event_id="E").seal(batch=True)
    assert list(op.payload.items()) == list(record.items())
    built = ops.track("42", "ev", {"plan": "pro"}, "E", None).seal(batch=True)
    assert built.payload == {"name": "ev", "data": {"plan": "pro"}, "id": "E"}


def test_packed_wire_bytes_come_back_byte_for_byte() -> None:
    """Unpacking keeps a v1 body's JSON text: an int below -2**63 stays an int.

    orjson reads such an int as a float; a spool row written before ints were held to
    -2**63..2**64-1 may carry one, and must be sent as it was accepted.
    """
    payload = {"name": "ev", "data": {"n": -(2**64 - 1), "f": 1e16}, "id": "E"}
    op = ops.Operation("track_anonymous", "/events", payload, event_id="E")
    op.seal(batch=False)
    for batch in (False, True):
        back, kind = ops.Operation.unpack(op.pack(), batch=batch)
        assert (kind, back.body) == ("track_anonymous", op.body)
        assert back.payload == payload
        assert type(back.payload["data"]["n"]) is int
    sealed = ops.track("42", "ev", {"f": 1e16, "n": 2**64 - 1}, "E", None).seal(batch=True)
    back, kind = ops.Operation.unpack(sealed.pack(), batch=True)
    assert (kind, back.v2) == ("track", sealed.v2)  # a v2 element too, as it was packed


@pytest.mark.parametrize("stamp", [b'"2026-11-30"', b"null", b"true", b"[1]"])
def test_a_packed_operation_whose_time_is_not_a_number_is_refused(stamp: bytes) -> None:
    """unpack() refuses a record whose enqueued_at is not a number, like any malformed one.

    The fleet keeps such an entry as a dead letter and the spool logs it, instead of
    handing on an operation whose dead letter could not be written.
    """
    packed = ops.track("42", "ev", None, "E", None).seal(batch=True).pack()
    bad, replaced = re.subn(rb'"t":[-+.0-9eE]+', b'"t":' + stamp, packed, count=1)
    assert replaced == 1
    with pytest.raises(ValueError, match="enqueued_at"):
        ops.Operation.unpack(bad, batch=True)


def test_a_device_path_is_made_with_its_operation_and_older_packed_ones_still_load() -> None:
    """The path of a kind is its id plus the kind's suffix, but a device's names the device.

    A delete_device operation makes its path when built. One packed before (a null path
    and the device in its suffix) loads back with the same path; a packed record whose
    method is not its kind's is refused, as a dead-letter record's is.
    """
    op = ops.delete_device("a b", "tok/1")
    assert (op.method, op.path) == ("DELETE", "/customers/a%20b/devices/tok%2F1")
    back, _ = ops.Operation.unpack(op.seal(batch=False).pack(), batch=False)
    assert (back.method, back.path) == (op.method, op.path)
    older = op.pack().replace(b'"p":"/customers/a%20b/devices/tok%2F1","s":""',
                              b'"p":null,"s":"/devices/tok%2F1"')
    assert older != op.pack()
    back, _ = ops.Operation.unpack(older, batch=False)
    assert back.path == op.path
    for build, path in [(ops.track("7", "ev", None, "E", None), "/customers/7/events"),
                        (ops.add_device("7", "t", "ios", {}), "/customers/7/devices"),
                        (ops.suppress("7"), "/customers/7/suppress"),
                        (ops.identify("7", {}), "/customers/7")]:
        assert build.path == path
    wrong = ops.identify("7", {}).seal(batch=False).pack().replace(b'"m":"PUT"', b'"m":"POST"')
    with pytest.raises(ValueError, match="not the method of identify"):
        ops.Operation.unpack(wrong, batch=False)


def test_operations_made_in_one_millisecond_share_their_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst keeps one float for its times, never a time later than an operation's own.

    An operation within a millisecond after the last new time takes that time; a later
    one, or an earlier one (a clock stepped back, another thread's newer time), its own.
    """
    times = iter([1000.0, 1000.0004, 1000.0011, 1000.0002, 1000.0009])
    clock = type("Clock", (), {"time": staticmethod(lambda: next(times))})
    monkeypatch.setattr(ops, "time", clock)
    monkeypatch.setattr(ops, "_last_made", [0.0])
    made = [ops.identify("7", {}).enqueued_at for _ in range(5)]
    assert made == [1000.0, 1000.0, 1000.0011, 1000.0002, 1000.0002]
    assert made[1] is made[0]
    assert made[4] is made[3]
    given = ops.Operation("identify", None, {}, customer_id="7", enqueued_at=5.0)
    assert given.enqueued_at == 5.0


@pytest.mark.parametrize("value", [-(2**63) - 1, -(2**64 - 1), 2**64, -(2**64)])
def test_an_int_no_json_reader_holds_is_refused_on_both_transports(value: int) -> None:
    """-2**63 .. 2**64-1 go out as they are; beyond, the call is refused by field.

    An int id too: it is sent as text, but a spool or a fleet's stream keeps it as a
    number (orjson), where one below -2**63 raised a bare TypeError from the call.
    """
    with pytest.raises(InvalidEventError, match="customer_id"):
        ops.track(value, "ev", None, None, None)
    assert ops.track(-(2**63), "ev", None, None, None).seal(batch=False).pack()
    for batch in (False, True):
        with pytest.raises(InvalidEventError, match=r"data\.n"):
            ops.track("42", "ev", {"n": value}, None, None).seal(batch=batch)
        for fine in (-(2**63), 2**64 - 1):
            op = ops.track("42", "ev", {"n": fine}, None, None).seal(batch=batch)
            wire = op.v2 if op.v2 is not None else op.body
            assert json.loads(wire)["attributes" if batch else "data"]["n"] == fine


def test_an_operation_built_sealed_keeps_its_wire_bytes_in_memory_of_their_size() -> None:
    """orjson hands each result back in a 4 KiB allocation; a queued op must not keep it.

    Each event's bytes are a copy of their own size: a thousand queued events hold well
    under a megabyte between them, not the 4 MB that orjson's buffers would.
    """
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        built = [ops.track(f"c{i}", "purchase", {"price": 9.5}, None, None, batch=True)
                 for i in range(1000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(op.v2 is not None and len(op.v2) < 200 for op in built)
    assert (held - before) / len(built) < 1000  # bytes per operation, object and all
