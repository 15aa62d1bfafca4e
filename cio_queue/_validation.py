"""Validation of the caller's input at enqueue: the first stage of the pipeline.

Stage: intake, at the call site.

The checks every builder in ``_operations`` runs in the caller's stack: ids, event
names, timestamps and event ids, the sanitising of data and attribute values the way the
official ``customerio`` SDK does it (``clean_mapping``), and the Track API's size limits
(track-api.md §5). Each refusal is an :class:`InvalidEventError` naming the field at
fault, so bad input never reaches a batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from ._apirules import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_ID_BYTES,
    MAX_V2_OP_BYTES,
)
from ._exceptions import InvalidEventError
from ._ulid import new_ulid

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_NAME_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_DATA_BYTES",
    "MAX_EVENT_NAME_BYTES",
    "MAX_ID_BYTES",
    "MAX_INT_BITS",
    "MAX_STRUCTURED_ATTRIBUTE_BYTES",
    "MAX_TIMESTAMP",
    "MAX_V2_OPERATION_BYTES",
    "MIN_INT",
    "STRUCTURED_ATTRIBUTES",
    "UNFIT_PATH_IDS",
    "check_attributes",
    "check_choice",
    "check_device_fields",
    "check_event_id",
    "check_event_name",
    "check_id",
    "check_path_id",
    "check_timestamp",
    "clean_mapping",
    "describe",
    "ready_as_is",
    "utf8_len",
]

# The Track API's documented limits live beside its v2 rules, in _apirules, once.
MAX_V2_OPERATION_BYTES: Final = MAX_V2_OP_BYTES
"""The Track API's limit on one operation inside a v2 batch."""
MAX_TIMESTAMP: Final = 99_999_999_999
"""Eleven digits: anything larger is almost surely milliseconds, not the seconds the API wants."""
MAX_DEPTH: Final = 64
MAX_INT_BITS: Final = 64
"""Larger ints are refused: JSON readers (and Python's own int-to-str limit) cannot take
them reliably."""
MIN_INT: Final = -(2**63)
"""The smallest int a JSON reader holds (int64); the largest, 2**64 - 1, is a uint64."""
_NAIVE_EPOCH: Final = datetime(1970, 1, 1)  # naive on purpose: subtracted from naive values
_DOT_SEGMENTS: Final = frozenset({".", ".."})
UNFIT_PATH_IDS: Final = frozenset({"cio_", *_DOT_SEGMENTS})
"""The non-blank ASCII ids within the limit that :func:`check_path_id` still refuses."""
STRUCTURED_ATTRIBUTES: Final = frozenset({"cio_relationships", "cio_subscription_preferences"})
"""Identify attributes structured by design: exempt from the 1000-byte value limit."""
MAX_STRUCTURED_ATTRIBUTE_BYTES: Final = 100_000
"""The object/relationship size limit that bounds the structured attributes instead."""
_COMPACT_ASCII: Final = json.JSONEncoder(check_circular=False, separators=(",", ":"))
_SMALL_SCALARS: Final = frozenset({bool, int, float, type(None)})
"""Cleaned values whose JSON is at most 24 bytes (ints are at most 64 bits), so no value
limit can apply to them."""


class _FieldError(Exception):
    """Internal: a bad value somewhere below a field; the path is prefixed on the way up."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message


def _surrogate(exc: UnicodeEncodeError) -> str:
    """Describe the lone surrogate that made ``encode("utf-8")`` fail, without the text."""
    return (f"contains an unpaired surrogate (U+{ord(exc.object[exc.start]):04X} at index "
            f"{exc.start}), which is not valid text")


def utf8_len(value: str, field: str) -> int:
    """Return the UTF-8 size of ``value``; refuse text that has no UTF-8 form."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidEventError(field, _surrogate(exc)) from None


_INT_RANGE: Final = "an int outside -2**63..2**64-1, which JSON readers cannot hold"


def _json_int(value: int) -> bool:
    """Whether JSON readers hold ``value``: an int64 or a uint64 (orjson's range too)."""
    return value.bit_length() <= MAX_INT_BITS and value >= MIN_INT


