"""The spool: a crash-safe local store of every accepted, unsettled operation.

Stage: beside the ledger. Intake adds each accepted operation's record and gets its key at
once; settling removes it. The store commits both in groups, on a thread of its own (never
anyio's shared pool, which an app's sync endpoints can fill), so the event loop never
waits on the disk: :meth:`SpoolStore.add` and :meth:`SpoolStore.remove` only append to
in-memory sets under a lock that the thread holds for a swap, never across disk I/O.

The store is in three parts: this module is the loop's side (keys, sizes and the backlog,
kept in memory, so the loop never reads the disk to answer); ``_spoolthread`` is the
commit thread and what waits for it; ``_spoolfile`` is the SQLite file itself, its lock,
and the adoption of dead processes' files (see there for the files and the SQLite
settings).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._config import DEFAULT_SPOOL_COMMIT_INTERVAL, SpoolDurability
from ._exceptions import SpoolError
from ._spoolfile import ROW_OVERHEAD, Opened, SpoolFile
from ._spoolthread import COMMIT_RETRY_DELAY, SpoolThread

__all__ = ["COMMIT_RETRY_DELAY", "ROW_OVERHEAD", "SpoolStatistics", "SpoolStore"]

_T = TypeVar("_T")
Job = Callable[[SpoolFile], _T]


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
        self._thread = SpoolThread(directory, durability, commit_interval, self._loop)

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
        opened: Future[Opened] = Future()
        opened.set_running_or_notify_cancel()  # a cancelled open() must not cancel it
        store._thread.start(opened)
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

    def holds(self, key: int) -> bool:
        """Tell whether the row ``key`` is live: added (or found at open), not removed."""
        return key in self._live

    def full(self, extra: int) -> bool:
        """Tell whether a record of ``extra`` bytes more would cross ``max_bytes``."""
        limit = self.max_bytes
        return limit is not None and self._live.bytes + extra + ROW_OVERHEAD > limit

    def statistics(self) -> SpoolStatistics:
        """A snapshot of the counters."""
        thread = self._thread
        return SpoolStatistics(
            rows=self._live.count, bytes_used=self._live.bytes,
            unwritten=thread.unwritten, commits=thread.commits,
            failed_commits=thread.failed_commits, adopted_files=thread.adopted_files)

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
        self._thread.insert(key, record, future)
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
        self._thread.delete(key)

    async def load(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Return the oldest live rows whose key is greater than ``after``, in key order.

        Reads on the store's thread; rows still waiting for their commit are included.

        Raises:
            SpoolError: the store is closed, or the read failed.
        """
        if limit <= 0:
            return []
        return await self._call(lambda file: self._thread.read(file, after, limit))

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
        stopped = self._thread.stopped
        if stopped is not None:
            raise stopped

    def _request_close(self) -> Future[int]:
        self._closing = True
        return self._thread.request_close()

    async def _call(self, job: Job[_T]) -> _T:
        """Run ``job(file)`` on the store's thread, between commits, and return its result."""
        self._check_usable()
        done: Future[_T] = Future()

        def run(file: SpoolFile) -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(job(file))
                except sqlite3.Error as exc:
                    done.set_exception(SpoolError(f"spool {file.path}: {exc}"))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    done.set_exception(exc)

        self._thread.submit(run)
        return await asyncio.wrap_future(done)


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

    def __contains__(self, key: int) -> bool:
        index = key - self._base
        return self._head <= index < len(self._sizes) and self._sizes[index] != 0

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

