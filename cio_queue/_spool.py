"""The spool: a crash-safe local store of every accepted, unsettled operation.

Stage: beside the ledger. Intake adds each accepted operation's record and gets its key at
once; settling removes it. The store commits both in groups, on a thread of its own (never
anyio's shared pool, which an app's sync endpoints can fill), so the event loop never
waits on the disk: :meth:`SpoolStore.add` and :meth:`SpoolStore.remove` only append to
in-memory sets under a lock that the thread holds for a swap, never across disk I/O.

Files. One ``spool_path`` directory serves every worker process of a server: each process
owns one file, ``spool-<pid>-<random>.sqlite3``, holding an ``flock`` on it while it
lives. :meth:`SpoolStore.open` adopts the files whose lock it can take (their owner died):
it copies their rows into its own file in their original order, commits, and only then
deletes them, so a killed worker's operations are sent by the next one that starts. A
crash between the commit and the delete leaves the rows in both files, and they are sent
twice (Customer.io deduplicates events by their ``id``); nothing is lost. A file that is
not a database, fails ``PRAGMA quick_check``, or is not a spool is renamed
``*.corrupt-<timestamp>`` and reported, never deleted.

SQLite settings, and why:

- ``journal_mode=WAL``: a commit appends its pages to the log, one sequential write (and,
  with ``"sync"``, one fsync) instead of a rollback journal plus in-place page writes; a
  crash mid-commit leaves the database as of the last whole commit.
- ``synchronous=FULL`` with ``"sync"``: the log is fsynced at every commit, so a resolved
  future means the row survives a power cut too.
- ``synchronous=NORMAL`` with ``"batched"``: in WAL mode only checkpoints fsync. A commit
  is then in the operating system's page cache, which survives the process being killed
  (SIGKILL, the OOM killer, a crash): the failure the batched mode is for. A power cut or
  kernel crash can lose the last commits but never corrupts the database. FULL would add
  an fsync every interval for a promise the mode does not make.
- ``locking_mode=EXCLUSIVE``: one connection, in one process, ever writes a file; SQLite
  then keeps the WAL index in memory (no ``-shm`` file) and takes no lock per transaction.
- ``auto_vacuum=INCREMENTAL``, run once a quarter of the file is free pages, and
  ``journal_size_limit``: after an outage's backlog is sent, the file and its log shrink
  back instead of keeping their largest size.
- ``key INTEGER PRIMARY KEY`` (the rowid) given by the store: rows are appended at the
  right edge of the B-tree, FIFO reads are a range scan, and ``INSERT OR REPLACE`` makes a
  retried commit idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Final, TypeVar

from ._config import DEFAULT_SPOOL_COMMIT_INTERVAL, SpoolDurability
from ._deadletter import fsync_directory
from ._exceptions import SpoolError
from ._log import log

__all__ = ["COMMIT_RETRY_DELAY", "ROW_OVERHEAD", "SpoolStatistics", "SpoolStore"]

ROW_OVERHEAD: Final = 16
"""Bytes counted per row on top of its record: SQLite's key and record header, roughly."""
COMMIT_RETRY_DELAY: Final = 1.0
"""Seconds between commit attempts while commits fail (a full disk)."""
_ERROR_LOG_INTERVAL: Final = 60.0
"""Seconds between repeated error lines while commits keep failing."""
_FORMAT_VERSION: Final = 1
_APPLICATION_ID: Final = 0x63696F71  # "cioq": marks a SQLite file as a cio-queue spool
_PREFIX: Final = "spool-"
_SUFFIX: Final = ".sqlite3"
_CORRUPTION: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_TRIM_PAGES: Final = 256
"""Free pages (of 4 KiB) worth giving back to the file system, at the least."""
_TRIM_STEP: Final = 1024
"""Free pages given back after one commit at most, so no commit waits long behind it."""
_WAL_BYTES: Final = 16 * 1024 * 1024
"""What the write-ahead log is cut back to after a checkpoint."""

_T = TypeVar("_T")
Job = Callable[["_SpoolFile"], _T]


@dataclass(frozen=True, slots=True)
class SpoolStatistics:
    """A snapshot of a spool's counters.

    Attributes:
        rows: rows added and not removed (on disk or waiting for a commit).
        bytes_used: their record bytes plus ``ROW_OVERHEAD`` each.
        unwritten: rows added and not yet committed.
        commits: group commits that succeeded.
        failed_commits: commit attempts that failed (their rows were kept for the next).
        adopted_files: files of dead processes adopted at open.
    """

    rows: int
    bytes_used: int
    unwritten: int
    commits: int
    failed_commits: int
    adopted_files: int


