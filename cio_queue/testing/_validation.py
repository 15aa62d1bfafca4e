"""Validate requests the way the Customer.io Track API documents it (v1 and v2).

Stage: outside the pipeline; the testing kit's fake Track API.

The v2 operation rules and the limits live in ``cio_queue._apirules``, where the library
can use them without importing this fake; this module adds the v1 bodies and the parsing
of whole requests. Every check raises `ValidationError` on the first problem it finds,
naming the field, a v2 reason code and a message; the server turns that into the
matching error answer. `validate_request` runs the same rules on a whole request and
lists the problems instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

from .._apirules import (
    EVENT_TYPES,
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_ID_BYTES,
    MAX_V2_BATCH_BYTES,
    MAX_V2_OP_BYTES,
    MERGE_ID_TYPES,
    PLATFORMS,
    ValidationError,
    check_attributes,
    check_event,
    check_identifier,
    check_op,
    check_optional,
    check_single_key,
    is_str,
    json_size,
    one_of,
    validate_v2_op,
)
from ._routing import match

# The rules live in the library (``cio_queue._apirules``), which checks v2 operations
# at the call site with them; these names stay importable from here.
__all__ = [
    "EVENT_TYPES",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_NAME_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_EVENT_DATA_BYTES",
    "MAX_EVENT_NAME_BYTES",
    "MAX_ID_BYTES",
    "MAX_V2_BATCH_BYTES",
    "MAX_V2_OP_BYTES",
    "ValidationError",
    "check_op",
    "json_size",
    "parse_batch",
    "parse_entity",
    "parse_object",
    "validate_request",
    "validate_v1",
    "validate_v2_op",
]

_BODYLESS_V1_KINDS: Final = frozenset({"delete", "delete_device", "suppress", "unsuppress"})


# -- public entry point ----------------------------------------------------------------------


def validate_request(method: str, path: str, body: bytes) -> list[str]:
    """List what the fake Track API would refuse a request for; empty when it is valid.

    The same rules as `FakeTrackAPI` applies: routing, the body, and for a v2 batch every
    op, including its 32 KB size, and the whole body's 500,000-byte limit. Credentials,
    injected faults and the `reject` / `reject_op` / `malformed_op` hooks are not consulted.

    Args:
        method: The HTTP method, e.g. ``"POST"``.
        path: The raw request path, e.g. ``/api/v1/customers/42/events`` or
            ``/api/v2/batch``; percent-escapes are decoded per segment as the server does,
            and a query string is ignored.
        body: The request body exactly as sent.

    Returns:
        One readable line per problem (a batch lists each refused op as ``batch[i] ...``),
        or an empty list when the fake Track API would accept the request.
    """
    path = path.partition("?")[0]
    route = match(method, path)
    if route is None:
        return [f"no route for {method} {path}"]
    if isinstance(route, set):
        return [f"{method} is not allowed on {path} (allowed: {', '.join(sorted(route))})"]
    try:
        if route.kind == "batch":
            return _batch_problems(parse_batch(body))
        if route.kind == "entity":
            parse_entity(body)
        elif route.kind == "region":
            return []
        else:
            validate_v1(route.kind, route.ids, body)
    except ValidationError as problem:
        return [problem.describe()]
    return []


def _batch_problems(batch: list[Any]) -> list[str]:
    """List the problems of each refused op of a parsed batch, by index."""
    problems: list[str] = []
    for index, op in enumerate(batch):
        try:
            check_op(op)
        except ValidationError as problem:
            problems.append(f"batch[{index}] {problem.describe()}")
    return problems


# -- parsing ----------------------------------------------------------------------------------


def parse_object(body: bytes, field: str = "body") -> dict[str, Any]:
    """Parse a body that must be a JSON object."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(field, f"{field} is not valid JSON", "invalid_json") from exc
    if not isinstance(value, dict):
        raise ValidationError(field, f"{field} must be a JSON object", "invalid_json")
    return value


# -- v1 ----------------------------------------------------------------------------------------


def validate_v1(kind: str, ids: tuple[str, ...], body: bytes) -> Any:
    """Validate a routed v1 request; return its parsed body or raise `ValidationError`."""
    for index, ident in enumerate(ids):
        check_identifier(ident, "customer id" if index == 0 else "device id")
    if kind in _BODYLESS_V1_KINDS:
        return parse_object(body) if body.strip() else None
    parsed = parse_object(body)
    _V1_BODY_CHECKS[kind](parsed)
    return parsed


def _check_v1_event(body: dict[str, Any]) -> None:
    """Check a v1 customer event (track or page view)."""
    check_event(body, "data")
    message = f"type must be one of {sorted(EVENT_TYPES)}"
    check_optional(body.get("type"), partial(one_of, allowed=EVENT_TYPES), "type", message)


def _check_v1_anonymous_event(body: dict[str, Any]) -> None:
    """Check a v1 anonymous event: a customer event whose anonymous_id is a string if given."""
    _check_v1_event(body)
    message = "anonymous_id must be a string"
    check_optional(body.get("anonymous_id"), is_str, "anonymous_id", message)


def _check_v1_device(body: dict[str, Any]) -> None:
    """Check a v1 add-device body: a device object with an id and a known platform."""
    device = body.get("device")
    if not isinstance(device, dict):
        raise ValidationError("device", "device is required and must be an object", "required")
    if not isinstance(device.get("id"), str) or not device["id"]:
        raise ValidationError("device.id", "device.id must be a non-empty string", "required")
    if not one_of(device.get("platform"), PLATFORMS):
        raise ValidationError("device.platform", "device.platform must be 'ios' or 'android'")


def _check_v1_merge(body: dict[str, Any]) -> None:
    """Check a v1 merge: primary and secondary, each one id (a number is fine for v1)."""
    check_single_key(body.get("primary"), "primary", MERGE_ID_TYPES, allow_int=True)
    check_single_key(body.get("secondary"), "secondary", MERGE_ID_TYPES, allow_int=True)


_V1_BODY_CHECKS: Final[Mapping[str, Callable[[dict[str, Any]], None]]] = {
    "identify": partial(check_attributes, field="attributes"),
    "event": _check_v1_event,
    "anonymous_event": _check_v1_anonymous_event,
    "add_device": _check_v1_device,
    "merge": _check_v1_merge,
}


# -- v2 ----------------------------------------------------------------------------------------


def parse_entity(body: bytes) -> dict[str, Any]:
    """Parse and check the body of ``/api/v2/entity``: one op of at most 32 KB."""
    if len(body) > MAX_V2_OP_BYTES:
        raise ValidationError("", f"request exceeds {MAX_V2_OP_BYTES} bytes", "too_large")
    op = parse_object(body)
    check_op(op)
    return op


def parse_batch(body: bytes) -> list[Any]:
    """Parse the body of ``/api/v2/batch`` (under 500,000 bytes) into its non-empty op list.

    The ops themselves are not checked: a batch is accepted op by op (see `check_op`).
    """
    if len(body) >= MAX_V2_BATCH_BYTES:
        message = f"batch must be under {MAX_V2_BATCH_BYTES} bytes"
        raise ValidationError("batch", message, "too_large", status=413)
    batch = parse_object(body).get("batch")
    if not isinstance(batch, list) or not batch:
        raise ValidationError("batch", "batch must be a non-empty list", "required")
    return batch
