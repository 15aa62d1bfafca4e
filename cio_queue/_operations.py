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
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeAlias
from urllib.parse import quote, unquote

import orjson

from ._apirules import check_v2_call
from ._exceptions import InvalidEventError
from ._ulid import new_ulid
from ._validation import (
    MAX_EVENT_DATA_BYTES,
    MAX_V2_OPERATION_BYTES,
    check_attributes,
    check_choice,
    check_device_fields,
    check_event_id,
    check_event_name,
    check_id,
    check_path_id,
    check_timestamp,
    clean_mapping,
)

__all__ = ["EVENT_KINDS", "MERGE_ID_TYPES", "Operation", "Timestamp", "new_ulid",
           "person_identifiers", "to_v2"]

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
# What the API treats as an email when it reads an identifier from a v1 path.
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _encode_v2(element: object) -> bytes:
    """A v2 element's compact JSON, in a bytes object of its own size."""
    # orjson (3.13) keeps each result in a 4 KiB allocation: a queued operation held 4 KiB
    # for about 150 bytes of JSON. The copy (tens of nanoseconds) gives the rest back.
    return memoryview(orjson.dumps(element)).tobytes()


class Operation:
    """One validated operation, with its v1 request and, once sealed, its wire bytes.

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

    __slots__ = ("_body", "_path", "_suffix", "customer_id", "enqueued_at", "event_id", "kind",
                 "method", "payload", "v2")

    def __init__(self, kind: str, method: str, path: str | None, payload: dict[str, Any],
                 *, customer_id: object = None, event_id: str | None = None,
                 enqueued_at: float | None = None, suffix: str = "") -> None:
        self.kind = kind
        self.method = method
        # A person's path is made when first needed (v1, a dead letter): the batch
        # transport never needs it, and percent-encoding costs a tenth of an enqueue.
        self._path = path
        self._suffix = suffix
        self.payload = payload
        self.customer_id = customer_id
        self.event_id = event_id
        self.enqueued_at = time.time() if enqueued_at is None else enqueued_at
        self._body: bytes | None = None
        self.v2: bytes | None = None

    def __repr__(self) -> str:
        return f"<Operation {self.kind} {self.method} {self.path}>"

    def pack(self) -> bytes:
        """Serialise the sealed operation for a spool or a stream (see :meth:`unpack`).

        Its wire bytes are embedded as they are (no second encoding), behind a small header.
        """
        head = orjson.dumps({"k": self.kind, "m": self.method, "p": self._path,
                             "s": self._suffix, "c": self.customer_id, "e": self.event_id,
                             "t": self.enqueued_at, "v2": self.v2 is not None})
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
            kind, body = head["k"], head["w"]
            if head["v2"]:
                op = cls(RAW_KIND, "POST", "", body, customer_id=head["c"],
                         event_id=head["e"], enqueued_at=head["t"])
                op.v2 = _encode_v2(body)
                return op, kind
            op = cls(kind, head["m"], head["p"], body, customer_id=head["c"],
                     event_id=head["e"], enqueued_at=head["t"], suffix=head["s"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a packed operation: {exc}") from None
        return op.seal(batch=batch), kind

    @property
    def path(self) -> str:
        """The percent-encoded v1 path below ``/api/v1``, e.g. ``"/customers/42/events"``."""
        if self._path is None:
            self._path = f"/customers/{quote(str(self.customer_id), safe='')}{self._suffix}"
        return self._path

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
            return self  # sealed already (a SyncEventQueue seals in the caller's thread)
        form = to_v2(self) if batch or self.kind == RAW_KIND else None
        if form is not None:
            self.v2 = _encode_v2(form)
            size = len(self.v2)
            if size > MAX_V2_OPERATION_BYTES:
                raise InvalidEventError("operation", f"is {size} bytes as a v2 batch operation; "
                                                     f"the limit is {MAX_V2_OPERATION_BYTES}")
        else:
            size = len(self.body)
        # The wire bytes contain the data, so a small message proves small data cheaply.
        if self.kind in EVENT_KINDS and size > MAX_EVENT_DATA_BYTES:
            self._check_data_size()
        return self

    def _check_data_size(self) -> None:
        """Refuse event data over 100,000 bytes of compact JSON."""
        data_size = len(json.dumps(self.payload["data"], separators=(",", ":")).encode())
        if data_size > MAX_EVENT_DATA_BYTES:
            raise InvalidEventError("data", f"is {data_size} bytes of JSON; the limit is "
                                            f"{MAX_EVENT_DATA_BYTES}")


def person_identifiers(customer_id: object) -> dict[str, str]:
    """Map a v1 path identifier to v2 ``identifiers`` the way the API reads a v1 path.

    A ``cio_`` prefix means a cio_id (sent without the prefix), an email-like value an
    email, anything else an id.
    """
    text = customer_id if type(customer_id) is str else str(customer_id)
    if text.startswith("cio_"):
        return {"cio_id": text[4:]}
    if "@" in text and _EMAIL.fullmatch(text):
        return {"email": text}
    return {"id": text}


def _person(op: Operation, action: str) -> dict[str, Any]:
    return {"type": "person", "identifiers": person_identifiers(op.customer_id),
            "action": action}


def _v2_identify(op: Operation) -> dict[str, Any]:
    element = _person(op, "identify")
    element["attributes"] = op.payload
    return element


def _v2_event(op: Operation) -> dict[str, Any]:
    payload = op.payload
    element = _person(op, "page" if op.kind == "pageview" else "event")
    element["name"] = payload["name"]
    element["id"] = payload["id"]
    if "timestamp" in payload:
        element["timestamp"] = payload["timestamp"]
    element["attributes"] = payload["data"]
    return element


def _v2_add_device(op: Operation) -> dict[str, Any] | None:
    extra = dict(op.payload["device"])
    device: dict[str, Any] = {"token": extra.pop("id"), "platform": extra.pop("platform")}
    if "last_used" in extra:
        device["last_used"] = extra.pop("last_used")
    given = extra.pop("attributes", None)
    if given is not None and not isinstance(given, dict):
        return None  # only in an old dead-letter record: it can still go by v1
    # The caller's attributes mapping (the v1 device shape) is the v2 attributes; other
    # keys join it, and the mapping wins a clash, being the more specific of the two.
    device["attributes"] = {**extra, **given} if given else extra
    element = _person(op, "add_device")
    element["device"] = device
    return element


def device_token(op: Operation) -> str:
    """The device token of a ``delete_device`` operation (the last segment of its path)."""
    return unquote(op.path.rsplit("/", 1)[1])


def _v2_delete_device(op: Operation) -> dict[str, Any]:
    element = _person(op, "delete_device")
    element["device"] = {"token": device_token(op)}
    return element


def _v2_merge(op: Operation) -> dict[str, Any]:
    payload = op.payload
    return {"type": "person", "action": "merge",
            "primary": {k: str(v) for k, v in payload["primary"].items()},
            "secondary": {k: str(v) for k, v in payload["secondary"].items()}}


def _v2_bare(op: Operation) -> dict[str, Any]:
    return _person(op, op.kind)  # delete, suppress, unsuppress: the action is the kind


# The v2 batch element of each kind, or None. Kinds missing here have no v2 form and go
# by v1: track_anonymous, because v2 has no anonymous person identifier.
_V2_FORMS: Final[dict[str, Callable[[Operation], dict[str, Any] | None]]] = {
    "identify": _v2_identify,
    "track": _v2_event,
    "backfill": _v2_event,
    "pageview": _v2_event,
    "add_device": _v2_add_device,
    "delete_device": _v2_delete_device,
    "merge_customers": _v2_merge,
    "delete": _v2_bare,
    "suppress": _v2_bare,
    "unsuppress": _v2_bare,
}


def to_v2(op: Operation) -> dict[str, Any] | None:
    """Return the v2 batch element of an operation, or None when it has no v2 form."""
    if op.kind == RAW_KIND:
        return op.payload
    form = _V2_FORMS.get(op.kind)
    return None if form is None else form(op)


def with_properties(data: object, properties: dict[str, Any]) -> object:
    """Event data with keyword properties joined in (async-customerio's ``track`` shape)."""
    if not properties:
        return data
    if data is not None and not isinstance(data, dict):
        raise InvalidEventError("data", "must be a dict when keyword properties are given too")
    return {**(data or {}), **properties}


RAW_KIND: Final = "batch"
"""The kind of an operation given in its v2 form (``EventQueue.batch``); it has no v1 form."""
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
    op = Operation(RAW_KIND, "POST", "", element, customer_id=person, event_id=event_id)
    op.v2 = _encode_v2(element)
    if len(op.v2) > MAX_V2_OPERATION_BYTES:
        raise InvalidEventError(field, f"is {len(op.v2)} bytes as a v2 batch operation; the "
                                       f"limit is {MAX_V2_OPERATION_BYTES}")
    return op


# --- builders, one per EventQueue method -------------------------------------------

def identify(id: object, attributes: dict[str, Any]) -> Operation:
    check_path_id(id, "id")
    payload = clean_mapping(attributes, "attributes")
    check_attributes(payload)
    return Operation("identify", "PUT", None, payload, customer_id=id)


def _event_payload(name: object, data: object, event_id: object,
                   timestamp: object) -> tuple[dict[str, Any], str]:
    payload: dict[str, Any] = {
        "name": check_event_name(name),
        "data": {} if data is None else clean_mapping(data, "data"),
    }
    eid = check_event_id(event_id)
    payload["id"] = eid
    if timestamp is not None:
        payload["timestamp"] = check_timestamp(timestamp)
    return payload, eid


def track(customer_id: object, name: object, data: object, event_id: object,
          timestamp: object) -> Operation:
    check_path_id(customer_id, "customer_id")
    payload, eid = _event_payload(name, data, event_id, timestamp)
    return Operation("track", "POST", None, payload, customer_id=customer_id, event_id=eid,
                     suffix="/events")


def track_anonymous(anonymous_id: object, name: object, data: object, event_id: object,
                    timestamp: object) -> Operation:
    payload, eid = _event_payload(name, data, event_id, timestamp)
    # Like the official SDK, None and "" mean no anonymous id (an invite); type first, so
    # an arbitrary object is never compared.
    if anonymous_id is not None and not (isinstance(anonymous_id, str) and anonymous_id == ""):
        check_id(anonymous_id, "anonymous_id", allow_int=False)
        payload["anonymous_id"] = anonymous_id
    elif "recipient" not in payload["data"]:
        raise InvalidEventError("anonymous_id", "is blank: an event without one is an invite "
                                                "and needs data['recipient']")
    return Operation("track_anonymous", "POST", "/events", payload, event_id=eid)


def pageview(customer_id: object, page: object, data: dict[str, Any],
             event_id: object = None) -> Operation:
    check_path_id(customer_id, "customer_id")
    eid = check_event_id(event_id)
    payload: dict[str, Any] = {"type": "page", "name": check_event_name(page, "page"),
                               "data": clean_mapping(data, "data"), "id": eid}
    return Operation("pageview", "POST", None, payload, customer_id=customer_id, event_id=eid,
                     suffix="/events")


def backfill(customer_id: object, name: object, timestamp: object,
             data: dict[str, Any], event_id: object = None) -> Operation:
    check_path_id(customer_id, "customer_id")
    eid = check_event_id(event_id)
    payload: dict[str, Any] = {"name": check_event_name(name),
                               "data": clean_mapping(data, "data"),
                               "timestamp": check_timestamp(timestamp), "id": eid}
    return Operation("backfill", "POST", None, payload, customer_id=customer_id, event_id=eid,
                     suffix="/events")


def _bare(kind: str, method: str, suffix: str, customer_id: object) -> Operation:
    check_path_id(customer_id, "customer_id")
    return Operation(kind, method, None, {}, customer_id=customer_id, suffix=suffix)


def delete(customer_id: object) -> Operation:
    return _bare("delete", "DELETE", "", customer_id)


def suppress(customer_id: object) -> Operation:
    return _bare("suppress", "POST", "/suppress", customer_id)


def unsuppress(customer_id: object) -> Operation:
    return _bare("unsuppress", "POST", "/unsuppress", customer_id)


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
    return Operation("add_device", "PUT", None, {"device": device}, customer_id=customer_id,
                     suffix="/devices")


def delete_device(customer_id: object, device_id: object) -> Operation:
    check_path_id(customer_id, "customer_id")
    device = check_path_id(device_id, "device_id")
    return Operation("delete_device", "DELETE", None, {}, customer_id=customer_id,
                     suffix=f"/devices/{quote(device, safe='')}")


def merge_customers(primary_id_type: object, primary_id: object, secondary_id_type: object,
                    secondary_id: object) -> Operation:
    check_choice(primary_id_type, MERGE_ID_TYPES, "primary_id_type")
    check_choice(secondary_id_type, MERGE_ID_TYPES, "secondary_id_type")
    check_id(primary_id, "primary_id")
    check_id(secondary_id, "secondary_id")
    payload = {"primary": {primary_id_type: primary_id},
               "secondary": {secondary_id_type: secondary_id}}
    return Operation("merge_customers", "POST", "/merge_customers", payload)
