"""Operations: the validated, serialised form of one call, built at enqueue.

Stage: intake.

The second half of the enqueue stage: after ``_validation`` has checked the caller's
input, every builder here (one per EventQueue method) returns an :class:`Operation` whose
v1 request (method, percent-encoded path, JSON body bytes) is byte-for-byte what the
official ``customerio`` 3.2 SDK sends for the same call, plus an event ``id`` on events.
:meth:`Operation.seal` then serialises it once, as a v1 body or a v2 batch element
(``to_v2``), and checks the size limits of that form. So bad input fails in the caller's
stack and can never poison a batch.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, Final, TypeAlias
from urllib.parse import quote

import orjson

from ._apirules import check_v2_call
from ._exceptions import InvalidEventError
from ._ledger import QUEUED, Entry
from ._ulid import new_ulid
from ._v2forms import (
    NO_TIME,
    RAW_KIND,
    V1_FROM_V2,
    device_token,
    event_element,
    person_identifiers,
    rebuilds,
    to_v2,
)
from ._validation import (
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_ID_BYTES,
    MAX_V2_OPERATION_BYTES,
    UNFIT_PATH_IDS,
    check_attributes,
    check_choice,
    check_device_fields,
    check_event_id,
    check_event_name,
    check_id,
    check_path_id,
    check_timestamp,
    clean_mapping,
    ready_as_is,
)

__all__ = ["EVENT_KINDS", "MERGE_ID_TYPES", "RAW_KIND", "Operation", "Timestamp", "device_token",
           "new_ulid", "person_identifiers", "to_v2"]

Timestamp: TypeAlias = int | float | datetime
"""When an event happened: unix seconds (a float is truncated), or a datetime (naive is UTC).

The run time also takes a string of digits, as the official SDK passes it on, but the type
leaves str out so that a checker flags a str that was never meant to be a time.
"""

# What requests does for json=: default separators, ASCII, no NaN, so that v1 bodies are
# the official SDK's byte for byte. Made once (json.dumps with any non-default option builds
# a new encoder on every call); payloads are trees that clean_mapping copied (or JSON read
# back), never cycles, so it skips the cycle check, a third of its time. A v2 element has
# no such twin to match, and orjson encodes it about ten times faster: compact UTF-8, from
# the same sanitised values (finite floats, str keys, ints within 64 bits).
_V1_ENCODER: Final = json.JSONEncoder(allow_nan=False, check_circular=False)
MERGE_ID_TYPES: Final = frozenset({"id", "email", "cio_id"})
PLATFORMS: Final = frozenset({"ios", "android"})
EVENT_KINDS: Final = frozenset({"track", "track_anonymous", "pageview", "backfill"})
METHODS: Final = {"identify": "PUT", "delete": "DELETE", "add_device": "PUT",
                  "delete_device": "DELETE"}
"""The v1 method of each kind that is not sent by POST."""
SUFFIXES: Final = {"track": "/events", "pageview": "/events", "backfill": "/events",
                   "suppress": "/suppress", "unsuppress": "/unsuppress",
                   "add_device": "/devices"}
"""What follows ``/customers/{id}`` in the path of a person's kind, where the kind alone
says it (a ``delete_device`` path, which names the device, is made with the operation)."""
_last_made: Final = [0.0]  # the time of the latest operation made, shared within its ms


_EventParts: TypeAlias = tuple[str, dict[str, Any], str, "int | float | None"]
"""An event's checked name, data, id and timestamp (None: it has none)."""


def _encode_v2(element: object, field: str = "operation") -> bytes:
    """A v2 element's compact JSON, in a bytes object of its own size.

    Raises:
        InvalidEventError: it is over the API's 32 KB limit for one operation.
    """
    # orjson (3.13) keeps each result in a 4 KiB allocation: a queued operation held 4 KiB
    # for about 150 bytes of JSON. The copy gives the rest back: %-formatting makes it in
    # about 30 ns, where a memoryview's tobytes() took 100.
    wire = b"%b" % orjson.dumps(element)
    if len(wire) > MAX_V2_OPERATION_BYTES:
        raise InvalidEventError(field, f"is {len(wire)} bytes as a v2 batch operation; the "
                                       f"limit is {MAX_V2_OPERATION_BYTES}")
    return wire


