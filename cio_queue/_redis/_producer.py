"""The producer: append records to the partitioned stream, a group commit at a time.

Stage: intake, below the queue's enqueue call. ``add_nowait`` only appends to a local
buffer (no I/O, no await); one flusher task writes what waits as one MULTI/EXEC pipeline
of XADDs, ``linger`` seconds after the first entry arrived or as soon as ``max_batch``
entries wait, whichever comes first (OpenTelemetry's BatchProcessor rule). Concurrent
callers therefore share round trips, and ``add``, which waits for Redis to acknowledge
its entry, costs a caller one group commit, not one round trip of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
from redis.exceptions import RedisError

from .._exceptions import ConfigError, QueueUsageError
from .._log import log
from ._errors import BacklogFullError, ProducerClosedError, RedisUnavailableError
from ._outage import Outage, stop_tasks, wait_event
from ._streams import FIELD, StreamLayout, check_client, check_layout, partition_of, text

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis

__all__ = ["DEFAULT_LINGER", "DEFAULT_MAX_BACKLOG", "DEFAULT_MAX_BACKLOG_BYTES",
           "DEFAULT_MAX_BATCH", "Producer", "ProducerStatistics", "Unwritten"]

DEFAULT_LINGER: Final = 0.002
"""Seconds a group commit waits for company after its first entry arrived."""
DEFAULT_MAX_BATCH: Final = 500
"""Entries written in one pipeline at most; this many waiting starts a commit at once."""
DEFAULT_MAX_BACKLOG: Final = 100_000
"""Entries the local buffer holds (written or not yet acknowledged) before it is full."""
DEFAULT_MAX_BACKLOG_BYTES: Final = 64 * 1024 * 1024
"""Record bytes the local buffer holds before it is full."""
DEFAULT_CLOSE: Final = 5.0
"""Seconds ``aclose()`` spends writing what waits when given no deadline."""


@dataclass(frozen=True, slots=True)
class Unwritten:
    """A record that ``aclose()`` could not get acknowledged, for the caller to spill."""

    record: bytes
    partition_key: str


@dataclass(frozen=True, slots=True)
class ProducerStatistics:
    """A snapshot of a producer's counters.

    Attributes:
        added: records accepted by ``add`` and ``add_nowait``.
        written: records Redis acknowledged.
        backlog: records accepted and not yet acknowledged (waiting or in a commit).
        backlog_bytes: their size.
        commits: pipelines Redis acknowledged.
        failed_commits: pipelines that failed and were retried.
        connected: whether the last commit (or the layout check) reached Redis.
    """

    added: int
    written: int
    backlog: int
    backlog_bytes: int
    commits: int
    failed_commits: int
    connected: bool


class _Entry:
    __slots__ = ("future", "partition", "partition_key", "record")

    def __init__(self, record: bytes, partition_key: str, partition: int,
                 future: asyncio.Future[str]) -> None:
        self.record = record
        self.partition_key = partition_key
        self.partition = partition
        self.future = future


class Producer:
    """Append records to ``partitions`` streams named ``f"{stream}:{p}"``, in order.

    Guarantees:

    - **Routing**: a record goes to partition ``partition_of(partition_key, partitions)``,
      the same in every process; so one person's operations share one stream.
    - **Order**: records of one partition reach Redis in the order they were added by
      this producer (one commit in flight at a time; a failed commit is retried whole
      before anything newer).
    - **Nothing accepted is lost**: an accepted record stays in the local buffer until
      Redis acknowledged its XADD. While Redis is unreachable the flusher retries with
      backoff (see :class:`~cio_queue._redis._outage.Outage`), logging one error per
      outage; ``backlog`` and ``full`` tell the queue when to spill to its disk spool or
      apply its overflow policy, and ``aclose()`` hands back whatever it could not write.
    - **At least once**: a commit whose reply is lost (a connection cut after Redis
      executed it) is retried, so its records can appear twice; the queue's event ids let
      Customer.io drop the copies.

    Durability follows the call: ``add_nowait`` returns before the record is written (a
    crash of this process loses the buffer), ``add`` returns once Redis acknowledged it
    (then Redis' own persistence rules: AOF with ``appendfsync always`` loses nothing).

    Args:
        redis: a ``redis.asyncio.Redis`` with bytes replies (see ``connect``).
        stream: the stream's name; partitions are ``f"{stream}:{p}"``.
        partitions: the partition count, the same for every process of the fleet.
        linger: seconds a commit waits for more entries after the first one.
        max_batch: entries per commit at most.
        max_backlog: entries the buffer holds before ``add_nowait`` raises.
        max_backlog_bytes: record bytes the buffer holds before ``add_nowait`` raises.

    Raises:
        ConfigError: an argument is out of range, or the client decodes replies.
    """

    def __init__(self, redis: Redis, stream: str, *, partitions: int,
                 linger: float = DEFAULT_LINGER, max_batch: int = DEFAULT_MAX_BATCH,
                 max_backlog: int = DEFAULT_MAX_BACKLOG,
                 max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES) -> None:
        check_client(redis)
        if not 0 <= linger <= 1:
            raise ConfigError(f"linger must be 0 to 1 seconds, got {linger!r}")
        for name, value in (("max_batch", max_batch), ("max_backlog", max_backlog),
                            ("max_backlog_bytes", max_backlog_bytes)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value!r}")
        self._redis = redis
        self.layout = StreamLayout(stream, partitions)
        self._streams = [self.layout.partition(p) for p in range(partitions)]
        self._linger = linger
        self._max_batch = max_batch
        self._max_backlog = max_backlog
        self._max_bytes = max_backlog_bytes
        self._buffer: deque[_Entry] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = self._stopping = False
        self._checked = False
        self._broken: ConfigError | None = None
        self._outage = Outage("producer", stream=stream)
        self._added = self._written = self._commits = self._failed_commits = 0

    def __repr__(self) -> str:
        return f"<Producer {self.layout.stream!r} partitions={self.layout.partitions}>"

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def backlog(self) -> int:
        """Records accepted and not yet acknowledged by Redis."""
        return len(self._buffer)

    @property
    def full(self) -> bool:
        """Whether ``add_nowait`` would raise BacklogFullError now."""
        return len(self._buffer) >= self._max_backlog or self._bytes >= self._max_bytes

    async def start(self) -> None:
        """Check the stream's layout if Redis is there, and start the flusher.

        An unreachable Redis is no error: the layout is checked before the first commit.

        Raises:
            ConfigError: the stream has another partition count, or Redis is too old.
        """
        if self._task is not None:
            raise QueueUsageError("this producer was already started")
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(RedisUnavailableError):
            await check_layout(self._redis, self.layout)
            self._checked = True
        self._task = asyncio.create_task(self._run(),
                                         name=f"cio_queue-producer-{self.layout.stream}")
        self._task.add_done_callback(self._flusher_ended)
        log.info("cio_queue.redis_producer_started", stream=self.layout.stream,
                 partitions=self.layout.partitions)

    def add_nowait(self, record: bytes, partition_key: str) -> asyncio.Future[str]:
        """Buffer ``record`` for the next group commit, without waiting for anything.

        Args:
            record: the serialised operation.
            partition_key: the person it is about (any stable string).

        Returns:
            A future that resolves to the record's entry id once Redis acknowledged it
            (cancelled if ``aclose()`` hands the record back). Ignoring it is fine.

        Raises:
            BacklogFullError: the buffer is full (see ``full``); nothing was added.
            ProducerClosedError: ``aclose()`` has begun.
            QueueUsageError: ``start()`` was not called.
            ConfigError: the stream's layout disagrees with this producer's.
        """
        if self._closing:
            raise ProducerClosedError("the producer is closed")
        if self._broken is not None:
            raise self._broken
        if self._loop is None:
            raise QueueUsageError("call start() (or enter `async with`) before adding")
        buffer = self._buffer
        if len(buffer) >= self._max_backlog or self._bytes >= self._max_bytes:
            raise BacklogFullError(f"the Redis producer's buffer is full ({len(self._buffer)} "
                                   f"records, {self._bytes} bytes not yet written)")
        future: asyncio.Future[str] = self._loop.create_future()
        buffer.append(_Entry(record, partition_key,
                             partition_of(partition_key, self.layout.partitions), future))
        self._bytes += len(record)
        self._added += 1
        if len(buffer) == 1:
            self._empty.clear()
            self._wake.set()
        elif len(buffer) == self._max_batch:
            self._batch_full.set()
        return future

    async def add(self, record: bytes, partition_key: str) -> str:
        """Add ``record`` and return its entry id once Redis acknowledged the XADD.

        Rides the same group commits as ``add_nowait``. While Redis is unreachable this
        waits, for as long as the outage lasts; bound it with a timeout if you must. A
        cancelled caller leaves the record accepted: it is still written.

        Raises:
            the errors of ``add_nowait``, and ConfigError if the layout check fails.
        """
        return await asyncio.shield(self.add_nowait(record, partition_key))

    async def flush(self, deadline: float) -> bool:
        """Wait until nothing is waiting, or until ``deadline``; say which.

        ``deadline`` is in ``time.monotonic()`` seconds.
        """
        return await wait_event(self._empty, deadline - time.monotonic())

    def statistics(self) -> ProducerStatistics:
        """Return a snapshot of the counters."""
        return ProducerStatistics(
            added=self._added, written=self._written, backlog=len(self._buffer),
            backlog_bytes=self._bytes, commits=self._commits,
            failed_commits=self._failed_commits, connected=not self._outage.down)

    async def aclose(self, deadline: float | None = None) -> list[Unwritten]:
        """Refuse new records, write what waits until ``deadline``, and stop.

        ``deadline`` is in ``time.monotonic()`` seconds (default: 5 seconds from now).

        Returns:
            The records not acknowledged by then, in order, for the caller to spill. A
            commit cut short by the deadline may still have reached Redis, so a spilled
            record can also be in the stream (at least once).
        """
        self._closing = True
        task = self._task
        try:
            if task is not None and not task.done() and self._broken is None:
                self._wake.set()
                self._batch_full.set()
                end = time.monotonic() + DEFAULT_CLOSE if deadline is None else deadline
                await wait_event(self._empty, end - time.monotonic())
        finally:
            with anyio.CancelScope(shield=True):
                self._stopping = True  # ends the flusher even if a cancellation is swallowed
                if task is not None:
                    await stop_tasks([task])
            unwritten = [Unwritten(e.record, e.partition_key) for e in self._buffer]
            for entry in self._buffer:
                entry.future.cancel()
            self._buffer.clear()
            self._bytes = 0
            self._empty.set()
            log.info("cio_queue.redis_producer_closed", stream=self.layout.stream,
                     written=self._written, unwritten=len(unwritten))
        return unwritten

    async def _run(self) -> None:
        buffer = self._buffer
        while not self._stopping:
            if not buffer:
                self._wake.clear()
                await self._wake.wait()
            if self._linger and len(buffer) < self._max_batch and not self._closing:
                await wait_event(self._batch_full, self._linger)
            self._batch_full.clear()
            batch = list(itertools.islice(buffer, min(len(buffer), self._max_batch)))
            try:
                ids = await self._commit(batch)
            except ConfigError as exc:
                self._break(exc)
                return
            except (RedisError, RedisUnavailableError) as exc:
                self._failed_commits += 1
                await asyncio.sleep(self._outage.failed(exc, backlog=len(buffer)))
                continue
            self._outage.recovered(backlog=len(buffer))
            self._written_out(ids)

    def _written_out(self, ids: list[str]) -> None:
        """Settle the entries at the front of the buffer that Redis acknowledged."""
        buffer = self._buffer
        self._commits += 1
        for entry_id in ids:
            entry = buffer.popleft()
            self._bytes -= len(entry.record)
            if not entry.future.done():
                entry.future.set_result(entry_id)
        self._written += len(ids)
        if not buffer:
            self._empty.set()
        log.debug("cio_queue.redis_commit", stream=self.layout.stream, records=len(ids),
                  backlog=len(buffer))

    async def _commit(self, batch: list[_Entry]) -> list[str]:
        if not self._checked:
            await check_layout(self._redis, self.layout)
            self._checked = True
        pipe = self._redis.pipeline(transaction=True)
        streams = self._streams
        for entry in batch:
            pipe.xadd(streams[entry.partition], {FIELD: entry.record})
        return [text(reply) for reply in await pipe.execute()]

    def _break(self, exc: ConfigError) -> None:
        """Stop writing for good: the stream's layout is not this producer's."""
        self._broken = exc
        log.error("cio_queue.redis_producer_misconfigured", stream=self.layout.stream,
                  backlog=len(self._buffer), error=str(exc))
        for entry in self._buffer:
            if not entry.future.done():
                entry.future.set_exception(exc)
                entry.future.exception()  # retrieved: add_nowait callers may never look

    def _flusher_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._closing = True
        log.error("cio_queue.redis_producer_crashed", stream=self.layout.stream,
                  backlog=len(self._buffer), error=f"{type(exc).__name__}: {exc}",
                  exc_info=exc)
