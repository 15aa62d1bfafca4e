"""The consumer: one member of a consumer group, holding leases on partitions.

Stage: the source of the queue's operations in a fleet. Three tasks of the consumer's
own keep it a member: the lease keeper (every third of the lease: heartbeat, renew,
take or give back partitions, look for strays; ``_leases``), the acker (XACK and XDEL in
group commits, with the dead letters; ``_acks``), and the caller's own ``fetch`` calls.
This module owns the reading (new entries with XREADGROUP, a takeover's with
XAUTOCLAIM) and the record of what was handed out and not yet acknowledged, which both
of the others consult.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
from redis.exceptions import RedisError, ResponseError

from .._exceptions import ConfigError, QueueClosedError, QueueUsageError
from .._log import log
from ._acks import AckWriter
from ._errors import RedisUnavailableError
from ._leases import Lease, Leases, LeaseState
from ._outage import Outage, stop_tasks
from ._streams import FIELD, StreamLayout, check_client, check_layout, text

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis

__all__ = ["DEFAULT_FETCH", "DEFAULT_LEASE", "Consumer", "ConsumerStatistics", "Delivery",
           "LeaseState"]

DEFAULT_LEASE: Final = 10.0
"""Seconds a partition stays leased to a member that stopped renewing: how long a crashed
member's partitions wait before another member takes them over."""
DEFAULT_FETCH: Final = 100
"""Entries one ``fetch`` returns at most."""
DEFAULT_CLOSE: Final = 5.0
"""Seconds ``aclose()`` spends on queued acknowledgements when given no deadline."""
LEAVE_TIMEOUT: Final = 1.0
"""Seconds ``aclose()`` spends giving the leases back, after the acknowledgements."""
MAX_BLOCK: Final = 2.0
"""Seconds one blocking read waits at most: well inside the client's socket timeout."""

@dataclass(frozen=True, slots=True)
class Delivery:
    """An entry handed to the queue: acknowledge it with ``ack(partition, entry_id)``."""

    entry_id: str
    partition: int
    record: bytes


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """A snapshot of a consumer's state and counters.

    Attributes:
        held: the partitions it holds, ascending.
        releasing: those of them it is giving back.
        share: how many partitions it should hold, by the last heartbeat.
        live: live members of the group, by the last heartbeat.
        delivered: entries handed out, first deliveries and takeovers alike.
        claimed: of those, entries taken over from an earlier holder (or redelivered).
        acked: entries acknowledged (XACK and XDEL done).
        outstanding: entries handed out and not yet acknowledged.
        connected: whether the last call to Redis succeeded.
    """

    held: tuple[int, ...]
    releasing: tuple[int, ...]
    share: int
    live: int
    delivered: int
    claimed: int
    acked: int
    outstanding: int
    connected: bool


