"""SyncEventQueue: the EventQueue for threads (WSGI apps, Celery workers, scripts).

Stage: intake, for callers without an event loop. There is one implementation of the
pipeline, :class:`~cio_queue.EventQueue`; a SyncEventQueue runs one on a background thread
with its own event loop (the *queue thread*) and feeds it from any number of caller
threads::

    caller thread: EventQueue's own method body (read the arguments, validate, build,
                   serialise) -> take a place -> inbox.append; the call that finds the
                   inbox empty wakes the loop: one call_soon_threadsafe per batch,
                   never a round trip per call
    queue thread:  take the whole inbox -> admit each into the EventQueue -> ...
                   on_outcome -> give the places back (once per loop iteration)

Each SyncEventQueue method runs the EventQueue method of the same name in the calling
thread, on an :class:`_Intake`: a stand-in whose ``_ready()`` and ``_submit()`` hand the
operation over instead of queueing it on a loop, so the method's coroutine finishes in its
first step. The arguments are thus read exactly as EventQueue reads them, by the same code,
and an invalid one raises InvalidEventError in the caller's own stack.

The overflow policy is decided in the caller's thread too: the places (``max_queue_size``)
are counted here, over the operations in the inbox and those pending in the EventQueue, so
``"raise"`` raises QueueFullError at the call and ``"block"`` blocks the calling thread
(first come, first served, at most ``enqueue_timeout``). The drop policies never make a
caller wait for the network: a call that finds the queue full hands its operation over
anyway and the EventQueue drops the newest or the oldest when it arrives, exactly as it
would for an ``await``-ing caller.

Two private seams of EventQueue stand in for hooks the core does not have yet: the intake
hooks ``_ready()``/``_submit()`` that :class:`_Intake` overrides, and the admission of an
operation built elsewhere, :func:`_admit_built`.

A forked child (gunicorn ``--preload``, Celery prefork) forgets its parent's thread and
starts its own on first use. At interpreter exit every running queue is closed (drained
within ``shutdown_timeout``, the rest dead-lettered) from threading's exit hook, which runs
before thread pools stop taking work; see the end of this module.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import inspect
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from ._before_send import apply_before_send
from ._config import OnOutcome, QueueConfig
from ._exceptions import QueueClosedError, QueueFullError, QueueUsageError
from ._log import log
from ._operations import Operation
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue
from ._region import AccountRegion
from ._sender import Sender

__all__ = ["CLOSE_MARGIN", "SyncEventQueue", "SyncReceipt"]

CLOSE_MARGIN: Final = 3.0
"""Seconds past the drain deadline that :meth:`SyncEventQueue.close` waits for the queue
thread: the EventQueue's own two for the dead letters and connections, and one more for
the thread's loop to wind down."""

_THREAD_NAME: Final = "cio_queue.sync"
_CLOSED_MESSAGE: Final = "this SyncEventQueue is closed; no new operations are accepted"

# The states of one _Runtime, in order. Intake is open only while running.
_RUNNING: Final = "running"
_CLOSING: Final = "closing"
_CLOSED: Final = "closed"


def _admit_built(queue: EventQueue, op: Operation) -> Receipt:
    """Admit an operation built and sealed elsewhere into ``queue``, on its loop, at once.

    Stand-in for the core hook this module needs, ``EventQueue.admit_nowait(op) ->
    Receipt``: a synchronous method, called on the queue's loop, that admits an operation
    made by the ``_operations`` builders and already sealed for the queue's transport
    (without sealing it again), applying the ``"raise"`` and drop overflow policies and
    never waiting. Until the core has it, this drives the private ``_ready()`` and
    ``_submit()``; ``_submit`` finishes in its first step whenever the overflow policy is
    not ``"block"``, which the SyncEventQueue never gives its EventQueue.
    """
    queue._ready()  # private: this is the stand-in for the hook (see the docstring)
    submit = queue._submit(op)
    try:
        submit.send(None)
    except StopIteration as finished:
        receipt: Receipt = finished.value
        return receipt
    submit.close()
    raise RuntimeError("EventQueue._submit waited; a SyncEventQueue never lets it block")


