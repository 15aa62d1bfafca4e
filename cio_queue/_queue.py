"""EventQueue: the public facade, the flusher and per-operation delivery.

The pipeline: an enqueue call validates and serialises its operation (``_operations``),
then appends it to the pure ``BatchAccumulator``. One flusher task hands a batch to a
new batch task as soon as ``batch_size`` operations wait or the oldest has waited
``flush_interval``. A batch task gathers one delivery coroutine per operation, with
exceptions kept as results; each delivery waits for a concurrency token, the shared 429
gate and the rate limit, sends, and retries by the RetryPolicy, sleeping without holding
a token, so a batch that backs off never holds up other batches, the flusher or intake.
Every operation is settled exactly once, by ``_settle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
import weakref
from collections import deque
from collections.abc import Awaitable
from typing import Any, Final, Literal

import anyio
import structlog

from . import _operations as ops
from ._accumulator import BatchAccumulator
from ._config import OnOutcome, QueueConfig
from ._deadletter import DeadLetterFile, record_for
from ._exceptions import (
    DeliveryError,
    QueueClosedError,
    QueueFullError,
    QueueUsageError,
    RateLimitedError,
    RejectedError,
    TransportError,
)
from ._operations import Operation
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics
from ._pacing import RequestPacer
from ._packing import batch_body, pack, partial_errors
from ._sender import HttpSender, Request, Response, Sender, classify

__all__ = ["EventQueue"]

log = structlog.get_logger("cio_queue")

_V1_PREFIX: Final = "/api/v1"
_V2_BATCH_PATH: Final = "/api/v2/batch"
_CLOSE_MARGIN: Final = 2.0
"""Seconds past ``shutdown_timeout`` that ``aclose`` allows for writing the dead letters,
running the last callbacks and closing connections."""

_State = Literal["new", "running", "closing", "closed"]
_DEAD_LETTER_STATUSES: Final = frozenset(
    {OutcomeStatus.REJECTED, OutcomeStatus.FAILED, OutcomeStatus.DEAD_LETTERED})

# Queues alive in this process, so a fork can mark them unusable in the child.
_live_queues: weakref.WeakSet[EventQueue] = weakref.WeakSet()


def _mark_forked() -> None:
    for queue in list(_live_queues):
        queue._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked)


class _AbandonedError(Exception):
    """Internal: the shutdown deadline left no time for this operation's next step."""


class _Entry:
    """An accepted operation and its delivery state."""

    __slots__ = ("attempts", "op", "receipt")

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.receipt = Receipt(op.kind, op.event_id)
        self.attempts = 0


class _Counters:
    __slots__ = (
        "batches",
        "dead_lettered",
        "delivered",
        "dropped",
        "enqueued",
        "failed",
        "pending",
        "rate_limited",
        "rejected",
        "requests",
        "retries",
    )

    def __init__(self) -> None:
        self.enqueued = self.delivered = self.rejected = self.failed = 0
        self.dropped = self.dead_lettered = self.pending = 0
        self.batches = self.requests = self.retries = self.rate_limited = 0


