"""Validation of the caller's input at enqueue: the first stage of the pipeline.

The checks every builder in ``_operations`` runs in the caller's stack: ids, event
names, timestamps and event ids, the sanitising of data and attribute values the way the
official ``customerio`` SDK does it (``clean_mapping``), and the Track API's size limits
(track-api.md §5). Each refusal is an :class:`InvalidEventError` naming the field at
fault, so bad input never reaches a batch.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

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
    "MAX_TIMESTAMP",
    "MAX_V2_OPERATION_BYTES",
    "check_event_id",
    "check_event_name",
    "check_id",
    "check_timestamp",
    "clean_mapping",
    "datetime_to_unix",
    "utf8_len",
]

MAX_ID_BYTES: Final = 150
MAX_ATTRIBUTE_NAME_BYTES: Final = 150
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1000
MAX_ATTRIBUTES: Final = 300
MAX_EVENT_NAME_BYTES: Final = 100
MAX_EVENT_DATA_BYTES: Final = 100_000
MAX_TIMESTAMP: Final = 99_999_999_999
"""Eleven digits: anything larger is almost surely milliseconds, not the seconds the API wants."""
MAX_V2_OPERATION_BYTES: Final = 32 * 1024
"""The Track API's limit on one operation inside a v2 batch."""
MAX_DEPTH: Final = 64
MAX_INT_BITS: Final = 64
"""Larger ints are refused: JSON readers (and Python's own int-to-str limit) cannot take
them reliably."""


class _FieldError(Exception):
    """Internal: a bad value somewhere below a field; the path is prefixed on the way up."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message


def utf8_len(value: str, field: str) -> int:
    """Return the UTF-8 size of ``value``; refuse text that has no UTF-8 form."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEventError(field, "contains an unpaired surrogate; not valid text") from None


def check_id(value: object, field: str, *, allow_int: bool = True) -> str:
    """Check a person or device id and return its path form, as ``str(value)``."""
    if isinstance(value, bool) or not isinstance(value, str | int) or (
            not allow_int and not isinstance(value, str)):
        kinds = "a str or int" if allow_int else "a str"
        raise InvalidEventError(field, f"must be {kinds}, not {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise InvalidEventError(field, f"is an int beyond {MAX_INT_BITS} bits")
    text = str(value)
    if not text.strip():
        raise InvalidEventError(field, "must not be blank")
    if text == "cio_":
        raise InvalidEventError(field, "is the cio_ prefix with no cio_id after it")
    size = utf8_len(text, field)
    if size > MAX_ID_BYTES:
        raise InvalidEventError(field, f"is {size} bytes; the limit is {MAX_ID_BYTES}")
    return text


def check_event_name(name: object, field: str = "name") -> str:
    """Check an event name (or page): a non-blank str of at most 100 bytes."""
    if not isinstance(name, str):
        raise InvalidEventError(field, f"must be a str, not {type(name).__name__}")
    if not name.strip():
        raise InvalidEventError(field, "must not be blank")
    size = utf8_len(name, field)
    if size > MAX_EVENT_NAME_BYTES:
        raise InvalidEventError(field, f"is {size} bytes; the limit is {MAX_EVENT_NAME_BYTES}")
    return name


def datetime_to_unix(value: datetime) -> int:
    """Return unix seconds, reading a naive datetime as UTC (as the official SDK does)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _clean(value: Any, depth: int = 0) -> Any:  # noqa: PLR0911, PLR0912 - a branch per type
    """Return ``value`` sanitised as the official SDK does, or raise _FieldError.

    datetime becomes int unix seconds (naive means UTC), NaN becomes None, dicts, lists
    and tuples are copied recursively; anything json cannot encode is refused.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise _FieldError("", f"is an int beyond {MAX_INT_BITS} bits, which JSON readers "
                                  "cannot hold; send it as a str")
        return value
    if kind is float:
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise _FieldError("", "is infinite; JSON has no infinity")
        return value
    if depth > MAX_DEPTH:
        raise _FieldError("", f"is nested more than {MAX_DEPTH} levels deep (or is a cycle)")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError("", f"has a {type(key).__name__} key {key!r}; keys must be str")
            try:
                out[key] = _clean(item, depth + 1)
            except _FieldError as exc:
                exc.path = f".{key}{exc.path}"
                raise
        return out
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_clean(item, depth + 1))
            except _FieldError as exc:
                exc.path = f"[{index}]{exc.path}"
                raise
        return items
    if isinstance(value, datetime):
        return datetime_to_unix(value)
    if isinstance(value, float):  # a float subclass
        return _clean(float(value), depth)
    if isinstance(value, str):  # a str subclass, such as a str enum, encodes as its text
        return value
    if isinstance(value, int):  # an int subclass, such as an IntEnum, encodes as its number
        return _clean(int(value), depth)
    raise _FieldError("", f"is a {kind.__name__}, which is not JSON-serialisable "
                          "(convert it to str, int, float, bool, None, list, dict or datetime)")


def clean_mapping(value: object, field: str) -> dict[str, Any]:
    """Return a sanitised copy of the dict ``value``; refuse it naming the bad field's path."""
    if not isinstance(value, dict):
        raise InvalidEventError(field, f"must be a dict, not {type(value).__name__}")
    try:
        cleaned: dict[str, Any] = _clean(value)
    except _FieldError as exc:
        raise InvalidEventError(f"{field}{exc.path}", exc.message) from None
    return cleaned


def check_timestamp(value: object, field: str = "timestamp") -> int:
    """Return unix seconds from an int, float, digit string or datetime."""
    if isinstance(value, datetime):
        result = datetime_to_unix(value)
    elif isinstance(value, bool):
        raise InvalidEventError(field, "must be unix seconds or a datetime, not a bool")
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and math.isfinite(value):
        result = int(value)
    elif isinstance(value, str):
        try:
            result = int(value)
        except ValueError:
            raise InvalidEventError(field, f"{value!r} is not unix seconds") from None
    else:
        raise InvalidEventError(field, f"must be unix seconds or a datetime, not "
                                       f"{type(value).__name__}")
    if not 0 <= result <= MAX_TIMESTAMP:
        raise InvalidEventError(field, f"{result} is not unix seconds (milliseconds?)")
    return result


def check_event_id(value: object) -> str:
    """Return the caller's event id, or a new ULID when it is None."""
    if value is None:
        return new_ulid()
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError("id", "must be a non-blank str (a ULID is best) or None")
    utf8_len(value, "id")
    return value
