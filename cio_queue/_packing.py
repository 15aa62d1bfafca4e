"""v2 batch packing and partial-response reading: pure functions, no I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

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

    Returns None when the body cannot be read, so the caller can keep the operations
    rather than guess which were accepted; a ``truncated`` body (:attr:`Response.truncated`)
    is never read, even if what arrived happens to parse.
    """
    if truncated:
        return None
    try:
        errors = json.loads(body)["errors"]
        result: dict[int, str] = {}
        for error in errors:
            index = error["batch_index"]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
                return None
            parts = [str(error.get(key)) for key in ("reason", "field", "message")
                     if error.get(key) is not None]
            result[index] = ": ".join(parts) or "invalid"
    except (ValueError, KeyError, TypeError):
        return None
    return result