def _sealed_event(kind: str, customer_id: object, parts: _EventParts) -> Operation:
    """A person's event built sealed for the batch transport, from its validated parts.

    What ``seal(batch=True)`` makes of the v1 form, without making the v1 form: its v2
    element is the wire bytes, and its payload is made from them if ever needed. (The
    32 KB limit of an element is below the 100,000 bytes of data an event may carry, so
    the data's own limit cannot be reached here.)
    """
    name, data, event_id, timestamp = parts
    op = Operation(kind, None, None, customer_id, event_id)
    op.v2 = _encode_v2(event_element(kind, customer_id, name, event_id, data,
                                     timestamp=NO_TIME if timestamp is None else timestamp))
    return op


def _plain_event(kind: str, customer_id: object, name: object, data: object) -> Operation | None:
    """The usual event, built sealed in one step; None: build it the long way.

    Usual means plain input, told by type tests alone: an ASCII str id and name within
    their limits that the checks accept (the same tests check_id and check_event_name
    make first), data JSON-ready as given, and no event id or timestamp (the caller
    sees to those). Every check of the long way would pass, so this builds what it
    builds, in a tenth of the calls (a property test holds the two to the same bytes);
    anything else goes the long way, which alone refuses input.

    The data is encoded as it is, not copied first as the long way copies it: nothing
    between the check and the encoding runs the caller's code (exact types only), so
    nothing can change it in between. The long way can (a str subclass's methods, a
    tzinfo), hence its copy.
    """
    if not (type(customer_id) is str and customer_id.isascii()
            and 0 < len(customer_id) <= MAX_ID_BYTES and not customer_id.isspace()
            and customer_id not in UNFIT_PATH_IDS
            and type(name) is str and name.isascii() and 0 < len(name) <= MAX_EVENT_NAME_BYTES
            and not name.isspace() and type(data) is dict and ready_as_is(data)):
        return None
    event_id = new_ulid()
    op = Operation(kind, None, None, customer_id, event_id)
    op.v2 = _encode_v2(event_element(kind, customer_id, name, event_id, data))
    return op