def _id_text(value: object, field: str, *, allow_int: bool) -> str:
    if isinstance(value, str):
        return str(value)
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        if not _json_int(value):  # it is sent as text, but spooled and streamed as a number
            raise InvalidEventError(field, f"is {_INT_RANGE}; send it as a str")
        return str(value)
    kinds = "a str or int" if allow_int else "a str"
    raise InvalidEventError(field, f"must be {kinds}, not {type(value).__name__}")


def check_id(value: object, field: str, *, allow_int: bool = True) -> str:
    """Check a person or device id and return its path form, as ``str(value)``."""
    if (type(value) is str and value.isascii() and 0 < len(value) <= MAX_ID_BYTES
            and not value.isspace() and value != "cio_"):
        return value  # the common case, decided without the calls below
    text = _id_text(value, field, allow_int=allow_int)
    if not text.strip():
        raise InvalidEventError(field, "must not be blank")
    if text == "cio_":
        raise InvalidEventError(field, "is the cio_ prefix with no cio_id after it")
    size = utf8_len(text, field)
    if size > MAX_ID_BYTES:
        raise InvalidEventError(field, f"is {size} bytes; the limit is {MAX_ID_BYTES}")
    return text


def check_path_id(value: object, field: str, *, allow_int: bool = True) -> str:
    """Check an id that becomes a segment of a v1 path; return its text.

    On top of :func:`check_id`, refuse ``.`` and ``..``: ``quote`` leaves them as they are,
    and a server or proxy that normalises paths resolves them, so
    ``DELETE /customers/42/devices/..`` would arrive as ``DELETE /customers/42``. Encoding
    them does not help either, since some servers decode ``%2E`` before resolving.
    """
    text = check_id(value, field, allow_int=allow_int)
    if text in _DOT_SEGMENTS:
        raise InvalidEventError(field, f"{text!r} would be a dot segment in the request path, "
                                       "which servers resolve to another resource; it cannot "
                                       "be an id")
    return text


def check_event_name(name: object, field: str = "name") -> str:
    """Check an event name (or page): a non-blank str of at most 100 bytes."""
    if (type(name) is str and name.isascii() and 0 < len(name) <= MAX_EVENT_NAME_BYTES
            and not name.isspace()):
        return name  # the common case, decided without the calls below
    if not isinstance(name, str):
        raise InvalidEventError(field, f"must be a str, not {type(name).__name__}")
    if not name.strip():
        raise InvalidEventError(field, "must not be blank")
    size = utf8_len(name, field)
    if size > MAX_EVENT_NAME_BYTES:
        raise InvalidEventError(field, f"is {size} bytes; the limit is {MAX_EVENT_NAME_BYTES}")
    return name


def _datetime_to_unix(value: datetime) -> int:
    """Return unix seconds, reading a naive datetime as UTC (as the official SDK does).

    The same arithmetic as ``value.replace(tzinfo=UTC).timestamp()``, so the same int,
    without building the aware copy. A failing tzinfo raises _FieldError.
    """
    if value.tzinfo is None:
        return int((value - _NAIVE_EPOCH).total_seconds())
    try:
        return int(value.timestamp())
    except Exception as exc:  # a tzinfo is the caller's code: it may raise anything
        raise _FieldError("", f"is a datetime whose tzinfo fails ({type(exc).__name__}); "
                              "use a tzinfo such as datetime.UTC or zoneinfo") from exc


# --- sanitising data the way the official SDK does ------------------------------------
# ``_clean`` runs on every value of every call, so it dispatches on the exact type through
# one dict lookup; subclasses (enums, OrderedDict, namedtuple...) take the slower
# isinstance walk in ``_clean_subclass``. Each cleaner returns the JSON-ready value or
# raises _FieldError, whose path the containers prefix on the way up.

_Cleaner = Callable[[Any, int], Any]


def _keep(value: Any, depth: int) -> Any:
    return value


def _clean_str(value: str, depth: int) -> str:
    # json.dumps would write a lone surrogate as the escape \ud800, which is not text: the
    # API cannot store it, so it is refused here, where the caller can see which value.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _FieldError("", _surrogate(exc)) from None
    return value


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise _FieldError("", f"has a {type(key).__name__} key; keys must be str")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _FieldError("", f"has a key {key[:40]!a} that {_surrogate(exc)}") from None


def _clean_int(value: int, depth: int) -> int:
    if not _json_int(value):
        raise _FieldError("", f"is {_INT_RANGE}; send it as a str")
    return value


