"""The fleet link: one queue's place in a fleet that shares a Redis Stream and a rate budget.

Stage: beside intake and the ledger, with ``redis_url``. Every operation this queue
accepts is handed to the stream by the :class:`~cio_queue._redis.Producer` (partitioned
by person, in group commits) and settles ``streamed`` once Redis has it. Unless
``consume=False``, the queue is also a member of the senders' consumer group: the taker
task fetches entries of the partitions this member holds, in stream order, and admits
them to the ledger (:meth:`Ledger.take`), so the dispatcher's per-person lines keep their
order; the courier asks the :class:`~cio_queue._redis.FleetPacer` before every request,
so the whole fleet stays within ``rate_limit`` and a 429 pauses every member. An entry is
acknowledged only once its operation settled: delivered, or rejected or failed with its
dead letter added to the dead-letter stream in the same MULTI. What is still in hand
when the queue stops is left unacknowledged (settled ``streamed``, reason
``returned``): the member that takes its partition over sends it again, with the same
event ids.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from typing import TYPE_CHECKING, Final

from ._config import QueueConfig
from ._deadrecord import dumps_record, entry_record
from ._exceptions import CioQueueError, ConfigError, DeliveryError
from ._ledger import Entry, HeldEntry, Ledger, Verdict
from ._log import log
from ._operations import Operation, person_identifiers
from ._ordering import order_keys
from ._outcome import OutcomeStatus
from ._redis import (
    Consumer,
    Delivery,
    FleetPacer,
    Producer,
    RedisUnavailableError,
    connect,
)
from ._redis._outage import Outage

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis

__all__ = ["HANDED_OFF", "Fleet", "budget_key", "dead_letter_key", "partition_key"]

HANDED_OFF: Final = Verdict(OutcomeStatus.STREAMED, "handed_off")
MIN_IN_HAND: Final = 1_000
"""Operations taken from the stream and not yet settled, at least: see ``Fleet.limit``."""
FETCH_WAIT: Final = 1.0
"""Seconds one fetch waits for new entries: how soon the taker notices a shutdown."""
_NO_BACKLOG_BYTES: Final = 1 << 62
"""The producer's byte limit: off, since the ledger's ``room`` bounds what it holds."""


def partition_key(op: Operation) -> str:
    """The person an operation is about, as ``"type:value"``: its partition's key.

    A state change uses its first order key (a merge: its primary), so one person's
    ordered operations share a partition; an event uses its person too; an anonymous one,
    which has no person, its event id (spread evenly).
    """
    keys = order_keys(op)
    if keys:
        kind, value = keys[0]
        return f"{kind}:{value}"
    if op.customer_id is not None:
        ((kind, value),) = person_identifiers(op.customer_id).items()
        return f"{kind}:{value}"
    return f"event:{op.event_id or ''}"


def dead_letter_key(stream: str) -> str:
    """The fleet's dead-letter stream for the stream ``stream``."""
    return f"{stream}:dead-letters"


def budget_key(site_id: str) -> str:
    """The FleetPacer's name: one rate budget and one 429 gate per workspace."""
    return f"cio-queue:{site_id}:budget"


def member_name() -> str:
    """A name for this member that no other process, here or elsewhere, has."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class TakenEntry(HeldEntry):
    """An operation taken from the fleet's stream: ``source`` is the stream entry."""

    __slots__ = ("source",)

    def __init__(self, op: Operation, loop: asyncio.AbstractEventLoop, kind: str,
                 source: Delivery) -> None:
        super().__init__(op, loop, kind)
        self.source = source


