"""The hand-off between a SyncEventQueue's caller threads and its queue thread.

Stage: intake, for callers without an event loop: the crossing from the caller's thread
to the queue thread. A caller takes a place (``max_queue_size`` of them, counted here over
the inbox and the operations pending in the EventQueue), applies the overflow policy when
there is none, and appends its operation to the inbox; the queue thread takes the whole
inbox and gives places back as operations settle, oldest waiting caller first. A
:class:`SyncReceipt` waits here, in the caller's thread, for its operation's Outcome.

:class:`Handoff` is the part of a queue's runtime that caller threads share, guarded by
its lock; the queue thread's part (``_syncthread.Runtime``) builds on it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from ._config import QueueConfig
from ._exceptions import QueueClosedError, QueueFullError, QueueUsageError
from ._operations import Operation
from ._outcome import Outcome, Receipt

__all__ = ["CLOSED", "CLOSED_MESSAGE", "CLOSING", "RUNNING", "Handoff", "SyncReceipt", "drive"]

T = TypeVar("T")


def drive(running: Coroutine[Any, Any, T], never_waits: str) -> T:
    """Run a coroutine that never suspends to its end, synchronously; return its result.

    How the SyncEventQueue reuses EventQueue's async code without an event loop in the
    calling thread. Should it suspend after all, it is closed and ``RuntimeError(never_waits)``
    says which promise broke.
    """
    try:
        running.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    running.close()
    raise RuntimeError(never_waits)

CLOSED_MESSAGE: Final = "this SyncEventQueue is closed; no new operations are accepted"

# The states of one runtime, in order. Intake is open only while running.
RUNNING: Final = "running"
CLOSING: Final = "closing"
CLOSED: Final = "closed"


class SyncReceipt(Receipt):
    """Returned by every SyncEventQueue call; ``result()`` blocks for the final Outcome.

    Waiting is optional: the operation is delivered (or its failure recorded) whether or
    not anybody waits. ``kind`` and ``event_id`` are known at once. It is a Receipt, so
    async code may ``await receipt.wait()`` too (the wait runs in a worker thread).
    """

    __slots__ = ("_core", "_runtime")

    def __init__(self, kind: str, event_id: str | None, runtime: Handoff) -> None:
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
        own = super().outcome  # set here only if it never reached the EventQueue
        if own is not None:
            return own
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


class Handoff:
    """The places, the inbox and the waits that caller threads share with the queue thread.

    Shared between threads, guarded by ``lock``: ``state``, ``inbox``, ``awake``, ``held``
    and ``waiters``. ``settled`` wakes the callers waiting for an Outcome. The queue
    thread's side (:meth:`_wake`, and what it sets: ``thread_id``) is the subclass's.
    """

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.capacity = config.max_queue_size
        self.policy = config.overflow
        self.lock = threading.Lock()
        self.state = RUNNING
        self.inbox: deque[_Item] = deque()
        self.awake = False  # a _drain is scheduled and has not yet taken the inbox
        self.held = 0  # places taken: operations in the inbox or pending in the EventQueue
        self.waiters: deque[_Waiter] = deque()  # callers blocked for a place, in order
        self.taken = threading.Condition(self.lock)  # the queue thread took the inbox
        self.inbox_waiters = 0
        self.settled = threading.Condition()  # notified when operations settled
        self.result_waiters = 0
        self.thread_id: int | None = None  # the queue thread's, once it runs

    # --- intake (caller threads) ----------------------------------------------------------

    def put(self, op: Operation) -> SyncReceipt:
        """Take a place for ``op`` (or apply the overflow policy) and hand it over."""
        receipt = SyncReceipt(op.kind, op.event_id, self)
        with self.lock:
            if self.state is not RUNNING:
                raise QueueClosedError(CLOSED_MESSAGE)
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
            if self.state is not RUNNING:
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
        if self.state is not RUNNING:
            if waiter.granted:
                self.held -= 1
            raise QueueClosedError("the SyncEventQueue closed while this call waited")
        if not waiter.granted:
            raise QueueFullError(f"no room in the queue within enqueue_timeout={timeout}s "
                                 "(overflow='block')")

    def _wait_granted(self, waiter: _Waiter, deadline: float | None) -> None:
        """Sleep on the waiter's condition until granted, closed, or the deadline."""
        while not waiter.granted and self.state is RUNNING:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            waiter.cond.wait(remaining)

    def _wake(self) -> None:
        """Have the queue thread take the inbox (the subclass's loop does)."""
        raise NotImplementedError

    # --- waits (caller threads) ---------------------------------------------------------

    def on_own_thread(self) -> bool:
        """Tell whether the caller is the queue thread, where blocking would deadlock."""
        return threading.get_ident() == self.thread_id

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
