"""Resumable passes through a file of lines: read a chunk at a time, checkpoint each chunk.

Stage: shared by replay (``_replayfiles``) and import (``_importfiles``), their blocking
half. Everything here does file I/O and is called on a worker thread, never on the event
loop. A pass reads its file a chunk at a time (:class:`LineReader`); once the operations of
a chunk have all settled, the caller appends what the chunk keeps to a file of its own
(replay's remaining lines, import's rejected ones) and checkpoints it (:class:`Checkpoint`).

The checkpoint is a file of JSON lines, each appended and fsynced:

- ``{"line": n, "offset": b, "kept": k, ...}``: the first ``n`` lines (``b`` bytes) are
  done, and the file of kept lines holds ``k`` bytes. The caller may add fields of its own
  (import's running totals); the last such entry is :attr:`Checkpoint.done`.
- ``{"delivered": [...]}``, from a pass that was interrupted: the numbers of lines after
  the last ``line`` entry that were delivered, which a resumed pass skips.
- any other entry the caller notes, e.g. import's ``{"source": {...}}``, kept in
  :attr:`Checkpoint.notes` under its first key.

A torn last entry (a crash in the middle of an append) is ignored: the one before it holds.
Memory is bounded by one chunk (and the delivered numbers of the chunks not yet
checkpointed), whatever the file's length.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Container
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Generic, TypeVar

from ._deadletter import append_whole, fsync_directory, open_for_append

__all__ = ["CHUNK_BYTES", "CHUNK_LINES", "Checkpoint", "Chunk", "Done", "LineReader",
           "RecordReader", "read_line"]

CHUNK_LINES: Final = 1000
"""Lines per chunk at most: the operations held at once, and sent between checkpoints."""
CHUNK_BYTES: Final = 1 << 20
"""Bytes per chunk at most (a chunk always takes at least one line)."""

T = TypeVar("T")

RecordReader = Callable[[BinaryIO], tuple[bytes, int, int]]
"""Read the next record: its bytes (``b""`` at the end), how many lines it spans, and how
many bytes of the file it took (more than its bytes when the reader cut an overlong one)."""


def read_line(reader: BinaryIO) -> tuple[bytes, int, int]:
    """Read one line: a record of a file of JSON lines."""
    raw = reader.readline()
    return raw, 1, len(raw)


@dataclass(frozen=True, slots=True)
class Chunk(Generic[T]):
    """Consecutive records of a file, parsed, and where the next chunk starts."""

    lines: list[T]
    end_line: int
    """The number of the last line read (blank or skipped ones included)."""
    end_offset: int
    """The byte offset just after it."""


@dataclass(frozen=True, slots=True)
class Done:
    """The last checkpoint: how far the pass got, and what its caller noted with it."""

    line: int = 0
    offset: int = 0
    kept: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class LineReader:
    """Read a file a chunk of records at a time from a position, counting lines and bytes.

    Args:
        path: the file.
        start: the line number and byte offset to start after.
        record: how to read one record (default: one line).
    """

    def __init__(self, path: Path, start: tuple[int, int] = (0, 0),
                 record: RecordReader = read_line) -> None:
        self._file: BinaryIO = path.open("rb")
        self._file.seek(start[1])
        self.position = start
        self._record = record

    def read_chunk(self, parse: Callable[[int, bytes], T],
                   skip: Container[int] = ()) -> Chunk[T] | None:
        """Read and parse the next chunk; None at the end of the file.

        Blank records are passed over, and so are the ones whose number is in ``skip``.

        Args:
            parse: makes an item of a record, given its (first) line number and its bytes.
            skip: numbers of records to pass over unparsed.
        """
        lines: list[T] = []
        number, offset = start = self.position
        while len(lines) < CHUNK_LINES and offset - start[1] < CHUNK_BYTES:
            raw, spans, size = self._record(self._file)
            if not raw:
                break
            first = number + 1
            number, offset = number + spans, offset + size
            if raw.strip() and first not in skip:
                lines.append(parse(first, raw))
        self.position = (number, offset)
        return Chunk(lines, number, offset) if number > start[0] else None

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()


class Checkpoint:
    """A pass's checkpoint file: load it to resume, note each settled chunk in it.

    Attributes:
        path: the checkpoint file.
        done: the last ``line`` entry.
        delivered: numbers of lines after ``done`` that an interrupted pass delivered.
        notes: the caller's other entries, by their first key.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = Done()
        self.delivered: set[int] = set()
        self.notes: dict[str, Any] = {}
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<Checkpoint {self.path} line={self.done.line}>"

    def load(self) -> bool:
        """Read the checkpoint, if there is one; say whether there was."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        with handle:
            for raw in handle:
                self._load_entry(raw)
        return True

    def _load_entry(self, raw: bytes) -> None:
        try:
            entry = json.loads(raw)
        except ValueError:
            return  # a torn last entry: the one before it holds
        if not isinstance(entry, dict) or not entry:
            return
        if "line" in entry:
            extra = {k: v for k, v in entry.items() if k not in ("line", "offset", "kept")}
            self.done = Done(int(entry["line"]), int(entry["offset"]), int(entry["kept"]),
                             extra)
            self.delivered.clear()
        elif "delivered" in entry:
            self.delivered.update(int(n) for n in entry["delivered"])
        else:
            key = next(iter(entry))
            self.notes[key] = entry[key]

    def open(self, *, owner: os.stat_result | None = None) -> None:
        """Open the checkpoint for appending, creating it (owner-only) if need be."""
        self._fd, created = open_for_append(self.path, owner=owner)
        if created:
            fsync_directory(self.path.parent)

    def note(self, entry: dict[str, Any]) -> None:
        """Append one entry and fsync it."""
        fd = self._fd
        assert fd is not None
        append_whole(fd, [json.dumps(entry, separators=(",", ":")).encode() + b"\n"])

    def passed(self, chunk: Chunk[Any], kept: int, **extra: Any) -> None:
        """Checkpoint a settled chunk: its lines are done; the kept file holds ``kept`` bytes.

        Args:
            chunk: the chunk.
            kept: the size of the file of kept lines, this chunk's included.
            **extra: fields of the caller's to note with it (JSON values).
        """
        self.done = Done(chunk.end_line, chunk.end_offset, kept, extra)
        self.note({"line": chunk.end_line, "offset": chunk.end_offset, "kept": kept, **extra})
        self.delivered = {n for n in self.delivered if n > chunk.end_line}

    def note_delivered(self, numbers: list[int]) -> None:
        """Checkpoint the lines of unfinished chunks that were delivered."""
        if numbers:
            self.note({"delivered": numbers})
            self.delivered.update(numbers)

    def close(self) -> None:
        """Close the file (idempotent; never raises)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with suppress(OSError):
                os.close(fd)
