"""The running queue: everything that exists only between ``start()`` and the end of ``aclose()``.

Stage: the whole pipeline, wired together and supervised::

    intake -> ledger.admit -> dispatcher (accumulator, flusher, workers) -> courier
           -> ledger.decide -> dead-letter writer -> ledger.settle -> receipt, on_outcome, room

A :class:`Pipeline` owns the loop-bound objects and the tasks that drive them: one flusher,
``max_concurrency`` workers and, with a dead-letter file, one writer. Shutdown is one
coroutine, :meth:`Pipeline.close`, with named phases under one deadline: *drain* (send
what is queued, let retries run, until nothing is undecided or ``shutdown_timeout`` has
passed), *strand* (stop the workers; whatever is still undelivered is stranded), *record*
(the writer puts the stranded and the rejected on disk, within a margin past the deadline)
and *release* (last callbacks, the sender's connections, the closing log line).

With ``redis_url`` the fleet link (``_fleet``) stands between intake and the stream:
admitted operations go to the Redis stream instead of the dispatcher, and the taker task
feeds the dispatcher from the stream. The drain then also stops taking and waits for the
hand-offs; the strand phase stops the producer first, and the record phase sends the last
acknowledgements and dead letters.

Supervision follows aiokafka's sender: if one of the pipeline's tasks crashes, or is
cancelled by anyone but the pipeline itself (``asyncio.run()`` tearing the loop down
under a queue that was never closed), nothing is restarted: :meth:`Pipeline.abandon`
strands every pending operation at once, writes the dead letters synchronously, and logs
one error with the count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._config import OnOutcome, QueueConfig
from ._courier import Closing, Courier
from ._deadletter import DeadLetterWriter
from ._dispatch import SHUTDOWN_REASON, Dispatcher
from ._exceptions import CLOSED_WHILE_WAITING, ConfigError, QueueClosedError, SpoolError
from ._ledger import Entry, Ledger, Verdict
from ._log import log
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics, run_on_outcome
from ._sender import Sender
from ._spooled import Spooler
from ._telemetry import Telemetry

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["CLOSE_MARGIN", "Pipeline", "wait_regardless"]

CLOSE_MARGIN: Final = 2.0
"""Seconds past ``shutdown_timeout`` that ``aclose()`` allows for writing the dead letters,
running the last callbacks and closing connections."""
_MIN_CLOSE_STEP: Final = 0.1
"""Seconds a terminal step (closing the connections) gets even when the margin is spent."""
_RECANCEL: Final = 0.05
"""Seconds between two cancellations of a task that did not stop (a swallowed cancel)."""
_ABANDONED_HINT: Final = ("the event loop stopped the queue's tasks before aclose() was "
                          "called: close the queue in the app's lifespan or `async with`")

# Tasks that close senders of abandoned pipelines: the loop only keeps weak references.
_closing_senders: set[asyncio.Task[None]] = set()


class Pipeline:
    """The running pipeline of one EventQueue."""

    def __init__(self, config: QueueConfig, sender: Sender, on_outcome: OnOutcome | None,
                 on_stopped: Callable[[Statistics], None],
                 telemetry: Telemetry | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._config = config
        self._sender = sender
        self._on_outcome = on_outcome
        self._on_stopped = on_stopped
        path = config.dead_letter_file
        self.writer = DeadLetterWriter(path, self._written) if path is not None else None
        spooled = config.spool_path is not None
        self.fleet: Fleet | None = None
        if config.redis_url is not None:
            from ._fleet import Fleet  # noqa: PLC0415 - redis-py is an optional extra

            self.fleet = Fleet(config, self.loop)
        self.ledger = Ledger(config.max_queue_size, recorder=self.writer,
                             on_settled=self._settled,
                             unspool=self._unspool if spooled else None, source=self.fleet)
        closing = Closing()
        self._telemetry = telemetry
        courier = Courier(config, sender, closing,
                          budget=self.fleet.pacer if self.fleet is not None else None)
        self.dispatcher = Dispatcher(config, self.ledger, courier, closing, telemetry=telemetry)
        # Where an admitted operation goes: to the fleet's stream, or to be sent from here.
        self.route: Callable[[Entry], None] = self.dispatcher.submit
        if self.fleet is not None:
            self.fleet.attach(self.ledger, self.dispatcher.submit)
            self.route = self.fleet.hand_off
        self.spooler = (Spooler(config, self.ledger, self.route, self.loop,
                                lambda: self.accepting)
                        if spooled else None)
        self.blocked: set[asyncio.Future[None]] = set()  # callers waiting for room
        self._tasks: list[asyncio.Task[None]] = []
        self._callbacks: set[asyncio.Task[Any]] = set()
        self._closer: asyncio.Task[None] | None = None
        self._drain_scope: anyio.CancelScope | None = None
        self._cut = False
        self._stopping = False  # the pipeline is stopping its own tasks
        self.closed = False

    def start(self) -> None:
        """Start the flusher, the workers and the dead-letter writer."""
        dispatcher = self.dispatcher
        self._spawn(dispatcher.run_flusher(), "cio_queue.flusher")
        for number in range(dispatcher.workers):
            self._spawn(dispatcher.run_worker(), f"cio_queue.worker-{number}")
        if self.writer is not None:
            self._spawn(self.writer.run(), "cio_queue.dead_letters")
        if self.spooler is not None:
            self._spawn(self._open_spool(), "cio_queue.spool_open", forever=False)
            self._spawn(self.spooler.run_loader(), "cio_queue.spool_loader")
        if self.fleet is not None:
            self._spawn(self._open_fleet(), "cio_queue.fleet_open", forever=False)
            if self._config.consume:
                # It ends by itself once the shutdown stops taking.
                self._spawn(self.fleet.run_taker(), "cio_queue.fleet_taker", forever=False)
        if self._telemetry is not None:
            self._telemetry.attach(self)
        log.info("cio_queue.started", transport=self._config.transport,
                 max_concurrency=dispatcher.workers,
                 dead_letter_path=str(self.writer.path) if self.writer else None)

    @property
    def accepting(self) -> bool:
        """Whether intake is open: no shutdown has begun."""
        return self._closer is None and not self.closed

    async def _open_fleet(self) -> None:
        """Start the fleet's producer; a misconfigured stream stops the queue."""
        assert self.fleet is not None
        try:
            await self.fleet.open()
        except ConfigError as exc:
            log.error("cio_queue.fleet_unusable", error=str(exc))
            self.abandon("fleet_unusable", announce=False)

    async def _open_spool(self) -> None:
        """Open the spool; an unusable one stops the queue (intake then raises SpoolError)."""
        assert self.spooler is not None
        try:
            await self.spooler.open()
        except SpoolError as exc:
            log.error("cio_queue.spool_unusable", error=str(exc))
            self.abandon("spool_unusable", announce=False)

    def _unspool(self, key: int) -> None:
        assert self.spooler is not None
        self.spooler.store_remove(key)

    def requests_in_flight(self) -> int:
        """HTTP requests being sent now."""
        return self.dispatcher.in_flight

    def statistics(self) -> Statistics:
        """A snapshot of the counters."""
        ledger, dispatcher = self.ledger, self.dispatcher
        settled = ledger.settled
        disk_only = self.spooler.disk_only if self.spooler is not None else 0
        return Statistics(
            enqueued=ledger.enqueued, delivered=settled[OutcomeStatus.DELIVERED],
            rejected=settled[OutcomeStatus.REJECTED], failed=settled[OutcomeStatus.FAILED],
            dropped=settled[OutcomeStatus.DROPPED], filtered=settled[OutcomeStatus.FILTERED],
            dead_lettered=settled[OutcomeStatus.DEAD_LETTERED],
            spooled=settled[OutcomeStatus.SPOOLED] + disk_only,
            streamed=settled[OutcomeStatus.STREAMED], taken=ledger.taken, pending=ledger.pending,
            queued=ledger.queued, batches=dispatcher.batches, requests=dispatcher.requests,
            retries=dispatcher.retries, rate_limited=dispatcher.rate_limited,
            unauthorized=dispatcher.unauthorized)

    # --- shutdown ----------------------------------------------------------------------

    def close(self) -> asyncio.Task[None]:
        """Begin the shutdown (once) and return the task that carries it out."""
        if self._closer is None:
            self._closer = self.loop.create_task(self._close(), name="cio_queue.close")
        return self._closer

    def cut_short(self) -> None:
        """End the drain phase now: the caller of ``aclose()`` was cancelled."""
        self._cut = True
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    async def _close(self) -> None:
        deadline = time.monotonic() + self._config.shutdown_timeout
        hard_deadline = deadline + CLOSE_MARGIN
        try:
            await self._drain(deadline)
            await self._strand(hard_deadline)
            await self._record(hard_deadline)
            await self._release(hard_deadline)
        except asyncio.CancelledError:
            self.abandon("abandoned")  # the loop is being torn down under the shutdown
            raise
        except Exception as exc:  # noqa: BLE001 - a bug; still, nothing may stay pending
            self.abandon("internal_error", exc)
            return
        self._finish("cio_queue.closed")

    async def _drain(self, deadline: float) -> None:
        """Phase 1: send what is queued and let retries run until the deadline."""
        self.dispatcher.begin_close(deadline)
        if self.fleet is not None:
            self.fleet.stop_taking()
        self._fail_blocked()
        if self._cut:
            return
        with anyio.CancelScope() as self._drain_scope, \
                anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await self.ledger.wait_decided()
        self._drain_scope = None

    async def _strand(self, hard_deadline: float) -> None:
        """Phase 2: stop the flusher and the workers; strand whatever is undelivered."""
        self._stopping = True
        runners = [task for task in self._tasks if task.get_name() != "cio_queue.dead_letters"]
        await _stop(runners, max(time.monotonic() + _MIN_CLOSE_STEP, hard_deadline))
        if self.fleet is not None:
            await self.fleet.stop_producing()  # what it did not write is stranded below
        stranded = self.ledger.strand_all(SHUTDOWN_REASON)
        if self.spooler is not None:
            stranded += self.spooler.strand_disk_only(SHUTDOWN_REASON)
        if stranded:
            where = self.writer.path if self.writer and not self.spooler else None
            log.warning("cio_queue.unsent_at_shutdown", count=stranded,
                        dead_letter_path=str(where) if where else None,
                        kept_in_spool=self.spooler is not None)

    async def _record(self, hard_deadline: float) -> None:
        """Phase 3: wait for the dead-letter writer and the fleet's acks, within the margin."""
        if self.fleet is not None:
            # Leaving the group takes up to a second more: keep it inside the margin.
            await self.fleet.finish(max(time.monotonic(), hard_deadline - 1.0))
        writer = self.writer
        if writer is None:
            return
        if not await writer.drain(hard_deadline):
            late = writer.give_up()
            self.ledger.recorded(late, written=False, reason="dead_letter_timeout")
            log.error("cio_queue.dead_letter_timeout", count=len(late), path=str(writer.path),
                      hint="the disk did not finish the write within the close margin; the "
                           "records may still appear in the file")
        for task in self._tasks:
            task.cancel()
        writer.close()

    async def _release(self, hard_deadline: float) -> None:
        """Phase 4: let async on_outcome callbacks finish; close the connections."""
        if self._callbacks:
            await asyncio.wait(self._callbacks,
                               timeout=max(_MIN_CLOSE_STEP, hard_deadline - time.monotonic()))
        try:
            with anyio.move_on_after(max(_MIN_CLOSE_STEP, hard_deadline - time.monotonic())):
                await self._sender.aclose()
        except Exception:  # noqa: BLE001 - closing must finish whatever the sender does
            log.exception("cio_queue.sender_close_failed")
        if self.spooler is not None:
            await self.spooler.close()
        if self.fleet is not None:
            try:
                with anyio.move_on_after(max(_MIN_CLOSE_STEP, hard_deadline - time.monotonic())):
                    await self.fleet.aclose()
            except Exception:  # noqa: BLE001 - closing must finish whatever Redis does
                log.exception("cio_queue.redis_close_failed")

    def abandon(self, reason: str, error: BaseException | None = None, *,
                announce: bool = True) -> None:
        """Stop at once, synchronously: strand and record everything pending, log once.

        Used when a task of the pipeline crashed or was cancelled from outside: no
        await is possible or safe any more, so the dead letters are written by blocking.
        """
        if self.closed:
            return
        self._stop_everything()
        unsent = self._spill_blocking(reason)
        if announce or error is not None or unsent:
            _announce_abandoned(unsent, error)
        closers = [self.loop.create_task(self._sender.aclose(), name="cio_queue.close_sender")]
        if self.fleet is not None:
            closers.append(self.loop.create_task(self.fleet.stop_now(),
                                                 name="cio_queue.fleet_stop"))
        for closing in closers:
            _closing_senders.add(closing)
            closing.add_done_callback(_closing_senders.discard)
        self._finish(None)

    def _fail_blocked(self) -> None:
        """Wake every caller waiting for room with QueueClosedError (they hold no place)."""
        for waiter in self.blocked:
            if not waiter.done():
                waiter.set_exception(QueueClosedError(CLOSED_WHILE_WAITING))

    def _stop_everything(self) -> None:
        """Cancel every task of the pipeline but the current one, and release the blocked."""
        self._stopping = True
        current = asyncio.current_task()
        for task in [*self._tasks, self._closer]:
            if task is not None and task is not current:
                task.cancel()
        self._fail_blocked()

    def _spill_blocking(self, reason: str) -> int:
        """Strand everything pending, keep or record it by blocking; return how many."""
        unsent = self.ledger.strand_all(reason)
        if self.fleet is not None:
            self.fleet.abandon()
        if self.spooler is not None:
            unsent += self.spooler.strand_disk_only(reason)
            self.spooler.close_blocking(CLOSE_MARGIN)
        if self.writer is not None:
            late = self.writer.finish_blocking(CLOSE_MARGIN)
            self.ledger.recorded(late, written=False, reason="dead_letter_timeout")
            self.writer.close()
        return unsent

    def _finish(self, event: str | None) -> None:
        self.closed = True
        stats = self.statistics()
        if self._telemetry is not None:
            self._telemetry.detach()
        if event is not None:
            log.info(event, delivered=stats.delivered, rejected=stats.rejected,
                     failed=stats.failed, dropped=stats.dropped,
                     dead_lettered=stats.dead_lettered, spooled=stats.spooled,
                     pending=stats.pending)
        self._on_stopped(stats)

    # --- supervision and callbacks ---------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, *,
               forever: bool = True) -> None:
        """Start a supervised task; ``forever`` ones must not end while the queue runs."""
        task = self.loop.create_task(coro, name=name)
        task.add_done_callback(self._task_ended if forever else self._step_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or self.closed:
            return
        if task.cancelled():
            self.abandon("abandoned")
        else:
            self.abandon("internal_error", task.exception()
                         or RuntimeError(f"{task.get_name()} stopped"))

    def _step_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._task_ended(task)

    def _written(self, entries: list[Entry], written: bool) -> None:
        self.ledger.recorded(entries, written=written)

    def count(self, outcome: Outcome) -> None:
        """Count in the metrics an operation settled outside the ledger (on this loop)."""
        if self._telemetry is not None:
            self._telemetry.settled(outcome.status, outcome.reason)

    def _settled(self, receipt: Receipt, verdict: Verdict) -> None:
        """The ledger settled an operation; its Outcome is made only if something reads it."""
        if self._telemetry is not None:
            self._telemetry.settled(verdict.status, verdict.reason)
        if self._on_outcome is not None:
            outcome = receipt.outcome
            assert outcome is not None
            run_on_outcome(self._on_outcome, outcome, self.loop, self._callbacks)


async def _stop(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    """Cancel ``tasks`` and wait until they end or ``deadline`` passes.

    A task that goes on after its cancellation (redis-py's client can swallow one that
    arrives mid-command) is cancelled again every ``_RECANCEL`` seconds.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        _, pending = await asyncio.wait(pending, timeout=min(_RECANCEL, left))


def _announce_abandoned(unsent: int, error: BaseException | None) -> None:
    """The one log line of an abandoned pipeline."""
    if error is not None:
        log.error("cio_queue.crashed", unsent=unsent, error=repr(error), exc_info=error)
    elif unsent:
        log.error("cio_queue.abandoned", count=unsent, hint=_ABANDONED_HINT)
    else:
        log.warning("cio_queue.abandoned", count=0, hint=_ABANDONED_HINT)


async def wait_regardless(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` to end, however often the caller is cancelled meanwhile.

    The shielded scope keeps anyio from re-delivering a cancel scope's cancellation at
    every step (which would spin); a native ``Task.cancel()`` arrives once per call and is
    absorbed here. The caller re-raises its own cancellation afterwards.
    """
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                continue
