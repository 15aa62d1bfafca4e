"""before_send: the application's own hook on every operation, at enqueue.

Stage: intake, before validation's result is sealed. ``QueueConfig(before_send=fn)`` gets
an :class:`OperationView` of each operation in the caller's stack and returns it (changed
with ``dataclasses.replace``, or as it is) or None to drop it; an operation it changes is
built again by the same builders, so everything it returns is validated like the caller's
own input. The view is the stable shape the hook sees, whatever the transport.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Final

from . import _operations as ops
from ._config import BeforeSend
from ._exceptions import InvalidEventError

__all__ = ["BeforeSend", "OperationView", "apply_before_send"]


@dataclasses.dataclass(frozen=True, slots=True)
class OperationView:
    """One operation as ``before_send`` sees it.

    Attributes:
        kind: the EventQueue method that made it: ``"identify"``, ``"track"``, ...
        customer_id: the person, as given (the anonymous id for ``track_anonymous``;
            None for ``merge_customers`` and ``batch``).
        identifiers: the person as the API reads it, e.g. ``{"id": "42"}`` or
            ``{"email": "ada@example.com"}`` (empty when there is no person).
        name: the event name (the page for ``pageview``); None for other kinds.
        attributes: identify's attributes, an event's data, or ``add_device``'s extra
            device fields; empty for the other kinds.
        timestamp: an event's unix seconds, or None.
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


def view_of(op: ops.Operation) -> OperationView:
    """The view of a built (unsealed) operation."""
    payload = op.payload
    kind = op.kind
    person = kind not in _PASS_OR_DROP and kind != "track_anonymous"
    identifiers = ops.person_identifiers(op.customer_id) if person else {}
    if kind in _EVENTS:
        return OperationView(kind, payload.get("anonymous_id") if kind == "track_anonymous"
                             else op.customer_id, identifiers, payload["name"],
                             payload["data"], payload.get("timestamp"), payload["id"])
    if kind == "identify":
        attributes = payload
    elif kind == "add_device":
        attributes = {k: v for k, v in payload["device"].items() if k not in ("id", "platform")}
    else:
        attributes = {}
    return OperationView(kind, op.customer_id, identifiers, None, attributes, None, None)


def apply_before_send(hook: BeforeSend, op: ops.Operation) -> ops.Operation | None:
    """Run the hook on an operation: the same one, a rebuilt one, or None (dropped).

    Raises:
        InvalidEventError: the hook raised, returned something else than a view or None,
            changed what its kind cannot change, or changed it into invalid input.
    """
    view = view_of(op)
    try:
        result = hook(view)
    except Exception as exc:
        raise InvalidEventError("before_send", f"raised {type(exc).__name__}: {exc}") from exc
    if result is None or result == view:
        return None if result is None else op
    if not isinstance(result, OperationView) or result.kind != view.kind:
        raise InvalidEventError("before_send", "must return the OperationView it was given "
                                               "(changed with dataclasses.replace) or None")
    if view.kind in _PASS_OR_DROP:
        raise InvalidEventError("before_send", f"can pass or drop a {view.kind} operation, "
                                               "not change it")
    return _rebuild(result, op)


def _rebuild(view: OperationView, original: ops.Operation) -> ops.Operation:
    """Build the operation a changed view describes, validating it like caller input."""
    return _REBUILDERS[view.kind](view, original)


def _device(view: OperationView, original: ops.Operation) -> ops.Operation:
    device = original.payload["device"]
    return ops.add_device(view.customer_id, device["id"], device["platform"], view.attributes)


_Rebuilder = Callable[[OperationView, ops.Operation], ops.Operation]
_REBUILDERS: Final[dict[str, _Rebuilder]] = {
    "identify": lambda v, _: ops.identify(v.customer_id, v.attributes),
    "track": lambda v, _: ops.track(v.customer_id, v.name, v.attributes, v.id, v.timestamp),
    "track_anonymous": lambda v, _: ops.track_anonymous(v.customer_id, v.name, v.attributes,
                                                        v.id, v.timestamp),
    "pageview": lambda v, _: ops.pageview(v.customer_id, v.name, v.attributes, v.id),
    "backfill": lambda v, _: ops.backfill(v.customer_id, v.name, v.timestamp, v.attributes,
                                          v.id),
    "add_device": _device,
    "delete_device": lambda v, o: ops.delete_device(v.customer_id, ops.device_token(o)),
    "delete": lambda v, _: ops.delete(v.customer_id),
    "suppress": lambda v, _: ops.suppress(v.customer_id),
    "unsuppress": lambda v, _: ops.unsuppress(v.customer_id),
}