class Operation(Entry):
    """One validated operation, with its v1 request and, once sealed, its wire bytes.

    It is its own ledger entry and the caller's receipt once admitted (see
    :class:`~cio_queue._ledger.Entry`); until then those fields rest unused.

    Attributes:
        kind: the EventQueue method that made it, e.g. ``"track"``.
        method: the v1 HTTP method.
        path: the percent-encoded v1 path below ``/api/v1``, e.g. ``"/customers/42/events"``.
        payload: the sanitised v1 body as a dict (for the dead letters and the v2 form).
        customer_id: the person the operation is about, as given (None for anonymous and
            merge operations).
        event_id: the event's dedupe id (events only).
        enqueued_at: ``time.time()`` when it was built.
        v2: the compact JSON of its v2 batch element, once sealed for the batch transport.
    """

    # Every slot is 8 bytes on each queued operation: what the kind determines (the v1
    # method, the path's suffix) is looked up by kind instead of kept. (kind and
    # event_id are the receipt's slots.)
    __slots__ = ("_body", "_path", "_payload", "customer_id", "enqueued_at", "v2")

    def __init__(self, kind: str, path: str | None, payload: dict[str, Any] | None,
                 customer_id: object = None, event_id: str | None = None, *,
                 enqueued_at: float | None = None) -> None:
        # Positional or keyword: a call by keyword makes a dict of them, a tenth of the
        # cost of an operation built sealed; the builders pass them by position.
        self.kind = kind
        # A person's path (None here) is made when first needed (v1, a dead letter) from
        # the id and the kind's SUFFIXES: the batch transport never needs it, and
        # percent-encoding costs a tenth of an enqueue.
        self._path = path
        self._payload: dict[str, Any] | None = payload
        self.customer_id = customer_id
        self.event_id = event_id
        if enqueued_at is None:
            # Operations made in the same millisecond share one float (24 bytes each,
            # for a time the dead letters and the spool give to the millisecond): a
            # burst of them costs one. Another thread's newer time is never taken.
            enqueued_at = time.time()
            last = _last_made[0]
            if 0.0 <= enqueued_at - last < 0.001:
                enqueued_at = last
            else:
                _last_made[0] = enqueued_at
        self.enqueued_at = enqueued_at
        self._body: bytes | None = None
        self.v2: bytes | None = None
        # Its receipt's and its entry's fields (as Entry's subclasses set them).
        self._loop = None
        self._outcome = None
        self.state = QUEUED
        self.attempts = 0
        self.verdict = None

    @property
    def op(self) -> Operation:
        """The operation, as its entry sees it: itself."""
        return self

    def pack(self) -> bytes:
        """Serialise the sealed operation for a spool or a stream (see :meth:`unpack`).

        Its wire bytes are embedded as they are (no second encoding), behind a small header.
        """
        head = orjson.dumps({"k": self.kind, "m": self.method, "p": self._path,
                             "s": SUFFIXES.get(self.kind, ""), "c": self.customer_id,
                             "e": self.event_id, "t": self.enqueued_at,
                             "v2": self.v2 is not None})
        return head[:-1] + b',"w":' + (self.v2 if self.v2 is not None else self.body) + b"}"

    @classmethod
    def unpack(cls, record: bytes, *, batch: bool) -> tuple[Operation, str]:
        """Rebuild an operation from :meth:`pack`, sealed for the transport ``batch`` says.

        An operation packed in its v2 form comes back as what it now is, a v2 element
        (kind ``RAW_KIND``, as ``EventQueue.batch`` makes), and goes by ``/api/v2/batch``
        whatever the transport now is; one packed in its v1 form goes by v2 when
        ``batch`` and it has a v2 form.

        Returns:
            The operation, and the kind it was enqueued as (for its receipt and outcome).

        Raises:
            ValueError: not a packed operation.
        """
        try:
            head = orjson.loads(record)
            kind = head["k"]
            if type(head["t"]) not in (int, float):
                raise ValueError("its enqueued_at is not a number")
            # The wire bytes as pack() embedded them, kept as they are: a v2 element is
            # orjson's text already, and a v1 body json's (whose payload is made by json
            # when needed: orjson reads an int below -2**63 as a float).
            wire = record[record.index(b',"w":') + 5:-1]
            if head["v2"]:
                op = cls(RAW_KIND, "", head["w"], customer_id=head["c"],
                         event_id=head["e"], enqueued_at=head["t"])
                op.v2 = wire
                return op, kind
            path = head["p"]
            if head["m"] != METHODS.get(kind, "POST"):
                raise ValueError(f"{head['m']} is not the method of {kind}")
            if path is None and head["s"] != SUFFIXES.get(kind, ""):
                # Written before a device's path was made with its operation.
                path = _person_path(head["c"], head["s"])
            op = cls(kind, path, None, customer_id=head["c"], event_id=head["e"],
                     enqueued_at=head["t"])
            op._body = wire
        except (KeyError, TypeError, ValueError) as exc:  # orjson's errors are ValueErrors
            raise ValueError(f"not a packed operation: {exc}") from None
        return op.seal(batch=batch), kind

    @property
    def method(self) -> str:
        """The v1 HTTP method, the kind's."""
        return METHODS.get(self.kind, "POST")

    @property
    def path(self) -> str:
        """The percent-encoded v1 path below ``/api/v1``, e.g. ``"/customers/42/events"``."""
        if self._path is None:
            self._path = _person_path(self.customer_id, SUFFIXES.get(self.kind, ""))
        return self._path

    @property
    def payload(self) -> dict[str, Any]:
        """The sanitised v1 body as a dict (made again from the wire bytes once sealed)."""
        payload = self._payload
        if payload is None:
            payload = self._payload = _payload_of(self)
        return payload

    @property
    def body(self) -> bytes:
        """The v1 JSON body, exactly as the official SDK encodes it (encoded on first use)."""
        if self._body is None:
            self._body = _V1_ENCODER.encode(self.payload).encode("ascii")
        return self._body

    def seal(self, *, batch: bool) -> Operation:
        """Serialise the operation once, for the transport that will carry it.

        With ``batch``, operations that have a v2 form get their compact v2 element in
        ``v2``; the others (anonymous events) and every operation without ``batch`` get
        their v1 body. The size limits of that form are checked here.

        Returns:
            The operation itself.

        Raises:
            InvalidEventError: event data over 100,000 bytes, or a v2 element over 32 KB.
        """
        if self.v2 is not None or (not batch and self._body is not None):
            return self  # sealed already: built so, or by a SyncEventQueue's caller thread
        size = self._encode(batch)
        # The wire bytes contain the data, so a small message proves small data cheaply.
        if self.kind in EVENT_KINDS and size > MAX_EVENT_DATA_BYTES:
            self._check_data_size()
        # The wire bytes hold the payload: while the operation waits, the dict is not kept
        # (a few hundred bytes and a tracked object per queued operation); what needs it
        # again (a dead letter, before_send on a copy) makes it from the bytes.
        payload = self._payload
        if payload is not None and (self.v2 is None or rebuilds(self.kind, payload)):
            self._payload = None
        return self

    def _encode(self, batch: bool) -> int:
        """Make the wire bytes of the form ``batch`` asks for; return their size."""
        form = to_v2(self) if batch or self.kind == RAW_KIND else None
        if form is None:
            return len(self.body)
        self.v2 = _encode_v2(form)
        return len(self.v2)

    def _check_data_size(self) -> None:
        """Refuse event data over 100,000 bytes of compact JSON."""
        data_size = len(json.dumps(self.payload["data"], separators=(",", ":")).encode())
        if data_size > MAX_EVENT_DATA_BYTES:
            raise InvalidEventError("data", f"is {data_size} bytes of JSON; the limit is "
                                            f"{MAX_EVENT_DATA_BYTES}")