class Fleet:
    """Hand accepted operations to the stream; take a share of it to deliver."""

    def __init__(self, config: QueueConfig, loop: asyncio.AbstractEventLoop) -> None:
        assert config.redis_url is not None
        self._config = config
        self._loop = loop
        self._batch = config.transport == "batch"
        self.stream = config.stream_name
        self.redis: Redis = connect(config.redis_url)
        self.producer = Producer(self.redis, self.stream, partitions=config.redis_partitions,
                                 max_backlog=config.max_queue_size + 1,
                                 max_backlog_bytes=_NO_BACKLOG_BYTES)
        self.pacer = FleetPacer(self.redis, budget_key(config.site_id), config.rate_limit)
        self.consumer: Consumer | None = None
        self.name = config.redis_consumer or member_name()
        # Taken and not settled, at most: enough for every worker to have a full batch
        # in flight and the next one queued.
        self.limit = max(MIN_IN_HAND, 2 * config.batch_size * config.max_concurrency)
        self.in_hand = 0
        self._room = asyncio.Event()
        self._taking = config.consume
        self._recording: dict[Entry, None] = {}  # dead letters out with their acks
        self._ledger: Ledger | None = None
        self._submit: Callable[[Entry], None] | None = None
        self._opened = asyncio.Event()
        self._error: ConfigError | None = None

    def __repr__(self) -> str:
        return f"<Fleet {self.stream!r} member={self.name!r}>"

    def attach(self, ledger: Ledger, submit: Callable[[Entry], None]) -> None:
        """Wire the ledger, and where taken operations go (the dispatcher)."""
        self._ledger = ledger
        self._submit = submit

    # --- opening ---------------------------------------------------------------------

    async def open(self) -> None:
        """Start the producer (an unreachable Redis is no error: it catches up later).

        Raises:
            ConfigError: the stream has another partition count, or Redis is too old.
        """
        try:
            await self.producer.start()
        except ConfigError as exc:
            self._error = exc
            raise
        finally:
            self._opened.set()

    async def ready(self) -> None:
        """Wait until the producer started; raise the error that stopped it."""
        await self._opened.wait()
        if self._error is not None:
            raise self._error

    # --- handing off -----------------------------------------------------------------

    def hand_off(self, entry: Entry) -> None:
        """Hand an admitted operation to the stream; it settles once Redis has it."""
        ledger = self._ledger
        assert ledger is not None
        ledger.dispatch((entry,))
        try:
            written = self.producer.add_nowait(entry.op.pack(), partition_key(entry.op))
        except CioQueueError as exc:  # a misconfigured stream; nothing else can happen
            ledger.decide(entry, _unusable(exc))
            return
        written.add_done_callback(functools.partial(self._written, entry))

    def _written(self, entry: Entry, written: asyncio.Future[str]) -> None:
        if written.cancelled():
            return  # given back by the producer at shutdown: the ledger strands it
        assert self._ledger is not None
        exc = written.exception()
        self._ledger.decide(entry, HANDED_OFF if exc is None else _unusable(exc))

    # --- taking ----------------------------------------------------------------------

    async def run_taker(self) -> None:
        """Join the consumer group and admit entries while the queue runs.

        It joins only after ``open`` checked the stream: a stream with another layout is
        then refused once, by ``start()``, instead of by whichever check ran first.
        """
        await self._opened.wait()
        if self._error is not None:
            return
        consumer = await self._join()
        if consumer is None:
            return
        self._room.set()
        while self._taking:
            room = self.limit - self.in_hand
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            deliveries = await consumer.fetch(min(room, max(100, self._config.batch_size)),
                                              wait=FETCH_WAIT)
            for delivery in deliveries:
                self._take(delivery)

    async def _join(self) -> Consumer | None:
        """Join the group, retrying while Redis is unreachable; None if stopped first."""
        config, outage = self._config, Outage("consumer", stream=self.stream)
        while self._taking:
            try:
                self.consumer = await Consumer.join(
                    self.redis, self.stream, config.redis_group, self.name,
                    partitions=config.redis_partitions, lease=config.redis_lease,
                    dead_letters=dead_letter_key(self.stream))
            except RedisUnavailableError as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.recovered()
            return self.consumer
        return None

    def _take(self, delivery: Delivery) -> None:
        ledger, submit = self._ledger, self._submit
        assert ledger is not None
        assert submit is not None
        assert self.consumer is not None
        try:
            op, kind = Operation.unpack(delivery.record, batch=self._batch)
        except ValueError as exc:
            # Not an operation (another program writes to the stream?): keep it, as a
            # dead letter of its own that replay reports, and take it out of the stream.
            log.error("cio_queue.redis_entry_unreadable", stream=self.stream,
                      entry_id=delivery.entry_id, error=str(exc))
            self.consumer.ack_nowait(delivery.partition, delivery.entry_id,
                                     dead_letter=delivery.record)
            return
        entry = TakenEntry(op, self._loop, kind, delivery)
        self.in_hand += 1
        ledger.take(entry)
        submit(entry)

    # --- settling (the ledger's Source) ----------------------------------------------

    def put(self, entry: Entry) -> None:
        """Move a rejected or failed operation to the dead-letter stream with its ack."""
        delivery = entry.source
        assert isinstance(delivery, Delivery)
        assert self.consumer is not None
        line = dumps_record(entry_record(entry, time.time())).encode()
        acked = self.consumer.ack_nowait(delivery.partition, delivery.entry_id,
                                         dead_letter=line)
        self._recording[entry] = None
        acked.add_done_callback(functools.partial(self._recorded, entry))

    def _recorded(self, entry: Entry, acked: asyncio.Future[None]) -> None:
        self._recording.pop(entry, None)
        assert self._ledger is not None
        self._ledger.recorded((entry,), written=not acked.cancelled())

    def settled(self, entry: Entry, verdict: Verdict) -> None:
        """A taken operation settled: acknowledge a delivered one, free its place."""
        self.in_hand -= 1
        self._room.set()
        delivery = entry.source
        assert isinstance(delivery, Delivery)
        if verdict.status is OutcomeStatus.DELIVERED:
            assert self.consumer is not None
            self.consumer.ack_nowait(delivery.partition, delivery.entry_id)

    # --- closing ---------------------------------------------------------------------

    def stop_taking(self) -> None:
        """Take nothing more from the stream (the shutdown's first step)."""
        self._taking = False
        self._room.set()

    async def stop_producing(self) -> int:
        """Stop the producer now; what it had not written stays with the ledger (stranded).

        Returns how many operations it gave back.
        """
        unwritten = await self.producer.aclose(deadline=time.monotonic())
        return len(unwritten)

    async def finish(self, deadline: float) -> None:
        """Send the last acknowledgements and dead letters until ``deadline``; leave the group.

        A dead letter not written by then settles ``streamed``: its entry stays pending,
        and the partition's next holder sends it again.
        """
        if self.consumer is not None:
            await self.consumer.aclose(deadline)
        self._return_recording()

    def abandon(self) -> None:
        """The loop is going away: settle what waits for Redis, without awaiting."""
        self._taking = False
        self._return_recording()

    def _return_recording(self) -> None:
        if self._recording and self._ledger is not None:
            late, self._recording = list(self._recording), {}
            self._ledger.recorded(late, written=False)

    async def aclose(self) -> None:
        """Close the connections."""
        await self.redis.aclose()

    async def stop_now(self) -> None:
        """After ``abandon``: stop the producer and the consumer at once, and disconnect.

        Left running, the producer would write what was already stranded, and the
        consumer would hold its partitions with nobody taking from them.
        """
        await self.producer.aclose(deadline=time.monotonic())
        if self.consumer is not None:
            await self.consumer.aclose(deadline=time.monotonic())
        await self.redis.aclose()


def _unusable(exc: BaseException) -> Verdict:
    """The verdict on an operation the producer could not take (a misconfigured stream)."""
    return Verdict(OutcomeStatus.FAILED, "redis_unusable", DeliveryError(str(exc)))