class SyncReceipt(Receipt):
    """Returned by every SyncEventQueue call; ``result()`` blocks for the final Outcome.

    Waiting is optional: the operation is delivered (or its failure recorded) whether or
    not anybody waits. ``kind`` and ``event_id`` are known at once. It is a Receipt, so
    async code may ``await receipt.wait()`` too (the wait runs in a worker thread).
    """

    __slots__ = ("_core", "_runtime")

    def __init__(self, kind: str, event_id: str | None, runtime: _Runtime) -> None:
        super().__init__(kind, event_id)
        self._runtime = runtime
        self._core: Receipt | None = None  # the EventQueue's receipt, once admitted there

    def __repr__(self) -> str:
        outcome = self.outcome
        state = outcome.status.value if outcome is not None else "pending"
        return f"<SyncReceipt {self.kind} {state}>"

    @property
    def outcome(self) -> Outcome | None:
        """The Outcome once settled, else None."""
        if self._outcome is not None:  # set here only if it never reached the EventQueue
            return self._outcome
        core = self._core
        return None if core is None else core.outcome

    def done(self) -> bool:
        """Return whether the operation has settled."""
        return self.outcome is not None

    def result(self, timeout: float | None = None) -> Outcome:
        """Block until the operation settles and return its Outcome.

        Args:
            timeout: the longest to wait, in seconds; None waits as long as delivery takes
                (bounded by the retry policy's ``timeout`` and the shutdown deadline).

        Raises:
            TimeoutError: the operation had not settled within ``timeout``; it goes on.
            QueueUsageError: called on the queue's own thread (from an ``on_outcome``
                callback), where it would wait forever, or in a forked child for an
                operation of the parent's.
        """
        outcome = self.outcome
        if outcome is not None:
            return outcome
        return self._runtime.wait_for(self, timeout)

    async def wait(self) -> Outcome:
        """Wait, from async code, until the operation settles; see :meth:`result`."""
        outcome = self.outcome
        if outcome is not None:
            return outcome
        return await asyncio.to_thread(self.result)


class _Waiter:
    """A caller blocked on a full queue (``overflow="block"``), until it is given a place."""

    __slots__ = ("cond", "granted")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.granted = False


_Item = tuple[Operation, SyncReceipt]