class SpoolStore:
    """A process's spool file: add and remove records from the loop, committed by a thread.

    Open one with :meth:`open`. Keys strictly increase in call order; the rows found at
    open (adopted from dead processes) have the smallest keys, :attr:`backlog`. Writes are
    committed in groups: with ``"batched"`` at the latest ``commit_interval`` seconds
    after the first write that is waiting, so a killed process loses at most the rows of
    the last interval; with ``"sync"`` each :meth:`add` returns a future resolved when the
    commit that holds its row is durable, and every caller waiting meanwhile shares the
    next commit, which starts as soon as the previous one ends. A failed commit (a full
    disk) is logged at ERROR, fails the futures it held with :class:`SpoolError`, and
    keeps its rows in memory for the next attempt, ``COMMIT_RETRY_DELAY`` later.
    """

    def __init__(self, directory: Path, *, durability: SpoolDurability,
                 commit_interval: float, max_bytes: int | None) -> None:
        if durability not in ("batched", "sync"):
            raise ValueError(f"durability must be 'batched' or 'sync', got {durability!r}")
        self.directory = directory
        self.durability: SpoolDurability = durability
        self.commit_interval = commit_interval
        self.max_bytes = max_bytes
        self._sync = durability == "sync"
        self._loop = asyncio.get_running_loop()
        self._live = _LiveRows(1, ())
        self._backlog = range(1, 1)
        self._path: Path | None = None
        self._closing = False  # loop side: no more add, remove or load
        # Shared with the thread, under _cond's lock. The thread holds it only to swap.
        self._cond = threading.Condition(threading.Lock())
        self._inserts: dict[int, bytes] = {}
        self._deletes: set[int] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._jobs: deque[Callable[[_SpoolFile], None]] = deque()
        self._pending_since = 0.0
        self._retry_at = 0.0
        self._close_requested = False
        # Written by the thread only.
        self._committing = 0
        self._commits = 0
        self._failed_commits = 0
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self._adopted_files = 0
        self._stopped: SpoolError | None = None
        self._closed: Future[int] = Future()
        self._closed.set_running_or_notify_cancel()  # a cancelled close() must not cancel it

    def __repr__(self) -> str:
        return f"<SpoolStore {self._path or self.directory} rows={self._live.count}>"

    @classmethod
    async def open(cls, directory: str | os.PathLike[str], *,
                   durability: SpoolDurability = "batched",
                   commit_interval: float = DEFAULT_SPOOL_COMMIT_INTERVAL,
                   max_bytes: int | None = None) -> SpoolStore:
        """Create this process's spool file in ``directory`` and adopt the dead ones'.

        Creates the directory (owner-only) if needed. Runs on the store's own thread, which
        then stays to commit.

        Args:
            directory: the spool directory, shared by every process of the app.
            durability: ``"batched"`` or ``"sync"`` (see the class docstring).
            commit_interval: with ``"batched"``, seconds between commits at most.
            max_bytes: the limit :meth:`full` checks against; None: no limit.

        Raises:
            SpoolError: the directory cannot be created or written (read-only, not a
                directory, full disk), or a dead process's file cannot be adopted.
        """
        store = cls(Path(directory), durability=durability, commit_interval=commit_interval,
                    max_bytes=max_bytes)
        opened: Future[_Opened] = Future()
        opened.set_running_or_notify_cancel()  # a cancelled open() must not cancel it
        thread = threading.Thread(target=store._serve, args=(opened,), daemon=True,
                                  name="cio_queue-spool")
        thread.start()
        try:
            found = await asyncio.wrap_future(opened)
        except asyncio.CancelledError:
            store._request_close()  # the thread closes the file once it is open
            raise
        store._path = found.path
        store._live = _LiveRows(1, found.sizes)
        store._backlog = range(1, 1 + len(found.sizes))
        return store

    # --- the loop's side ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        """This process's spool file."""
        assert self._path is not None
        return self._path

    @property
    def backlog(self) -> range:
        """Keys of the rows found at open, oldest first.

        They come from the files of processes that ended: killed, or closed with rows left.
        """
        return self._backlog

    @property
    def backlog_start(self) -> int | None:
        """The smallest key of the rows found at open, or None when there were none."""
        return self._backlog.start if self._backlog else None

    @property
    def rows(self) -> int:
        """Rows added (or found at open) and not removed."""
        return self._live.count

    @property
    def bytes_used(self) -> int:
        """Record bytes of the live rows, plus ``ROW_OVERHEAD`` per row."""
        return self._live.bytes

    def full(self, extra: int) -> bool:
        """Tell whether a record of ``extra`` bytes more would cross ``max_bytes``."""
        limit = self.max_bytes
        return limit is not None and self._live.bytes + extra + ROW_OVERHEAD > limit

    def statistics(self) -> SpoolStatistics:
        """A snapshot of the counters."""
        return SpoolStatistics(
            rows=self._live.count, bytes_used=self._live.bytes,
            unwritten=len(self._inserts) + self._committing, commits=self._commits,
            failed_commits=self._failed_commits, adopted_files=self._adopted_files)

    def add(self, record: bytes) -> tuple[int, asyncio.Future[None] | None]:
        """Queue a record for the next commit; never waits on the disk.

        Returns:
            The row's key, and with ``"sync"`` a future resolved once the row is durable
            (or failed with SpoolError when its commit fails; the row stays queued for
            the next attempt). None with ``"batched"``.

        Raises:
            SpoolError: the store is closed or its thread has stopped.
        """
        self._check_usable()
        key = self._live.add(len(record) + ROW_OVERHEAD)
        future = self._loop.create_future() if self._sync else None
        with self._cond:
            wake = not (self._inserts or self._deletes or self._waiters)
            if wake:
                self._pending_since = time.monotonic()
            self._inserts[key] = record
            if future is not None:
                wake = wake or not self._waiters
                self._waiters.append(future)
            if wake:
                self._cond.notify()
        return key, future

    def remove(self, key: int) -> None:
        """Queue the row's deletion for the next commit (its operation is settled).

        A row that was never committed is simply forgotten; a key that is not live (never
        added, or removed already) does nothing.

        Raises:
            SpoolError: the store is closed.
        """
        self._check_usable()
        if not self._live.remove(key):
            return
        with self._cond:
            if self._inserts.pop(key, None) is not None:
                return
            if not (self._inserts or self._deletes or self._waiters):
                self._pending_since = time.monotonic()
                self._cond.notify()
            self._deletes.add(key)

    async def load(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Return the oldest live rows whose key is greater than ``after``, in key order.

        Reads on the store's thread; rows still waiting for their commit are included.

        Raises:
            SpoolError: the store is closed, or the read failed.
        """
        if limit <= 0:
            return []
        return await self._call(lambda file: self._read(file, after, limit))

    async def close(self) -> int:
        """Commit what is waiting, release the file, and return the rows left in it.

        A file with no rows left is deleted; one with rows stays for the next start.
        Cancelling the caller does not cut the final commit short.

        Raises:
            SpoolError: the final commit failed (logged with the number of rows lost).
        """
        return await asyncio.wrap_future(self._request_close())

    def close_blocking(self, timeout: float) -> int:
        """Do what :meth:`close` does, blocking the caller (the loop is going away).

        Raises:
            SpoolError: the final commit failed, or did not end within ``timeout``
                seconds (it goes on in the background).
        """
        try:
            return self._request_close().result(timeout=timeout)
        except TimeoutError:
            raise SpoolError(f"the spool {self._path} did not close within {timeout} s; "
                             "its final commit goes on in the background") from None

    def _check_usable(self) -> None:
        if self._closing:
            raise SpoolError("the spool is closed")
        if self._stopped is not None:
            raise self._stopped

    def _request_close(self) -> Future[int]:
        self._closing = True
        with self._cond:
            self._close_requested = True
            self._cond.notify()
        return self._closed

    async def _call(self, job: Job[_T]) -> _T:
        """Run ``job(file)`` on the store's thread, between commits, and return its result."""
        self._check_usable()
        done: Future[_T] = Future()

        def run(file: _SpoolFile) -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(job(file))
                except sqlite3.Error as exc:
                    done.set_exception(SpoolError(f"spool {file.path}: {exc}"))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    done.set_exception(exc)

        with self._cond:
            if self._stopped is not None:  # checked under the lock the thread stops under
                raise self._stopped
            self._jobs.append(run)
            self._cond.notify()
        return await asyncio.wrap_future(done)

    # --- the thread's side -------------------------------------------------------------

    def _serve(self, opened: Future[_Opened]) -> None:
        """The store's thread: open the file, then commit until closed."""
        try:
            file, found = _SpoolFile.open(self.directory, self.durability)
        except BaseException as exc:  # noqa: BLE001 - handed to open()'s caller
            error = exc if isinstance(exc, SpoolError) else SpoolError(
                f"cannot open the spool in {self.directory}: {exc!r}")
            self._stopped = error
            self._closed.set_exception(error)
            opened.set_exception(error)
            return
        self._adopted_files = found.adopted_files
        opened.set_result(found)
        work: _Batch | Callable[[_SpoolFile], None] | None = None
        try:
            while (work := self._next_work()) is not None:
                if isinstance(work, _Batch):
                    self._commit(file, work)
                else:
                    work(file)
        except BaseException as exc:  # noqa: BLE001 - a bug: fail what waits, keep the file
            self._crashed(file, exc, work if isinstance(work, _Batch) else None)
            return
        self._finish(file)

    def _next_work(self) -> _Batch | Callable[[_SpoolFile], None] | None:
        """Wait for a job, a due commit, or the request to close (None)."""
        with self._cond:
            while True:
                if self._jobs:
                    return self._jobs.popleft()
                if self._close_requested:
                    return None
                wait = self._commit_due_in(time.monotonic())
                if wait is not None and wait <= 0:
                    return self._take()
                self._cond.wait(wait)

    def _commit_due_in(self, now: float) -> float | None:
        """Seconds until the next commit is due; None when nothing waits (lock held)."""
        if not (self._inserts or self._deletes or self._waiters):
            return None
        due = now if self._waiters else self._pending_since + self.commit_interval
        return max(due, self._retry_at) - now

    def _take(self) -> _Batch:
        """Take everything waiting as the next commit's batch (lock held)."""
        batch = _Batch(self._inserts, self._deletes, self._waiters)
        self._inserts, self._deletes, self._waiters = {}, set(), []
        self._committing = len(batch.inserts)
        return batch

    def _commit(self, file: _SpoolFile, batch: _Batch) -> bool:
        try:
            file.commit(batch.inserts, batch.deletes)
        except sqlite3.Error as exc:
            self._commit_failed(file, batch, exc)
            return False
        self._committing = 0
        self._commits += 1
        if batch.deletes:
            file.trim()
        if self._failing_since is not None:
            log.warning("cio_queue.spool_commit_recovered", path=str(file.path),
                        failed_for=round(time.monotonic() - self._failing_since, 3))
            self._failing_since = None
        self._notify(batch.waiters, None)
        return True

    def _commit_failed(self, file: _SpoolFile, batch: _Batch, exc: sqlite3.Error) -> None:
        """Keep the batch for the next attempt, fail its futures, and say so loudly."""
        now = time.monotonic()
        self._failed_commits += 1
        with self._cond:
            # Rows removed while their commit was failing need neither insert nor delete.
            cancelled = self._deletes & batch.inserts.keys()
            inserts = {k: v for k, v in batch.inserts.items() if k not in cancelled}
            inserts.update(self._inserts)
            self._inserts = inserts
            self._deletes = (self._deletes - cancelled) | batch.deletes
            self._committing = 0
            self._pending_since = now
            self._retry_at = now + max(self.commit_interval, COMMIT_RETRY_DELAY)
            unwritten = len(self._inserts)
        if self._failing_since is None or now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._failing_since = self._failing_since or now
            self._last_error_log = now
            log.error("cio_queue.spool_commit_failed", path=str(file.path), error=str(exc),
                      unwritten=unwritten, failed_commits=self._failed_commits,
                      hint=f"the rows stay in memory and the commit is retried every "
                           f"{max(self.commit_interval, COMMIT_RETRY_DELAY)} s; free disk "
                           "space")
        self._notify(batch.waiters, f"could not commit to the spool {file.path}: {exc}")

    def _read(self, file: _SpoolFile, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Disk rows first, then rows still waiting: every committed key is smaller."""
        with self._cond:
            deletes = set(self._deletes)
            waiting = list(islice(((k, v) for k, v in self._inserts.items() if k > after),
                                  limit))
        rows = [row for row in file.read(after, limit + len(deletes)) if row[0] not in deletes]
        return (rows + waiting)[:limit]

    def _finish(self, file: _SpoolFile) -> None:
        """The final commit, then release the file; resolve :meth:`close`."""
        with self._cond:
            batch = self._take()
        error: SpoolError | None = None
        if (batch.inserts or batch.deletes or batch.waiters) and not self._commit(file, batch):
            unwritten = len(self._inserts)
            log.error("cio_queue.spool_close_failed", path=str(file.path), lost=unwritten)
            error = SpoolError(f"the final commit to {file.path} failed; {unwritten} rows "
                               "were not written")
        try:
            left = file.close()
        except (OSError, sqlite3.Error) as exc:
            error = error or SpoolError(f"cannot close the spool {file.path}: {exc}")
            left = -1
        with self._cond:
            self._stopped = SpoolError("the spool is closed")
        if error is not None:
            self._closed.set_exception(error)
            return
        log.info("cio_queue.spool_closed", path=str(file.path), rows_left=left)
        self._closed.set_result(left)

    def _crashed(self, file: _SpoolFile, exc: BaseException, current: _Batch | None) -> None:
        error = SpoolError(f"the spool's thread stopped: {exc!r}")
        with self._cond:
            self._stopped = error
            batch = self._take()
            jobs, self._jobs = self._jobs, deque()
        lost = [*(current.inserts if current else ()), *batch.inserts]
        log.error("cio_queue.spool_crashed", path=str(file.path), error=repr(exc),
                  unwritten=len(lost), exc_info=exc)
        self._notify([*(current.waiters if current else ()), *batch.waiters], str(error))
        file.abandon()
        for job in jobs:
            job(file)  # fails its caller: the connection is closed
        self._closed.set_exception(error)

    def _notify(self, waiters: list[asyncio.Future[None]], error: str | None) -> None:
        """Resolve (or fail, with ``error``) the futures of a commit, on their loop."""
        if not waiters:
            return
        # The loop may be gone (the app exited without close()); nobody waits then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_resolve, waiters, error)


def _resolve(waiters: list[asyncio.Future[None]], error: str | None) -> None:
    for future in waiters:
        if future.done():
            continue  # its caller was cancelled
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(SpoolError(error))


@dataclass(slots=True)
class _Batch:
    """What one commit writes, and the futures it resolves."""

    inserts: dict[int, bytes]
    deletes: set[int]
    waiters: list[asyncio.Future[None]]


@dataclass(frozen=True, slots=True)
class _Opened:
    """What open() found: the file, and the sizes of its backlog rows (keys from 1)."""

    path: Path
    sizes: array[int]
    adopted_files: int


class _LiveRows:
    """Sizes of the live rows by key, for keys that grow by one: O(1) add and remove.

    An ``array`` of sizes from the oldest live key on (0: removed), trimmed from the front
    as the oldest rows go: 4 bytes per key between the oldest live row and the newest.
    """

    __slots__ = ("_base", "_head", "_sizes", "bytes", "count")

    def __init__(self, first_key: int, sizes: Iterable[int]) -> None:
        self._base = first_key  # the key of _sizes[0]
        self._sizes = array("I", sizes)
        self._head = 0  # _sizes[:_head] are all removed
        self.count = len(self._sizes)
        self.bytes = sum(self._sizes)

    def add(self, size: int) -> int:
        self._sizes.append(size)
        self.count += 1
        self.bytes += size
        return self._base + len(self._sizes) - 1

    def remove(self, key: int) -> bool:
        index = key - self._base
        if not self._head <= index < len(self._sizes) or not self._sizes[index]:
            return False
        self.bytes -= self._sizes[index]
        self.count -= 1
        self._sizes[index] = 0
        if index == self._head:
            self._advance()
        return True

    def _advance(self) -> None:
        sizes, head = self._sizes, self._head
        while head < len(sizes) and not sizes[head]:
            head += 1
        if head > 4096 and head * 2 > len(sizes):  # amortised O(1): half of it goes
            del sizes[:head]
            self._base += head
            head = 0
        self._head = head


class _SpoolFile:
    """This process's SQLite file and its lock; used only on the store's thread."""

    def __init__(self, path: Path, lock_fd: int, db: sqlite3.Connection) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._db = db

    @classmethod
    def open(cls, directory: Path, durability: SpoolDurability) -> tuple[_SpoolFile, _Opened]:
        """Create, lock and set up this process's file; adopt the dead processes' files."""
        _prepare_directory(directory)
        path, fd = _create_locked(directory)
        try:
            file = cls(path, fd, _connect(path, durability))
        except BaseException:
            _remove_files(path)
            os.close(fd)
            raise
        try:
            adopted = file._adopt_all(directory)
            sizes = file._backlog_sizes()
        except BaseException:
            file.close()
            raise
        log.info("cio_queue.spool_opened", path=str(path), durability=durability,
                 backlog=len(sizes), adopted_files=adopted)
        return file, _Opened(path, sizes, adopted)

    def commit(self, inserts: dict[int, bytes], deletes: set[int]) -> None:
        """Write the inserts, then the deletes, in one transaction."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if inserts:
                db.executemany("INSERT OR REPLACE INTO spool (key, record) VALUES (?, ?)",
                               inserts.items())
            if deletes:
                db.executemany("DELETE FROM spool WHERE key BETWEEN ? AND ?", _runs(deletes))
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk can do that).
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def trim(self) -> None:
        """Give free pages back once they are a quarter of the file (a backlog was sent)."""
        db = self._db
        try:
            (free,) = db.execute("PRAGMA freelist_count").fetchone()
            if free >= _TRIM_PAGES and free * 4 >= db.execute("PRAGMA page_count").fetchone()[0]:
                # executescript steps it to the end; execute() would free one page.
                db.executescript(f"PRAGMA incremental_vacuum({_TRIM_STEP});")
        except sqlite3.Error as exc:  # the rows are committed; only the file stays larger
            log.warning("cio_queue.spool_trim_failed", path=str(self.path), error=str(exc))

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """The oldest rows with a key greater than ``after``."""
        return self._db.execute("SELECT key, record FROM spool WHERE key > ? ORDER BY key "
                                "LIMIT ?", (after, limit)).fetchall()

    def close(self) -> int:
        """Close the database and release the lock; delete the file if no row is left."""
        try:
            (left,) = self._db.execute("SELECT count(*) FROM spool").fetchone()
            self._db.close()  # checkpoints and deletes the -wal file
            if not left:
                _remove_files(self.path)
        finally:
            os.close(self._lock_fd)  # releases the flock
        return int(left)

    def abandon(self) -> None:
        """Close without a last word (after a crash); the file stays."""
        with contextlib.suppress(Exception):
            self._db.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _backlog_sizes(self) -> array[int]:
        sizes = array("I")
        expected = 1
        for key, size in self._db.execute(
                "SELECT key, length(record) FROM spool ORDER BY key"):
            assert key == expected, "a new spool file's keys start at 1 and have no gaps"
            expected += 1
            sizes.append(size + ROW_OVERHEAD)
        return sizes

    def _adopt_all(self, directory: Path) -> int:
        """Move the rows of every dead process's file into this one; return the count."""
        adopted = 0
        for path in sorted(directory.glob(f"{_PREFIX}*{_SUFFIX}")):
            if path == self.path:
                continue
            fd = _lock_if_dead(path)
            if fd is None:
                continue  # alive, or adopted by another process meanwhile
            try:
                adopted += self._adopt(path)
            finally:
                os.close(fd)
        return adopted

    def _adopt(self, path: Path) -> int:
        """Copy a dead file's rows after ours, in their order, then delete it (lock held)."""
        try:
            rows = self._copy_rows(path)
        except _UnusableFileError as exc:
            _move_aside(path, str(exc))
            return 0
        _remove_files(path)
        if rows:
            log.info("cio_queue.spool_adopted", path=str(path), rows=rows, into=str(self.path))
        return 1

    def _copy_rows(self, path: Path) -> int:
        db = self._db
        attached = False
        try:
            db.execute("ATTACH DATABASE ? AS dead", (str(path),))
            attached = True
            if not _check_spool_file(db):
                return 0
            db.execute("BEGIN IMMEDIATE")
            copied = db.execute("INSERT INTO main.spool (record) "
                                "SELECT record FROM dead.spool ORDER BY key").rowcount
            db.execute("COMMIT")
            return copied
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF in _CORRUPTION:
                raise _UnusableFileError(str(exc)) from exc
            raise SpoolError(f"cannot adopt the spool file {path}: {exc}") from exc
        finally:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if attached:
                db.execute("DETACH DATABASE dead")


class _UnusableFileError(Exception):
    """A spool file that is corrupt or not a spool: to be moved aside."""


def _check_spool_file(db: sqlite3.Connection) -> bool:
    """Check the attached ``dead`` file; False when it holds nothing (an empty file).

    Raises:
        _UnusableFileError: it fails ``quick_check`` or is not a spool of a known format.
    """
    problems = [row[0] for row in db.execute("PRAGMA dead.quick_check")]
    if problems != ["ok"]:
        raise _UnusableFileError("quick_check: " + "; ".join(problems[:3]))
    tables = {row[0] for row in db.execute(
        "SELECT name FROM dead.sqlite_master WHERE type = 'table'")}
    if not tables:
        return False  # its process died before it wrote its schema
    (app,) = db.execute("PRAGMA dead.application_id").fetchone()
    (version,) = db.execute("PRAGMA dead.user_version").fetchone()
    if tables != {"spool"} or app != _APPLICATION_ID or version != _FORMAT_VERSION:
        raise _UnusableFileError(f"not a cio-queue spool file of format {_FORMAT_VERSION}")
    return True


def _runs(keys: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Ranges ``(first, last)`` of consecutive keys: settled rows are mostly neighbours."""
    first = last = None
    for key in sorted(keys):
        if last is not None and key == last + 1:
            last = key
            continue
        if first is not None and last is not None:
            yield first, last
        first = last = key
    if first is not None and last is not None:
        yield first, last


def _connect(path: Path, durability: SpoolDurability) -> sqlite3.Connection:
    """Open and set up the file (see the module docstring for the settings)."""
    try:
        db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the spool file {path}: {exc}") from exc
    try:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only before the first write
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise SpoolError(f"the spool file {path} cannot use SQLite's WAL mode "
                             f"(got {mode!r}); put spool_path on a local file system")
        db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'sync' else 'NORMAL'}")
        db.execute(f"PRAGMA journal_size_limit = {_WAL_BYTES}")
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {_FORMAT_VERSION}")
        db.execute("CREATE TABLE spool (key INTEGER PRIMARY KEY, record BLOB NOT NULL)")
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.close()
        raise SpoolError(f"cannot write the spool file {path}: {exc}; point spool_path at "
                         "a writable directory with free space") from exc
    except BaseException:
        db.close()
        raise
    return db


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise SpoolError(f"cannot use {directory} as the spool directory: it exists and is "
                         "not a directory") from None
    except OSError as exc:
        raise SpoolError(f"cannot use {directory} as the spool directory: "
                         f"{exc.strerror or exc}; spool_path must be a writable "
                         "directory") from exc


def _create_locked(directory: Path) -> tuple[Path, int]:
    """Create a new file of ours and lock it; check that nobody adopted it first.

    Another process may find the file between its creation and our lock, take it for a
    dead one, and delete it: then the path no longer leads to our file, and we try again.
    """
    for _ in range(10):
        path = directory / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise SpoolError(f"cannot create a spool file in {directory}: "
                             f"{exc.strerror or exc}; spool_path must be a writable "
                             "directory with free space") from exc
        if _try_lock(fd) and _same_file(fd, path):
            fsync_directory(directory)
            return path, fd
        os.close(fd)
    raise SpoolError(f"cannot create a spool file of our own in {directory}")


def _lock_if_dead(path: Path) -> int | None:
    """Lock another process's file if that process is gone; return the locked fd."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    if _try_lock(fd) and _same_file(fd, path):
        return fd
    os.close(fd)
    return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _remove_files(path: Path) -> None:
    """Delete a spool file and SQLite's side files (the main file first).

    A ``-journal`` is left by a process killed while SQLite set up a new file (before
    the WAL mode held); it belongs to no other file.
    """
    for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.with_name(name))
    fsync_directory(path.parent)


def _move_aside(path: Path, reason: str) -> None:
    """Rename an unusable file (and its log) out of the way, and say where it went."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.rename(path, target)
    with contextlib.suppress(FileNotFoundError):
        os.rename(path.with_name(path.name + "-wal"), target.with_name(target.name + "-wal"))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.with_name(path.name + "-shm"))
    fsync_directory(path.parent)
    log.warning("cio_queue.spool_file_corrupt", path=str(path), moved_to=str(target),
                error=reason, hint="its rows were not adopted; inspect it with sqlite3")

