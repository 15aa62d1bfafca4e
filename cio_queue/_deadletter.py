"""The dead-letter file: JSON lines of operations that could not be delivered.

One line per operation: its wire form (method, path, body), why it was not delivered,
how many attempts it had and when; never credentials. The queue appends the records of a
batch's rejected and failed operations when the batch finishes, and those unsent at the
shutdown deadline before ``aclose()`` returns; each append is fsynced. The blocking file
work runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread

from ._operations import Operation

__all__ = ["FORMAT", "DeadLetterFile", "dumps_record", "operation_from_record", "record_for"]

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


def operation_from_record(record: dict[str, Any]) -> Operation:
    """Rebuild the operation a record was made from; its body bytes are the same.

    Raises:
        ValueError: the record is not a cio-queue dead-letter record.
    """
    if record.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    try:
        enqueued = datetime.fromisoformat(record["enqueued_at"]).timestamp()
        return Operation(record["kind"], record["method"], record["path"], record["body"],
                         customer_id=record.get("customer_id"), event_id=record.get("event_id"),
                         enqueued_at=enqueued)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"incomplete dead-letter record: {exc}") from None


class DeadLetterFile:
    """Append records to one JSON-lines file, in order, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<DeadLetterFile {self.path}>"

    async def append(self, records: list[dict[str, Any]]) -> None:
        """Append records and fsync; returns once they are on disk."""
        if not records:
            return
        data = "".join(dumps_record(r) + "\n" for r in records).encode()
        async with self._lock:
            await anyio.to_thread.run_sync(_append_sync, self.path, data, abandon_on_cancel=False)



def dumps_record(record: dict[str, Any]) -> str:
    """Return a record as one line of compact JSON (without the newline)."""
    return json.dumps(record, separators=(",", ":"))


def _append_sync(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[str]:
    """Return the file's non-blank lines (without newlines)."""
    with path.open(encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Replace the file's content with ``lines`` so that a crash leaves old or new, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def iter_records(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Yield each line with its parsed record, or None when the line is not valid JSON."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            yield line, None
        else:
            yield line, record if isinstance(record, dict) else None
