"""The consumer: one member of a consumer group, holding leases on partitions.

Stage: the source of the queue's operations in a fleet. Three tasks of the consumer's
own keep it a member: the lease keeper (every third of the lease: heartbeat, renew,
take or give back partitions, look for strays), the acker (XACK and XDEL in group
commits), and the caller's own ``fetch`` calls.

How partitions are shared: every member scores itself ``now + lease`` (Redis time) in
the group's members set at each heartbeat, so a member that stops heartbeating drops out
after one lease. Sorting the live names gives each member its rank, and its share is
``partitions // live``, plus one for the first ``partitions % live`` ranks. A member
takes free partitions (``SET NX PX``) up to its share in its own order of preference
(rendezvous hashing of name and partition, so members prefer different partitions and a
change of membership moves few of them), and gives back those above its share, once
everything it handed out of them was acknowledged. All of one heartbeat is one Lua
script, so two members never both believe they hold a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
from redis.exceptions import RedisError, ResponseError

from .._exceptions import ConfigError, QueueUsageError
from .._log import log
from ._deadletters import RECORD_FIELD
from ._errors import RedisUnavailableError
from ._outage import Outage, stop_tasks, wait_event
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
ACK_LINGER: Final = 0.002
"""Seconds an acknowledgement waits for company before its XACK is sent."""

# One heartbeat, atomically: refresh this member, count the live ones, work out its
# share, renew or give back the partitions it holds and take free ones up to its share.
# Replies {share, live, state per lease key}: 0 not ours, 1 renewed, 2 given back,
# 3 taken now.
_HEARTBEAT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local name, lease = ARGV[1], tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + lease, name)
redis.call('PEXPIRE', KEYS[1], lease * 3)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(members)
local rank = 0
for i, member in ipairs(members) do
  if member == name then rank = i - 1 end
end
local partitions = #KEYS - 1
local share = math.floor(partitions / #members)
if rank < partitions % #members then share = share + 1 end
local reply = {share, #members}
local held = 0
for i = 2, #KEYS do
  local state = 0
  if redis.call('GET', KEYS[i]) == name then
    if ARGV[i + 1] == 'give' then
      redis.call('DEL', KEYS[i])
      state = 2
    else
      redis.call('PEXPIRE', KEYS[i], lease)
      state = 1
      held = held + 1
    end
  end
  reply[i + 1] = state
end
for i = 2, #KEYS do
  if held >= share then break end
  if reply[i + 1] == 0 and ARGV[i + 1] == 'keep'
      and redis.call('SET', KEYS[i], name, 'NX', 'PX', lease) then
    reply[i + 1] = 3
    held = held + 1
  end
end
return reply
"""

# Leave the group: give back every lease this member holds and drop out of the members.
_LEAVE: Final = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


class LeaseState(enum.Enum):
    """What a member does with a partition it holds."""

    CLAIMING = "claiming"
    """Just taken: earlier holders' unacknowledged entries are handed out first."""
    READING = "reading"
    """New entries are read and handed out."""
    RELEASING = "releasing"
    """Above this member's share: nothing new goes out; given back once all is acked."""


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


class _Ack:
    """An acknowledgement waiting for its group commit, with the dead letter it carries."""

    __slots__ = ("dead_letter", "entry_id", "future")

    def __init__(self, entry_id: str, future: asyncio.Future[None],
                 dead_letter: bytes | None = None) -> None:
        self.entry_id = entry_id
        self.future = future
        self.dead_letter = dead_letter


