"""The spool's commit thread: it opens the file, then writes the spool in group commits.

Stage: beside the ledger, under the spool store: the :class:`~cio_queue._spool.SpoolStore`
on the event loop hands its inserts, deletes and reads to this thread, which alone touches
the disk.

A :class:`SpoolThread` is the store's half that the loop shares with the thread: what waits
for the next commit (the inserts, the deletes, the futures of ``"sync"`` callers, and jobs
such as reads) sits under one lock, which the loop holds only to append and the thread
only to swap the lot out, never across disk I/O. Commits are due ``commit_interval``
seconds after the first write that waits (``"batched"``), or at once when a ``"sync"``
caller waits; a failed commit keeps its rows for the next attempt, ``COMMIT_RETRY_DELAY``
later.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Final

from ._config import SpoolDurability
from ._exceptions import SpoolError
from ._log import log
from ._spoolfile import Opened, SpoolFile

__all__ = ["COMMIT_RETRY_DELAY", "SpoolThread"]

COMMIT_RETRY_DELAY: Final = 1.0
"""Seconds between commit attempts while commits fail (a full disk)."""
_ERROR_LOG_INTERVAL: Final = 60.0
"""Seconds between repeated error lines while commits keep failing."""


class SpoolThread:
    """A spool store's own thread, and the writes that wait for its next commit.

    The loop's side calls :meth:`start` once, then :meth:`insert`, :meth:`delete`,
    :meth:`submit` and :meth:`request_close`; everything else runs on the thread.
    """

    def __init__(self, directory: Path, durability: SpoolDurability, commit_interval: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.directory = directory
        self.durability: SpoolDurability = durability
        self.commit_interval = commit_interval
        self._loop = loop
        # Shared with the thread, under _cond's lock. The thread holds it only to swap.
        self._cond = threading.Condition(threading.Lock())
        self._inserts: dict[int, bytes] = {}
        self._deletes: set[int] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._jobs: deque[Callable[[SpoolFile], None]] = deque()
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

    def start(self, opened: Future[Opened]) -> None:
        """Start the thread: it opens the file, resolves ``opened``, then commits."""
        thread = threading.Thread(target=self._serve, args=(opened,), daemon=True,
                                  name="cio_queue-spool")
        thread.start()

    # --- the loop's side ---------------------------------------------------------------

    @property
    def stopped(self) -> SpoolError | None:
        """Why the thread takes no more work (it closed, or crashed); None while it runs."""
        return self._stopped

    @property
    def unwritten(self) -> int:
        """Rows added and not yet committed."""
        return len(self._inserts) + self._committing

    @property
    def commits(self) -> int:
        """Group commits that succeeded."""
        return self._commits

    @property
    def failed_commits(self) -> int:
        """Commit attempts that failed."""
        return self._failed_commits

    @property
    def adopted_files(self) -> int:
        """Files of dead processes adopted at open."""
        return self._adopted_files

    def insert(self, key: int, record: bytes, future: asyncio.Future[None] | None) -> None:
        """Queue a row for the next commit; ``future`` (``"sync"``) is resolved by it."""
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

    def delete(self, key: int) -> None:
        """Queue a live row's deletion for the next commit; forget it if never committed."""
        with self._cond:
            if self._inserts.pop(key, None) is not None:
                return
            if not (self._inserts or self._deletes or self._waiters):
                self._pending_since = time.monotonic()
                self._cond.notify()
            self._deletes.add(key)

    def submit(self, job: Callable[[SpoolFile], None]) -> None:
        """Run ``job(file)`` on the thread, between commits.

        Raises:
            SpoolError: the thread has stopped.
        """
        with self._cond:
            if self._stopped is not None:  # checked under the lock the thread stops under
                raise self._stopped
            self._jobs.append(job)
            self._cond.notify()

    def request_close(self) -> Future[int]:
        """Ask for the final commit; the future gets the rows left in the file."""
        with self._cond:
            self._close_requested = True
            self._cond.notify()
        return self._closed

    # --- the thread's side -------------------------------------------------------------

    def _serve(self, opened: Future[Opened]) -> None:
        """The store's thread: open the file, then commit until closed."""
        try:
            file, found = SpoolFile.open(self.directory, self.durability)
        except BaseException as exc:  # noqa: BLE001 - handed to open()'s caller
            error = exc if isinstance(exc, SpoolError) else SpoolError(
                f"cannot open the spool in {self.directory}: {exc!r}")
            self._stopped = error
            self._closed.set_exception(error)
            opened.set_exception(error)
            return
        self._adopted_files = found.adopted_files
        opened.set_result(found)
        work: _Batch | Callable[[SpoolFile], None] | None = None
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

    def _next_work(self) -> _Batch | Callable[[SpoolFile], None] | None:
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

    def _commit(self, file: SpoolFile, batch: _Batch) -> bool:
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

    def _commit_failed(self, file: SpoolFile, batch: _Batch, exc: sqlite3.Error) -> None:
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

    def read(self, file: SpoolFile, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Disk rows first, then rows still waiting: every committed key is smaller."""
        with self._cond:
            deletes = set(self._deletes)
            waiting = list(islice(((k, v) for k, v in self._inserts.items() if k > after),
                                  limit))
        rows = [row for row in file.read(after, limit + len(deletes)) if row[0] not in deletes]
        return (rows + waiting)[:limit]

    def _finish(self, file: SpoolFile) -> None:
        """The final commit, then release the file; resolve the store's ``close()``."""
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

    def _crashed(self, file: SpoolFile, exc: BaseException, current: _Batch | None) -> None:
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
