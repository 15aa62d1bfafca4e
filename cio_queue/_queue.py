"""EventQueue: the public facade: lifecycle, intake and overflow, statistics.

Stage: intake. Each public method validates and serialises its operation in the caller's
stack (``_operations``), takes a place in the queue (or applies the overflow policy),
and hands the operation to the running :class:`~cio_queue._pipeline.Pipeline`, which
exists only while the queue runs. Nothing here sends, retries or settles.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from threading import get_ident
from typing import Any

from . import _operations as ops
from ._config import OnOutcome, QueueConfig
from ._exceptions import InvalidEventError, QueueClosedError, QueueUsageError
from ._intake import Intake
from ._otel import metrics_for
from ._outcome import Outcome, Receipt, Statistics
from ._pipeline import Pipeline, wait_regardless
from ._region import AccountRegion, check_account
from ._sender import HttpSender, Sender

__all__ = ["EventQueue"]

# Forks of this process so far (in this process's line): a queue made before a fork
# must not be used by the child, which shares its parent's connections.
_forks = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


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
        self._intake = Intake(config, config.before_send)
        # Accept ``op`` at once if nothing can make the call wait; None: ``await
        # _submit(op)``. Every public method ends ``return self._accept(op) or await
        # self._submit(op)`` (a Receipt is always true), so the usual call costs no
        # coroutine beyond its own; bound here, it costs no frame of the facade's either.
        self._accept: Callable[[ops.Operation], Receipt | None] = self._intake.accept
        # Events are built sealed for the batch transport at once, skipping the v1 form,
        # unless a before_send hook is to see them first (it reads the v1 payload).
        self._sealed = config.transport == "batch" and config.before_send is None
        self._state = "new"  # new -> running -> closing -> closed
        self._run: Pipeline | None = None
        self._final = Statistics()
        self._born = _forks[0]

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<EventQueue {self._state} site_id={self._config.site_id!r} pending={s.pending}>"

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> EventQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the background tasks in the running event loop (idempotent).

        Raises:
            QueueClosedError: the queue was closed.
            QueueUsageError: another event loop or a forked child.
            SpoolError: the spool directory or file cannot be used.
            ConfigError: the fleet's stream has another partition count, or Redis is
                older than 6.2 (an unreachable Redis is no error: the queue catches up).
        """
        self._start()
        run = self._run
        if run is not None and run.spooler is not None:
            await run.spooler.ready()  # an unusable spool raises here
        if run is not None and run.fleet is not None:
            await run.fleet.ready()  # a misconfigured stream raises here

    def _start(self) -> None:
        self._check_context()
        if self._state == "running":
            return
        if self._state != "new":
            raise QueueClosedError("this EventQueue is closed; create a new one")
        run = Pipeline(self._config, self._sender, self._on_outcome, self._stopped,
                       telemetry=metrics_for(self._config))
        self._run, self._state = run, "running"
        self._intake.run = run
        run.start()

    def _stopped(self, final: Statistics) -> None:
        """The pipeline has ended (closed, or abandoned): keep its last statistics."""
        self._final, self._run, self._state = final, None, "closed"
        self._intake.run = None

    def _check_context(self) -> None:
        if self._born != _forks[0]:
            raise QueueUsageError(
                "this EventQueue was created before os.fork(); a forked child cannot use its "
                "parent's queue or connections: create a new EventQueue in the child "
                "(for example in the worker's lifespan)")
        if self._run is not None and asyncio.get_running_loop() is not self._run.loop:
            raise QueueUsageError(
                "this EventQueue belongs to another event loop; create one per event loop")

    async def flush(self) -> Statistics:
        """Send everything queued now and wait until it, and all in flight, has settled.

        Each operation is bounded by the retry policy's ``timeout``; for a tighter bound
        wrap the call in ``anyio.fail_after`` (delivery then goes on in the background).

        Returns:
            The statistics after the wait.
        """
        run = self._run
        if run is None:
            return self.statistics()
        self._check_context()
        waiting = run.ledger.unsettled()
        run.dispatcher.expedite()
        for entry in waiting:
            if not entry.done():
                await entry.wait()
        return self.statistics()

    async def aclose(self) -> Statistics:
        """Stop intake, drain within ``shutdown_timeout``, and return the final statistics.

        Later enqueue calls raise QueueClosedError. Whatever is unsent at the deadline,
        queued, in flight or waiting to retry, is written to the dead-letter file (or,
        with no file configured, ends ``failed``), so nothing accepted is left pending.
        Returns within ``shutdown_timeout`` plus about two seconds even when the API is
        down or hanging. Cancelling the caller cuts the drain short, never the spill.
        Safe to call more than once.
        """
        run = self._run
        if run is None:
            if self._state == "new":
                self._state = "closed"
                await self._sender.aclose()
            return self.statistics()
        self._check_context()
        self._state = "closing"
        closing = run.close()
        try:
            await asyncio.wait({closing})
        except asyncio.CancelledError:
            run.cut_short()
            await wait_regardless(closing)
            raise
        return self.statistics()

    async def check(self) -> AccountRegion:
        """Ask the Track API where these credentials belong, and check the config against it.

        Sends ``GET /api/v1/accounts/region`` (no operation; the queue need not be started).

        Raises:
            ConfigError: refused credentials (401/403), or the workspace is in another
                region than ``region`` says (the message names the right one).
            DeliveryError: no usable answer: the API is unreachable or failing.
        """
        return await check_account(self._sender, self._config)

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters; see :class:`Statistics` for the invariant."""
        return self._run.statistics() if self._run is not None else self._final

    # --- the public operations, shaped like customerio.CustomerIO ------------------------

    async def identify(self, /, id: str | int | None = None, **attributes: Any) -> Receipt:
        """Create or update a person (v1 ``PUT /customers/{id}``, v2 ``identify``).

        ``identifier=`` (async-customerio's name) is taken as the id when ``id`` is not given.

        Raises:
            InvalidEventError: a blank or wrong-typed id, or a bad attribute.
            QueueClosedError, QueueFullError, QueueUsageError: see the class docs.
        """
        self._ready()
        if id is None and "identifier" in attributes:
            id = attributes.pop("identifier")
        op = ops.identify(id, attributes)
        return self._accept(op) or await self._submit(op)

    async def track(self, customer_id: str | int, name: str, data: dict[str, Any] | None = None,
                    id: str | None = None, timestamp: ops.Timestamp | None = None,
                    **properties: Any) -> Receipt:
        """Track an event for a person (v1 ``POST /customers/{id}/events``, v2 ``event``).

        Args:
            customer_id: the person's id, email or ``cio_``-prefixed cio_id.
            name: the event name (at most 100 bytes).
            data: event data (at most 100,000 bytes of JSON).
            id: a dedupe id; a ULID is assigned when None and reused on every retry.
            timestamp: unix seconds or a datetime (naive means UTC).
            **properties: more event data, as async-customerio takes it (``data``,
                ``id`` and ``timestamp`` keep the meanings above).
        """
        self._ready()
        joined = ops.with_properties(data, properties) if properties else data
        op = ops.track(customer_id, name, joined, id, timestamp, batch=self._sealed)
        return self._accept(op) or await self._submit(op)

    async def track_anonymous(self, anonymous_id: str | int | None, name: str,
                              data: dict[str, Any] | None = None, id: str | None = None,
                              timestamp: ops.Timestamp | None = None, **properties: Any) -> Receipt:
        """Track an event for an anonymous visitor (``POST /api/v1/events`` on both transports).

        A blank ``anonymous_id`` makes an invite event, which needs ``data["recipient"]``;
        ``**properties`` join ``data`` as in :meth:`track`.
        """
        self._ready()
        joined = ops.with_properties(data, properties)
        op = ops.track_anonymous(anonymous_id, name, joined, id, timestamp)
        return self._accept(op) or await self._submit(op)

    async def pageview(self, /, customer_id: str | int, page: str, **data: Any) -> Receipt:
        """Track a page view (an event of type ``page`` named after the page)."""
        self._ready()
        op = ops.pageview(customer_id, page, data, batch=self._sealed)
        return self._accept(op) or await self._submit(op)

    async def backfill(self, /, customer_id: str | int, name: str, timestamp: ops.Timestamp,
                       **data: Any) -> Receipt:
        """Track a past event with its required timestamp."""
        self._ready()
        op = ops.backfill(customer_id, name, timestamp, data, batch=self._sealed)
        return self._accept(op) or await self._submit(op)

    async def delete(self, customer_id: str | int) -> Receipt:
        """Delete a person."""
        self._ready()
        op = ops.delete(customer_id)
        return self._accept(op) or await self._submit(op)

    async def add_device(self, /, customer_id: str | int, device_id: str, platform: str,
                         **data: Any) -> Receipt:
        """Add or update a device; extra keyword arguments go into the device object."""
        self._ready()
        op = ops.add_device(customer_id, device_id, platform, data)
        return self._accept(op) or await self._submit(op)

    async def delete_device(self, customer_id: str | int, device_id: str) -> Receipt:
        """Delete a person's device."""
        self._ready()
        op = ops.delete_device(customer_id, device_id)
        return self._accept(op) or await self._submit(op)

    async def suppress(self, customer_id: str | int) -> Receipt:
        """Suppress a person: delete the profile and block the id from coming back."""
        self._ready()
        op = ops.suppress(customer_id)
        return self._accept(op) or await self._submit(op)

    async def unsuppress(self, customer_id: str | int) -> Receipt:
        """Lift a person's suppression."""
        self._ready()
        op = ops.unsuppress(customer_id)
        return self._accept(op) or await self._submit(op)

    async def merge_customers(self, primary_id_type: str, primary_id: str | int,
                              secondary_id_type: str, secondary_id: str | int) -> Receipt:
        """Merge the secondary person into the primary; id types are id, email, cio_id."""
        self._ready()
        op = ops.merge_customers(primary_id_type, primary_id, secondary_id_type, secondary_id)
        return self._accept(op) or await self._submit(op)

    async def batch(self, operations: list[dict[str, Any]]) -> list[Receipt]:
        """Enqueue operations given in their v2 form, like the official SDK's ``batch()``.

        Each is a ``/api/v2/batch`` element, sent by that endpoint whatever the transport;
        all are checked before any is queued, as the Track API documents them (type,
        action, identifiers and each action's fields; the 32 KB limit).

        Raises:
            InvalidEventError: not a list of dicts, or one the API would refuse, naming it
                and its field (``operations[1].timestamp``); nothing is queued.
            QueueClosedError: the queue is closed, or began to close while one of them
                waited (for room, the spool or Redis); those before it were accepted and
                end as any accepted operation does (``on_outcome`` and the statistics
                count them).
        """
        self._ready()
        if not isinstance(operations, list | tuple):
            raise InvalidEventError("operations", "must be a list of v2 operation dicts")
        built = [ops.raw_v2(op, f"operations[{i}]") for i, op in enumerate(operations)]
        receipts = []
        for op in built:
            # An earlier one may have waited (for room, the spool, Redis) while the queue
            # began to close: the rest get QueueClosedError, as a call of their own would.
            self._ready()
            receipts.append(self._accept(op) or await self._submit(op))
        return receipts

    # --- intake ----------------------------------------------------------------------------

    def _ready(self) -> None:
        """Refuse intake early, before validation, when the queue cannot take it."""
        run = self._run
        if run is None or self._state != "running":
            if self._state == "new":
                self._start()
                return
            raise QueueClosedError("this EventQueue is closed; no new operations are accepted")
        # In the thread the queue's loop runs in now, by the loop's own record (asyncio's
        # loops keep it), or else as _check_context finds out. That is all _accept()
        # needs, which never waits; _submit(), which may, checks the running loop itself.
        # (They differ only for a loop run inside a callback of the queue's, which
        # nest_asyncio allows.) asyncio.get_running_loop() would say it directly, but
        # CPython makes a getpid() system call in it on every call, to notice a fork;
        # forks are counted above. Here that call is 0.25 to 0.5 µs, a tenth of an
        # enqueue. (uvloop keeps no such record: it takes _check_context.)
        if self._born != _forks[0] or getattr(run.loop, "_thread_id", None) != get_ident():
            self._check_context()

    def _submit(self, op: ops.Operation) -> Coroutine[Any, Any, Receipt]:
        """Hand ``op`` to intake; the caller awaits intake's own coroutine (one frame less).

        This path may wait on the queue's loop (for room, the spool, Redis), so it checks
        the running loop exactly: _ready() only made sure of the thread (see there).
        """
        self._check_context()
        run = self._run
        assert run is not None
        return self._intake.submit(run, op)

    def _count(self, outcome: Outcome) -> None:
        """Count in the metrics an outcome settled outside this queue, on its loop.

        A SyncEventQueue settles what its before_send drops in the caller's thread; its
        queue thread reports those here, so the metrics count them as EventQueue's do.
        """
        if self._run is not None:
            self._run.count(outcome)
