"""The Track API's documented rules for a v2 operation, and the limits they share with v1.

Stage: intake (``batch()`` checks each element here) and the testing kit's fake.

Pure checks (no I/O, no aiohttp), shared by the library and its fake Track API
(``cio_queue.testing``), which answers with them: ``EventQueue.batch`` refuses at the
call site what they refuse (:func:`check_v2_call`), so that an operation given in its v2
form never fails later in a batch for a reason the API documents. Every check raises
:class:`ValidationError` on the first problem it finds, naming the field, a v2 reason
code and a message. Sources: ``track-api.md`` §4 (operation shapes) and §5 (limits).

Where the documentation is unsure, the rules take what the API may take: a delivery
event's ``name`` is any non-empty string (the spec lists opened, converted and
delivered) and its ``attributes.device_token`` is not required; an object may carry an
``event`` (one rendering of the docs shows it, the spec does not); fields the API does
not document are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final, TypeGuard

import orjson

from ._exceptions import InvalidEventError

MAX_ID_BYTES: Final = 150
MAX_ATTRIBUTE_NAME_BYTES: Final = 150
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1000
MAX_ATTRIBUTES: Final = 300
MAX_EVENT_NAME_BYTES: Final = 100
MAX_EVENT_DATA_BYTES: Final = 100_000
MAX_V2_OP_BYTES: Final = 32 * 1024
MAX_V2_BATCH_BYTES: Final = 500_000  # the whole batch body must be strictly below this

EVENT_TYPES: Final = frozenset({"event", "page", "screen"})
PLATFORMS: Final = frozenset({"ios", "android"})
MERGE_ID_TYPES: Final = frozenset({"id", "email", "cio_id"})
_PERSON_ID_TYPES: Final = frozenset({"id", "email", "cio_id", "phone"})
# An object is named by its type and id, or by the id Customer.io gave it.
_OBJECT_ID_FORMS: Final = (frozenset({"object_type_id", "object_id"}),
                           frozenset({"cio_object_id"}))
# Reserved attributes whose values are structured by design: exempt from the 1000-byte value
# limit, bounded instead by the 100 KB object/relationship size limit.
_STRUCTURED_ATTRIBUTES: Final = frozenset({"cio_relationships", "cio_subscription_preferences"})
_TIMESTAMP_MESSAGE: Final = "timestamp must be an integer (unix seconds)"


class ValidationError(Exception):
    """Carry one validation problem: the field, a reason code, a message and the status."""

    def __init__(self, field: str, message: str, reason: str = "invalid", status: int = 400):
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason
        self.status = status

    def describe(self) -> str:
        """Render the problem as ``field: message`` (just the message without a field)."""
        return f"{self.field}: {self.message}" if self.field else self.message


# -- shared helpers --------------------------------------------------------------------------


def json_size(value: Any) -> int:
    """Measure a value as compact JSON bytes, the way clients are expected to size payloads."""
    return len(json.dumps(value, separators=(",", ":")).encode())


_AT_MOST_LONGER: Final = 8
"""More times than :func:`json_size` can be longer than orjson's text of the same value.

