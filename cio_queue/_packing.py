"""v2 batch packing and partial-response reading: pure functions, no I/O.

Stage: dispatch (packing a batch into requests) and delivery (reading a 207).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from ._sender import MAX_REASON_CHARS, excerpt

__all__ = ["MAX_BATCH_BODY_BYTES", "batch_body", "pack", "partial_errors"]

MAX_BATCH_BODY_BYTES: Final = 500_000
"""A v2 batch request body must be strictly smaller than this."""
_PREFIX: Final = b'{"batch":['
_SUFFIX: Final = b"]}"
_OVERHEAD: Final = len(_PREFIX) + len(_SUFFIX)


def pack(sizes: Sequence[int], limit: int = MAX_BATCH_BODY_BYTES) -> list[range]:
    """Split operations, in order, into as few request bodies under ``limit`` as fit.

    Args:
        sizes: the byte size of each serialised operation, in order (each small enough to
            fit a request on its own).
        limit: the exclusive upper bound on a request body.

    Returns:
        Consecutive index ranges, one per request. Greedy filling in order gives the
        fewest requests for consecutive packing; an operation that would overflow a
        request starts the next one, so no body ever overshoots.
    """
    groups: list[range] = []
    start = 0
    used = _OVERHEAD
    for index, size in enumerate(sizes):
        extra = size + (index > start)  # a comma before every element but the first
        if index > start and used + extra >= limit:
            groups.append(range(start, index))
            start, used, extra = index, _OVERHEAD, size
        used += extra
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def batch_body(parts: Sequence[bytes]) -> bytes:
    """Join already-serialised operations into a ``{"batch": [...]}`` body."""
    return _PREFIX + b",".join(parts) + _SUFFIX


def partial_errors(body: bytes, count: int, *, truncated: bool = False) -> dict[int, str] | None:
    """Read a 207 body: map each failed ``batch_index`` to a description.

    Args:
        body: the response body, ``{"errors": [{"batch_index", "reason", "field",
            "message"}, ...]}``.
        count: the number of operations in the request; every index must be below it.
        truncated: the body was cut short (:attr:`Response.truncated`); it is not read.

    Returns:
        Each failed index with a one-line description of at most
        :data:`~cio_queue._sender.MAX_REASON_CHARS` characters; several entries for one
        index (one per bad field) are joined with ``"; "``. None when the body cannot be
        read, so the caller keeps the operations rather than guess which were accepted:
        cut short, not JSON (or nested past the recursion limit), no non-empty
        ``errors`` list (a 207 promises at least one), or an entry that is not an object
        with an int ``batch_index`` in ``range(count)``.
    """
    errors = None if truncated else _error_list(body)
    if not errors:
        return None
    found: dict[int, list[str]] = {}
    for error in errors:
        if not isinstance(error, dict):
            return None
        index = error.get("batch_index")
        if type(index) is not int or not 0 <= index < count:  # not a bool, not a float
            return None
        found.setdefault(index, []).append(_describe(error))
    return {index: excerpt("; ".join(parts)) for index, parts in found.items()}


def _error_list(body: bytes) -> list[object] | None:
    """Return the body's ``errors`` list, or None when the body is not such an object."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    errors = document.get("errors") if isinstance(document, dict) else None
    return errors if isinstance(errors, list) else None


def _describe(error: dict[str, object]) -> str:
    parts = [_scalar_text(error.get(key)) for key in ("reason", "field", "message")]
    return ": ".join(part for part in parts if part) or "invalid"


def _scalar_text(value: object) -> str:
    """Return a JSON scalar as text; None and nested values say nothing useful here."""
    if isinstance(value, str):
        return value[:MAX_REASON_CHARS]
    return str(value) if isinstance(value, int | float) else ""