def _person_path(customer_id: object, suffix: str) -> str:
    """The v1 path of a person's operation: the id percent-encoded, then the suffix."""
    return f"/customers/{quote(str(customer_id), safe='')}{suffix}"


def _payload_of(op: Operation) -> dict[str, Any]:
    """Make a sealed operation's v1 payload again from its wire bytes (see ``seal``)."""
    if op.v2 is not None:
        return V1_FROM_V2[op.kind](orjson.loads(op.v2))
    assert op._body is not None, "an operation without a payload is sealed"
    # json, not orjson: the body is json's own text, and orjson reads an int below -2**63
    # (which v1 may carry) as a float.
    payload: dict[str, Any] = json.loads(op._body)
    return payload


def with_properties(data: object, properties: dict[str, Any]) -> object:
    """Event data with keyword properties joined in (async-customerio's ``track`` shape)."""
    if not properties:
        return data
    if data is not None and not isinstance(data, dict):
        raise InvalidEventError("data", "must be a dict when keyword properties are given too")
    return {**(data or {}), **properties}


_RAW_EVENTS: Final = frozenset({"event", "page", "screen"})


def raw_v2(operation: object, field: str) -> Operation:
    """Build an operation from a v2 batch element given as it is (``EventQueue.batch``).

    The element is sanitised like event data (datetimes become unix seconds, NaN null),
    then checked as the Track API documents v2 operations (``_apirules``); an event
    without an ``id`` gets a ULID, as every other event does. It is sealed here, so that
    ``batch()`` checks the 32 KB limit of every element before it queues any.
    """
    element = clean_mapping(operation, field)
    check_v2_call(element, field)
    event_id = None
    if element["action"] in _RAW_EVENTS:
        event_id = element.setdefault("id", new_ulid())
        if not isinstance(event_id, str) or not event_id.strip():
            raise InvalidEventError(f"{field}.id", "must be a non-blank str (a ULID is best)")
    identifiers = element.get("identifiers")
    person = next(iter(identifiers.values()), None) if isinstance(identifiers, dict) else None
    op = Operation(RAW_KIND, "", element, customer_id=person, event_id=event_id)
    op.v2 = _encode_v2(element, field)
    return op


# --- builders, one per EventQueue method -------------------------------------------

def identify(id: object, attributes: dict[str, Any]) -> Operation:
    check_path_id(id, "id")
    payload = clean_mapping(attributes, "attributes")
    check_attributes(payload)
    return Operation("identify", None, payload, id)


def _event_parts(name: object, data: object, event_id: object,
                 timestamp: object) -> _EventParts:
    """An event's name, data, id and timestamp (None: not given), checked in that order."""
    return (check_event_name(name), {} if data is None else clean_mapping(data, "data"),
            check_event_id(event_id), None if timestamp is None else check_timestamp(timestamp))


def _event_payload(name: str, data: dict[str, Any], event_id: str,
                   timestamp: int | float | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name, "data": data, "id": event_id}
    if timestamp is not None:
        payload["timestamp"] = timestamp
    return payload


# The event builders take ``batch``: True builds the operation sealed for the batch
# transport, straight from the checked parts (what seal(batch=True) would make of it).