class _Lease:
    __slots__ = ("cursor", "index", "state", "stream", "valid_until")

    def __init__(self, index: int, stream: str, valid_until: float) -> None:
        self.index = index
        self.stream = stream
        self.state = LeaseState.CLAIMING
        self.cursor = "0-0"  # where the takeover's XAUTOCLAIM goes on
        self.valid_until = valid_until  # monotonic; never later than Redis' own expiry


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
      acknowledged); after a crash, the new holder resends the unacknowledged entries
      first. A member cut off from Redis for longer than the lease may still be sending
      what it handed out before, beside the new holder's resend of it.

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
        self._order = sorted(range(layout.partitions), reverse=True,
                             key=lambda p: hashlib.blake2b(f"{name}/{p}".encode()).digest())
        self._lease_keys = [layout.members(group)] + [layout.lease(group, p) for p in self._order]
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._leave = redis.register_script(_LEAVE)
        self._held: dict[int, _Lease] = {}
        self._outstanding: dict[int, set[str]] = {p: set() for p in range(layout.partitions)}
        self._acks: dict[int, list[_Ack]] = {}
        self._ack_ready = asyncio.Event()
        self._acks_idle = asyncio.Event()
        self._acks_idle.set()
        self._beat_now = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = self._stopping = False
        self._outage = Outage("consumer", stream=layout.stream, group=group, consumer=name)
        self._share = self._live = self._turn = 0
        self._delivered = self._claimed = self._acked = 0

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
            await consumer._beat()
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        consumer._tasks = [
            asyncio.create_task(consumer._keep_leases(), name=f"cio_queue-leases-{name}"),
            asyncio.create_task(consumer._send_acks(), name=f"cio_queue-acks-{name}"),
        ]
        for task in consumer._tasks:
            task.add_done_callback(consumer._task_ended)
        log.info("cio_queue.redis_consumer_joined", stream=stream, group=group, consumer=name,
                 partitions=sorted(consumer._held), share=consumer._share, live=consumer._live)
        return consumer

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def partitions(self) -> tuple[int, ...]:
        """The partitions this member holds now, ascending."""
        return tuple(sorted(self._held))

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
        """
        await asyncio.shield(self.ack_nowait(partition, entry_id))

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
        if dead_letter is not None and self.dead_letters is None:
            raise QueueUsageError("this consumer joined without a dead-letter stream")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.setdefault(partition, []).append(_Ack(entry_id, future, dead_letter))
        self._acks_idle.clear()
        self._ack_ready.set()
        return future

    def statistics(self) -> ConsumerStatistics:
        """Return a snapshot of the state and counters."""
        return ConsumerStatistics(
            held=self.partitions,
            releasing=tuple(sorted(p for p, lease in self._held.items()
                                   if lease.state is LeaseState.RELEASING)),
            share=self._share, live=self._live, delivered=self._delivered,
            claimed=self._claimed, acked=self._acked,
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
            await wait_event(self._acks_idle, end - time.monotonic())
        finally:
            with anyio.CancelScope(shield=True):
                self._stopping = True  # ends the loops even if a cancellation is swallowed
                await stop_tasks(self._tasks)
                try:
                    async with asyncio.timeout(LEAVE_TIMEOUT):
                        await self._leave(keys=self._lease_keys, args=[self.name])
                except (RedisError, TimeoutError) as exc:
                    log.warning("cio_queue.redis_consumer_leave_failed",
                                consumer=self.name, error=f"{type(exc).__name__}: {exc}")
                for entries in self._acks.values():
                    for ack in entries:
                        ack.future.cancel()
                self._held.clear()
                log.info("cio_queue.redis_consumer_left", stream=self.layout.stream,
                         group=self.group, consumer=self.name, acked=self._acked,
                         outstanding=sum(len(ids) for ids in self._outstanding.values()))

    # --- reading ---------------------------------------------------------------------

    async def _fetch_claimed(self, count: int) -> list[Delivery] | None:
        """Hand out entries of partitions being taken over; None when there are none."""
        now = time.monotonic()
        claiming = [lease for lease in self._held.values()
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
            self._changed.clear()
            await wait_event(self._changed, wait)
            return []
        reply: Any = await self._redis.xreadgroup(
            self.group, self.name, dict.fromkeys(streams, ">"),
            count=max(1, count // len(streams)), block=max(1, round(wait * 1000)))
        self._outage.recovered()
        return self._take(reply or [])

    def _readable(self, valid_until: float, count: int) -> list[str]:
        """Return the streams to read now: at most ``count``, a different first each time.

        Only partitions that are READING and stay held past ``valid_until`` qualify.
        """
        streams = [lease.stream for lease in self._held.values()
                   if lease.state is LeaseState.READING and lease.valid_until > valid_until]
        if len(streams) > count:
            self._turn = (self._turn + 1) % len(streams)
            streams = (streams[self._turn:] + streams[:self._turn])[:count]
        return streams

    def _take(self, reply: list[Any]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for stream, entries in reply:
            partition = self._index[text(stream)]
            lease = self._held.get(partition)
            if lease is None or lease.state is not LeaseState.READING:
                # Its lease ran out during the read, or it is being given back (perhaps
                # already planned so, as nothing of it was outstanding): the entries stay
                # pending, for the next holder (or this one, claiming again) to claim.
                continue
            outstanding = self._outstanding[partition]
            for entry_id, fields in entries:
                delivery = self._delivery(partition, text(entry_id), fields)
                if delivery is not None:
                    outstanding.add(delivery.entry_id)
                    deliveries.append(delivery)
        self._delivered += len(deliveries)
        return deliveries

    async def _claim(self, leases: list[_Lease], count: int) -> list[Delivery]:
        """Take over the pending entries of freshly taken partitions, in stream order."""
        deliveries: list[Delivery] = []
        for lease in leases:
            reply = await self._redis.xautoclaim(lease.stream, self.group, self.name,
                                                 min_idle_time=0, start_id=lease.cursor,
                                                 count=count)
            self._outage.recovered()
            if lease is not self._held.get(lease.index) or lease.state is not LeaseState.CLAIMING:
                continue  # lost or being given back during the call: as in _take
            outstanding = self._outstanding[lease.index]
            for entry_id, fields in reply[1]:
                entry = text(entry_id)
                if entry in outstanding:
                    continue  # handed out by this member and not settled yet
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
            self._acks.setdefault(partition, []).append(
                _Ack(entry_id, asyncio.get_running_loop().create_future()))
            self._acks_idle.clear()
            self._ack_ready.set()
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

    # --- leases ----------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        while not self._stopping:
            try:
                await self._beat()
                if any(self._givable(lease) for lease in self._held.values()):
                    await self._beat()  # give back at once what is already drained
                await self._find_strays()
                self._outage.recovered()
                delay = self._lease / 3
            except RedisError as exc:
                delay = min(self._lease / 3, self._outage.failed(exc))
            await wait_event(self._beat_now, delay)
            self._beat_now.clear()

    def _givable(self, lease: _Lease) -> bool:
        return lease.state is LeaseState.RELEASING and not self._outstanding[lease.index]

    async def _beat(self) -> None:
        """Run one heartbeat and bring the local view of the leases in line with it."""
        started = time.monotonic()
        held = self._held
        plans = ["give" if p in held and self._givable(held[p]) else "keep" for p in self._order]
        reply = await self._heartbeat(keys=self._lease_keys,
                                      args=[self.name, round(self._lease * 1000), *plans])
        self._share, self._live = int(reply[0]), int(reply[1])
        valid_until = started + self._lease
        for partition, state in zip(self._order, reply[2:], strict=True):
            lease = held.get(partition)
            if state in (1, 3):
                if lease is None:
                    held[partition] = _Lease(partition, self._streams[partition], valid_until)
                    log.debug("cio_queue.redis_partition_taken", consumer=self.name,
                              partition=partition)
                else:
                    lease.valid_until = valid_until
            elif lease is not None:
                del held[partition]
                if state == 0:
                    log.warning("cio_queue.redis_partition_lost", consumer=self.name,
                                partition=partition)
        self._rebalance()
        self._changed.set()

    def _rebalance(self) -> None:
        """Mark the least preferred partitions above the share for giving back."""
        held = self._held
        surplus = len(held) - self._share
        for partition in reversed(self._order):
            lease = held.get(partition)
            if lease is None:
                continue
            if surplus > 0 and lease.state is not LeaseState.RELEASING:
                lease.state = LeaseState.RELEASING
                surplus -= 1
            elif surplus < 0 and lease.state is LeaseState.RELEASING:
                lease.state = LeaseState.CLAIMING  # kept after all: look for strays first
                lease.cursor = "0-0"
                surplus += 1

    async def _find_strays(self) -> None:
        """Claim again a held partition whose pending entries are not all handed out here.

        Strays are entries read by a member whose lease ran out during the read, or read
        by this member and dropped for the same reason or because the partition was being
        given back meanwhile.
        """
        reading = [lease for lease in self._held.values() if lease.state is LeaseState.READING]
        if not reading:
            return
        pipe = self._redis.pipeline(transaction=False)
        for lease in reading:
            pipe.xpending(lease.stream, self.group)
        for lease, summary in zip(reading, await pipe.execute(), strict=True):
            if self._strays(lease, summary) and self._held.get(lease.index) is lease:
                lease.state = LeaseState.CLAIMING
                lease.cursor = "0-0"

    def _strays(self, lease: _Lease, summary: dict[str, Any]) -> bool:
        """Whether an XPENDING summary shows entries this member has not handed out."""
        pending = {text(member["name"]): int(member["pending"])
                   for member in summary.get("consumers") or ()}
        mine = pending.pop(self.name, 0)
        return bool(pending) or mine > len(self._outstanding[lease.index])

    # --- acknowledgements ------------------------------------------------------------

    async def _send_acks(self) -> None:
        while not self._stopping:
            if not self._acks:
                self._acks_idle.set()
                self._ack_ready.clear()
                await self._ack_ready.wait()
            await asyncio.sleep(ACK_LINGER)
            batch, self._acks = self._acks, {}
            try:
                await self._commit_until_done(batch)
            finally:  # stopped mid-commit: it may or may not have happened
                if self._stopping:
                    for entries in batch.values():
                        for ack in entries:
                            ack.future.cancel()
            self._outage.recovered()
            self._acknowledged(batch)
            if any(self._givable(lease) for lease in self._held.values()):
                self._beat_now.set()

    async def _commit_until_done(self, batch: dict[int, list[_Ack]]) -> None:
        """Commit ``batch``, retrying with the outage's backoff while Redis is away."""
        while True:
            try:
                await self._commit_acks(batch)
                return
            except RedisError as exc:
                await asyncio.sleep(self._outage.failed(exc))

    def _acknowledged(self, batch: dict[int, list[_Ack]]) -> None:
        """Note a committed batch: its entries are no longer outstanding."""
        for partition, entries in batch.items():
            outstanding = self._outstanding[partition]
            for ack in entries:
                outstanding.discard(ack.entry_id)
                if not ack.future.done():
                    ack.future.set_result(None)
            self._acked += len(entries)

    async def _commit_acks(self, batch: dict[int, list[_Ack]]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for partition, entries in batch.items():
            ids = [ack.entry_id for ack in entries]
            for ack in entries:
                if ack.dead_letter is not None:
                    assert self.dead_letters is not None
                    pipe.xadd(self.dead_letters, {RECORD_FIELD: ack.dead_letter})
            pipe.xack(self._streams[partition], self.group, *ids)
            pipe.xdel(self._streams[partition], *ids)
        await pipe.execute()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("cio_queue.redis_consumer_crashed", consumer=self.name,
                  task=task.get_name(), error=f"{type(exc).__name__}: {exc}", exc_info=exc)
