"""The import's files: the file read in place, its checkpoint, and the lines it rejected.

Stage: import, its blocking half. Everything here does file I/O, and ``_import`` calls it
on a worker thread, never on the event loop. Beside the file ``FILE``, which is only read:

- ``FILE.import.lock`` is held by the one import of ``FILE`` that runs; a second is refused.
- ``FILE.import.progress``, the checkpoint (see ``_checkpoint``): first a ``source`` entry
  (what the file's first 64 KiB add up to, the format settings, and the seed of the
  import's event ids), then one entry per settled chunk with the running totals.
- ``FILE.rejected.jsonl``: one JSON object per line that was not imported and will not be
  retried: ``{"line": n, "reason": "invalid" | "rejected", "status": ..., "error": "...",
  "text": "..."}``, where ``text`` is the line as it was in the file.

The protocol:

1. *Start*: take the lock. With no checkpoint, note the source and empty
   ``FILE.rejected.jsonl``. With one, check that ``FILE`` is the file it was made for (the
   same first bytes, at least as long) read the same way, and cut ``FILE.rejected.jsonl``
   back to the length the checkpoint gives it.
2. *Work through* ``FILE`` a chunk at a time. Once the operations of a chunk have all
   settled, its rejected lines are appended to ``FILE.rejected.jsonl`` and fsynced, then the
   chunk is checkpointed. An import that is interrupted, or stops on a failure, notes the
   lines of its unsettled chunks that were delivered.
3. *End*: nothing to put back. The checkpoint stays, so running the import again finds
   nothing left to send; ``restart`` (or removing ``FILE.import.progress``) starts over.

So a crash at any point loses no line and writes no rejected line twice; what it costs is
sending again the chunks it cut (events keep their id, which the API deduplicates).
"""

from __future__ import annotations

import errno
import os
import stat
import zlib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from ._checkpoint import Checkpoint, Chunk, LineReader
from ._deadletter import append_whole, flock, open_new
from ._exceptions import CioQueueError
from ._importformats import (
    CsvRows,
    EventIds,
    ImportFormat,
    JsonLines,
    LineError,
    Parsed,
    row_of,
)

__all__ = ["MAX_RECORD_BYTES", "ImportFileError", "ImportFiles", "Line", "Totals",
           "rejected_line"]

MAX_RECORD_BYTES: Final = 1 << 20
"""The longest record (line, or CSV row) read whole; a longer one is refused unread."""
_HEAD_BYTES: Final = 64 * 1024
"""The first bytes of the file whose checksum tells a resumed import it is the same file."""
_TEXT_CHARS: Final = 200
"""What ``text`` keeps of a record too long to read."""


class ImportFileError(CioQueueError):
    """Raised when a file cannot be imported as asked (another import of it runs, say)."""


@dataclass(frozen=True, slots=True)
class Line:
    """A record of the file: its call, or what is wrong with it."""

    number: int
    """The number of its (first) line in the file, from 1."""
    raw: bytes
    """The record as read (cut short when it is over MAX_RECORD_BYTES)."""
    parsed: Parsed | None = None
    problem: str | None = None
    """Why it is no valid line; None with ``parsed``."""


@dataclass(slots=True)
class Totals:
    """Lines counted by how they ended, in one run or in all runs of an import."""

    lines: int = 0
    """Records read and handled (blank lines and lines delivered earlier excluded)."""
    delivered: int = 0
    rejected: int = 0
    """Refused by the API."""
    invalid: int = 0
    """Refused before sending: no valid line, or refused by the queue's checks."""

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.lines + other.lines, self.delivered + other.delivered,
                      self.rejected + other.rejected, self.invalid + other.invalid)

    def as_json(self) -> dict[str, int]:
        """The totals as a JSON object."""
        return {"lines": self.lines, "delivered": self.delivered, "rejected": self.rejected,
                "invalid": self.invalid}

    @classmethod
    def from_json(cls, value: object) -> Totals:
        """Totals from a checkpoint's JSON (zeros for anything unreadable)."""
        if not isinstance(value, dict):
            return cls()
        return cls(*(int(value.get(key, 0)) for key in ("lines", "delivered", "rejected",
                                                         "invalid")))


