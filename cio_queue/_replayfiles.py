"""The replay's files: take a dead-letter file away, checkpoint, and put back what stays.

Stage: replay, its blocking half. Everything here does file I/O, and ``_replay`` calls it
on a worker thread, never on the event loop. Beside the dead-letter file ``PATH``:

- ``PATH.lock`` guards ``PATH``: every append holds it (``append_records``), and so does a
  replay at the two moments it touches ``PATH``.
- ``PATH.replay.lock`` is held by the one replay of ``PATH`` that runs; a second is refused.
- ``PATH.replaying``, the work file, is ``PATH`` as it was taken away; it is only read.
- ``PATH.remaining`` collects what stays, in order: lines that are no valid operation,
  unchanged, and the operations that failed again, with their new reason.
- ``PATH.progress``, the checkpoint, is JSON lines, each appended and fsynced.

The protocol:

1. *Take away*: create ``PATH.remaining`` with ``PATH``'s mode and owner, then, holding
   ``PATH.lock``, rename ``PATH`` to ``PATH.replaying``. A live queue's next append starts
   a new ``PATH``.
2. *Work through* ``PATH.replaying`` a chunk at a time. Once the operations of a chunk
   have all settled, the lines it keeps are appended to ``PATH.remaining`` and fsynced,
   then ``{"line": n, "offset": b, "kept": k}`` is added to the checkpoint: the first ``n``
   lines (``b`` bytes) are done and ``PATH.remaining`` holds ``k`` bytes. An interrupted
   replay adds ``{"delivered": [...]}``, the numbers of the lines of its last chunk that
   were delivered.
3. *Put back*: holding ``PATH.lock``, append what ``PATH`` holds now (lines a live queue
   wrote meanwhile) to ``PATH.remaining``, fsync it and rename it to ``PATH``: that rename
   is the commit. Then remove ``PATH.replaying`` and the checkpoint.

A replay that finds ``PATH.replaying`` resumes. If ``PATH.remaining`` is there, it cuts it
back to the last checkpoint's length and goes on from that line, skipping the lines noted
as delivered; if not, step 3 has committed and only the clean-up is left. So a crash at
any point neither loses a line nor writes one twice. What a crash costs is sending again
the operations of the chunk it cut (events keep their id, which the API deduplicates);
an interruption that lets the replay note its deliveries costs only those in flight.

Memory is bounded by one chunk, whatever the file's length. The chunked reading and the
checkpoint are ``_checkpoint``'s, shared with import.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from ._checkpoint import CHUNK_BYTES, CHUNK_LINES, Checkpoint, Chunk, LineReader
from ._deadletter import (
    append_whole,
    flock,
    fsync_directory,
    locked,
    open_new,
    resolved,
)
from ._deadrecord import operation_from_record
from ._exceptions import ReplayInProgressError
from ._log import log
from ._operations import Operation

__all__ = ["CHUNK_BYTES", "CHUNK_LINES", "Chunk", "Line", "ReplayFiles"]

_COPY_BYTES: Final = 1 << 20
"""Bytes copied at a time when the put-back appends what a live queue wrote."""
_PROBLEM_CHARS: Final = 200
"""Longest problem description logged for a bad line."""


@dataclass(frozen=True, slots=True)
class Line:
    """A non-blank line of the work file, with its record and operation if it has one."""

    number: int
    """Its line number in the file, from 1."""
    raw: bytes
    """The line as read, newline included (the last line may have none)."""
    record: dict[str, Any] | None = None
    """The dead-letter record; None for a line that is no valid one, kept as it is."""
    op: Operation | None = None
    """The record's operation, built and sealed; None with ``record``."""