class _Runtime:
    """One process's queue thread, its EventQueue, and the hand-off to it.

    Shared between threads, guarded by ``lock``: ``state``, ``inbox``, ``awake``, ``held``,
    ``waiters``, ``finished`` and ``requests``. Owned by the queue thread: everything else
    that changes.
    """

    def __init__(self, config: QueueConfig, on_outcome: OnOutcome | None,
                 sender: Sender | None) -> None:
        self.config = config
        self.on_outcome = on_outcome
        self.sender = sender
        self.pid = os.getpid()
        self.capacity = config.max_queue_size
        self.policy = config.overflow
        self.batch_transport = config.transport == "batch"
        self.filtered_here = 0  # dropped by before_send in a caller's thread
        self.lock = threading.Lock()
        self.state = _RUNNING
        self.inbox: deque[_Item] = deque()
        self.awake = False  # a _drain is scheduled and has not yet taken the inbox
        self.held = 0  # places taken: operations in the inbox or pending in the EventQueue
        self.waiters: deque[_Waiter] = deque()  # callers blocked for a place, in order
        self.taken = threading.Condition(self.lock)  # the queue thread took the inbox
        self.inbox_waiters = 0
        self.finished = False  # the queue thread has ended; `final` is set
        self.final = Statistics()
        self.requests: set[concurrent.futures.Future[Statistics]] = set()
        self.settled = threading.Condition()  # notified when operations settled
        self.result_waiters = 0
        # Owned by the queue thread:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: EventQueue | None = None
        self.thread: threading.Thread | None = None
        self.thread_id: int | None = None
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
            self.state = _CLOSED
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

    # --- intake (caller threads) ----------------------------------------------------------

    def put(self, op: Operation) -> SyncReceipt:
        """Take a place for ``op`` (or apply the overflow policy) and hand it over."""
        receipt = SyncReceipt(op.kind, op.event_id, self)
        with self.lock:
            if self.state is not _RUNNING:
                raise QueueClosedError(_CLOSED_MESSAGE)
            if self.held < self.capacity and not self.waiters:
                self.held += 1
            else:
                self._overflow()
            self.inbox.append((op, receipt))
            if self.awake:
                return receipt
            self.awake = True
        self._wake()
        return receipt

    def _overflow(self) -> None:
        """Apply the overflow policy to a full queue (lock held); return holding a place."""
        if self.policy == "raise":
            raise QueueFullError(f"the queue holds {self.capacity} pending operations "
                                 "(overflow='raise')")
        if self.policy == "block":
            self._refuse_waiting_on_own_thread()
            self._wait_for_place()
            return
        # Drop policies: the EventQueue drops when the operation reaches it. Only if the
        # queue thread has fallen a whole queue behind does the caller wait for it (not
        # for the network), so the inbox stays bounded.
        while len(self.inbox) >= self.capacity:
            self._refuse_waiting_on_own_thread()
            self.inbox_waiters += 1
            try:
                self.taken.wait()
            finally:
                self.inbox_waiters -= 1
            if self.state is not _RUNNING:
                raise QueueClosedError("the SyncEventQueue closed while this call waited")
        self.held += 1

    def _refuse_waiting_on_own_thread(self) -> None:
        if self.on_own_thread():
            raise QueueUsageError("a call from the queue's own thread (an on_outcome "
                                  "callback) cannot wait for room in its full queue")

    def _wait_for_place(self) -> None:
        """Wait (lock held) for a place, first come first served, within enqueue_timeout."""
        timeout = self.config.enqueue_timeout
        waiter = _Waiter(self.lock)
        self.waiters.append(waiter)
        try:
            self._wait_granted(waiter, None if timeout is None else time.monotonic() + timeout)
        finally:
            if not waiter.granted:
                self.waiters.remove(waiter)
        if self.state is not _RUNNING:
            if waiter.granted:
                self.held -= 1
            raise QueueClosedError("the SyncEventQueue closed while this call waited")
        if not waiter.granted:
            raise QueueFullError(f"no room in the queue within enqueue_timeout={timeout}s "
                                 "(overflow='block')")

    def _wait_granted(self, waiter: _Waiter, deadline: float | None) -> None:
        """Sleep on the waiter's condition until granted, closed, or the deadline."""
        while not waiter.granted and self.state is _RUNNING:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            waiter.cond.wait(remaining)

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
                    self.state = _CLOSED if self.state is _RUNNING else self.state
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
        if self.on_outcome is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._report, receipt, outcome)  # on its thread
        return receipt

    def _settle_here(self, op: Operation, receipt: SyncReceipt, reason: str) -> None:
        """Fail an operation that never reached the EventQueue, and report it."""
        self.failed_here += 1
        self._free_place()
        self._report(receipt, Outcome(OutcomeStatus.FAILED, op.kind, op.customer_id,
                                      op.event_id, reason=reason))

    def _report(self, receipt: SyncReceipt, outcome: Outcome) -> None:
        receipt._outcome = outcome
        callback = self.on_outcome
        if callback is None:
            return
        try:
            result = callback(outcome)
        except Exception:  # noqa: BLE001 - a user's callback never stops delivery
            log.exception("cio_queue.on_outcome_failed", kind=outcome.kind)
            return
        if not asyncio.iscoroutine(result):
            return
        loop = self.loop
        if loop is not None and loop.is_running():
            task = loop.create_task(result, name="cio_queue.on_outcome")
            self.callbacks.add(task)
            task.add_done_callback(self.callbacks.discard)
        else:  # the loop itself failed: there is nowhere left to run it
            result.close()

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

    def on_own_thread(self) -> bool:
        """Tell whether the caller is the queue thread, where blocking would deadlock."""
        return threading.get_ident() == self.thread_id

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
            if self.state is not _RUNNING:
                return
            self.state = _CLOSING
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

    def wait_for(self, receipt: SyncReceipt, timeout: float | None) -> Outcome:
        """Block until ``receipt`` has its outcome (see SyncReceipt.result)."""
        if self.on_own_thread():
            raise QueueUsageError("SyncReceipt.result() on the queue's own thread (in an "
                                  "on_outcome callback) would wait forever")
        if os.getpid() != self.pid:
            raise QueueUsageError("this receipt belongs to the parent process's queue; a "
                                  "forked child cannot wait for it")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.settled:
            self.result_waiters += 1
            try:
                while (outcome := receipt.outcome) is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"the {receipt.kind} operation had not settled "
                                           f"within {timeout}s; it goes on in the background")
                    self.settled.wait(remaining)
            finally:
                self.result_waiters -= 1
        return outcome


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


