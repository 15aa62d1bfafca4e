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
thread, on an :class:`_Intake`: a stand-in whose ``_ready()`` and ``_accept()`` hand the
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
hooks ``_ready()``/``_accept()`` that :class:`_Intake` overrides, and the admission of an
operation built elsewhere, ``_syncthread._admit_built``.

This module is the facade; the crossing between the threads (receipts, places, the
inbox) is ``_synchandoff``, and the queue thread with its loop and EventQueue is
``_syncthread``.

A forked child (gunicorn ``--preload``, Celery prefork) forgets its parent's thread and
starts its own on first use. At interpreter exit every running queue is closed (drained
within ``shutdown_timeout``, the rest dead-lettered) from threading's exit hook, which runs
before thread pools stop taking work; see the end of this module.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from ._before_send import apply_before_send
from ._config import OnOutcome, QueueConfig
from ._exceptions import ConfigError, QueueClosedError, QueueUsageError
from ._operations import Operation
from ._outcome import Receipt, Statistics
from ._queue import EventQueue
from ._region import AccountRegion
from ._sender import Sender
from ._synchandoff import CLOSED_MESSAGE, RUNNING, SyncReceipt, drive
from ._syncthread import CLOSE_MARGIN, Runtime

__all__ = ["CLOSE_MARGIN", "SyncEventQueue", "SyncReceipt"]


class _Intake(EventQueue):
    """Runs an EventQueue method's body in the calling thread, for one call.

    EventQueue's public methods check the queue (``_ready()``), build the operation with
    the ``_operations`` builders (events sealed at once when ``_sealed``, which ``_ready()``
    sets here), and end ``return self._accept(op) or await self._submit(op)``. On an
    _Intake, ``_ready()`` and ``_accept()`` take a place in the SyncEventQueue and hand the
    operation over instead, always at once, so the method's coroutine finishes in its
    first step: the arguments are read and validated exactly as EventQueue reads them, in
    the caller's stack, by the same code. (Not EventQueue.__init__: an _Intake has no
    pipeline, sender or config.)

    Stand-in for a core hook: that contract (public methods touch nothing but
    ``_ready()``, ``_sealed``, the builders, ``_accept()`` and ``_submit()``) made
    explicit and kept by the core.
    """

    def __init__(self, owner: SyncEventQueue) -> None:
        self._owner = owner
        self._runtime: Runtime | None = None

    def _ready(self) -> None:
        runtime = self._runtime = self._owner._running()
        self._sealed = runtime.batch_transport and runtime.config.before_send is None

    def _accept(self, op: Operation) -> Receipt:
        runtime = self._runtime
        assert runtime is not None, "EventQueue methods call _ready() before _accept()"
        hook = runtime.config.before_send
        if hook is not None:
            changed = apply_before_send(hook, op)
            if changed is None:
                return runtime.filter(op)
            op = changed
        return runtime.put(op.seal(batch=runtime.batch_transport))

    async def _submit(self, op: Operation) -> Receipt:
        return self._accept(op)  # never reached from a public method: _accept takes all


P = ParamSpec("P")
T = TypeVar("T")


_NEVER_WAITS: Final = "an EventQueue method waited; _Intake never suspends"


def _without_await(method: Callable[Concatenate[EventQueue, P], Coroutine[Any, Any, Receipt]]
                   ) -> Callable[Concatenate[SyncEventQueue, P], SyncReceipt]:
    """Make a SyncEventQueue method out of an EventQueue one: same arguments, no await."""

    def call(self: SyncEventQueue, /, *args: P.args, **kwargs: P.kwargs) -> SyncReceipt:
        receipt = drive(method(_Intake(self), *args, **kwargs), _NEVER_WAITS)
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

        Raises:
            ConfigError: ``spool_durability="sync"`` or ``redis_durability="sync"``: the
                calls return before anything is durable; use an EventQueue for that.
        """
        for option in ("spool_durability", "redis_durability"):
            if getattr(config, option) == "sync":
                raise ConfigError(
                    f"SyncEventQueue does not support {option}='sync': its calls return "
                    "before the queue thread has written anything; use 'batched', or an "
                    "EventQueue, whose awaited calls return once the write is durable")
        self._config = config
        self._on_outcome = on_outcome if on_outcome is not None else config.on_outcome
        self._sender = sender
        self._runtime: Runtime | None = None
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

    def _running(self) -> Runtime:
        runtime = self._runtime
        if runtime is not None and runtime.state is RUNNING and not self._closed:
            return runtime
        with self._start_lock:
            runtime = self._runtime
            if self._closed or (runtime is not None and runtime.state is not RUNNING):
                raise QueueClosedError(CLOSED_MESSAGE)
            if runtime is None:
                runtime = Runtime(self._config, self._on_outcome, self._sender)
                runtime.start()
                self._runtime = runtime
            return runtime

    def batch(self, operations: list[dict[str, Any]]) -> list[SyncReceipt]:
        """Enqueue operations in their v2 form, like ``EventQueue.batch`` (no await).

        Raises:
            InvalidEventError: not a list of dicts, or one the API would refuse, naming it
                and its field (``operations[1].timestamp``); nothing is queued.
        """
        receipts = drive(EventQueue.batch(_Intake(self), operations), _NEVER_WAITS)
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
                runtime = Runtime(self._config, self._on_outcome, self._sender)
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
