"""The queue thread of a SyncEventQueue: its event loop, its EventQueue, and what it settles.

Stage: intake, for callers without an event loop: the queue thread's side. A
:class:`Runtime` starts a thread with an event loop of its own and an EventQueue on it,
admits the operations that caller threads handed over (``_synchandoff``) in batches,
counts them free as they settle, and runs the requests other threads make of it
(statistics, flush, close) on its loop. One Runtime serves one process; a forked child
makes its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

from ._config import OnOutcome, QueueConfig
from ._exceptions import QueueClosedError
from ._log import log
from ._operations import Operation
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics, run_on_outcome
from ._queue import EventQueue
from ._sender import Sender
from ._synchandoff import CLOSED, CLOSING, RUNNING, Handoff, SyncReceipt, drive

__all__ = ["CLOSE_MARGIN", "Runtime"]

CLOSE_MARGIN: Final = 3.0
"""Seconds past the drain deadline that :meth:`~cio_queue.SyncEventQueue.close` waits for
the queue thread: the EventQueue's own two for the dead letters and connections, and one
more for the thread's loop to wind down."""

_THREAD_NAME: Final = "cio_queue.sync"


def _admit_built(queue: EventQueue, op: Operation) -> Receipt:
    """Admit an operation built and sealed elsewhere into ``queue``, on its loop, at once.

    Stand-in for the core hook this module needs, ``EventQueue.admit_nowait(op) ->
    Receipt``: a synchronous method, called on the queue's loop, that admits an operation
    made by the ``_operations`` builders and already sealed for the queue's transport
    (without sealing it again), applying the ``"raise"`` and drop overflow policies and
    never waiting. Until the core has it, this uses the private ``_ready()``,
    ``_accept()`` and ``_submit()``; ``_submit`` finishes in its first step whenever the
    overflow policy is not ``"block"``, which the SyncEventQueue never gives its EventQueue.
    """
    queue._ready()  # private: this is the stand-in for the hook (see the docstring)
    accepted = queue._accept(op)
    if accepted is not None:
        return accepted
    return drive(queue._submit(op),
                 "EventQueue._submit waited; a SyncEventQueue never lets it block")