class Consumer:
    """Hand out the entries of the partitions this member holds, and acknowledge them.

    Guarantees:

    - **Exclusive**: a partition is held by at most one member at a time, by Redis'
      clock. A member stops handing out a partition's entries when its own lease clock
      runs out, which is never later than Redis' (the clock starts before the renewal
      is sent).
    - **At least once**: an entry is acknowledged (XACK, then XDEL, in one MULTI) only
      by ``ack``, which the queue calls once it settled the operation. A member taking a
      partition over first claims every pending entry of it (XAUTOCLAIM from the start;
      the lease is the ownership, so no idle time is needed) and hands those out again;
      entries a member read but did not hand out (its lease ran out meanwhile) are found
      by the next holder's heartbeat and claimed the same way.
    - **Order within a partition**: entries are handed out in stream order, a takeover's
      claimed entries before any new one. The consumer does not hold back an entry until
      the one before it for the same person is settled: the queue's per-person lines do
      that inside one process, as they do for local intake, provided it admits deliveries
      in the order ``fetch`` returns them. Between members, a partition changes hands in
      order when it is given back (only once everything handed out of it was
      acknowledged and no read of it is in flight); after a crash, the new holder
      resends the unacknowledged entries first. A member cut off from Redis for longer
      than the lease may still be sending what it handed out before, beside the new
      holder's resend of it.

    Create one with :meth:`join`; end it with :meth:`aclose` (or ``async with``).
    """

    def __init__(self, redis: Redis, layout: StreamLayout, group: str, name: str,
                 lease: float, *, dead_letters: str | None = None) -> None:
        check_client(redis)
        if not group or not name:
            raise ConfigError("group and name must be non-empty")
        if not 0.1 <= lease <= 3600:
            raise ConfigError(f"lease must be 0.1 to 3600 seconds, got {lease!r}")
        self._redis = redis
        self.layout = layout
        self.dead_letters = dead_letters
        self.group = group
        self.name = name
        self._lease = lease
        self._streams = [layout.partition(p) for p in range(layout.partitions)]
        self._index = {stream: p for p, stream in enumerate(self._streams)}
        self._outstanding: dict[int, set[str]] = {p: set() for p in range(layout.partitions)}
        self._outage = Outage("consumer", stream=layout.stream, group=group, consumer=name)
        self._leases = Leases(redis, layout, group, name, lease,
                              outstanding=self._outstanding, outage=self._outage)
        self._acks = AckWriter(redis, layout, group, dead_letters=dead_letters,
                               outage=self._outage, outstanding=self._outstanding,
                               committed=self._leases.acks_committed)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._turn = self._delivered = self._claimed = 0

    def __repr__(self) -> str:
        return f"<Consumer {self.name!r} of {self.group!r} on {self.layout.stream!r}>"

    @classmethod
    async def join(cls, redis: Redis, stream: str, group: str, name: str, *,
                   partitions: int, lease: float = DEFAULT_LEASE,
                   dead_letters: str | None = None) -> Consumer:
        """Join ``group`` on ``stream`` as ``name``, take a share of partitions, and run.

        Creates the group on every partition stream if it does not exist yet (from the
        start of the stream, so entries added before any consumer joined are read).

        Args:
            redis: a ``redis.asyncio.Redis`` with bytes replies (see ``connect``).
            stream: the stream's name, as given to the producers.
            group: the consumer group (one per kind of work; the senders of a workspace).
            name: this member's name, unique in the group (e.g. ``f"{host}:{pid}"``).
                A member that comes back under the same name takes over its own
                unacknowledged entries like anyone else's.
            partitions: the partition count, as given to the producers.
            lease: seconds before a silent member's partitions are taken over.
            dead_letters: the key of the dead-letter stream that ``ack_nowait``'s
                ``dead_letter`` records go to (see ``_deadletters``).

        Raises:
            ConfigError: an argument is out of range, Redis is older than 6.2, or the
                stream has another partition count.
            RedisUnavailableError: Redis could not be reached.
        """
        consumer = cls(redis, StreamLayout(stream, partitions), group, name, lease,
                       dead_letters=dead_letters)
        await check_layout(redis, consumer.layout)
        try:
            await consumer._create_groups()
            await consumer._leases.beat()
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        consumer._tasks = [
            asyncio.create_task(consumer._leases.keep(), name=f"cio_queue-leases-{name}"),
            asyncio.create_task(consumer._acks.run(), name=f"cio_queue-acks-{name}"),
        ]
        for task in consumer._tasks:
            task.add_done_callback(consumer._task_ended)
        log.info("cio_queue.redis_consumer_joined", stream=stream, group=group, consumer=name,
                 partitions=sorted(consumer._leases.held), share=consumer._leases.share,
                 live=consumer._leases.live)
        return consumer

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def partitions(self) -> tuple[int, ...]:
        """The partitions this member holds now, ascending."""
        return tuple(sorted(self._leases.held))

    async def fetch(self, count: int = DEFAULT_FETCH, wait: float = 1.0) -> list[Delivery]:
        """Return the next entries of the partitions held, waiting up to ``wait`` seconds.

        Entries of one partition come in stream order: a partition just taken over gives
        its earlier holders' unacknowledged entries first. Waits at most a quarter of the
        lease (so that no read outlives a lease) and at most MAX_BLOCK seconds; an empty
        list means nothing came (or Redis is unreachable: then this backs off, logging
        one error per outage).

        Raises:
            QueueUsageError: the consumer was closed.
        """
        if self._closed:
            raise QueueUsageError("the consumer is closed")
        wait = max(0.0, min(wait, self._lease / 4, MAX_BLOCK))
        try:
            deliveries = await self._fetch_claimed(count)
            if deliveries is None:
                deliveries = await self._fetch_new(count, wait)
        except RedisError as exc:
            await self._unreachable(exc, wait)
            return []
        return deliveries

    async def ack(self, partition: int, entry_id: str) -> None:
        """Acknowledge a settled entry: XACK and XDEL it, in the next group commit.

        Returns once Redis confirmed it. While Redis is unreachable this waits for as
        long as the outage lasts; a cancelled caller leaves the acknowledgement queued,
        and it is still sent.

        Raises:
            QueueClosedError: the consumer was closed; the entry stays pending, and its
                partition's next holder hands it out again.
        """
        acked = self.ack_nowait(partition, entry_id)
        try:
            await asyncio.shield(acked)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not acked.cancelled() or (task is not None and task.cancelling()):
                raise  # the caller was cancelled
            # The close gave the acknowledgement up (or came first): not the caller's
            # cancellation, so not a CancelledError.
            raise QueueClosedError("this consumer is closed; the entry stays pending"
                                   ) from None

    def ack_nowait(self, partition: int, entry_id: str, dead_letter: bytes | None = None
                   ) -> asyncio.Future[None]:
        """Queue an acknowledgement for the next group commit; return its future.

        With ``dead_letter`` (one line of a dead-letter record), the record is added to
        the dead-letter stream in the same MULTI as the XACK: the entry leaves the
        stream exactly when its dead letter is written. The future resolves once Redis
        confirmed the commit, and is cancelled if ``aclose()`` gives up on it first (the
        entry then stays pending, and its next holder hands it out again).

        Raises:
            QueueUsageError: a dead letter, but the consumer joined without
                ``dead_letters``.
        """
        return self._acks.queue(partition, entry_id, dead_letter)

    def statistics(self) -> ConsumerStatistics:
        """Return a snapshot of the state and counters."""
        return ConsumerStatistics(
            held=self.partitions, releasing=self._leases.releasing(),
            share=self._leases.share, live=self._leases.live, delivered=self._delivered,
            claimed=self._claimed, acked=self._acks.acked,
            outstanding=sum(len(ids) for ids in self._outstanding.values()),
            connected=not self._outage.down)

    async def aclose(self, deadline: float | None = None) -> None:
        """Send the queued acknowledgements until ``deadline``, and leave the group.

        ``deadline`` is in ``time.monotonic()`` seconds (default: 5 seconds from now);
        leaving may take one more second past it, to give the leases back.

        The partitions are given back at once, so other members take them over without
        waiting for the lease; entries handed out and not acknowledged stay pending, and
        their next holder hands them out again.
        """
        if self._closed:
            return
        self._closed = True
        try:
            end = time.monotonic() + DEFAULT_CLOSE if deadline is None else deadline
            await self._acks.wait_idle(end - time.monotonic())
        finally:
            with anyio.CancelScope(shield=True):
                self._leases.stop()  # ends the loops even if a cancellation is swallowed
                self._acks.stop()
                await stop_tasks(self._tasks)
                await self._leases.leave(LEAVE_TIMEOUT)
                self._acks.cancel_queued()
                log.info("cio_queue.redis_consumer_left", stream=self.layout.stream,
                         group=self.group, consumer=self.name, acked=self._acks.acked,
                         outstanding=sum(len(ids) for ids in self._outstanding.values()))

    # --- reading ---------------------------------------------------------------------

    async def _fetch_claimed(self, count: int) -> list[Delivery] | None:
        """Hand out entries of partitions being taken over; None when there are none."""
        now = time.monotonic()
        claiming = [lease for lease in self._leases.held.values()
                    if lease.state is LeaseState.CLAIMING and lease.valid_until > now]
        if not claiming:
            return None
        deliveries = await self._claim(claiming, count)
        if deliveries or any(lease.state is LeaseState.CLAIMING for lease in claiming):
            return deliveries
        return None

    async def _fetch_new(self, count: int, wait: float) -> list[Delivery]:
        """Read new entries of the partitions that are READING, blocking up to ``wait``."""
        streams = self._readable(time.monotonic() + wait, count)
        if not streams:
            await self._leases.next_beat(wait)
            return []
        self._leases.reading = frozenset(streams)  # none of them is given back meanwhile
        try:
            reply: Any = await self._redis.xreadgroup(
                self.group, self.name, dict.fromkeys(streams, ">"),
                count=max(1, count // len(streams)), block=max(1, round(wait * 1000)))
            self._outage.recovered()
            return self._take(reply or [])
        finally:
            self._leases.read_ended()

    def _readable(self, valid_until: float, count: int) -> list[str]:
        """Return the streams to read now: at most ``count``, a different first each time.

        Only partitions that are READING and stay held past ``valid_until`` qualify.
        """
        streams = [lease.stream for lease in self._leases.held.values()
                   if lease.state is LeaseState.READING and lease.valid_until > valid_until]
        if len(streams) > count:
            self._turn = (self._turn + 1) % len(streams)
            streams = (streams[self._turn:] + streams[:self._turn])[:count]
        return streams

    def _take(self, reply: list[Any]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for stream, entries in reply:
            partition = self._index[text(stream)]
            lease = self._leases.held.get(partition)
            if lease is None or lease.state is not LeaseState.READING:
                # Its lease ran out during the read, or it is to be given back (marked
                # so during the read, and given back only now that the read returned):
                # the entries stay pending, for the next holder's takeover claim (or
                # this member's, claiming again) to hand out before anything newer.
                continue
            outstanding = self._outstanding[partition]
            for entry_id, fields in entries:
                delivery = self._delivery(partition, text(entry_id), fields)
                if delivery is not None:
                    outstanding.add(delivery.entry_id)
                    deliveries.append(delivery)
        self._delivered += len(deliveries)
        return deliveries

    async def _claim(self, leases: list[Lease], count: int) -> list[Delivery]:
        """Take over the pending entries of freshly taken partitions, in stream order."""
        deliveries: list[Delivery] = []
        for lease in leases:
            outstanding = self._outstanding[lease.index]
            # What this member handed out as the claim goes: an entry acknowledged while
            # the claim is under way may be in its reply (still pending when Redis ran
            # it) and gone from ``outstanding`` by the time the reply is read.
            handed_out = set(outstanding)
            reply = await self._redis.xautoclaim(lease.stream, self.group, self.name,
                                                 min_idle_time=0, start_id=lease.cursor,
                                                 count=count)
            self._outage.recovered()
            if (lease is not self._leases.held.get(lease.index)
                    or lease.state is not LeaseState.CLAIMING):
                continue  # lost or being given back during the call: as in _take
            for entry_id, fields in reply[1]:
                entry = text(entry_id)
                if entry in outstanding or entry in handed_out:
                    continue  # handed out by this member: settled, or not yet
                delivery = self._delivery(lease.index, entry, fields)
                if delivery is not None:
                    outstanding.add(entry)
                    deliveries.append(delivery)
            lease.cursor = text(reply[0])
            if lease.cursor == "0-0":
                lease.state = LeaseState.READING
                log.debug("cio_queue.redis_partition_claimed", consumer=self.name,
                          partition=lease.index)
            if len(deliveries) >= count:
                break
        self._delivered += len(deliveries)
        self._claimed += len(deliveries)
        return deliveries

    def _delivery(self, partition: int, entry_id: str, fields: Any) -> Delivery | None:
        record = fields.get(FIELD) if fields else None
        if record is None:
            # Deleted after it was read (Redis 6.2 still lists it), or not ours: drop it.
            self._acks.queue(partition, entry_id)
            return None
        return Delivery(entry_id, partition, record)

    async def _unreachable(self, exc: RedisError, wait: float) -> None:
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            # The server lost the group (restarted without persistence): make it again.
            with contextlib.suppress(RedisError):
                await self._create_groups()
        await asyncio.sleep(min(wait, self._outage.failed(exc)))

    async def _create_groups(self) -> None:
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("cio_queue.redis_consumer_crashed", consumer=self.name,
                  task=task.get_name(), error=f"{type(exc).__name__}: {exc}", exc_info=exc)
