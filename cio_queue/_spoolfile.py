"""This process's spool file: SQLite, its lock, and the adoption of dead processes' files.

Stage: beside the ledger, under the spool store: :class:`SpoolFile` is used only on the
store's commit thread (``_spoolthread``), never on the event loop.

Files. One ``spool_path`` directory serves every worker process of a server: each process
owns one file, ``spool-<pid>-<random>.sqlite3``, holding an ``flock`` on it while it
lives. :meth:`~cio_queue._spool.SpoolStore.open` adopts the files whose lock it can take
(their owner died): it copies their rows into its own file in their original order,
commits, and only then deletes them, so a killed worker's operations are sent by the next
one that starts. A crash between the commit and the delete leaves the rows in both files,
and they are sent twice (Customer.io deduplicates events by their ``id``); nothing is
lost. A file that is not a database, fails ``PRAGMA quick_check``, or is not a spool is
renamed ``*.corrupt-<timestamp>`` and reported, never deleted.

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

import contextlib
import fcntl
import os
import secrets
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ._config import SpoolDurability
from ._deadletter import fsync_directory
from ._exceptions import SpoolError
from ._log import log

__all__ = ["ROW_OVERHEAD", "Opened", "SpoolFile"]

ROW_OVERHEAD: Final = 16
"""Bytes counted per row on top of its record: SQLite's key and record header, roughly."""
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


@dataclass(frozen=True, slots=True)
class Opened:
    """What open() found: the file, and the sizes of its backlog rows (keys from 1)."""

    path: Path
    sizes: array[int]
    adopted_files: int


class SpoolFile:
    """This process's SQLite file and its lock; used only on the store's thread."""

    def __init__(self, path: Path, lock_fd: int, db: sqlite3.Connection) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._db = db

    @classmethod
    def open(cls, directory: Path, durability: SpoolDurability) -> tuple[SpoolFile, Opened]:
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
        return file, Opened(path, sizes, adopted)

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

