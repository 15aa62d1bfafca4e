"""The dead-letter file: JSON lines of operations that could not be delivered.

Stage: the recorder between the ledger's decision and its settling. One line per
operation: its wire form (method, path, body), why it was not delivered, how many attempts
it had and when; never credentials. Rejected and failed operations are written as their
requests end, and those unsent at the shutdown deadline before ``aclose()`` returns; each
append is fsynced before the operations it holds are reported.

Every append holds the file's lock (``PATH.lock``, an exclusive ``flock``), which replay
also takes to take the file away and to put back what stays (see ``_replayfiles``), so a
live queue and a replay, in one process or several, never lose each other's lines. The
file functions here are shared with replay; the record's format is ``_deadrecord``'s.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._deadrecord import dumps_record, entry_record
from ._log import log

if sys.platform != "win32":  # the package still imports there; a file's lock is a no-op
    import fcntl

if TYPE_CHECKING:
    from ._ledger import Entry

__all__ = ["DeadLetterWriter", "append_records", "append_whole", "flock", "fsync_directory",
           "lock_path", "locked", "open_for_append", "open_new", "resolved"]

MAX_RECORDS_PER_WRITE: Final = 10_000
"""Records appended (and fsynced) together at most, so one write never grows unbounded."""


class DeadLetterWriter:
    """Own the dead-letter file: one task appends records, on a thread of its own.

    Entries arrive through :meth:`put` (the ledger's recorder). The writer task takes
    everything waiting, builds the records, and appends and fsyncs them on a dedicated
    thread (never anyio's shared pool, which an app's sync endpoints can fill); only then
    does it tell the ledger, so an outcome is reported only once its line is on disk.
    Writes never overlap and are never cut short: a cancelled writer task leaves its
    write running, and :meth:`finish_blocking` waits for it. What waits here is bounded by
    ``max_queue_size``, since every entry still holds its place in the queue.
    """

    def __init__(self, path: Path, on_written: Callable[[list[Entry], bool], None]) -> None:
        self.path = path
        self._on_written = on_written
        self._waiting: deque[Entry] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cio_queue-dead-letters")
        self._writing: tuple[list[Entry], Future[None]] | None = None

    def __repr__(self) -> str:
        return f"<DeadLetterWriter {self.path}>"

    def put(self, entry: Entry) -> None:
        """Queue an entry's record for the next append."""
        self._waiting.append(entry)
        self._idle.clear()
        self._ready.set()

    async def run(self) -> None:
        """Append waiting records, a group at a time, for ever."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._waiting:
                entries, future = self._submit()
                try:
                    await asyncio.wrap_future(future)
                    written = True
                except OSError as exc:
                    written = False
                    self._failed(len(entries), exc)
                self._writing = None
                self._on_written(entries, written)
            self._idle.set()

    async def drain(self, deadline: float) -> bool:
        """Wait until every queued record is written, or until ``deadline``; say which."""
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await self._idle.wait()
        return self._idle.is_set()

    def finish_blocking(self, timeout: float) -> list[Entry]:
        """Write everything still waiting, blocking the caller (the loop is going away).

        Waits for a write already running first, so writes never overlap. Returns the
        entries whose records could not be confirmed within ``timeout``: their write goes
        on in the background, and they may still appear in the file.
        """
        end = time.monotonic() + timeout
        if self._writing is not None:
            entries, future = self._writing
            if not self._settle_write(entries, future, end):
                return [*entries, *self._waiting]
        while self._waiting:
            entries, future = self._submit()
            if not self._settle_write(entries, future, end):
                return [*entries, *self._waiting]
        self._idle.set()
        return []

    def give_up(self) -> list[Entry]:
        """Leave the writes to the thread and return the entries not yet confirmed."""
        entries = list(self._writing[0]) if self._writing is not None else []
        while self._waiting:
            queued, _ = self._submit()  # still written, later, by the thread
            entries.extend(queued)
        self._writing = None
        return entries

    def close(self) -> None:
        """Let the thread finish what it was given, and end it."""
        self._executor.shutdown(wait=False)

    def _submit(self) -> tuple[list[Entry], Future[None]]:
        entries = [self._waiting.popleft() for _ in range(min(len(self._waiting),
                                                              MAX_RECORDS_PER_WRITE))]
        now = time.time()
        records = [entry_record(entry, now) for entry in entries]
        future = self._executor.submit(append_records, self.path, records)
        self._writing = (entries, future)
        return entries, future

    def _settle_write(self, entries: list[Entry], future: Future[None], end: float) -> bool:
        try:
            future.result(timeout=max(0.0, end - time.monotonic()))
            written = True
        except FutureTimeout:
            return False
        except OSError as exc:
            written = False
            self._failed(len(entries), exc)
        self._writing = None
        self._on_written(entries, written)
        return True

    def _failed(self, count: int, exc: OSError) -> None:
        log.error("cio_queue.dead_letter_write_failed", count=count, path=str(self.path),
                  error=f"{type(exc).__name__}: {exc}")


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines and fsync: all of them or none.

    The append holds the file's lock (``PATH.lock``, see :func:`locked`), so appends from
    several processes never interleave or cut each other back, and a replay never takes the
    file away in the middle of one. A failed write (a full disk) is cut back to the last
    complete line. A torn last line (a process killed in the middle of an append) gets its
    newline first, so it stays a line of its own instead of swallowing the first record. A
    new file is created owner-only (it holds people's data), and its directory is fsynced
    so it survives a crash.
    """
    data = "".join(dumps_record(r) + "\n" for r in records).encode()
    path = resolved(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        fd, created = open_for_append(path)
        try:
            append_whole(fd, [data])
        finally:
            os.close(fd)
    if created:
        fsync_directory(path.parent)


def resolved(path: Path) -> Path:
    """The file a dead-letter path names, symlinks followed, so every user locks one file."""
    return Path(os.path.realpath(path))


def lock_path(path: Path) -> Path:
    """The lock file that guards the dead-letter file ``path``: ``PATH.lock``."""
    return path.with_name(path.name + ".lock")


@contextmanager
def locked(path: Path, *, owner: os.stat_result | None = None) -> Iterator[None]:
    """Hold the dead-letter file's lock for the block, waiting for it as long as it takes.

    The lock is an exclusive ``flock`` on ``PATH.lock``, taken by every append and by a
    replay while it takes the file away or puts it back. It belongs to an open file, so it
    also keeps a writer thread and a replay in one process apart, and the kernel drops it
    when its process dies. Call it off the event loop. ``owner``: see :func:`open_new`.
    """
    fd = open_new(lock_path(path), os.O_RDWR, owner=owner, exclusive=False)
    try:
        flock(fd, blocking=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def flock(fd: int, *, blocking: bool) -> bool:
    """Take an exclusive flock on ``fd``; without ``blocking``, say whether it was free."""
    if sys.platform == "win32":  # pragma: no cover - Windows has no flock; nothing is locked
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def open_new(path: Path, flags: int, *, mode: int = 0o600,
             owner: os.stat_result | None = None, exclusive: bool = True) -> int:
    """Open a file, creating it with exactly ``mode`` (whatever the umask) if it is new.

    A new file also gets the owner and group of ``owner`` (a file's ``os.stat()``) where
    that is permitted, so that after a replay run as root the application can still append
    to the dead-letter file and take its lock. With ``exclusive``, the file must be new.

    Returns:
        The file descriptor.
    """
    flags |= os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if exclusive:
            raise
        return os.open(path, flags)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            _give_to(fd, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _give_to(fd: int, owner: os.stat_result) -> None:
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
        with suppress(PermissionError):  # only root may give a file away; then it stays ours
            os.fchown(fd, owner.st_uid, owner.st_gid)


def open_for_append(path: Path, *, mode: int = 0o600,
                    owner: os.stat_result | None = None) -> tuple[int, bool]:
    """Open (or create, see :func:`open_new`) a file for appending; say whether it was new."""
    try:
        return open_new(path, os.O_RDWR | os.O_APPEND, mode=mode, owner=owner), True
    except FileExistsError:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC), False


def append_whole(fd: int, chunks: Iterable[bytes]) -> None:
    """Append the chunks to ``fd`` (opened ``O_APPEND``, under the lock) and fsync: all or none.

    A torn last line is ended first. On failure the file is cut back to where it ended.
    """
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        if start and os.pread(fd, 1, start - 1) != b"\n":
            _write_all(fd, b"\n")
        for chunk in chunks:
            _write_all(fd, chunk)
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, start)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(directory: Path) -> None:
    """Make a file created, renamed or removed in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
