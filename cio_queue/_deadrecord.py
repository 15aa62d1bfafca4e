"""The dead-letter record: one operation that was not delivered, as one JSON object.

Stage: the recorder's format, shared by the dead-letter file (``_deadletter``), the
fleet's dead-letter stream (``_redis._deadletters``), replay and import. A record holds the
operation's wire form (method, path, body), why it was not delivered, how many attempts
it had and when; never credentials. ``operation_from_record`` reads one back as untrusted
input.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote

from ._exceptions import InvalidEventError
from ._operations import RAW_KIND, Operation, raw_v2, to_v2
from ._validation import check_path_id

if TYPE_CHECKING:
    from ._ledger import Entry
    from ._outcome import Outcome

__all__ = ["FORMAT", "dumps_record", "entry_record", "operation_from_record", "record_again",
           "record_for"]

FORMAT: Final = "cio-queue/dead-letter/1"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def record_for(op: Operation, *, reason: str, attempts: int, status: int | None,
               error: str | None, now: float) -> dict[str, Any]:
    """Return the dead-letter record of an operation (a JSON-ready dict)."""
    return {
        "format": FORMAT,
        "kind": op.kind,
        "method": op.method,
        "path": op.path,
        "body": op.payload,
        "customer_id": op.customer_id,
        "event_id": op.event_id,
        "reason": reason,
        "status": status,
        "error": error,
        "attempts": attempts,
        "enqueued_at": _iso(op.enqueued_at),
        "recorded_at": _iso(now),
    }


def record_again(record: dict[str, Any], outcome: Outcome, now: float) -> dict[str, Any]:
    """Return a replayed record that was not delivered again, with its new outcome.

    The outcome's reason, status and error replace the record's; the attempts add up.
    """
    error = outcome.error
    before = record.get("attempts")
    return {**record, "reason": outcome.reason or outcome.status.value,
            "attempts": (before if type(before) is int else 0) + outcome.attempts,
            "status": error.status if error else None,
            "error": str(error) if error is not None else record.get("error"),
            "recorded_at": _iso(now)}


def operation_from_record(record: dict[str, Any]) -> Operation:
    """Rebuild the operation a record was made from; its body bytes are the same.

    The record is checked as untrusted input, since v1 requests are rebuilt from its stored
    method and path: the kind must be known, the method its kind's, and the path exactly
    the one its kind builds for the record's person, percent-encoded, with no ``.`` or
    ``..`` segment (which a server would resolve to another resource, as ``quote()`` leaves
    dots alone and some servers decode ``%2E``); the body must have what its kind needs.
    An operation known only by its v2 element (kind ``batch``: from ``EventQueue.batch``,
    or back from a spool or a fleet's stream) has method ``POST``, no path, and its
    element as the body, which is checked as ``EventQueue.batch`` checks it.

    Raises:
        ValueError: the record is not a cio-queue dead-letter record, or not a valid one. The
            message never repeats the record's data.
    """
    if record.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    kind, body, event_id = record.get("kind"), record.get("body"), record.get("event_id")
    customer_id = record.get("customer_id")
    if not isinstance(body, dict):
        raise ValueError("its body is not a JSON object")
    if not (event_id is None or isinstance(event_id, str)):
        raise ValueError("its event_id is not a string")
    try:
        enqueued = datetime.fromisoformat(record["enqueued_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        raise ValueError("its enqueued_at is not an ISO 8601 time") from None
    if kind == RAW_KIND:
        return _raw_from_record(record, body, enqueued)
    _check_request(kind, record.get("method"), record.get("path"), customer_id)
    op = Operation(str(kind), str(record["path"]), body,
                   customer_id=customer_id, event_id=event_id, enqueued_at=enqueued)
    try:
        to_v2(op)  # reads every field the kind needs, on either transport
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"its body does not fit a {kind} operation "
                         f"({type(exc).__name__})") from None
    return op


def _raw_from_record(record: dict[str, Any], body: dict[str, Any], enqueued: float) -> Operation:
    """Rebuild an operation known only by its v2 element."""
    if record.get("method") != "POST" or record.get("path") not in ("", None):
        raise ValueError(f"its method is not POST or it has a path, as no {RAW_KIND} has")
    try:
        op = raw_v2(body, "body")
    except InvalidEventError as exc:
        raise ValueError(f"its {exc.field} is not a v2 operation's") from None
    if op.event_id != record.get("event_id"):
        raise ValueError("its event_id is not its element's id")
    op.enqueued_at = enqueued
    return op


# Per kind: the v1 method, and the path after ``/customers/{id}``, or the whole path for
# the kinds that address no person.
_REQUESTS: Final[dict[str, tuple[str, re.Pattern[str]]]] = {
    kind: (method, re.compile(rest)) for kind, method, rest in [
        ("identify", "PUT", ""),
        ("delete", "DELETE", ""),
        ("track", "POST", "/events"),
        ("pageview", "POST", "/events"),
        ("backfill", "POST", "/events"),
        ("suppress", "POST", "/suppress"),
        ("unsuppress", "POST", "/unsuppress"),
        ("add_device", "PUT", "/devices"),
        ("delete_device", "DELETE", "/devices/[^/]+"),
        ("track_anonymous", "POST", "/events"),
        ("merge_customers", "POST", "/merge_customers"),
    ]
}
_NO_PERSON: Final = frozenset({"track_anonymous", "merge_customers"})
_ENCODED_PATH: Final = re.compile(r"(?:/[A-Za-z0-9._~%-]+)+")  # what quote(safe="") leaves
_DOT_SEGMENTS: Final = frozenset({".", ".."})


def _check_request(kind: object, method: object, path: object, customer_id: object) -> None:
    """Refuse a stored request that its kind would not have made for its person."""
    if not isinstance(path, str) or not _ENCODED_PATH.fullmatch(path):
        raise ValueError("its path is not a percent-encoded v1 path")
    if any(unquote(segment) in _DOT_SEGMENTS for segment in path.split("/")):
        raise ValueError("its path has a . or .. segment, which a server would resolve to "
                         "another resource")
    if not isinstance(kind, str) or kind not in _REQUESTS:
        raise ValueError("its kind is not one cio-queue makes")
    expected_method, rest = _REQUESTS[kind]
    if method != expected_method:
        raise ValueError(f"its method is not {expected_method}, as for every {kind}")
    prefix = _person_path(kind, customer_id)
    if not (path.startswith(prefix) and rest.fullmatch(path, len(prefix))):
        raise ValueError(f"its path is not the one a {kind} operation has for its customer_id")


def _person_path(kind: str, customer_id: object) -> str:
    """The start of the path of a ``kind`` operation for ``customer_id``."""
    if kind in _NO_PERSON:
        if customer_id is not None:
            raise ValueError(f"a {kind} operation has no customer_id")
        return ""
    try:
        return "/customers/" + quote(check_path_id(customer_id, "customer_id"), safe="")
    except InvalidEventError as exc:
        raise ValueError(f"its {exc}") from None


def entry_record(entry: Entry, now: float) -> dict[str, Any]:
    """Return the dead-letter record of a decided entry, with its verdict's reason."""
    verdict = entry.verdict
    assert verdict is not None
    error = verdict.error
    return record_for(entry.op, reason=verdict.reason or verdict.status.value,
                      attempts=entry.attempts, status=error.status if error else None,
                      error=str(error) if error else None, now=now)


def dumps_record(record: dict[str, Any]) -> str:
    """Return a record as one line of compact JSON (without the newline)."""
    return json.dumps(record, separators=(",", ":"))