def _clean_float(value: float, depth: int) -> float | None:
    if _isfinite(value):
        return value
    if math.isnan(value):  # the official SDK sends NaN as null
        return None
    raise _FieldError("", "is infinite; JSON has no infinity")


def _clean_datetime(value: datetime, depth: int) -> int:
    return _datetime_to_unix(value)


def _too_deep(depth: int) -> _FieldError:
    return _FieldError("", f"is nested more than {MAX_DEPTH} levels deep (or is a cycle)")


def _clean_dict(value: dict[Any, Any], depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise _too_deep(depth)
    cleaner_for = _CLEANERS.get
    depth += 1
    out = {}
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            _check_key(key)
        if type(item) is str and item.isascii():
            out[key] = item  # the most common value, kept without a cleaner's call
            continue
        try:
            out[key] = cleaner_for(type(item), _clean_subclass)(item, depth)
        except _FieldError as exc:
            exc.path = f".{key}{exc.path}"
            raise
    return out


def _clean_list(value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise _too_deep(depth)
    cleaner_for = _CLEANERS.get
    depth += 1
    items = []
    for index, item in enumerate(value):
        try:
            items.append(cleaner_for(type(item), _clean_subclass)(item, depth))
        except _FieldError as exc:
            exc.path = f"[{index}]{exc.path}"
            raise
    return items


def _clean_subclass(value: Any, depth: int) -> Any:
    """Clean an instance of a subclass of a JSON type, or refuse a non-JSON value."""
    for base, cleaner in _SUBCLASS_CLEANERS:
        if isinstance(value, base):
            return cleaner(value, depth)
    raise _FieldError("", f"is a {type(value).__name__}, which is not JSON-serialisable "
                          "(convert it to str, int, float, bool, None, list, dict or datetime)")


_isfinite: Final = math.isfinite
_CLEANERS: Final[dict[type, _Cleaner]] = {
    str: _clean_str, bool: _keep, type(None): _keep, int: _clean_int, float: _clean_float,
    dict: _clean_dict, list: _clean_list, tuple: _clean_list, datetime: _clean_datetime,
}
_SUBCLASS_CLEANERS: Final[tuple[tuple[type | tuple[type, ...], _Cleaner], ...]] = (
    (dict, _clean_dict),
    ((list, tuple), _clean_list),
    (datetime, _clean_datetime),
    (float, lambda value, depth: _clean_float(float(value), depth)),
    (str, _clean_str),  # a str subclass, such as a str enum, encodes as its text
    (int, lambda value, depth: _clean_int(int(value), depth)),  # IntEnum: as its number
)


def ready_as_is(value: dict[Any, Any], depth: int = 0) -> bool:
    """Whether ``value`` is JSON-ready as it is: what :func:`_clean_dict` would copy it to.

    Its keys str, its values str with a UTF-8 form, finite floats, ints JSON readers hold,
    bools, None, or dicts of the same. Anything else (a list, a datetime, NaN, a subclass,
    a bad value) says no, and the cleaner decides: there is no second set of rules.
    """
    if depth > MAX_DEPTH:
        return False
    depth += 1
    for key, item in value.items():
        kind = type(item)
        if kind is str:
            ready = item.isascii() or _has_utf8(item)
        elif kind is float:
            ready = item - item == 0.0  # inf - inf and nan - nan are nan
        elif kind is int:
            ready = _json_int(item)
        elif kind is dict:
            ready = ready_as_is(item, depth)
        else:
            ready = kind is bool or item is None
        if not ready or type(key) is not str or not (key.isascii() or _has_utf8(key)):
            return False
    return True


def _has_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_mapping(value: object, field: str) -> dict[str, Any]:
    """Return ``value`` sanitised as the official SDK does, or refuse it naming the path.

    datetime becomes int unix seconds (naive means UTC), NaN becomes None, dicts, lists
    and tuples are copied recursively; anything json cannot encode is refused.
    """
    if not isinstance(value, dict):
        raise InvalidEventError(field, f"must be a dict, not {type(value).__name__}")
    try:
        return _clean_dict(value, 0)
    except _FieldError as exc:
        # Chain the caller's own exception (a failing tzinfo), never the internal one.
        raise InvalidEventError(f"{field}{exc.path}", exc.message) from exc.__cause__


def check_attributes(attributes: dict[str, Any], field: str = "attributes") -> None:
    """Apply the API's limits on a person's attributes (already cleaned) in one call.

    At most 300 attributes; names of at most 150 bytes; values of at most 1000 bytes (text
    as UTF-8, anything else as compact JSON), or 100,000 for the attributes structured by
    design (``cio_relationships``, ``cio_subscription_preferences``).
    """
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEventError(field, f"has {len(attributes)} attributes; the limit is "
                                       f"{MAX_ATTRIBUTES} per call")
    small = _SMALL_SCALARS
    for name, value in attributes.items():
        if not name.isascii() or len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            _check_attribute_name(name, field)
        if type(value) not in small:
            _check_attribute_value(name, value, field)


def _check_attribute_name(name: str, field: str) -> None:
    size = utf8_len(name, f"{field}.{name}")
    if size > MAX_ATTRIBUTE_NAME_BYTES:
        raise InvalidEventError(f"{field}.{name}", f"name is {size} bytes; the limit is "
                                                   f"{MAX_ATTRIBUTE_NAME_BYTES}")


def _check_attribute_value(name: str, value: Any, field: str) -> None:
    # Sized as the API sizes them: text as UTF-8, anything else as compact ASCII JSON.
    size = (utf8_len(value, f"{field}.{name}") if isinstance(value, str)
            else len(_COMPACT_ASCII.encode(value)))
    limit = (MAX_STRUCTURED_ATTRIBUTE_BYTES if name in STRUCTURED_ATTRIBUTES
             else MAX_ATTRIBUTE_VALUE_BYTES)
    if size > limit:
        raise InvalidEventError(f"{field}.{name}", f"value is {size} bytes; the limit is "
                                                   f"{limit}")


def _unix_seconds(value: object, field: str) -> int:
    if isinstance(value, datetime):
        try:
            return _datetime_to_unix(value)
        except _FieldError as exc:
            raise InvalidEventError(field, exc.message) from exc.__cause__
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise InvalidEventError(field, f"{describe(value)} is not unix seconds") from None
    raise InvalidEventError(field, f"must be unix seconds or a datetime, not {describe(value)}")


def check_timestamp(value: object, field: str = "timestamp") -> int:
    """Return unix seconds from an int, float, digit string or datetime."""
    result = _unix_seconds(value, field)
    if not 0 <= result <= MAX_TIMESTAMP:
        shown = int(result) if result.bit_length() <= MAX_INT_BITS else "an int that long"
        raise InvalidEventError(field, f"{shown} is not unix seconds (milliseconds?)")
    return result


def check_choice(value: object, choices: frozenset[str], field: str) -> str:
    """Return ``value`` if it is one of the str ``choices``; refuse anything else.

    Only a str is looked up, so an unhashable or odd value is refused, never hashed.
    """
    if isinstance(value, str) and value in choices:
        return value
    allowed = ", ".join(repr(choice) for choice in sorted(choices))
    raise InvalidEventError(field, f"must be one of {allowed}, not {describe(value)}")


def describe(value: object) -> str:
    """Name a refused value in a message: a short repr of text or a number, else its type.

    Never calls a method of an arbitrary object (its repr could be huge, slow or raise).
    """
    if isinstance(value, str):
        text = str.__str__(value)
        return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int) and value.bit_length() <= MAX_INT_BITS:
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    return type(value).__name__


def check_event_id(value: object) -> str:
    """Return the caller's event id, or a new ULID when it is None."""
    if value is None:
        return new_ulid()
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError("id", "must be a non-blank str (a ULID is best) or None")
    utf8_len(value, "id")
    return value


def check_device_fields(device: dict[str, Any]) -> None:
    """Refuse device fields that have no v2 form, so both transports take the same input.

    ``attributes`` must be a mapping (it becomes the v2 ``attributes``) and ``last_used``
    unix seconds as an int or a datetime.
    """
    attributes = device.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise InvalidEventError("data.attributes", f"must be a dict, not {describe(attributes)}")
    last_used = device.get("last_used")
    if last_used is not None and (type(last_used) is not int
                                  or not 0 <= last_used <= MAX_TIMESTAMP):
        raise InvalidEventError("data.last_used", "must be unix seconds as an int, or a "
                                                  f"datetime, not {describe(last_used)}")
