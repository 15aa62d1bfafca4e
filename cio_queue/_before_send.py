"""before_send: the application's own hook on every operation, at enqueue.

Stage: intake, before validation's result is sealed. ``QueueConfig(before_send=fn)`` gets
an :class:`OperationView` of each operation in the caller's stack and returns it (changed
with ``dataclasses.replace`` or in place, or as it is) or None to drop it. The view's
attributes are a deep copy, so the hook never touches the built operation; whatever it
returns that differs from that operation in any way (even the same view, edited in place)
is built again by the same builders, so it is validated like the caller's own input, and
a failure names the hook. The view is the stable shape the hook sees, whatever the
transport.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from . import _operations as ops
from ._config import BeforeSend
from ._exceptions import InvalidEventError
from ._validation import clean_mapping

__all__ = ["BeforeSend", "OperationView", "apply_before_send"]


@dataclasses.dataclass(frozen=True, slots=True)
class OperationView:
    """One operation as ``before_send`` sees it.

    Attributes:
        kind: the EventQueue method that made it: ``"identify"``, ``"track"``, ...
        customer_id: the person, as given (the anonymous id for ``track_anonymous``;
            for ``batch``, the first value of the element's ``identifiers``, or None;
            None for ``merge_customers``).
        identifiers: the person as the API reads it, e.g. ``{"id": "42"}`` or
            ``{"email": "ada@example.com"}`` (empty for ``track_anonymous``,
            ``merge_customers`` and ``batch``); read-only, derived from ``customer_id``,
            which is what to change.
        name: the event name (the page for ``pageview``); None for other kinds.
        attributes: identify's attributes, an event's data, or ``add_device``'s extra
            device fields; empty for the other kinds. A copy: editing it in place is a
            change like any other, validated when the view is returned.
        timestamp: an event's unix seconds when it has one, else None (a ``pageview``
            never has one: setting it is an error, not ignored).
        id: an event's dedupe id, or None.
    """

    kind: str
    customer_id: object
    identifiers: Mapping[str, str]
    name: str | None
    attributes: dict[str, Any]
    timestamp: int | None
    id: str | None


_EVENTS: Final = frozenset({"track", "track_anonymous", "pageview", "backfill"})
# Kinds the hook may pass or drop but not change: their parts do not fit the view.
_PASS_OR_DROP: Final = frozenset({"merge_customers", ops.RAW_KIND})
# What the hook's attributes are compared in: any value orjson would not write as plain
# JSON (a datetime, a dataclass, a subclass of a JSON type) raises, so it counts as a change
# and is rebuilt; a non-str key, an int beyond 64 bits or a lone surrogate raise anyway.
_STRICT: Final = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
                  | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _given(op: ops.Operation) -> tuple[OperationView, dict[str, Any], bytes | None]:
    """The view to hand the hook, the attributes of ``op`` it shows, and their JSON.

    The view's attributes are a deep copy (read back from that JSON), so nothing the hook
    does to them reaches ``op``; the other parts are the operation's own immutable values.
    """
    payload = op.payload
    kind = op.kind
    person = kind not in _PASS_OR_DROP and kind != "track_anonymous"
    identifiers = MappingProxyType(ops.person_identifiers(op.customer_id) if person else {})
    customer_id = payload.get("anonymous_id") if kind == "track_anonymous" else op.customer_id
    name = timestamp = event_id = None
    if kind in _EVENTS:
        name, timestamp, event_id = payload["name"], payload.get("timestamp"), payload["id"]
    attributes = _attributes(kind, payload)
    try:
        snapshot: bytes | None = orjson.dumps(attributes)
    except orjson.JSONEncodeError:  # an int orjson cannot write (the API reads it as text)
        snapshot, copy = None, clean_mapping(attributes, "attributes")
    else:
        copy = orjson.loads(snapshot)  # type: ignore[arg-type]  # dumps returned bytes
    view = OperationView(kind, customer_id, identifiers, name, copy, timestamp, event_id)
    return view, attributes, snapshot


def _attributes(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What the view shows as attributes: identify's, an event's data, a device's fields."""
    if kind in _EVENTS:
        data: dict[str, Any] = payload["data"]
        return data
    if kind == "identify":
        return payload
    if kind == "add_device":
        return {k: v for k, v in payload["device"].items() if k not in ("id", "platform")}
    return {}