def track(customer_id: object, name: object, data: object, event_id: object,
          timestamp: object, *, batch: bool = False) -> Operation:
    if batch and event_id is None and timestamp is None:
        plain = _plain_event("track", customer_id, name, data)
        if plain is not None:
            return plain
    check_path_id(customer_id, "customer_id")
    parts = _event_parts(name, data, event_id, timestamp)
    if batch:
        return _sealed_event("track", customer_id, parts)
    return Operation("track", None, _event_payload(*parts), customer_id, parts[2])


def track_anonymous(anonymous_id: object, name: object, data: object, event_id: object,
                    timestamp: object) -> Operation:
    payload = _event_payload(*_event_parts(name, data, event_id, timestamp))
    # Like the official SDK, None and "" mean no anonymous id (an invite); type first, so
    # an arbitrary object is never compared.
    if anonymous_id is not None and not (isinstance(anonymous_id, str) and anonymous_id == ""):
        check_id(anonymous_id, "anonymous_id", allow_int=False)
        payload["anonymous_id"] = anonymous_id
    elif "recipient" not in payload["data"]:
        raise InvalidEventError("anonymous_id", "is blank: an event without one is an invite "
                                                "and needs data['recipient']")
    return Operation("track_anonymous", "/events", payload, event_id=payload["id"])


def pageview(customer_id: object, page: object, data: dict[str, Any],
             event_id: object = None, *, batch: bool = False) -> Operation:
    if batch and event_id is None:
        plain = _plain_event("pageview", customer_id, page, data)
        if plain is not None:
            return plain
    check_path_id(customer_id, "customer_id")
    eid = check_event_id(event_id)
    name = check_event_name(page, "page")
    cleaned = clean_mapping(data, "data")
    if batch:
        return _sealed_event("pageview", customer_id, (name, cleaned, eid, None))
    payload = {"type": "page", "name": name, "data": cleaned, "id": eid}
    return Operation("pageview", None, payload, customer_id, eid)


def backfill(customer_id: object, name: object, timestamp: object,
             data: dict[str, Any], event_id: object = None, *, batch: bool = False) -> Operation:
    check_path_id(customer_id, "customer_id")
    eid = check_event_id(event_id)
    checked = check_event_name(name)
    cleaned = clean_mapping(data, "data")
    when = check_timestamp(timestamp)
    if batch:
        return _sealed_event("backfill", customer_id, (checked, cleaned, eid, when))
    payload = {"name": checked, "data": cleaned, "timestamp": when, "id": eid}
    return Operation("backfill", None, payload, customer_id, eid)


def _bare(kind: str, customer_id: object) -> Operation:
    check_path_id(customer_id, "customer_id")
    return Operation(kind, None, {}, customer_id)


def delete(customer_id: object) -> Operation:
    return _bare("delete", customer_id)


def suppress(customer_id: object) -> Operation:
    return _bare("suppress", customer_id)


def unsuppress(customer_id: object) -> Operation:
    return _bare("unsuppress", customer_id)


def add_device(customer_id: object, device_id: object, platform: object,
               data: dict[str, Any]) -> Operation:
    check_path_id(customer_id, "customer_id")
    # The API wants a string token. A dot segment is refused here too: delete_device could
    # never address that device.
    check_path_id(device_id, "device_id", allow_int=False)
    check_choice(platform, PLATFORMS, "platform")
    device = clean_mapping(data, "data")
    check_device_fields(device)
    device.update({"id": device_id, "platform": platform})
    return Operation("add_device", None, {"device": device}, customer_id=customer_id)


def delete_device(customer_id: object, device_id: object) -> Operation:
    check_path_id(customer_id, "customer_id")
    device = check_path_id(device_id, "device_id")
    path = _person_path(customer_id, f"/devices/{quote(device, safe='')}")
    return Operation("delete_device", path, {}, customer_id=customer_id)


def merge_customers(primary_id_type: object, primary_id: object, secondary_id_type: object,
                    secondary_id: object) -> Operation:
    check_choice(primary_id_type, MERGE_ID_TYPES, "primary_id_type")
    check_choice(secondary_id_type, MERGE_ID_TYPES, "secondary_id_type")
    check_id(primary_id, "primary_id")
    check_id(secondary_id, "secondary_id")
    payload = {"primary": {primary_id_type: primary_id},
               "secondary": {secondary_id_type: secondary_id}}
    return Operation("merge_customers", "/merge_customers", payload)
