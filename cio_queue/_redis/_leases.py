"""Lease keeping: which partitions this member holds, renewed by one heartbeat script.

Stage: inside the consumer, beside its reads and its ack writer. The consumer reads only
partitions held here and hands out their entries; this class alone talks to the group's
members set and lease keys, on one task of the consumer's (every third of the lease:
heartbeat, renew, take or give back partitions, look for strays), and on ``leave``.

How partitions are shared: every member scores itself ``now + lease`` (Redis time) in
the group's members set at each heartbeat, so a member that stops heartbeating drops out
after one lease. Sorting the live names gives each member its rank, and its share is
``partitions // live``, plus one for the first ``partitions % live`` ranks. A member
takes free partitions (``SET NX PX``) up to its share in its own order of preference
(rendezvous hashing of name and partition, so members prefer different partitions and a
change of membership moves few of them), and gives back those above its share, once
everything it handed out of them was acknowledged and no read of them is in flight. All
of one heartbeat is one Lua script, so two members never both believe they hold a
partition.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import RedisError

from .._log import log
from ._outage import Outage, wait_event
from ._streams import StreamLayout, text

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Lease", "LeaseState", "Leases"]

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


class Lease:
    """One held partition: what the consumer does with it, and until when it may."""

    __slots__ = ("cursor", "index", "state", "stream", "valid_until")

    def __init__(self, index: int, stream: str, valid_until: float) -> None:
        self.index = index
        self.stream = stream
        self.state = LeaseState.CLAIMING
        self.cursor = "0-0"  # where the takeover's XAUTOCLAIM goes on
        self.valid_until = valid_until  # monotonic; never later than Redis' own expiry


class Leases:
    """The partitions one member holds, kept in line with Redis by heartbeats.

    ``held`` maps each held partition to its :class:`Lease`; the consumer reads it and
    takes a CLAIMING lease on (its cursor, then READING), and only this class adds or
    drops leases, marks them for giving back, or sends them back to CLAIMING.
    ``outstanding`` is the consumer's record of the entries handed out and not yet
    acknowledged, per partition: read here only, to know when a partition can be given
    back and whether its pending entries include strays.
    """

    def __init__(self, redis: Redis, layout: StreamLayout, group: str, name: str,
                 lease: float, *, outstanding: Mapping[int, Collection[str]],
                 outage: Outage) -> None:
        self._redis = redis
        self.group = group
        self.name = name
        self.lease = lease
        self._outstanding = outstanding
        self._outage = outage
        self._streams = [layout.partition(p) for p in range(layout.partitions)]
        self._order = sorted(range(layout.partitions), reverse=True,
                             key=lambda p: hashlib.blake2b(f"{name}/{p}".encode()).digest())
        self._keys = [layout.members(group)] + [layout.lease(group, p) for p in self._order]
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._leave = redis.register_script(_LEAVE)
        self.held: dict[int, Lease] = {}
        self.share = self.live = 0
        self._beat_now = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopping = False
        # The streams of the consumer's blocking read in flight. None of them is given
        # back until it returns: Redis would put what it returns in this member's pending
        # list after the next holder's takeover claim, where only that holder's stray
        # check (a third of a lease later) would find it, behind newer entries.
        self.reading: frozenset[str] = frozenset()

    def releasing(self) -> tuple[int, ...]:
        """The held partitions being given back, ascending."""
        return tuple(sorted(p for p, lease in self.held.items()
                            if lease.state is LeaseState.RELEASING))

    async def beat(self) -> None:
        """Run one heartbeat and bring the local view of the leases in line with it."""
        started = time.monotonic()
        held = self.held
        plans = ["give" if p in held and self._givable(held[p]) else "keep" for p in self._order]
        reply = await self._heartbeat(keys=self._keys,
                                      args=[self.name, round(self.lease * 1000), *plans])
        self.share, self.live = int(reply[0]), int(reply[1])
        valid_until = started + self.lease
        for partition, state in zip(self._order, reply[2:], strict=True):
            lease = held.get(partition)
            if state in (1, 3):
                if lease is None:
                    held[partition] = Lease(partition, self._streams[partition], valid_until)
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

    async def keep(self) -> None:
        """Heartbeat every third of the lease (or when asked) until ``stop``."""
        while not self._stopping:
            try:
                await self.beat()
                if self._any_givable():
                    await self.beat()  # give back at once what is already drained
                await self._find_strays()
                self._outage.recovered()
                delay = self.lease / 3
            except RedisError as exc:
                delay = min(self.lease / 3, self._outage.failed(exc))
            await wait_event(self._beat_now, delay)
            self._beat_now.clear()

    def stop(self) -> None:
        """End ``keep`` at its next turn, even if a cancellation of it is swallowed."""
        self._stopping = True

    def beat_now(self) -> None:
        """Have ``keep`` run its next heartbeat now."""
        self._beat_now.set()

    def acks_committed(self) -> None:
        """Heartbeat now if acknowledgements drained a partition being given back."""
        if self._any_givable():
            self._beat_now.set()

    def read_ended(self) -> None:
        """The blocking read in flight returned: give back at once what waited for it."""
        self.reading = frozenset()
        self.acks_committed()

    async def next_beat(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the next heartbeat to end."""
        self._changed.clear()
        await wait_event(self._changed, seconds)

    async def leave(self, seconds: float) -> None:
        """Give back every lease and leave the members, trying for ``seconds``; hold none.

        A failure is logged, not raised: the leases then run out on their own.
        """
        try:
            async with asyncio.timeout(seconds):
                await self._leave(keys=self._keys, args=[self.name])
        except (RedisError, TimeoutError) as exc:
            log.warning("cio_queue.redis_consumer_leave_failed",
                        consumer=self.name, error=f"{type(exc).__name__}: {exc}")
        self.held.clear()

    def _givable(self, lease: Lease) -> bool:
        return (lease.state is LeaseState.RELEASING and not self._outstanding[lease.index]
                and lease.stream not in self.reading)

    def _any_givable(self) -> bool:
        return any(self._givable(lease) for lease in self.held.values())

    def _rebalance(self) -> None:
        """Mark the least preferred partitions above the share for giving back."""
        held = self.held
        surplus = len(held) - self.share
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
        by this member and dropped for the same reason. (What a read returns while its
        partition waits to be given back stays pending for the next holder's takeover
        claim: a partition is given back only once no read of it is in flight.)
        """
        reading = [lease for lease in self.held.values() if lease.state is LeaseState.READING]
        if not reading:
            return
        # What was handed out as the check goes: an entry acknowledged meanwhile is still
        # in the summary (pending when Redis ran XPENDING) but no longer outstanding. (A
        # read whose reply is not yet taken can still look like strays: the claim that
        # follows skips what was handed out, and hands out what that read dropped.)
        handed_out = {lease.index: set(self._outstanding[lease.index]) for lease in reading}
        pipe = self._redis.pipeline(transaction=False)
        for lease in reading:
            pipe.xpending(lease.stream, self.group)
        for lease, summary in zip(reading, await pipe.execute(), strict=True):
            handed_out[lease.index].update(self._outstanding[lease.index])
            if (self._strays(summary, len(handed_out[lease.index]))
                    and self.held.get(lease.index) is lease):
                lease.state = LeaseState.CLAIMING
                lease.cursor = "0-0"

    def _strays(self, summary: dict[str, Any], handed_out: int) -> bool:
        """Whether an XPENDING summary shows entries this member has not handed out."""
        pending = {text(member["name"]): int(member["pending"])
                   for member in summary.get("consumers") or ()}
        mine = pending.pop(self.name, 0)
        return bool(pending) or mine > handed_out
