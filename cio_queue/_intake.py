"""Intake: from a built operation to an accepted one, in the caller's stack.

Stage: intake, the facade's second half. :meth:`Intake.submit` runs the application's
``before_send`` hook, seals the operation (its one serialisation), and takes a place for
it: in the spool and memory with ``spool_path``, else in memory, where a full queue
applies the ``overflow`` policy (raise, block first come first served within one
``enqueue_timeout``, or drop). The accepted operation goes to the running pipeline; a
dropped or filtered one settles at once. Nothing here sends.
"""

from __future__ import annotations

import asyncio
from typing import Final

from ._before_send import BeforeSend, apply_before_send
from ._config import QueueConfig
from ._exceptions import CLOSED_WHILE_WAITING, QueueClosedError, QueueFullError
from ._ledger import Entry, HeldEntry, Verdict
from ._log import log
from ._operations import Operation
from ._outcome import OutcomeStatus, Receipt
from ._pipeline import Pipeline
from ._spooled import SpooledEntry

__all__ = ["Intake"]

_QUEUE_FULL: Final = Verdict(OutcomeStatus.DROPPED, "queue_full")
_FILTERED: Final = Verdict(OutcomeStatus.FILTERED, "before_send")


def _time_out(waiter: asyncio.Future[None], timeout: float) -> None:
    """Fail a wait for room that outlasted ``enqueue_timeout``."""
    if not waiter.done():
        waiter.set_exception(QueueFullError(f"no room in the queue within enqueue_timeout="
                                            f"{timeout}s (overflow='block')"))


def _as_entry(op: Operation, loop: asyncio.AbstractEventLoop) -> Entry:
    """The operation as its own entry (and receipt), or held by a new one.

    Held when it was made an entry before (its receipt belongs to that admission): an
    operation given to intake twice must not share one ledger state.
    """
    if op._loop is None:
        op._loop = loop
        return op
    return HeldEntry(op, loop)


class Intake:
    """Accept operations into a running pipeline."""

    def __init__(self, config: QueueConfig, before_send: BeforeSend | None) -> None:
        self._config = config
        self._before_send = before_send
        self._batch = config.transport == "batch"
        self._wait_for_stream = (config.redis_url is not None
                                 and config.redis_durability == "sync")
        # Whether a call may be accepted at once, as accept() does.
        self._at_once = (before_send is None and config.spool_path is None
                         and not self._wait_for_stream)
        self.run: Pipeline | None = None  # the pipeline accept() admits into, once started

    def accept(self, op: Operation) -> Receipt | None:
        """Accept ``op`` into :attr:`run` at once when nothing can make the call wait.

        Nothing can without a before_send hook, a spool or a wait for Redis, with a place
        free: the usual call ends here, in the caller's frame, without a coroutine of
        its own. None: await :meth:`submit`, which takes every case.
        """
        if not self._at_once:
            return None
        run = self.run
        assert run is not None, "the queue starts its pipeline before any intake"
        sealed = op.seal(batch=self._batch)  # before the place: it may refuse the input
        if not run.ledger.room.try_acquire():
            return None
        entry = _as_entry(sealed, run.loop)
        run.ledger.admit(entry)  # it holds a place from ledger.room
        run.route(entry)
        return entry

    async def submit(self, run: Pipeline, op: Operation) -> Receipt:
        """Accept ``op`` (or drop it by policy, or filter it by before_send)."""
        if self._before_send is not None:
            changed = apply_before_send(self._before_send, op)
            if changed is None:
                filtered = _as_entry(op, run.loop)
                run.ledger.refuse(filtered, _FILTERED)
                return filtered
            op = changed
        sealed = op.seal(batch=self._batch)
        entry: Entry
        if run.spooler is not None:
            entry = spooled = SpooledEntry(sealed, run.loop)
            if await run.spooler.admit(spooled):
                return entry
        else:
            entry = _as_entry(sealed, run.loop)
        if not run.ledger.room.try_acquire() and not await self._overflow(run, entry):
            return entry
        run.ledger.admit(entry)  # it holds a place from ledger.room
        run.route(entry)
        if self._wait_for_stream:
            await entry.wait()  # returns once Redis acknowledged it
        return entry

    async def _overflow(self, run: Pipeline, entry: Entry) -> bool:
        """Apply the overflow policy to a full queue; return whether ``entry`` got a place."""
        policy = self._config.overflow
        if policy == "raise":
            raise QueueFullError(f"the queue holds {self._config.max_queue_size} pending "
                                 "operations (overflow='raise')")
        if policy == "block":
            await self._wait_for_room(run)
            return True
        # In a fleet what is queued here was taken from the stream for others: never a
        # victim (and this queue's own operations are already with the producer).
        oldest = policy == "drop_oldest" and run.fleet is None
        victim = run.dispatcher.take_oldest() if oldest else None
        if victim is not None:
            run.ledger.drop(victim, _QUEUE_FULL)  # its place passes to the new one
        else:
            run.ledger.refuse(entry, _QUEUE_FULL)
        log.warning("cio_queue.dropped", reason="queue_full", policy=policy,
                    kind=(victim or entry).op.kind, max_queue_size=self._config.max_queue_size)
        return victim is not None

    async def _wait_for_room(self, run: Pipeline) -> None:
        """Wait for a place, first come first served, within one ``enqueue_timeout``.

        The wait is a future in the room's queue of waiters. Its deadline fails it with
        QueueFullError, and the shutdown, which fails every future in ``run.blocked``
        once intake has stopped, with QueueClosedError. (A producer held by a full queue
        waits on almost every call; the anyio cancel scope this took before cost about
        5 µs a wait.)
        """
        room = run.ledger.room
        waiter = room.waiter()
        timeout = self._config.enqueue_timeout
        timer = (None if timeout is None
                 else run.loop.call_later(timeout, _time_out, waiter, timeout))
        run.blocked.add(waiter)
        try:
            await waiter
        except BaseException:  # failed (deadline, shutdown) or cancelled: no place held
            room.forget(waiter)
            raise
        finally:
            run.blocked.discard(waiter)
            if timer is not None:
                timer.cancel()
        if not run.accepting:  # given a place as the queue began to close
            room.release()
            raise QueueClosedError(CLOSED_WHILE_WAITING)