class _Intake(EventQueue):
    """Runs an EventQueue method's body in the calling thread, for one call.

    EventQueue's public methods check the queue (``_ready()``), build the operation with
    the ``_operations`` builders, and ``await self._submit(op)``. On an _Intake, those two
    hooks take a place in the SyncEventQueue and hand the operation over instead, and
    never suspend, so the method's coroutine finishes in its first step: the arguments are
    read and validated exactly as EventQueue reads them, in the caller's stack, by the
    same code. (Not EventQueue.__init__: an _Intake has no pipeline, sender or config.)

    Stand-in for a core hook: that contract (public methods touch nothing but
    ``_ready()``, the builders and ``_submit()``) made explicit and kept by the core.
    """

    def __init__(self, owner: SyncEventQueue) -> None:
        self._owner = owner
        self._runtime: _Runtime | None = None

    def _ready(self) -> None:
        self._runtime = self._owner._running()

    async def _submit(self, op: Operation) -> Receipt:
        runtime = self._runtime
        assert runtime is not None, "EventQueue methods call _ready() before _submit()"
        hook = runtime.config.before_send
        if hook is not None:
            changed = apply_before_send(hook, op)
            if changed is None:
                return runtime.filter(op)
            op = changed
        return runtime.put(op.seal(batch=runtime.batch_transport))


P = ParamSpec("P")
T = TypeVar("T")


def _drive(running: Coroutine[Any, Any, T]) -> T:
    """Run an EventQueue method's body on an _Intake, which never suspends, to its end."""
    try:
        running.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    running.close()
    raise RuntimeError("an EventQueue method waited; _Intake never suspends")


def _without_await(method: Callable[Concatenate[EventQueue, P], Coroutine[Any, Any, Receipt]]
                   ) -> Callable[Concatenate[SyncEventQueue, P], SyncReceipt]:
    """Make a SyncEventQueue method out of an EventQueue one: same arguments, no await."""

    def call(self: SyncEventQueue, /, *args: P.args, **kwargs: P.kwargs) -> SyncReceipt:
        receipt = _drive(method(_Intake(self), *args, **kwargs))
        assert isinstance(receipt, SyncReceipt)
        return receipt

    call.__name__ = call.__qualname__ = method.__name__
    call.__doc__ = method.__doc__
    call.__signature__ = inspect.signature(method).replace(  # type: ignore[attr-defined]
        return_annotation="SyncReceipt")
    return call


# Queues alive in this process: a fork makes the child forget their threads, and the
# interpreter's exit closes them.
_live_queues: weakref.WeakSet[SyncEventQueue] = weakref.WeakSet()