class Runtime(Handoff):
    """One process's queue thread, its EventQueue, and the hand-off to it.

    Shared between threads, guarded by ``lock``: what :class:`Handoff` shares, and
    ``finished`` and ``requests``. Owned by the queue thread: everything else that changes.
    """

    def __init__(self, config: QueueConfig, on_outcome: OnOutcome | None,
                 sender: Sender | None) -> None:
        super().__init__(config)
        self.on_outcome = on_outcome
        self.sender = sender
        self.batch_transport = config.transport == "batch"
        self.filtered_here = 0  # dropped by before_send in a caller's thread
        self.finished = False  # the queue thread has ended; `final` is set
        self.final = Statistics()
        self.requests: set[concurrent.futures.Future[Statistics]] = set()
        # Owned by the queue thread:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: EventQueue | None = None
        self.thread: threading.Thread | None = None
        self.freed = 0  # settled since the last _release
        self.release_scheduled = False
        self.failed_here = 0  # never reached the EventQueue (a crashed pipeline)
        self.callbacks: set[asyncio.Task[Any]] = set()
        self.close_request: asyncio.Future[float | None] | None = None
        self.started = threading.Event()
        self.start_error: BaseException | None = None

    # --- the queue thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start the queue thread and wait until its EventQueue runs.

        Raises:
            Whatever starting the EventQueue raised.
        """
        thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)
        self.thread = thread
        thread.start()
        self.started.wait()
        if self.start_error is not None:
            raise self.start_error

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as error:  # noqa: BLE001 - reported to the caller or logged
            if not self.started.is_set():
                self.start_error = error
            else:
                log.exception("cio_queue.sync_thread_failed")
        finally:
            self._finish()
            self.started.set()
            _cancel_remaining(loop)
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        inner = self.config
        if inner.overflow not in ("drop_newest", "drop_oldest"):
            # Places are counted by the callers, so the EventQueue always has room for an
            # operation that took one; it must never block the loop if it had not.
            inner = dataclasses.replace(inner, overflow="drop_newest")
        # before_send runs in the caller's thread (_Intake), not again on this one.
        inner = dataclasses.replace(inner, before_send=None)
        queue = EventQueue(inner, on_outcome=self._settled, sender=self.sender)
        self.queue = queue
        await queue.start()
        self.close_request = loop.create_future()
        self.started.set()
        timeout = await self.close_request
        self._drain()  # what was accepted before intake stopped
        closing = asyncio.ensure_future(queue.aclose())
        if timeout is not None:
            await asyncio.wait({closing}, timeout=timeout)
            # Cancelling aclose() cuts the drain short; the rest is dead-lettered.
            closing.cancel()
        try:
            await closing
        except asyncio.CancelledError:
            if not closing.cancelled():
                raise
        if self.callbacks:
            await asyncio.wait(self.callbacks, timeout=CLOSE_MARGIN)

    def _finish(self) -> None:
        """The thread is ending: settle anything left behind, publish the final statistics."""
        with self.lock:
            self.state = CLOSED
            left, self.inbox = self.inbox, deque()
            for waiter in self.waiters:
                waiter.cond.notify()
            self.taken.notify_all()
        for op, receipt in left:  # only if the loop itself failed
            self._settle_here(op, receipt, "internal_error")
        self.final = self._snapshot()
        with self.lock:
            self.finished = True
            requests, self.requests = self.requests, set()
        for request in requests:
            _resolve(request, self.final)
        with self.settled:
            self.settled.notify_all()

    def _wake(self) -> None:
        assert self.loop is not None
        # RuntimeError: the loop has closed, and its last _drain took this operation.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._drain)

    # --- hand-off and settling (queue thread) -----------------------------------------------

    def _drain(self) -> None:
        """Admit everything in the inbox into the EventQueue."""
        with self.lock:
            self.awake = False
            if not self.inbox:
                return
            batch, self.inbox = self.inbox, deque()
            if self.inbox_waiters:
                self.taken.notify_all()
        queue = self.queue
        assert queue is not None
        for op, receipt in batch:
            try:
                receipt._core = _admit_built(queue, op)
            except QueueClosedError:  # the EventQueue gave up after an internal error
                with self.lock:
                    self.state = CLOSED if self.state is RUNNING else self.state
                self._settle_here(op, receipt, "queue_closed")
            except Exception:  # noqa: BLE001 - whatever it was, the operation gets an outcome
                log.exception("cio_queue.sync_admit_failed", kind=op.kind)
                self._settle_here(op, receipt, "internal_error")

    def filter(self, op: Operation) -> SyncReceipt:
        """Settle an operation the before_send hook dropped (in the caller's thread)."""
        receipt = SyncReceipt(op.kind, op.event_id, self)
        outcome = Outcome(OutcomeStatus.FILTERED, op.kind, op.customer_id, op.event_id,
                          reason="before_send")
        receipt._outcome = outcome
        with self.lock:
            self.filtered_here += 1
        loop = self.loop
        if loop is not None:
            # The queue has closed meanwhile if its loop has: nothing is left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._filtered, receipt, outcome)  # on its thread
        return receipt

    def _filtered(self, receipt: SyncReceipt, outcome: Outcome) -> None:
        """Count a filtered operation in the EventQueue's metrics, and report it."""
        if self.queue is not None:
            self.queue._count(outcome)
        self._report(receipt, outcome)

    def _settle_here(self, op: Operation, receipt: SyncReceipt, reason: str) -> None:
        """Fail an operation that never reached the EventQueue, and report it."""
        self.failed_here += 1
        self._free_place()
        self._report(receipt, Outcome(OutcomeStatus.FAILED, op.kind, op.customer_id,
                                      op.event_id, reason=reason))

    def _report(self, receipt: SyncReceipt, outcome: Outcome) -> None:
        receipt._outcome = outcome
        if self.on_outcome is not None:
            run_on_outcome(self.on_outcome, outcome, self.loop, self.callbacks)

    def _settled(self, outcome: Outcome) -> Any:
        """The EventQueue's on_outcome: free the operation's place, run the user's callback."""
        self._free_place()
        callback = self.on_outcome
        return None if callback is None else callback(outcome)

    def _free_place(self) -> None:
        """Count a settled operation; places go back once per loop iteration.

        So a burst of settled operations costs one lock and one wake-up of the waiting
        callers, not one each.
        """
        self.freed += 1
        if not self.release_scheduled:
            self.release_scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._release)

    def _release(self) -> None:
        """Give freed places to blocked callers, oldest first, then back to the pool."""
        self.release_scheduled = False
        freed, self.freed = self.freed, 0
        with self.lock:
            waiters = self.waiters
            while freed and waiters:
                waiter = waiters.popleft()
                waiter.granted = True
                waiter.cond.notify()
                freed -= 1
            self.held -= freed
        if self.result_waiters:
            with self.settled:
                self.settled.notify_all()

    def _snapshot(self) -> Statistics:
        """The statistics, with the inbox counted as queued (on the queue thread)."""
        queue = self.queue
        core = queue.statistics() if queue is not None else Statistics()
        with self.lock:
            transit = len(self.inbox)
            filtered = self.filtered_here
        here = self.failed_here
        return dataclasses.replace(
            core, enqueued=core.enqueued + transit + here + filtered,
            failed=core.failed + here, filtered=core.filtered + filtered,
            pending=core.pending + transit, queued=core.queued + transit)

    # --- requests from other threads ------------------------------------------------------

    def request(self, make: Callable[[], Coroutine[Any, Any, Statistics]]
                ) -> concurrent.futures.Future[Statistics]:
        """Run ``make()`` on the loop; the future gets its result, or the final statistics."""
        future: concurrent.futures.Future[Statistics] = concurrent.futures.Future()
        with self.lock:
            if self.finished:
                future.set_result(self.final)
                return future
            self.requests.add(future)

        def begin() -> None:
            task = asyncio.ensure_future(make())
            task.add_done_callback(lambda done: self._answer(future, done))

        assert self.loop is not None
        # RuntimeError: the loop has closed; _finish answers every request.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(begin)
        return future

    def _answer(self, future: concurrent.futures.Future[Statistics],
                task: asyncio.Future[Statistics]) -> None:
        with self.lock:
            self.requests.discard(future)
        if task.cancelled():
            _resolve(future, self._snapshot())
        elif (error := task.exception()) is not None:
            if not future.done():
                future.set_exception(error)
        else:
            _resolve(future, task.result())

    def statistics(self) -> Statistics:
        """A consistent snapshot, taken on the queue thread."""
        if self.finished:
            return self.final
        if self.on_own_thread():
            return self._snapshot()
        return self.request(self._snapshot_async).result()

    async def _snapshot_async(self) -> Statistics:
        return self._snapshot()

    async def flush_async(self) -> Statistics:
        """Admit the inbox, then wait for everything pending to settle (on the loop)."""
        self._drain()
        assert self.queue is not None
        await self.queue.flush()
        return self._snapshot()

    def begin_close(self, timeout: float | None) -> None:
        """Stop intake, fail blocked callers, and ask the queue thread to close."""
        with self.lock:
            if self.state is not RUNNING:
                return
            self.state = CLOSING
            for waiter in self.waiters:
                waiter.cond.notify()
            self.taken.notify_all()
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the thread has ended already
            self.loop.call_soon_threadsafe(self._close_requested, timeout)

    def _close_requested(self, timeout: float | None) -> None:
        if self.close_request is not None and not self.close_request.done():
            self.close_request.set_result(timeout)

    def wait_closed(self, timeout: float | None) -> Statistics:
        """Wait for the queue thread to end; return the final statistics."""
        assert self.thread is not None
        drain = self.config.shutdown_timeout if timeout is None else min(
            timeout, self.config.shutdown_timeout)
        self.thread.join(drain + CLOSE_MARGIN)
        if self.finished:
            return self.final
        log.error("cio_queue.close_timeout", waited=drain + CLOSE_MARGIN,
                  hint="the queue thread did not finish; is an on_outcome callback blocking?")
        queue = self.queue
        return queue.statistics() if queue is not None else Statistics()


def _resolve(future: concurrent.futures.Future[Statistics], stats: Statistics) -> None:
    if not future.done():
        future.set_result(stats)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the loop and let it unwind, as asyncio.run() does."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=CLOSE_MARGIN))
    loop.run_until_complete(loop.shutdown_asyncgens())