class ImportFiles:
    """One import's hold on a file and its companions (see the module docs).

    Open it with :meth:`open`, read it with :meth:`read_chunk`, record each settled chunk
    with :meth:`keep`, and always :meth:`close` it. Every method blocks; calls must not
    overlap. A dry run holds no lock and writes nothing.

    Attributes:
        path: the file.
        rejected: ``FILE.rejected.jsonl``.
        progress: ``FILE.import.progress``.
        size: the file's size when the import started (bytes).
        resumed: whether this import continues an earlier run.
        done: the bytes of the file done before this run.
        totals: the totals of the earlier runs.
    """

    def __init__(self, path: Path, fmt: ImportFormat, *, dry_run: bool = False) -> None:
        self.path = path
        self.rejected = self._beside("rejected.jsonl")
        self.progress = self._beside("import.progress")
        self.size = 0
        self.resumed = False
        self.done = 0
        self.totals = Totals()
        self._format = fmt
        self._dry_run = dry_run
        self._checkpoint = Checkpoint(self.progress)
        self._lock_fd: int | None = None
        self._rejected_fd: int | None = None
        self._reader: LineReader | None = None
        self._rows: JsonLines | CsvRows | None = None

    def __repr__(self) -> str:
        return f"<ImportFiles {self.path}>"

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{suffix}")

    @classmethod
    def open(cls, path: Path, fmt: ImportFormat, *, dry_run: bool = False,
             restart: bool = False) -> ImportFiles:
        """Start an import of ``path``, or resume one.

        Args:
            path: the file.
            fmt: how to read it.
            dry_run: read it from the top, holding no lock and writing nothing.
            restart: forget an earlier run (its checkpoint and rejected lines) first.

        Raises:
            ImportFileError: another import of the file runs, its CSV header lacks a
                column, or it is not the file (or format) its checkpoint was made for.
            OSError: the file cannot be read, or its companions written.
        """
        files = cls(path, fmt, dry_run=dry_run)
        try:
            files._start(restart=restart)
        except BaseException:
            files.close()
            raise
        return files

    def _start(self, *, restart: bool) -> None:
        with self.path.open("rb") as handle:  # fails first for a missing or unreadable file
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise OSError(errno.EINVAL, "Not a file to import", str(self.path))
            self.size = status.st_size
            head = handle.read(_HEAD_BYTES)
        ids = EventIds.new()
        if not self._dry_run:
            self._lock()
            if restart:
                self.progress.unlink(missing_ok=True)
            ids = self._resume(head) or self._begin(head, ids)
        self._open_reader(ids)

    def _lock(self) -> None:
        self._lock_fd = open_new(self._beside("import.lock"), os.O_RDWR, exclusive=False)
        if not flock(self._lock_fd, blocking=False):
            raise ImportFileError(f"{self.path} is already being imported; wait for that "
                                  "import to end")

    def _source(self, head: bytes, ids: EventIds) -> dict[str, Any]:
        return {"head": zlib.crc32(head), "head_bytes": len(head),
                "settings": self._format.described(self.path.name),
                "ids": [ids.millis, ids.seed]}

    def _resume(self, head: bytes) -> EventIds | None:
        """Take up the checkpoint, if there is a usable one; return its event ids."""
        checkpoint = self._checkpoint
        source = checkpoint.notes.get("source") if checkpoint.load() else None
        if not isinstance(source, dict):
            return None  # none, or cut before its first entry was whole: start over
        self._check_source(source, head)
        self.resumed = True
        done = checkpoint.done
        self.done = done.offset
        self.totals = Totals.from_json(done.extra.get("totals"))
        self.totals.lines += len(checkpoint.delivered)  # skipped by this run
        self.totals.delivered += len(checkpoint.delivered)
        fd = open_new(self.rejected, os.O_RDWR | os.O_APPEND, exclusive=False)
        self._rejected_fd = fd
        if os.fstat(fd).st_size > done.kept:
            os.ftruncate(fd, done.kept)  # drop what a cut chunk had rejected
        checkpoint.open()
        millis, seed = source["ids"]
        return EventIds(int(millis), int(seed))

    def _check_source(self, source: dict[str, Any], head: bytes) -> None:
        restart = (f"use --restart (or remove {self.progress.name}) to import it from the "
                   "start")
        settings = self._format.described(self.path.name)
        if source.get("settings") != settings:
            raise ImportFileError(f"{self.path} was imported in part with other settings "
                                  f"({_settings(source.get('settings'))}); give the same, "
                                  f"or {restart}")
        head_bytes = int(source.get("head_bytes", 0))
        if (self.size < self._checkpoint.done.offset or len(head) < head_bytes
                or zlib.crc32(head[:head_bytes]) != source.get("head")):
            raise ImportFileError(f"{self.path} is not the file that was imported in part "
                                  f"(up to line {self._checkpoint.done.line}); {restart}")

    def _begin(self, head: bytes, ids: EventIds) -> EventIds:
        """Start a new import: a new checkpoint, an empty rejected file."""
        self._rejected_fd = fd = open_new(self.rejected, os.O_RDWR | os.O_APPEND,
                                          exclusive=False)
        os.ftruncate(fd, 0)
        self._checkpoint = checkpoint = Checkpoint(self.progress)
        self.progress.unlink(missing_ok=True)
        checkpoint.open()
        checkpoint.note({"source": self._source(head, ids)})
        return ids

    def _open_reader(self, ids: EventIds) -> None:
        done = self._checkpoint.done
        start = (done.line, done.offset)
        if self._format.format_of(self.path.name) == "jsonl":
            self._rows = JsonLines(ids)
            self._reader = LineReader(self.path, start, _read_json_line)
            return
        with self.path.open("rb") as handle:
            raw, lines, size = _read_csv_record(handle)
        if not raw.strip():
            self._reader = LineReader(self.path, (lines, size), _read_csv_record)
            return  # an empty file, or no header: nothing to import
        try:
            self._rows = CsvRows(row_of(raw, encoding="utf-8-sig"), self._format, ids)
        except LineError as exc:
            raise ImportFileError(f"{self.path}: {exc}") from None
        self._reader = LineReader(self.path, max(start, (lines, size)), _read_csv_record)

    # --- working through ------------------------------------------------------------------

    def read_chunk(self) -> Chunk[Line] | None:
        """Read and parse the next chunk; None at the end of the file."""
        reader = self._reader
        assert reader is not None
        if self._rows is None:
            return None
        return reader.read_chunk(self._parse, skip=self._checkpoint.delivered)

    def _parse(self, number: int, raw: bytes) -> Line:
        rows = self._rows
        assert rows is not None
        if len(raw) > MAX_RECORD_BYTES:
            return Line(number, raw[:_TEXT_CHARS],
                        problem=f"is over {MAX_RECORD_BYTES:,} bytes, more than any operation")
        try:
            return Line(number, raw, rows.parse(number, raw))
        except LineError as exc:
            return Line(number, raw, problem=str(exc))

    def keep(self, chunk: Chunk[Line], rejected: list[bytes], totals: Totals) -> None:
        """Append a settled chunk's rejected lines, then checkpoint it with the totals."""
        if self._dry_run:
            return
        fd = self._rejected_fd
        assert fd is not None
        if rejected:
            append_whole(fd, rejected)
        self._checkpoint.passed(chunk, os.fstat(fd).st_size, totals=totals.as_json())

    def note_delivered(self, numbers: list[int]) -> None:
        """Checkpoint the lines of unsettled chunks that were delivered."""
        if not self._dry_run:
            self._checkpoint.note_delivered(numbers)

    def close(self) -> None:
        """Close every file and let another import run (idempotent; never raises)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._checkpoint.close()
        for fd in (self._rejected_fd, self._lock_fd):  # closing the lock's file releases it
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self._rejected_fd = self._lock_fd = None


def rejected_line(line: Line, *, reason: str, error: str, status: int | None = None) -> bytes:
    """The line of ``FILE.rejected.jsonl`` for a line that was not imported."""
    record: dict[str, Any] = {"line": line.number, "reason": reason}
    if status is not None:
        record["status"] = status
    record["error"] = error
    record["text"] = line.raw.rstrip(b"\r\n").decode("utf-8", "replace")
    return orjson.dumps(record) + b"\n"


def _settings(value: object) -> str:
    if not isinstance(value, dict):
        return "unknown"
    return ", ".join(f"{key}={item}" for key, item in value.items() if item is not None)


def _read_json_line(reader: BinaryIO) -> tuple[bytes, int, int]:
    """One line (the start of one over MAX_RECORD_BYTES, the rest passed over)."""
    raw = reader.readline(MAX_RECORD_BYTES + 1)
    return _pass_over_rest(reader, raw, 1, len(raw))


def _read_csv_record(reader: BinaryIO) -> tuple[bytes, int, int]:
    """Read one CSV record: lines up to one that closes every quote.

    RFC 4180 doubles a quote inside a quoted cell, so a record ends where its quotes add up
    to an even number. A record that grows over MAX_RECORD_BYTES ends there (the parse refuses it).
    """
    parts: list[bytes] = []
    quotes = lines = size = 0
    while size <= MAX_RECORD_BYTES:
        line = reader.readline(MAX_RECORD_BYTES + 1 - size)
        if not line:
            break
        parts.append(line)
        lines, size, quotes = lines + 1, size + len(line), quotes + line.count(b'"')
        if quotes % 2 == 0 and line.endswith(b"\n"):
            break
    return _pass_over_rest(reader, b"".join(parts), lines, size)


def _pass_over_rest(reader: BinaryIO, raw: bytes, lines: int,
                    size: int) -> tuple[bytes, int, int]:
    """Count, without keeping it, the rest of an overlong record's last line."""
    if size <= MAX_RECORD_BYTES or raw.endswith(b"\n"):
        return raw, lines, size
    while rest := reader.readline(MAX_RECORD_BYTES):
        size += len(rest)
        if rest.endswith(b"\n"):
            break
    return raw, lines, size