class SyncEventQueue:
    """Queue Customer.io Track API operations from synchronous code: WSGI apps, Celery tasks.

    The methods are EventQueue's (and so the official ``customerio.CustomerIO`` client's)
    without ``await``. Each validates its input in the calling thread (raising
    InvalidEventError there), enqueues in microseconds without any network I/O, and
    returns a :class:`SyncReceipt`. Delivery runs on one background thread per process
    with its own event loop, started on first use; any number of threads may call at once.

    Use it as a context manager, or create it once at import time and let the process's
    exit close it: when the interpreter exits, every running queue is drained within
    ``shutdown_timeout`` and the rest dead-lettered. A forked child (gunicorn ``--preload``,
    Celery prefork) starts a thread of its own on first use; the parent's operations stay
    the parent's.
    """

    def __init__(self, config: QueueConfig, *, on_outcome: OnOutcome | None = None,
                 sender: Sender | None = None) -> None:
        """Create a queue; no thread starts until :meth:`start` or the first enqueue.

        Args:
            config: the QueueConfig.
            on_outcome: overrides ``config.on_outcome``: a sync or async callable run once
                per settled operation, on the queue's thread; keep it quick, as it holds
                up delivery while it runs. An exception it raises is logged.
            sender: the I/O layer; defaults to an aiohttp HttpSender for ``config``. A
                sender passed here is used from the queue's thread (and, after a fork, by
                the child's).
        """
        self._config = config
        self._on_outcome = on_outcome if on_outcome is not None else config.on_outcome
        self._sender = sender
        self._runtime: _Runtime | None = None
        self._closed = False
        self._start_lock = threading.Lock()
        _live_queues.add(self)

    def __repr__(self) -> str:
        runtime = self._runtime
        if self._closed and (runtime is None or runtime.finished):
            state = "closed"
        elif runtime is None:
            state = "new"
        else:
            state = runtime.state
        return f"<SyncEventQueue {state} site_id={self._config.site_id!r}>"

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> SyncEventQueue:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the queue's thread in this process, if it is not running (idempotent).

        Raises:
            QueueClosedError: the queue was closed.
        """
        self._running()

    def _running(self) -> _Runtime:
        runtime = self._runtime
        if runtime is not None and runtime.state is _RUNNING and not self._closed:
            return runtime
        with self._start_lock:
            runtime = self._runtime
            if self._closed or (runtime is not None and runtime.state is not _RUNNING):
                raise QueueClosedError(_CLOSED_MESSAGE)
            if runtime is None:
                runtime = _Runtime(self._config, self._on_outcome, self._sender)
                runtime.start()
                self._runtime = runtime
            return runtime

    def batch(self, operations: list[dict[str, Any]]) -> list[SyncReceipt]:
        """Enqueue operations in their v2 form, like ``EventQueue.batch`` (no await).

        Raises:
            InvalidEventError: not a list of dicts, or one the API would refuse, naming it
                and its field (``operations[1].timestamp``); nothing is queued.
        """
        receipts = _drive(EventQueue.batch(_Intake(self), operations))
        return [receipt for receipt in receipts if isinstance(receipt, SyncReceipt)]

    def check(self, timeout: float | None = None) -> AccountRegion:
        """Ask the Track API where the credentials belong, like ``EventQueue.check``.

        Raises:
            ConfigError: refused credentials, or the workspace is in another region.
            DeliveryError: no usable answer. TimeoutError: none within ``timeout``.
        """
        runtime = self._running()
        if runtime.on_own_thread():
            raise QueueUsageError("check() on the queue's own thread would wait forever")
        queue, loop = runtime.queue, runtime.loop
        assert queue is not None
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(queue.check(), loop).result(timeout)

    def flush(self, timeout: float | None = None) -> Statistics:
        """Send everything queued now and wait until it, and all in flight, has settled.

        Args:
            timeout: the longest to wait, in seconds; None waits as long as it takes (each
                operation is bounded by the retry policy's ``timeout``).

        Returns:
            The statistics after the wait.

        Raises:
            TimeoutError: not everything settled within ``timeout``; delivery goes on.
            QueueUsageError: called on the queue's own thread (in an on_outcome callback).
        """
        runtime = self._runtime
        if runtime is None:
            return Statistics()
        if runtime.on_own_thread():
            raise QueueUsageError("flush() on the queue's own thread would wait forever")
        try:
            return runtime.request(runtime.flush_async).result(timeout)
        except TimeoutError:
            raise TimeoutError(f"the queue did not settle within {timeout}s; delivery goes "
                               "on in the background") from None

    def close(self, timeout: float | None = None) -> Statistics:
        """Stop intake, drain, and return the final statistics.

        Later calls raise QueueClosedError; callers blocked on a full queue get it too.
        What is queued is sent and retries go on until the drain deadline; what is unsent
        then is written to the dead-letter file (or, with no file, ends ``failed``), as
        ``EventQueue.aclose()`` does. Returns within the deadline plus about
        :data:`CLOSE_MARGIN` seconds. Safe to call more than once.

        Args:
            timeout: the drain deadline in seconds; None (or anything longer) means
                ``config.shutdown_timeout``.

        Raises:
            QueueUsageError: called on the queue's own thread (in an on_outcome callback).
        """
        current = self._runtime
        if current is not None and current.on_own_thread():
            raise QueueUsageError("close() on the queue's own thread would wait forever")
        with self._start_lock:
            runtime = self._runtime
            if runtime is None and self._sender is not None and not self._closed:
                # Never started, but the caller's sender may hold resources: close it on
                # a loop, as EventQueue.aclose() would.
                runtime = _Runtime(self._config, self._on_outcome, self._sender)
                runtime.start()
                self._runtime = runtime
            self._closed = True
        if runtime is None:
            return Statistics()
        runtime.begin_close(timeout)
        return runtime.wait_closed(timeout)

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters; see :class:`Statistics` for the invariant.

        Operations handed over and not yet taken in by the queue's thread count as
        ``queued`` (and ``pending``).
        """
        runtime = self._runtime
        return Statistics() if runtime is None else runtime.statistics()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's thread: the child starts its own on first use."""
        self._runtime = None
        self._start_lock = threading.Lock()

    # --- the public operations: EventQueue's own, without await -------------------------
    # The ignores: EventQueue's `self` is not positional-only, so where a method takes
    # **kwargs mypy cannot rule out a keyword named "self" (arg-type); the signatures it
    # infers are exact all the same. Every line has one, as any method may gain **kwargs.

    identify = _without_await(EventQueue.identify)  # type: ignore[arg-type,unused-ignore]
    track = _without_await(EventQueue.track)  # type: ignore[arg-type,unused-ignore]
    track_anonymous = _without_await(EventQueue.track_anonymous)  # type: ignore[arg-type,unused-ignore]
    pageview = _without_await(EventQueue.pageview)  # type: ignore[arg-type,unused-ignore]
    backfill = _without_await(EventQueue.backfill)  # type: ignore[arg-type,unused-ignore]
    delete = _without_await(EventQueue.delete)  # type: ignore[arg-type,unused-ignore]
    add_device = _without_await(EventQueue.add_device)  # type: ignore[arg-type,unused-ignore]
    delete_device = _without_await(EventQueue.delete_device)  # type: ignore[arg-type,unused-ignore]
    suppress = _without_await(EventQueue.suppress)  # type: ignore[arg-type,unused-ignore]
    unsuppress = _without_await(EventQueue.unsuppress)  # type: ignore[arg-type,unused-ignore]
    merge_customers = _without_await(EventQueue.merge_customers)  # type: ignore[arg-type,unused-ignore]


def _forget_threads_after_fork() -> None:
    for queue in list(_live_queues):
        queue._after_fork_in_child()


def _close_all_at_exit() -> None:
    """Close every queue running in this process: begin all closes, then wait for each."""
    pid = os.getpid()
    running = [queue._runtime for queue in list(_live_queues)
               if queue._runtime is not None and queue._runtime.pid == pid]
    for queue in list(_live_queues):
        queue._closed = True
    for runtime in running:
        runtime.begin_close(None)
    for runtime in running:
        if not runtime.on_own_thread():
            runtime.wait_closed(None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_after_fork)
# Close before the interpreter's shutdown stops thread pools: once it has begun (and so in
# any atexit handler), concurrent.futures refuses new work, and the dead-letter writer's
# pool and aiohttp's DNS lookups would fail. threading's own exit hooks run first, while
# the main thread is finished but before non-daemon threads are joined (concurrent.futures
# relies on the same hook); the plain atexit handler is the fallback.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_close_all_at_exit)
else:
    atexit.register(_close_all_at_exit)