class ReplayFiles:
    """One replay's hold on a dead-letter file and its companions (see the module docs).

    Open it with :meth:`open`, read it with :meth:`read_chunk`, record each settled chunk
    with :meth:`keep`, end with :meth:`finish`, and always :meth:`close` it. Every method
    blocks; calls must not overlap.

    Attributes:
        path: the dead-letter file (symlinks resolved).
        resumed: whether this replay continues one that was interrupted.
        committed: whether the remaining lines are back in ``path``.
    """

    def __init__(self, path: Path) -> None:
        self.path = resolved(path)
        self.work = self._beside("replaying")
        self.remaining = self._beside("remaining")
        self.progress = self._beside("progress")
        self.resumed = False
        self.committed = False
        self._owner: os.stat_result | None = None  # mode and owner for the files made here
        self._lock_fd: int | None = None
        self._reader: LineReader | None = None
        self._remaining_fd: int | None = None
        self._checkpoint = Checkpoint(self.progress)

    def __repr__(self) -> str:
        return f"<ReplayFiles {self.path}>"

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{suffix}")

    # --- starting -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> ReplayFiles:
        """Take the file away for a new replay, or resume an interrupted one.

        Raises:
            ReplayInProgressError: another replay of this file runs.
            FileNotFoundError: there is no such file, and no interrupted replay of it.
        """
        files = cls(path)
        try:
            files._start()
        except BaseException:
            files.close()
            raise
        return files

    def _start(self) -> None:
        self._lock_fd = open_new(self._beside("replay.lock"), os.O_RDWR,
                                 owner=self._stat_either(), exclusive=False)
        if not flock(self._lock_fd, blocking=False):
            raise ReplayInProgressError(f"{self.path} is already being replayed; wait for "
                                        "that replay to end")
        if self.work.exists():
            self._resume()
        else:
            self._take_away()
        if not self.committed:
            done = self._checkpoint.done
            self._reader = LineReader(self.work, (done.line, done.offset))
            self._checkpoint.open(owner=self._owner)

    def _stat_either(self) -> os.stat_result:
        for candidate in (self.work, self.path):
            with suppress(FileNotFoundError):
                return os.stat(candidate)
        raise FileNotFoundError(errno.ENOENT, "No dead-letter file to replay", str(self.path))

    def _take_away(self) -> None:
        # Left by a replay that committed but did not finish its clean-up, or that stopped
        # before it took the file away: nothing in them is needed.
        self.progress.unlink(missing_ok=True)
        self.remaining.unlink(missing_ok=True)
        self._owner = owner = os.stat(self.path)
        if not stat.S_ISREG(owner.st_mode):
            raise OSError(errno.EINVAL, "Not a dead-letter file", str(self.path))
        self._remaining_fd = open_new(self.remaining, os.O_RDWR | os.O_APPEND,
                                      mode=stat.S_IMODE(owner.st_mode), owner=owner)
        with locked(self.path, owner=owner):
            os.rename(self.path, self.work)
        fsync_directory(self.path.parent)

    def _resume(self) -> None:
        self.resumed = True
        self._owner = os.stat(self.work)
        try:
            fd = os.open(self.remaining, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self.committed = True  # the put-back renamed it: only the clean-up is left
            return
        self._remaining_fd = fd
        # With no checkpoint (stopped before its first one) it starts from the top.
        self._checkpoint.load()
        os.ftruncate(fd, self._checkpoint.done.kept)  # drop what a cut chunk had kept

    # --- working through ------------------------------------------------------------------

    def read_chunk(self, *, batch: bool) -> Chunk[Line] | None:
        """Read and parse the next chunk (None at the end); bad lines are logged here.

        Args:
            batch: seal the operations for the batch transport (else for v1).
        """
        reader = self._reader
        assert reader is not None
        return reader.read_chunk(partial(self._parse, batch=batch),
                                 skip=self._checkpoint.delivered)

    def _parse(self, number: int, raw: bytes, *, batch: bool) -> Line:
        try:
            record = json.loads(raw, parse_constant=_refuse_constant)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            op = operation_from_record(record).seal(batch=batch)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, only its line stays
            problem = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
            log.warning("cio_queue.replay_line_kept", path=str(self.path), line=number,
                        problem=problem[:_PROBLEM_CHARS])
            return Line(number, raw)
        return Line(number, raw, record, op)

    def keep(self, chunk: Chunk[Line], kept: list[bytes]) -> None:
        """Append a settled chunk's kept lines to ``PATH.remaining``, then checkpoint it."""
        fd = self._remaining_fd
        assert fd is not None
        if kept:
            append_whole(fd, kept)
        self._checkpoint.passed(chunk, os.fstat(fd).st_size)

    def note_delivered(self, numbers: list[int]) -> None:
        """Checkpoint the lines of an unfinished chunk that were delivered."""
        self._checkpoint.note_delivered(numbers)

    # --- ending ---------------------------------------------------------------------------

    def finish(self) -> None:
        """Put the remaining lines back in ``PATH`` (the commit), then clean up.

        The replay lock is kept until :meth:`close`, so no other replay sees the clean-up
        half done.
        """
        if not self.committed:
            self._put_back()
        self._close_files()
        self.work.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)
        fsync_directory(self.path.parent)

    def _put_back(self) -> None:
        fd = self._remaining_fd
        assert fd is not None
        with locked(self.path, owner=self._owner):
            try:
                live = self.path.open("rb")
            except FileNotFoundError:
                os.fsync(fd)
            else:
                with live:
                    append_whole(fd, iter(partial(live.read, _COPY_BYTES), b""))
            os.rename(self.remaining, self.path)
            fsync_directory(self.path.parent)
        self.committed = True

    def close(self) -> None:
        """Close every file and let another replay run (idempotent; never raises)."""
        self._close_files()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            with suppress(OSError):
                os.close(fd)  # releases the replay lock

    def _close_files(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._checkpoint.close()
        if self._remaining_fd is not None:
            with suppress(OSError):
                os.close(self._remaining_fd)
        self._remaining_fd = None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
