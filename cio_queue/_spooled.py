"""Spooling: every accepted operation on local disk too, until it settles.

Stage: beside intake and the ledger, with ``spool_path``. Intake packs each accepted
operation into the :class:`~cio_queue._spool.SpoolStore` (a group commit on a thread of
its own; with ``spool_durability="sync"`` the call returns once the row is durable) and
then admits it in memory as usual, or, while memory is full or older operations still
wait on disk, keeps it on disk only: handlers neither fail nor wait during an outage.
The loader task brings disk-only operations back, oldest first, as places free up in
memory. Settling an operation removes its row; at shutdown (or after a crash, or a kill)
whatever is unsent stays in the spool, and the next queue to open the directory sends it
first: at least once, with the same event ids, so Customer.io deduplicates the events,
and identify, delete and the device operations are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Callable
from typing import Final

from ._config import QueueConfig
from ._dispatch import SHUTDOWN_REASON
from ._exceptions import CLOSED_WHILE_WAITING, QueueClosedError, SpoolError
from ._ledger import Entry, HeldEntry, Ledger, State, Verdict
from ._log import log
from ._operations import Operation
from ._outcome import OutcomeStatus, Receipt
from ._spool import SpoolStore

__all__ = ["Spooler"]

LOAD_CHUNK: Final = 500
"""Disk-only operations read back from the spool at a time."""


UNREADABLE: Final = "unknown"
"""The kind in the Outcome of a spool row that could not be read back without a receipt."""
_UNREADABLE: Final = Verdict(OutcomeStatus.FAILED, "spool_unreadable")


class SpooledEntry(HeldEntry):
    """An operation accepted with a spool: ``key`` is its row there, once it has one."""

    __slots__ = ("key",)

    def __init__(self, op: Operation, loop: asyncio.AbstractEventLoop | None = None,
                 kind: str | None = None) -> None:
        super().__init__(op, loop, kind)
        self.key: int | None = None

    def reload(self, op: Operation, key: int) -> None:
        """Take its operation back from the spool row ``key``, to be admitted again.

        The entry left the ledger for the spool (or never entered it); the caller still
        holds it as a receipt, which so reports the outcome of the operation's return.
        """
        assert self.state in (State.QUEUED, State.SPOOLED)
        assert not self.done()
        self.op = op
        self.state = State.QUEUED
        self.attempts = 0
        self.key = key
        self.verdict = None


class Spooler:
    """Keep the spool in step with intake and the ledger, and load the backlog back."""

    def __init__(self, config: QueueConfig, ledger: Ledger, route: Callable[[Entry], None],
                 loop: asyncio.AbstractEventLoop, accepting: Callable[[], bool]) -> None:
        self._config = config
        self._ledger = ledger
        self._route = route  # where an admitted operation goes: the dispatcher or the fleet
        self._loop = loop
        self._accepting = accepting  # whether the pipeline's intake is open (no shutdown yet)
        self._batch = config.transport == "batch"
        self.store: SpoolStore | None = None
        self._opened = asyncio.Event()
        self._error: SpoolError | None = None
        self.disk_only = 0  # accepted, on disk only, not loaded back yet
        self._stranded = False  # the shutdown has settled what waits on disk only
        self._loaded = 0  # the key of the last row loaded back
        self._backlog = asyncio.Event()
        # The rows of "sync" calls still waiting for their commit: not counted on disk yet
        # (the call decides where its operation goes once it resumes), though a read
        # returns them, so the loader stops short of them; and the news of one decided.
        self._committing: set[int] = set()
        self._commit_ended = asyncio.Event()
        # The entries (receipts) of disk-only operations, while their callers keep them.
        self._receipts: weakref.WeakValueDictionary[int, SpooledEntry] = (
            weakref.WeakValueDictionary())
        ledger.respool = self.respool

    async def open(self) -> None:
        """Open (or adopt) the spool; what it already holds is the backlog, sent first."""
        assert self._config.spool_path is not None
        try:
            self.store = await SpoolStore.open(
                self._config.spool_path, durability=self._config.spool_durability,
                commit_interval=self._config.spool_commit_interval,
                max_bytes=self._config.max_spool_bytes)
        except SpoolError as exc:
            self._error = exc
            raise
        finally:
            self._opened.set()
        backlog = self.store.backlog
        if backlog:
            self.disk_only = len(backlog)
            self._loaded = backlog.start - 1
            self._ledger.enqueued += len(backlog)
            self._backlog.set()
            log.info("cio_queue.spool_recovered", count=len(backlog),
                     path=str(self.store.path))

    async def ready(self) -> SpoolStore:
        """The open store; raises the error that kept it from opening."""
        if not self._opened.is_set():
            await self._opened.wait()
        if self.store is None:
            raise self._error or SpoolError("the spool is not open")
        return self.store

    async def admit(self, entry: SpooledEntry) -> bool:
        """Put an accepted operation in the spool, then in memory or on disk only.

        Returns False when the spool is full: the caller applies the overflow policy.

        The shutdown may begin while this waits: for the store to open (then nothing is
        written, and QueueClosedError says so), or for a ``"sync"`` commit. Then the
        operation is not admitted in memory, where it could come after the shutdown's
        last look at the ledger and never settle: it waits on disk with the disk-only
        ones (the drain may still load and send it, else it settles ``spooled`` with
        them), or, once those are settled, settles ``spooled`` at once through the
        ledger. Either way a row left behind is sent by the next start.

        Raises:
            SpoolError: the spool could not be opened, or (``"sync"``) the commit failed.
            QueueClosedError: the queue began to close before anything was written.
        """
        store = await self.ready()
        if not self._accepting():
            raise QueueClosedError(CLOSED_WHILE_WAITING)
        record = entry.op.pack()
        if store.full(len(record)):
            return False
        key, committed = store.add(record)
        if committed is not None:
            self._committing.add(key)
            try:
                await committed
            except BaseException:  # a failed commit, or a cancelled caller: not enqueued
                with contextlib.suppress(SpoolError):  # closed meanwhile: keep the first error
                    store.remove(key)
                raise
            finally:  # what follows decides without a pause, before the loader runs again
                self._committing.discard(key)
                self._commit_ended.set()
        entry.key = key
        ledger = self._ledger
        if self._accepting():
            if not self.disk_only and ledger.room.try_acquire():
                ledger.admit(entry)
                self._route(entry)
                return True
        elif self._stranded:  # closed during the commit, disk-only ones settled: it stays
            ledger.refuse(entry, Verdict(OutcomeStatus.SPOOLED, SHUTDOWN_REASON))
            return True
        # Memory is full, or the queue began to close during the commit: it waits on disk
        # with the rest (which the drain may still load and send).
        ledger.enqueued += 1
        self._keep_on_disk(key, entry)
        return True

    def respool(self, entry: Entry) -> bool:
        """Take back an operation whose retries ran out: it waits on disk, behind the rest.

        Its record is added again, at the tail, before its old row is removed (the removal
        goes in the same commit or a later one, so one of them is always on disk); the
        loader brings it back in its turn. Returns False when the spool cannot take it.
        """
        store = self.store
        assert store is not None
        assert isinstance(entry, SpooledEntry)
        assert entry.key is not None
        try:
            key, durable = store.add(entry.op.pack())
            store.remove(entry.key)
        except SpoolError:
            return False
        if durable is not None:
            durable.cancel()  # nobody waits for this commit; it goes on regardless
        self._keep_on_disk(key, entry)
        return True

    def _keep_on_disk(self, key: int, entry: SpooledEntry) -> None:
        """Count the row ``key`` as disk-only, to be loaded after those before it."""
        if not self.disk_only:
            # Disk-only rows are the keys from this one on, and from the first row whose
            # call still awaits its commit (a respool may come first): that call decides
            # after, and may count its row on disk too, which the loader must not pass.
            self._loaded = min(key, min(self._committing, default=key)) - 1
        self.disk_only += 1
        self._receipts[key] = entry
        self._backlog.set()

    async def run_loader(self) -> None:
        """Bring disk-only operations back into memory, oldest first, as room frees."""
        store = await self.ready()
        rows: deque[tuple[int, bytes]] = deque()
        room = self._ledger.room
        while True:
            if not rows:
                if not self.disk_only:
                    self._backlog.clear()
                    await self._backlog.wait()
                    continue
                read = await store.load(self._loaded, LOAD_CHUNK)
                kept, cut = self._disk_only_rows(store, read)
                rows.extend(kept)
                if not rows:
                    if cut:  # the next row's call awaits its commit: wait till it decides
                        self._commit_ended.clear()
                        await self._commit_ended.wait()
                    elif not read:  # keys ran out before the count: trust the store
                        self.disk_only = 0
                    continue  # (else every row read was removed meanwhile: read on)
                self._loaded = rows[-1][0]
            await room.acquire()
            self._bring_back(*rows.popleft())

    def _disk_only_rows(self, store: SpoolStore, read: list[tuple[int, bytes]],
                        ) -> tuple[list[tuple[int, bytes]], bool]:
        """The rows of a read that wait on disk, and whether a committing row cut them off.

        They are those before the first row whose call still awaits its commit, less
        those removed while the read was under way (the row of a call cancelled then:
        it was never counted, and its caller was told it was not enqueued).

        Keys grow with time, so the rows cut off are newer than that call: the loader
        reads them again once it has decided, and takes them in key order all the same.
        Neither the loader nor ``_keep_on_disk`` ever moves ``_loaded`` past a committing
        row.
        """
        first = min(self._committing, default=None)
        kept: list[tuple[int, bytes]] = []
        for row in read:
            if first is not None and row[0] >= first:
                return kept, True
            if store.holds(row[0]):
                kept.append(row)
        return kept, False

    def _bring_back(self, key: int, record: bytes) -> None:
        """Admit one disk-only operation in memory; its caller holds a place."""
        self.disk_only -= 1
        entry = self._receipts.pop(key, None)
        try:
            op, kind = Operation.unpack(record, batch=self._batch)
        except ValueError as exc:
            self._ledger.room.release()
            self.store_remove(key)
            log.error("cio_queue.spool_unreadable", key=key, error=str(exc))
            # Counted as enqueued when accepted (or recovered): it ends failed, in its
            # receipt if the caller still holds it, never in the spool's count.
            self._ledger.lose(entry if entry is not None else Receipt(UNREADABLE, None, self._loop),
                              _UNREADABLE)
            return
        if entry is None:
            entry = SpooledEntry(op, self._loop, kind)
            entry.key = key
        else:
            entry.reload(op, key)
        self._ledger.admit(entry, counted=False)
        self._route(entry)

    def store_remove(self, key: int) -> None:
        """Remove a settled operation's row (the ledger's hook)."""
        if self.store is not None:
            self.store.remove(key)

    def strand_disk_only(self, reason: str) -> int:
        """At the end: the disk-only operations stay in the spool; settle their receipts."""
        self._stranded = True
        left = self.disk_only
        verdict = Verdict(OutcomeStatus.SPOOLED, reason)
        held = list(self._receipts.values())
        self._receipts.clear()
        for receipt in held:
            self._ledger.lose(receipt, verdict)  # counted, and reported (on_outcome)
        # Those whose callers let their receipts go are counted only: what else they
        # were is on disk alone.
        self._ledger.settled[OutcomeStatus.SPOOLED] += left - len(held)
        self.disk_only = 0
        return left

    async def close(self) -> int:
        """Commit and close the store; return the rows left for the next start."""
        if self.store is None:
            return 0
        try:
            return await self.store.close()
        except SpoolError as exc:
            log.error("cio_queue.spool_close_failed", error=str(exc))
            return self.store.rows

    def close_blocking(self, timeout: float) -> int:
        """The same from a dying loop."""
        if self.store is None:
            return 0
        try:
            return self.store.close_blocking(timeout)
        except SpoolError as exc:
            log.error("cio_queue.spool_close_failed", error=str(exc))
            return self.store.rows

