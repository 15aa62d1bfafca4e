"""The v2 batch element of each operation kind, and the way back to the v1 payload.

Stage: intake (``Operation.seal`` makes the v2 element of a call once, at enqueue).

The batch transport sends each operation as one element of ``POST /api/v2/batch``: a
person (``identifiers`` read from the v1 path id the way the API reads it) and an action.
An operation that waits keeps only that element's bytes; :data:`V1_FROM_V2` makes its
v1 payload again from them for the kinds that drop it (see ``Operation.seal``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

if TYPE_CHECKING:
    from ._operations import Operation

__all__ = ["NO_TIME", "RAW_KIND", "V1_FROM_V2", "device_token", "event_element",
           "person_identifiers", "rebuilds", "to_v2"]

RAW_KIND: Final = "batch"
"""The kind of an operation given in its v2 form (``EventQueue.batch``); it has no v1 form."""
# What the API treats as an email when it reads an identifier from a v1 path.
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _event_of_v2(keys: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The v1 event payload of a v2 event element, its keys in the order its builder set."""
    def payload(element: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in keys:
            if key == "type":
                out["type"] = "page"
            elif key == "data":
                out["data"] = element["attributes"]
            elif key in element:
                out[key] = element[key]
        return out
    return payload


# The keys of each event kind's v1 payload, in the order its builder sets them.
_EVENT_KEYS: Final = {
    "track": ("name", "data", "id", "timestamp"),
    "backfill": ("name", "data", "timestamp", "id"),
    "pageview": ("type", "name", "data", "id"),
}
# The v1 payload of a v2 element, for the kinds whose payload is dropped once sealed.
V1_FROM_V2: Final[dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "identify": lambda element: element["attributes"],
    **{kind: _event_of_v2(keys) for kind, keys in _EVENT_KEYS.items()},
}
# The payload shapes V1_FROM_V2 gives back exactly: those keys, with or without a timestamp.
_EVENT_SHAPES: Final = {
    kind: frozenset({keys, tuple(key for key in keys if key != "timestamp")})
    for kind, keys in _EVENT_KEYS.items()
}


def rebuilds(kind: str, payload: dict[str, Any]) -> bool:
    """Whether :data:`V1_FROM_V2` makes ``payload`` again from its v2 element, exactly.

    True for what the builders make; a payload of another shape (a dead-letter record
    read back by an import, with keys of its own) is kept as it was given.
    """
    if kind == "identify":
        return True  # its v2 attributes are the payload itself
    shapes = _EVENT_SHAPES.get(kind)
    return (shapes is not None and tuple(payload) in shapes
            and payload.get("type", "page") == "page")


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


NO_TIME: Final = object()
"""An event without a timestamp, to :func:`event_element`."""


def event_element(kind: str, customer_id: object, name: str, event_id: str,
                  attributes: dict[str, Any], *, timestamp: object = NO_TIME) -> dict[str, Any]:
    """The v2 element of a person's event (``timestamp`` NO_TIME: it has none).

    Builders call it straight from the validated parts on the batch transport, so no v1
    payload is made just to be read back; :func:`to_v2` calls it from the payload.
    """
    # One literal each way: a sixth key added to a dict built with five grows its table.
    identifiers = person_identifiers(customer_id)
    action = "page" if kind == "pageview" else "event"
    if timestamp is NO_TIME:
        return {"type": "person", "identifiers": identifiers, "action": action, "name": name,
                "id": event_id, "attributes": attributes}
    return {"type": "person", "identifiers": identifiers, "action": action, "name": name,
            "id": event_id, "timestamp": timestamp, "attributes": attributes}


def _v2_event(op: Operation) -> dict[str, Any]:
    payload = op.payload
    return event_element(op.kind, op.customer_id, payload["name"], payload["id"],
                         payload["data"], timestamp=payload.get("timestamp", NO_TIME))


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