def _unchanged(result: OperationView, given: OperationView, attributes: dict[str, Any],
               snapshot: bytes | None) -> bool:
    """Whether ``result`` asks for exactly the operation whose view was ``given``.

    Every part but the attributes must be the very object it was (anything else is rebuilt
    and so validated, however equal it looks). The attributes, which the hook may have
    edited in place, must write the same JSON as the operation's own ``attributes`` (which
    tells 1, 1.0 and True apart, and refuses a datetime, a dataclass or a subclass of a JSON
    type: _STRICT passes them on) and compare equal to them (which tells a str from a UUID
    or an enum member that writes as it).
    """
    if (result.customer_id is not given.customer_id or result.name is not given.name
            or result.timestamp is not given.timestamp or result.id is not given.id
            or result.identifiers is not given.identifiers or snapshot is None):
        return False
    try:
        return (orjson.dumps(result.attributes, option=_STRICT) == snapshot
                and result.attributes == attributes)
    except Exception:  # noqa: BLE001  # not plain JSON, or a hook's value whose __eq__ raised
        return False


def apply_before_send(hook: BeforeSend, op: ops.Operation) -> ops.Operation | None:
    """Run the hook on an operation: the same one, a rebuilt one, or None (dropped).

    The hook gets a view whose attributes are a copy, so nothing it does reaches ``op``.
    What it returns, even the view it was given edited in place, is rebuilt by the
    builders (validated like the caller's own input) unless it asks for exactly ``op``.

    Raises:
        InvalidEventError: the hook raised, returned something else than a view or None,
            changed what its kind cannot change, or changed it into invalid input (then
            the error names the field, and before_send in its message).
    """
    view, attributes, snapshot = _given(op)
    try:
        result = hook(view)
    except Exception as exc:
        raise InvalidEventError("before_send", f"raised {type(exc).__name__}: {exc}") from exc
    if result is None:
        return None
    if not isinstance(result, OperationView) or result.kind != view.kind:
        raise InvalidEventError("before_send", "must return the OperationView it was given "
                                               "(changed with dataclasses.replace) or None")
    if _unchanged(result, view, attributes, snapshot):
        return op
    if view.kind in _PASS_OR_DROP:
        raise InvalidEventError("before_send", f"can pass or drop a {view.kind} operation, "
                                               "not change it")
    if result.identifiers is not view.identifiers:
        raise InvalidEventError("before_send", "cannot change identifiers: they are read "
                                               "from customer_id; change that instead")
    try:
        return _rebuild(result, op)
    except InvalidEventError as exc:
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise InvalidEventError(exc.field, f"in before_send's result, {message}") from exc


def _rebuild(view: OperationView, original: ops.Operation) -> ops.Operation:
    """Build the operation a changed view describes, validating it like caller input."""
    return _REBUILDERS[view.kind](view, original)


def _pageview(view: OperationView, _original: ops.Operation) -> ops.Operation:
    if view.timestamp is not None:  # pageview() takes none; never drop it silently
        raise InvalidEventError("timestamp", "a pageview has no timestamp; the API dates it "
                                             "on arrival")
    return ops.pageview(view.customer_id, view.name, view.attributes, view.id)


def _device(view: OperationView, original: ops.Operation) -> ops.Operation:
    device = original.payload["device"]
    return ops.add_device(view.customer_id, device["id"], device["platform"], view.attributes)


_Rebuilder = Callable[[OperationView, ops.Operation], ops.Operation]
_REBUILDERS: Final[dict[str, _Rebuilder]] = {
    "identify": lambda v, _: ops.identify(v.customer_id, v.attributes),
    "track": lambda v, _: ops.track(v.customer_id, v.name, v.attributes, v.id, v.timestamp),
    "track_anonymous": lambda v, _: ops.track_anonymous(v.customer_id, v.name, v.attributes,
                                                        v.id, v.timestamp),
    "pageview": _pageview,
    "backfill": lambda v, _: ops.backfill(v.customer_id, v.name, v.timestamp, v.attributes,
                                          v.id),
    "add_device": _device,
    "delete_device": lambda v, o: ops.delete_device(v.customer_id, ops.device_token(o)),
    "delete": lambda v, _: ops.delete(v.customer_id),
    "suppress": lambda v, _: ops.suppress(v.customer_id),
    "unsuppress": lambda v, _: ops.unsuppress(v.customer_id),
}
