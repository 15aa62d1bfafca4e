"""The dead-letter file: JSON lines of operations that could not be delivered.

Stage: the recorder between the ledger's decision and its settling. One line per
operation: its wire form (method, path, body), why it was not delivered, how many attempts
it had and when; never credentials. Rejected and failed operations are written as their
requests end, and those unsent at the shutdown deadline before ``aclose()`` returns; each
append is fsynced before the operations it holds are reported.

Every append holds the file's lock (``PATH.lock``, an exclusive ``flock``), which replay
also takes to take the file away and to put back what stays (see ``_replayfiles``), so a
live queue and a replay, in one process or several, never lose each other's lines. The
file functions here are shared with replay.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote

import anyio

from ._exceptions import InvalidEventError
from ._log import log
from ._operations import RAW_KIND, Operation, raw_v2, to_v2
from ._validation import check_path_id

if sys.platform != "win32":  # the package still imports there; a file's lock is a no-op
    import fcntl

if TYPE_CHECKING:
    from ._ledger import Entry
    from ._outcome import Outcome

__all__ = ["FORMAT", "DeadLetterWriter", "append_records", "append_whole", "dumps_record",
           "entry_record",
           "flock", "fsync_directory", "lock_path", "locked", "open_for_append", "open_new",
           "operation_from_record", "record_again", "record_for", "resolved"]

FORMAT: Final = "cio-queue/dead-letter/1"
MAX_RECORDS_PER_WRITE: Final = 10_000
"""Records appended (and fsynced) together at most, so one write never grows unbounded."""


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
    op = Operation(str(kind), str(record["method"]), str(record["path"]), body,
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


def entry_record(entry: Entry, now: float) -> dict[str, Any]:
    """Return the dead-letter record of a decided entry, with its verdict's reason."""
    verdict = entry.verdict
    assert verdict is not None
    error = verdict.error
    return record_for(entry.op, reason=verdict.reason or verdict.status.value,
                      attempts=entry.attempts, status=error.status if error else None,
                      error=str(error) if error else None, now=now)


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


def dumps_record(record: dict[str, Any]) -> str:
    """Return a record as one line of compact JSON (without the newline)."""
    return json.dumps(record, separators=(",", ":"))
