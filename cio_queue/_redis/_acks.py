"""The ack writer: XACK and XDEL settled entries, with their dead letters, in group commits.

Stage: inside the consumer, at the end of an entry's life: the queue settled it, and
``Consumer.ack_nowait`` queues its acknowledgement here. One task of the consumer's
sends what waits, ``ACK_LINGER`` seconds after the first one came, as one MULTI/EXEC
pipeline: per partition an XACK and an XDEL of its entries, preceded by the XADD of each
dead letter to the dead-letter stream, so an entry leaves its stream exactly when its
dead letter is written. While Redis is away the commit is retried with the consumer's
backoff, and what arrives meanwhile waits for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Final

from redis.exceptions import RedisError

from .._exceptions import QueueUsageError
from ._deadletters import RECORD_FIELD
from ._outage import Outage, wait_event
from ._streams import StreamLayout

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["ACK_LINGER", "AckWriter"]

ACK_LINGER: Final = 0.002
"""Seconds an acknowledgement waits for company before its XACK is sent."""


class _Ack:
    """An acknowledgement waiting for its group commit, with the dead letter it carries."""

    __slots__ = ("dead_letter", "entry_id", "future")

    def __init__(self, entry_id: str, future: asyncio.Future[None],
                 dead_letter: bytes | None = None) -> None:
        self.entry_id = entry_id
        self.future = future
        self.dead_letter = dead_letter


class AckWriter:
    """Acknowledge entries of a consumer group's partitions in group commits.

    ``outstanding`` is the consumer's record of the entries handed out and not yet
    acknowledged, per partition: a committed entry is taken out of it, before its future
    resolves and ``committed`` (called with no arguments after each commit) runs.
    """

    def __init__(self, redis: Redis, layout: StreamLayout, group: str, *,
                 dead_letters: str | None, outage: Outage,
                 outstanding: MutableMapping[int, set[str]],
                 committed: Callable[[], None]) -> None:
        self._redis = redis
        self._streams = [layout.partition(p) for p in range(layout.partitions)]
        self.group = group
        self.dead_letters = dead_letters
        self._outage = outage
        self._outstanding = outstanding
        self._committed = committed
        self._queued: dict[int, list[_Ack]] = {}
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.acked = 0  # entries acknowledged: XACK and XDEL done

    def queue(self, partition: int, entry_id: str, dead_letter: bytes | None = None
              ) -> asyncio.Future[None]:
        """Queue an acknowledgement (and dead letter) for the next commit; return its future.

        Once ``stop`` was called nothing will send it: the future comes back cancelled, as
        for an acknowledgement the close gave up on (the entry stays pending for the next
        holder), instead of one that never resolves.

        Raises:
            QueueUsageError: a dead letter, but there is no dead-letter stream.
        """
        if dead_letter is not None and self.dead_letters is None:
            raise QueueUsageError("this consumer joined without a dead-letter stream")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.cancel()
            return future
        self._queued.setdefault(partition, []).append(_Ack(entry_id, future, dead_letter))
        self._idle.clear()
        self._ready.set()
        return future

    async def wait_idle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` until nothing is queued or being sent; return whether so."""
        return await wait_event(self._idle, seconds)

    def stop(self) -> None:
        """End ``run`` at its next turn; a commit it is in the middle of is given up."""
        self._stopping = True

    def cancel_queued(self) -> None:
        """Cancel the futures of the acknowledgements still queued (they stay unsent)."""
        for entries in self._queued.values():
            for ack in entries:
                ack.future.cancel()

    async def run(self) -> None:
        """Send the queued acknowledgements, a group commit at a time, until ``stop``."""
        while not self._stopping:
            if not self._queued:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
            await asyncio.sleep(ACK_LINGER)
            batch, self._queued = self._queued, {}
            try:
                await self._commit_until_done(batch)
            finally:  # stopped mid-commit: it may or may not have happened
                if self._stopping:
                    for entries in batch.values():
                        for ack in entries:
                            ack.future.cancel()
            self._outage.recovered()
            self._acknowledged(batch)
            self._committed()

    async def _commit_until_done(self, batch: dict[int, list[_Ack]]) -> None:
        """Commit ``batch``, retrying with the outage's backoff while Redis is away."""
        while True:
            try:
                await self._commit(batch)
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
            self.acked += len(entries)

    async def _commit(self, batch: dict[int, list[_Ack]]) -> None:
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