At most 6: json's ASCII escapes write DEL (U+007F) as ``\\u007f``, 6 bytes where orjson
writes 1; any other character takes at most 3 times its UTF-8 bytes (``\\uXXXX`` for 2
or 3 bytes, two of them for 4), control characters are escaped alike by both, and a
number's text differs by at most its exponent's sign and a leading zero. 8 leaves room."""


def json_fits(value: Any, limit: int) -> bool:
    """Whether ``json_size(value) <= limit``, measured exactly only near the limit.

    For a JSON-ready value (what ``json.loads`` gives, or data already cleaned): orjson
    sizes the usual one in a tenth of json's time, and one whose orjson text is an
    eighth of the limit or less is within it whatever json makes of it; the rest (and
    what orjson will not encode: an int beyond 64 bits, a lone surrogate) is measured
    with json. The answer is json_size's in every case.
    """
    try:
        if len(orjson.dumps(value)) * _AT_MOST_LONGER <= limit:
            return True
    except TypeError:  # orjson.JSONEncodeError
        pass
    return json_size(value) <= limit


def utf8_len(text: str) -> int:
    """Count the UTF-8 bytes of a string (limits are in bytes, not characters)."""
    return len(text.encode("utf-8", "surrogatepass"))


def is_int(value: Any) -> bool:
    """Tell whether a JSON value is an integer (booleans excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_str(value: Any) -> bool:
    """Tell whether a JSON value is a string."""
    return isinstance(value, str)


def _is_object(value: Any) -> bool:
    """Tell whether a JSON value is an object."""
    return isinstance(value, dict)


def one_of(value: Any, allowed: frozenset[str]) -> TypeGuard[str]:
    """Tell whether a JSON value is one of the allowed strings (lists and objects are not)."""
    return isinstance(value, str) and value in allowed


def check_optional(value: Any, accept: Callable[[Any], bool], field: str, message: str) -> None:
    """Refuse a value that is present (not None) but not accepted."""
    if value is not None and not accept(value):
        raise ValidationError(field, message)


def check_identifier(value: str, field: str) -> None:
    """Require a non-empty identifier of at most 150 UTF-8 bytes."""
    if not value:
        raise ValidationError(field, f"{field} must not be empty", "required")
    if utf8_len(value) > MAX_ID_BYTES:
        raise ValidationError(field, f"{field} exceeds {MAX_ID_BYTES} bytes", "too_large")


def check_attributes(attributes: Any, field: str) -> None:
    """Apply the person-attribute limits: count, then each name and value."""
    if not isinstance(attributes, dict):
        raise ValidationError(field, f"{field} must be an object")
    if len(attributes) > MAX_ATTRIBUTES:
        message = f"{field} has more than {MAX_ATTRIBUTES} attributes"
        raise ValidationError(field, message, "too_large")
    for name, value in attributes.items():
        _check_attribute(name, value, field)


def _check_attribute(name: str, value: Any, field: str) -> None:
    """Check one attribute's name and value sizes.

    Values are measured as UTF-8 for strings and as compact JSON otherwise; the reserved
    structured attributes (relationships, subscription preferences) may exceed 1000 bytes.
    """
    if utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
        message = f"attribute name {name[:40]!r}... exceeds {MAX_ATTRIBUTE_NAME_BYTES} bytes"
        raise ValidationError(f"{field}.{name}", message, "too_large")
    structured = name in _STRUCTURED_ATTRIBUTES
    limit = MAX_EVENT_DATA_BYTES if structured else MAX_ATTRIBUTE_VALUE_BYTES
    if utf8_len(value) <= limit if isinstance(value, str) else json_fits(value, limit):
        return
    if structured:
        message = f"{name} exceeds {MAX_EVENT_DATA_BYTES} bytes"
    else:
        message = f"attribute {name!r} value exceeds {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
    raise ValidationError(f"{field}.{name}", message, "too_large")


def check_event(body: Mapping[str, Any], data_key: str) -> None:
    """Validate the fields shared by v1 events and v2 event/page/screen ops."""
    _check_event_name(body.get("name"))
    _check_event_data(body.get(data_key), data_key)
    check_optional(body.get("timestamp"), is_int, "timestamp", _TIMESTAMP_MESSAGE)
    check_optional(body.get("id"), is_str, "id", "id must be a string")


def _check_event_name(name: Any) -> None:
    """Require a non-empty event name of at most 100 UTF-8 bytes."""
    if not isinstance(name, str) or not name:
        message = "name is required and must be a non-empty string"
        raise ValidationError("name", message, "required")
    if utf8_len(name) > MAX_EVENT_NAME_BYTES:
        raise ValidationError("name", f"name exceeds {MAX_EVENT_NAME_BYTES} bytes", "too_large")


def _check_event_data(data: Any, data_key: str) -> None:
    """Allow no event data, or an object of at most 100 KB as compact JSON."""
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValidationError(data_key, f"{data_key} must be an object")
    if not json_fits(data, MAX_EVENT_DATA_BYTES):
        message = f"{data_key} exceeds {MAX_EVENT_DATA_BYTES} bytes"
        raise ValidationError(data_key, message, "too_large")


def check_single_key(
    value: Any, field: str, allowed: frozenset[str], *, allow_int: bool = False
) -> None:
    """Require an object with exactly one allowed key whose value is a non-empty string.

    With `allow_int`, an integer value is accepted too: the official SDKs send a v1 merge's
    ids as given, so `merge_customers("id", 42, ...)` puts a JSON number on the wire.
    """
    if not isinstance(value, dict) or len(value) != 1:
        raise ValidationError(field, f"{field} must be an object with exactly one key", "required")
    ((key, ident),) = value.items()
    if key not in allowed:
        raise ValidationError(f"{field}.{key}", f"{field} key must be one of {sorted(allowed)}")
    if allow_int and is_int(ident):
        ident = str(ident)
    if not isinstance(ident, str) or not ident:
        message = f"{field}.{key} must be a non-empty string"
        raise ValidationError(f"{field}.{key}", message, "required")
    if key == "id":
        check_identifier(ident, f"{field}.id")


# -- v2 operations ---------------------------------------------------------------------------


def check_op(op: Any) -> None:
    """Check one v2 op: at most 32 KB as compact JSON, then its fields."""
    if not json_fits(op, MAX_V2_OP_BYTES):
        raise ValidationError("", f"operation exceeds {MAX_V2_OP_BYTES} bytes", "too_large")
    validate_v2_op(op)


def validate_v2_op(op: Any) -> None:
    """Validate one v2 op (any type); raise `ValidationError` on the first problem."""
    if not isinstance(op, dict):
        raise ValidationError("", "operation must be a JSON object", "invalid_json")
    kind = op.get("type")
    if not isinstance(kind, str) or kind not in _V2_CHECKS:
        raise ValidationError("type", f"type must be one of {sorted(_V2_CHECKS)}")
    identify, actions = _V2_CHECKS[kind]
    action = op.get("action")
    if not isinstance(action, str) or action not in actions:
        message = f"action must be one of {sorted(actions)} for a {kind}"
        raise ValidationError("action", message, "required")
    if kind != "person" or action != "merge":
        identify(op.get("identifiers"))
    actions[action](op)


def check_v2_call(element: Mapping[str, Any], field: str) -> None:
    """Check a v2 element given to ``EventQueue.batch`` as the API would (but its size).

    Raises:
        InvalidEventError: naming ``field`` and the element's field at fault, e.g.
            ``operations[1].timestamp``.
    """
    try:
        validate_v2_op(element)
    except ValidationError as problem:
        path = f"{field}.{problem.field}" if problem.field else field
        raise InvalidEventError(path, problem.message.removeprefix(f"{problem.field} ")) from None


def _check_v2_merge(op: dict[str, Any]) -> None:
    """Check a v2 merge: primary and secondary instead of identifiers."""
    if "identifiers" in op:
        raise ValidationError("identifiers", "merge takes primary/secondary, not identifiers")
    check_single_key(op.get("primary"), "primary", MERGE_ID_TYPES)
    check_single_key(op.get("secondary"), "secondary", MERGE_ID_TYPES)


def _check_v2_identify(op: dict[str, Any]) -> None:
    """Check a v2 identify: optional attributes within limits, an optional integer timestamp."""
    if op.get("attributes") is not None:
        check_attributes(op["attributes"], "attributes")
    check_optional(op.get("timestamp"), is_int, "timestamp", _TIMESTAMP_MESSAGE)


def _check_v2_device(op: dict[str, Any], *, full: bool) -> None:
    """Check a v2 `device`: always a token; platform and optional fields when `full`."""
    device = op.get("device")
    if not isinstance(device, dict):
        raise ValidationError("device", "device is required and must be an object", "required")
    token = device.get("token")
    if not isinstance(token, str) or not token:
        message = "device.token must be a non-empty string"
        raise ValidationError("device.token", message, "required")
    if not full:
        return
    if not one_of(device.get("platform"), PLATFORMS):
        raise ValidationError("device.platform", "device.platform must be 'ios' or 'android'")
    message = "device.last_used must be an integer"
    check_optional(device.get("last_used"), is_int, "device.last_used", message)
    message = "device.attributes must be an object"
    check_optional(device.get("attributes"), _is_object, "device.attributes", message)


def _check_v2_relationships(op: dict[str, Any]) -> None:
    """Check a v2 add/delete_relationships: a non-empty cio_relationships list."""
    relationships = op.get("cio_relationships")
    if not isinstance(relationships, list) or not relationships:
        message = "cio_relationships must be a non-empty list"
        raise ValidationError("cio_relationships", message)


def _no_fields(op: dict[str, Any]) -> None:
    """Accept an action that needs nothing beyond its identifiers."""


def _check_person_identifiers(identifiers: Any) -> None:
    """Require exactly one of a person's identifiers: id, email, cio_id or phone."""
    check_single_key(identifiers, "identifiers", _PERSON_ID_TYPES)


def _check_object_identifiers(identifiers: Any) -> None:
    """Require an object's type and id (at most 150 bytes), or its cio_object_id."""
    if not isinstance(identifiers, dict) or frozenset(identifiers) not in _OBJECT_ID_FORMS:
        message = ("identifiers must be an object with object_type_id and object_id, or "
                   "with cio_object_id")
        raise ValidationError("identifiers", message, "required")
    for key, ident in identifiers.items():
        if not isinstance(ident, str) or not ident:
            message = f"identifiers.{key} must be a non-empty string"
            raise ValidationError(f"identifiers.{key}", message, "required")
    if "object_id" in identifiers:
        check_identifier(identifiers["object_id"], "identifiers.object_id")


def _check_delivery_identifiers(identifiers: Any) -> None:
    """Require a delivery's id (no length is documented)."""
    if not isinstance(identifiers, dict) or list(identifiers) != ["id"]:
        raise ValidationError("identifiers", "identifiers must be an object with exactly one "
                                             "key, id (the delivery id)", "required")
    if not isinstance(identifiers["id"], str) or not identifiers["id"]:
        message = "identifiers.id must be a non-empty string"
        raise ValidationError("identifiers.id", message, "required")


def _check_object_identify(op: dict[str, Any]) -> None:
    """Check an object's identify or identify_anonymous.

    Its optional attributes within the limits, its cio_relationships a list and its
    anonymous_id a string, if given.
    """
    if op.get("attributes") is not None:
        check_attributes(op["attributes"], "attributes")
    message = "cio_relationships must be a list"
    check_optional(op.get("cio_relationships"), _is_list, "cio_relationships", message)
    check_optional(op.get("anonymous_id"), is_str, "anonymous_id", "anonymous_id must be a string")


def _is_list(value: Any) -> bool:
    """Tell whether a JSON value is an array."""
    return isinstance(value, list)


_V2_EVENT: Final = partial(check_event, data_key="attributes")
_V2_ACTION_CHECKS: Final[Mapping[str, Callable[[dict[str, Any]], None]]] = {
    "identify": _check_v2_identify,
    "delete": _no_fields,
    "event": _V2_EVENT,
    "page": _V2_EVENT,
    "screen": _V2_EVENT,
    "add_device": partial(_check_v2_device, full=True),
    "delete_device": partial(_check_v2_device, full=False),
    "merge": _check_v2_merge,
    "suppress": _no_fields,
    "unsuppress": _no_fields,
    "add_relationships": _check_v2_relationships,
    "delete_relationships": _check_v2_relationships,
}
_OBJECT_ACTION_CHECKS: Final[Mapping[str, Callable[[dict[str, Any]], None]]] = {
    "identify": _check_object_identify,
    "identify_anonymous": _check_object_identify,
    "delete": _no_fields,
    "add_relationships": _check_v2_relationships,
    "delete_relationships": _check_v2_relationships,
    "event": _V2_EVENT,
}
# Per type: the check of its identifiers, and of each action's fields.
_V2_CHECKS: Final[Mapping[str, tuple[Callable[[Any], None],
                                     Mapping[str, Callable[[dict[str, Any]], None]]]]] = {
    "person": (_check_person_identifiers, _V2_ACTION_CHECKS),
    "object": (_check_object_identifiers, _OBJECT_ACTION_CHECKS),
    "delivery": (_check_delivery_identifiers, {"event": _V2_EVENT}),
}