class EventQueue:
    """Queue Customer.io Track API operations in memory and deliver them in the background.

    Use it as an async context manager (``async with EventQueue(config) as cio:``), or
    call :meth:`start` and :meth:`aclose` yourself, e.g. in an app's lifespan. The first
    enqueue call starts it if you have not. Method names and arguments match the official
    ``customerio.CustomerIO`` client; each call validates its input, enqueues without any
    network I/O, and returns a :class:`Receipt`.

    A queue belongs to the event loop it started in and to the process that made it.
    """

    def __init__(self, config: QueueConfig, *, on_outcome: OnOutcome | None = None,
                 sender: Sender | None = None) -> None:
        """Create a queue; nothing runs until :meth:`start` or the first enqueue.

        Args:
            config: the QueueConfig.
            on_outcome: overrides ``config.on_outcome``: a sync or async callable run once
                per settled operation. A sync one runs on the event loop, so keep it quick;
                an exception it raises is logged and never stops delivery.
            sender: the I/O layer; defaults to an aiohttp HttpSender for ``config``.
        """
        self._config = config
        self._on_outcome = on_outcome if on_outcome is not None else config.on_outcome
        self._sender: Sender = sender if sender is not None else HttpSender(config)
        self._acc: BatchAccumulator[_Entry] = BatchAccumulator(config.batch_size,
                                                               config.flush_interval)
        self._counters = _Counters()
        self._pacer = RequestPacer(config.rate_limit)
        self._batch_transport = config.transport == "batch"
        dead_letter = config.dead_letter_file
        self._dead_letters = DeadLetterFile(dead_letter) if dead_letter else None
        self._state: _State = "new"
        self._forked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._batches: dict[asyncio.Task[None], list[_Entry]] = {}
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._sleepers: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()  # callbacks and dead-letter writes
        # Operations whose delivery stopped short at shutdown; an ordered set.
        self._abandoned: dict[_Entry, None] = {}
        # Operations that ended rejected or failed, waiting for their dead-letter record.
        self._unwritten: dict[_Entry, tuple[OutcomeStatus, str | None,
                                            DeliveryError | None]] = {}
        self._deadline: float | None = None
        self._closing: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[Any] | None = None
        _live_queues.add(self)

    def __repr__(self) -> str:
        c = self._counters
        return (f"<EventQueue {self._state} site_id={self._config.site_id!r} "
                f"pending={c.pending} delivered={c.delivered}>")

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> EventQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the flusher in the running event loop (idempotent).

        Raises:
            QueueClosedError: the queue was closed.
            QueueUsageError: another event loop or a forked child.
        """
        self._start()

    def _start(self) -> None:
        self._check_context()
        if self._state == "running":
            return
        if self._state != "new":
            raise QueueClosedError("this EventQueue is closed; create a new one")
        self._loop = asyncio.get_running_loop()
        self._limiter = anyio.CapacityLimiter(self._config.max_concurrency)
        self._wake = asyncio.Event()
        self._state = "running"
        self._start_flusher()

    def _start_flusher(self) -> None:
        assert self._loop is not None
        self._flusher = self._loop.create_task(self._run_flusher(), name="cio_queue.flusher")
        self._flusher.add_done_callback(self._flusher_done)

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        if self._state != "running":
            return
        # Something cancelled our flusher (a cancel-all-tasks teardown) or it crashed:
        # without it nothing would ever be sent again, so start another.
        error = None if task.cancelled() else task.exception()
        log.warning("cio_queue.flusher_restarted", error=repr(error) if error else "cancelled")
        self._start_flusher()

    def _check_context(self) -> None:
        if self._forked:
            raise QueueUsageError(
                "this EventQueue was created before os.fork(); a forked child cannot use its "
                "parent's queue or connections: create a new EventQueue in the child "
                "(for example in the worker's lifespan)")
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise QueueUsageError(
                "this EventQueue belongs to another event loop; create one per event loop")

    async def flush(self) -> Statistics:
        """Send everything queued now and wait until it, and all in flight, has settled.

        Each operation is bounded by the retry policy's ``timeout``; for a tighter bound
        wrap the call in ``anyio.fail_after`` (delivery then goes on in the background).

        Returns:
            The statistics after the wait.
        """
        if self._state == "new":
            return self.statistics()
        self._check_context()
        for batch in self._acc.take_all():
            self._dispatch(batch)
        tasks = list(self._batches)
        if tasks:
            await asyncio.wait(tasks)
        return self.statistics()

    async def aclose(self) -> Statistics:
        """Stop intake, drain within ``shutdown_timeout``, and return the final statistics.

        Later enqueue calls raise QueueClosedError. Whatever is unsent at the deadline,
        queued, in flight or waiting to retry, is written to the dead-letter file (or,
        with no file configured, ends ``failed``), so nothing accepted is left pending.
        Returns within ``shutdown_timeout`` plus a small margin even when the API is down
        or hanging. Safe to call more than once.
        """
        if self._state == "new":
            self._state = "closed"
            await self._close_sender()
            return self.statistics()
        if self._state == "closed":
            return self.statistics()
        self._check_context()
        if self._state == "running":
            self._state = "closing"
            self._deadline = time.monotonic() + self._config.shutdown_timeout
            for waiter in self._room_waiters:
                _resolve(waiter)
            self._wake_sleepers()
            if self._flusher is not None:
                self._flusher.cancel()
            for batch in self._acc.take_all():
                self._dispatch(batch)
            assert self._loop is not None
            # The close runs in a task of its own, so that cancelling the caller (an app's
            # lifespan being torn down) can never stop the spill half-way; a later aclose()
            # simply waits for the same task.
            self._closing = self._loop.create_task(self._drain_and_close(),
                                                   name="cio_queue.close")
        closing = self._closing
        assert closing is not None
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            # The caller stopped waiting: cut the drain short, but let the spill finish
            # (it is bounded by _CLOSE_MARGIN) before passing the cancellation on.
            if self._draining is not None:
                self._draining.cancel()
            while not closing.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(closing)
            raise
        return self.statistics()

    async def _drain_and_close(self) -> None:
        tasks = list(self._batches)
        if tasks:
            assert self._loop is not None
            self._draining = self._loop.create_task(
                asyncio.wait(tasks, timeout=self._config.shutdown_timeout))
            with contextlib.suppress(asyncio.CancelledError):
                await self._draining
        with anyio.move_on_after(_CLOSE_MARGIN):
            await self._finish_close()

    async def _finish_close(self) -> None:
        leftovers = list(self._batches)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=_CLOSE_MARGIN / 4)
        await self._write_dead_letters()  # settles the rejections and failures it holds
        # Cancelled batches moved their unsettled operations into _abandoned; a batch that
        # did not even finish cancelling still holds its own.
        unsent = list(self._abandoned)
        unsent.extend(e for batch in self._batches.values() for e in batch)
        unsent.extend(e for batch in self._acc.take_all() for e in batch)
        unsent = [e for e in dict.fromkeys(unsent)
                  if not e.receipt.done() and e not in self._unwritten]
        self._abandoned.clear()
        if unsent:
            await self._spill(unsent)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_MARGIN / 4)
        await self._close_sender()
        self._state = "closed"
        c = self._counters
        log.info("cio_queue.closed", delivered=c.delivered, rejected=c.rejected,
                 failed=c.failed, dropped=c.dropped, dead_lettered=c.dead_lettered,
                 pending=c.pending)

    async def _close_sender(self) -> None:
        try:
            with anyio.move_on_after(_CLOSE_MARGIN / 4):
                await self._sender.aclose()
        except Exception:
            log.exception("cio_queue.sender_close_failed")

    async def _spill(self, entries: list[_Entry]) -> None:
        """Settle operations left unsent at the shutdown deadline."""
        if self._dead_letters is None:
            for entry in entries:
                self._settle(entry, OutcomeStatus.FAILED, "shutdown_deadline")
            log.error("cio_queue.unsent_at_shutdown", count=len(entries),
                      hint="set dead_letter_path to keep them for replay")
            return
        for entry in entries:
            self._settle(entry, OutcomeStatus.DEAD_LETTERED, "shutdown_deadline")
        await self._write_dead_letters()
        log.warning("cio_queue.dead_lettered", count=len(entries),
                    path=str(self._dead_letters.path))

    # --- statistics ----------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters; see :class:`Statistics` for the invariant."""
        c = self._counters
        return Statistics(
            enqueued=c.enqueued, delivered=c.delivered, rejected=c.rejected, failed=c.failed,
            dropped=c.dropped, dead_lettered=c.dead_lettered, pending=c.pending,
            queued=len(self._acc), batches=c.batches, requests=c.requests,
            retries=c.retries, rate_limited=c.rate_limited,
        )

    # --- the public operations, shaped like customerio.CustomerIO ------------------------

    async def identify(self, id: str | int, **attributes: Any) -> Receipt:
        """Create or update a person (``PUT /api/v1/customers/{id}``).

        Raises:
            InvalidEventError: a blank or wrong-typed id, or a bad attribute.
            QueueClosedError, QueueFullError, QueueUsageError: see the class docs.
        """
        self._ready()
        return await self._submit(ops.identify(id, attributes))

    async def track(self, customer_id: str | int, name: str, data: dict[str, Any] | None = None,
                    id: str | None = None, timestamp: Any = None) -> Receipt:
        """Track an event for a person (``POST /api/v1/customers/{id}/events``).

        Args:
            customer_id: the person's id, email or ``cio_``-prefixed cio_id.
            name: the event name (at most 100 bytes).
            data: event data (at most 100,000 bytes of JSON).
            id: a dedupe id; a ULID is assigned when None and reused on every retry.
            timestamp: unix seconds or a datetime (naive means UTC).
        """
        self._ready()
        return await self._submit(ops.track(customer_id, name, data, id, timestamp))

    async def track_anonymous(self, anonymous_id: str | int | None, name: str,
                              data: dict[str, Any] | None = None, id: str | None = None,
                              timestamp: Any = None) -> Receipt:
        """Track an event for an anonymous visitor (``POST /api/v1/events``).

        A blank ``anonymous_id`` makes an invite event, which needs ``data["recipient"]``.
        """
        self._ready()
        return await self._submit(ops.track_anonymous(anonymous_id, name, data, id, timestamp))

    async def pageview(self, customer_id: str | int, page: str, **data: Any) -> Receipt:
        """Track a page view (an event of type ``page`` named after the page)."""
        self._ready()
        return await self._submit(ops.pageview(customer_id, page, data))

    async def backfill(self, customer_id: str | int, name: str, timestamp: Any,
                       **data: Any) -> Receipt:
        """Track a past event with its required timestamp."""
        self._ready()
        return await self._submit(ops.backfill(customer_id, name, timestamp, data))

    async def delete(self, customer_id: str | int) -> Receipt:
        """Delete a person (``DELETE /api/v1/customers/{id}``)."""
        self._ready()
        return await self._submit(ops.delete(customer_id))

    async def add_device(self, customer_id: str | int, device_id: str, platform: str,
                         **data: Any) -> Receipt:
        """Add or update a device; extra keyword arguments go into the device object."""
        self._ready()
        return await self._submit(ops.add_device(customer_id, device_id, platform, data))

    async def delete_device(self, customer_id: str | int, device_id: str) -> Receipt:
        """Delete a person's device."""
        self._ready()
        return await self._submit(ops.delete_device(customer_id, device_id))

    async def suppress(self, customer_id: str | int) -> Receipt:
        """Suppress a person: delete the profile and block the id from coming back."""
        self._ready()
        return await self._submit(ops.suppress(customer_id))

    async def unsuppress(self, customer_id: str | int) -> Receipt:
        """Lift a person's suppression."""
        self._ready()
        return await self._submit(ops.unsuppress(customer_id))

    async def merge_customers(self, primary_id_type: str, primary_id: str | int,
                              secondary_id_type: str, secondary_id: str | int) -> Receipt:
        """Merge the secondary person into the primary; id types are id, email, cio_id."""
        self._ready()
        return await self._submit(ops.merge_customers(primary_id_type, primary_id,
                                                      secondary_id_type, secondary_id))

    # --- intake ----------------------------------------------------------------------------

    def _ready(self) -> None:
        """Refuse intake early, before validation, when the queue cannot take it."""
        if self._state != "running":
            if self._state == "new":
                self._start()
                return
            raise QueueClosedError("this EventQueue is closed; no new operations are accepted")
        if self._forked or self._loop is not asyncio.get_running_loop():
            self._check_context()

    async def _submit(self, op: Operation) -> Receipt:
        entry = _Entry(op.seal(batch=self._batch_transport))
        c = self._counters
        if c.pending >= self._config.max_queue_size and not await self._make_room(entry):
            return entry.receipt
        c.enqueued += 1
        c.pending += 1
        if self._acc.append(entry, time.monotonic()):
            assert self._wake is not None
            self._wake.set()
        return entry.receipt

    async def _make_room(self, entry: _Entry) -> bool:
        """Apply the overflow policy; return whether ``entry`` may still be enqueued."""
        policy = self._config.overflow
        if policy == "raise":
            raise QueueFullError(f"the queue holds {self._config.max_queue_size} pending "
                                 "operations (overflow='raise')")
        if policy == "block":
            while self._counters.pending >= self._config.max_queue_size:
                assert self._loop is not None
                waiter = self._loop.create_future()
                self._room_waiters.append(waiter)
                try:
                    with anyio.fail_after(self._config.enqueue_timeout):
                        await waiter
                except BaseException as exc:
                    # Woken with room and then timed out or cancelled: the room is not
                    # ours to take, so hand it to the next caller in line.
                    if waiter.done() and not waiter.cancelled():
                        self._hand_over_room()
                    if isinstance(exc, TimeoutError):
                        raise QueueFullError(
                            f"no room in the queue within enqueue_timeout="
                            f"{self._config.enqueue_timeout}s (overflow='block')") from None
                    raise
                finally:
                    if waiter in self._room_waiters:
                        self._room_waiters.remove(waiter)
                if self._state != "running":
                    raise QueueClosedError("the EventQueue closed while this call waited")
            return True
        victim = entry
        if policy == "drop_oldest" and len(self._acc):
            victim = self._acc.popleft()
        self._counters.enqueued += victim is entry
        self._counters.pending += victim is entry
        self._settle(victim, OutcomeStatus.DROPPED, "queue_full")
        log.warning("cio_queue.dropped", reason="queue_full", policy=policy, kind=victim.op.kind,
                    max_queue_size=self._config.max_queue_size)
        return victim is not entry

    # --- settling ------------------------------------------------------------------------------

    def _settle(self, entry: _Entry, status: OutcomeStatus, reason: str | None = None,
                error: DeliveryError | None = None) -> None:
        """Give an operation its one Outcome, once its dead-letter record (if any) is on disk.

        With a dead-letter file configured, a rejection, failure or shutdown spill waits in
        ``_unwritten`` until ``_write_dead_letters`` has appended and fsynced its record.
        """
        if self._dead_letters is not None and status in _DEAD_LETTER_STATUSES:
            self._unwritten[entry] = (status, reason, error)
        else:
            self._finalize(entry, status, reason, error)

    def _finalize(self, entry: _Entry, status: OutcomeStatus, reason: str | None,
                  error: DeliveryError | None) -> None:
        if entry.receipt.done():  # never count an operation twice, whatever went wrong
            log.error("cio_queue.settled_twice", kind=entry.op.kind, status=status.value)
            return
        op = entry.op
        outcome = Outcome(status, op.kind, op.customer_id, op.event_id, entry.attempts,
                          reason, error)
        entry.receipt._settle(outcome)
        c = self._counters
        c.pending -= 1
        if status is OutcomeStatus.DELIVERED:
            c.delivered += 1
        elif status is OutcomeStatus.REJECTED:
            c.rejected += 1
        elif status is OutcomeStatus.FAILED:
            c.failed += 1
        elif status is OutcomeStatus.DROPPED:
            c.dropped += 1
        else:
            c.dead_lettered += 1
        self._hand_over_room()
        if self._on_outcome is not None:
            self._run_callback(outcome)

    def _hand_over_room(self) -> None:
        """Wake the longest-waiting caller blocked on a full queue, if any."""
        waiters = self._room_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _run_callback(self, outcome: Outcome) -> None:
        assert self._on_outcome is not None
        try:
            result = self._on_outcome(outcome)
            if inspect.isawaitable(result):
                self._background(result)
        except Exception:
            log.exception("cio_queue.on_outcome_failed", kind=outcome.kind)

    def _background(self, awaitable: Awaitable[Any]) -> None:
        """Run an awaitable in a task that aclose() waits for and whose errors are logged."""
        assert self._loop is not None
        task = self._loop.create_task(_await(awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cio_queue.background_task_failed", exc_info=task.exception())

    # --- the flusher --------------------------------------------------------------------------

    async def _run_flusher(self) -> None:
        acc = self._acc
        wake = self._wake
        assert wake is not None
        while True:
            now = time.monotonic()
            if acc.due(now):
                self._dispatch(acc.take())
                continue
            wake.clear()
            deadline = acc.deadline()
            if deadline is None:
                await wake.wait()
            else:
                with anyio.move_on_after(deadline - now):
                    await wake.wait()

    def _dispatch(self, batch: list[_Entry]) -> None:
        assert self._loop is not None
        self._counters.batches += 1
        task = self._loop.create_task(self._send_batch(batch))
        self._batches[task] = batch
        task.add_done_callback(self._batch_done)

    def _in_delivery(self, entry: _Entry) -> bool:
        """Whether an operation's delivery has neither ended nor been set aside."""
        return (not entry.receipt.done() and entry not in self._abandoned
                and entry not in self._unwritten)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        batch = self._batches.pop(task)
        if not task.cancelled() and task.exception() is None:
            return  # every operation was settled, or abandoned at the deadline
        orphans = [e for e in batch if self._in_delivery(e)]
        if self._unwritten and self._loop is not None:
            self._background(self._write_dead_letters())
        if not orphans:
            return
        if task.cancelled() and self._state == "running":
            # Cancelled from outside while running: send them again (same event ids).
            log.warning("cio_queue.batch_cancelled", operations=len(orphans))
            self._acc.requeue(orphans, time.monotonic())
            assert self._wake is not None
            self._wake.set()
        elif task.cancelled():
            self._abandoned.update(dict.fromkeys(orphans))
        else:
            log.error("cio_queue.batch_crashed", operations=len(orphans),
                      exc_info=task.exception())
            for entry in orphans:
                self._settle(entry, OutcomeStatus.FAILED, "internal_error")

    async def _send_batch(self, batch: list[_Entry]) -> None:
        started = time.monotonic()
        units = self._units(batch)
        results = await asyncio.gather(*(unit for _, unit in units), return_exceptions=True)
        for (entries, _), result in zip(units, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise result
                # A bug, not a delivery failure; still, no operation may vanish.
                log.error("cio_queue.delivery_crashed", operations=len(entries),
                          exc_info=result)
                for entry in entries:
                    if self._in_delivery(entry):
                        self._settle(entry, OutcomeStatus.FAILED, "internal_error")
        await self._write_dead_letters()
        counts = {"delivered": 0, "rejected": 0, "failed": 0, "abandoned": 0}
        last_error: DeliveryError | None = None
        for entry in batch:
            outcome = entry.receipt.outcome
            if outcome is None:
                counts["abandoned"] += 1
                continue
            counts[outcome.status.value] += 1
            last_error = outcome.error or last_error
        duration = round(time.monotonic() - started, 4)
        attempts = sum(e.attempts for e in batch)
        if len(batch) == counts["delivered"]:
            log.info("cio_queue.batch_sent", operations=len(batch), requests=len(units),
                     attempts=attempts, duration=duration)
        else:
            log.warning("cio_queue.batch_failed", operations=len(batch), requests=len(units),
                        attempts=attempts, duration=duration,
                        status=last_error.status if last_error else None, **counts)

    def _units(self, batch: list[_Entry]) -> list[tuple[list[_Entry], Awaitable[None]]]:
        """Split a batch into the requests that carry it: v1 singles and packed v2 batches."""
        singles = [e for e in batch if e.op.v2 is None]
        units: list[tuple[list[_Entry], Awaitable[None]]] = [
            ([e], self._recorded(self._deliver_v1(e))) for e in singles]
        if len(singles) < len(batch):
            packed = [e for e in batch if e.op.v2 is not None]
            for group in pack([len(e.op.v2 or b"") for e in packed]):
                entries = packed[group.start:group.stop]
                units.append((entries, self._recorded(self._deliver_v2(entries))))
        return units

    async def _recorded(self, delivery: Awaitable[None]) -> None:
        """Run one request's delivery, then write its dead-letter records at once.

        So a rejection is on disk and reported when its own request ends, not when the
        slowest request of its batch does.
        """
        await delivery
        await self._write_dead_letters()

    async def _write_dead_letters(self) -> None:
        """Write the records of operations waiting in ``_unwritten``, then settle them."""
        if not self._unwritten or self._dead_letters is None:
            return
        waiting, self._unwritten = self._unwritten, {}
        now = time.time()
        records = [record_for(entry.op, reason=reason or status.value, attempts=entry.attempts,
                              status=error.status if error else None,
                              error=str(error) if error else None, now=now)
                   for entry, (status, reason, error) in waiting.items()]
        written = False
        try:
            await self._dead_letters.append(records)
            written = True
        except OSError:
            log.exception("cio_queue.dead_letter_write_failed", count=len(records),
                          path=str(self._dead_letters.path))
        finally:
            for entry, (status, reason, error) in waiting.items():
                # A spill that did not reach the disk is a failure; the log says so.
                spilled_nowhere = status is OutcomeStatus.DEAD_LETTERED and not written
                self._finalize(entry, OutcomeStatus.FAILED if spilled_nowhere else status,
                               reason, error)

    # --- delivery ------------------------------------------------------------------------------

    async def _deliver_v1(self, entry: _Entry) -> None:
        """Deliver one operation as its own v1 request, with retries."""
        op = entry.op
        try:
            _, error, reason = await self._exchange(
                [entry], Request(op.method, _V1_PREFIX + op.path, op.body))
        except _AbandonedError:
            self._abandoned[entry] = None
            return
        if error is None:
            self._settle(entry, OutcomeStatus.DELIVERED)
        else:
            status = OutcomeStatus.REJECTED if reason == "rejected" else OutcomeStatus.FAILED
            self._settle(entry, status, reason, error)

    async def _deliver_v2(self, entries: list[_Entry]) -> None:
        """Deliver operations in one v2 batch request, with retries and per-item outcomes.

        A 207 rejects exactly the listed indexes and delivers the rest. A 400 or 413 on
        several operations splits them in two and sends each half, until the offending
        operations stand alone and end rejected, so every valid one is still delivered.
        """
        body = batch_body([e.op.v2 or b"" for e in entries])
        try:
            response, error, reason = await self._exchange(
                entries, Request("POST", _V2_BATCH_PATH, body))
        except _AbandonedError:
            self._abandoned.update(dict.fromkeys(entries))
            return
        if error is None:
            assert response is not None
            self._settle_accepted(entries, response)
        elif reason == "rejected" and error.status in (400, 413) and len(entries) > 1:
            log.info("cio_queue.batch_split", status=error.status, operations=len(entries))
            middle = len(entries) // 2
            await asyncio.gather(self._deliver_v2(entries[:middle]),
                                 self._deliver_v2(entries[middle:]))
        else:
            status = OutcomeStatus.REJECTED if reason == "rejected" else OutcomeStatus.FAILED
            for entry in entries:
                self._settle(entry, status, reason, error)

    def _settle_accepted(self, entries: list[_Entry], response: Response) -> None:
        if response.status != 207:
            for entry in entries:
                self._settle(entry, OutcomeStatus.DELIVERED)
            return
        errors = partial_errors(response.body, len(entries))
        if errors is None:
            # Which ones failed is unknown; keep them all (events dedupe by id on replay).
            error = DeliveryError("207 with an unreadable error list", status=207)
            log.error("cio_queue.unreadable_partial_response", operations=len(entries))
            for entry in entries:
                self._settle(entry, OutcomeStatus.FAILED, "unreadable_partial_response", error)
            return
        for index, entry in enumerate(entries):
            if index in errors:
                self._settle(entry, OutcomeStatus.REJECTED, "rejected",
                             RejectedError(errors[index], status=207))
            else:
                self._settle(entry, OutcomeStatus.DELIVERED)

    async def _exchange(self, entries: list[_Entry], request: Request,
                        ) -> tuple[Response | None, DeliveryError | None, str | None]:
        """Send a request until it gets a final answer, by the retry policy.

        Returns:
            ``(response, None, None)`` on a 2xx; ``(response, error, "rejected")`` on a
            non-retryable status; ``(response or None, error, reason)`` when retries are
            given up, with reason ``"retries_exhausted"`` or ``"retry_timeout"``.

        Raises:
            _AbandonedError: the shutdown deadline leaves no time for the next attempt.
        """
        policy = self._config.retry
        limiter = self._limiter
        assert limiter is not None
        c = self._counters
        first: float | None = None
        failures = 0
        while True:
            async with limiter:
                await self._pace()
                if first is None:
                    first = time.monotonic()
                else:
                    c.retries += 1
                for entry in entries:
                    entry.attempts += 1
                c.requests += 1
                response: Response | None = None
                error: DeliveryError | None
                try:
                    response = await self._sender.send(request)
                    error = classify(response)
                except TransportError as exc:
                    error = exc
            if error is None or not error.retryable:
                return response, error, None if error is None else "rejected"
            if isinstance(error, RateLimitedError):
                # A 429 pauses every sender through the gate and costs no attempt.
                c.rate_limited += 1
                delay = (self._config.rate_limited_pause if error.retry_after is None
                         else policy.clamp_retry_after(error.retry_after))
                self._pacer.close_gate(time.monotonic(), delay)
            else:
                failures += 1
                if failures >= policy.attempts:
                    return response, error, "retries_exhausted"
                delay = (policy.backoff(failures) if error.retry_after is None
                         else policy.clamp_retry_after(error.retry_after))
            if time.monotonic() + delay - first > policy.timeout:
                return response, error, "retry_timeout"
            await self._sleep(delay)

    async def _pace(self) -> None:
        """Wait for the 429 gate and a rate-limit slot."""
        pacer = self._pacer
        while True:
            delay = pacer.reserve(time.monotonic())
            if delay <= 0:
                return
            await self._sleep(delay)
            if pacer.gate_until <= time.monotonic():
                return

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early at shutdown; raise _AbandonedError if it would cross the deadline."""
        loop = self._loop
        assert loop is not None
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if self._deadline is not None and end > self._deadline:
                raise _AbandonedError
            waiter: asyncio.Future[None] = loop.create_future()
            handle = loop.call_later(remaining, _resolve, waiter)
            self._sleepers.add(waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._sleepers.discard(waiter)

    def _wake_sleepers(self) -> None:
        for waiter in self._sleepers:
            _resolve(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _await(awaitable: Any) -> Any:
    return await awaitable
