"""Where things live in Redis, which partition a person is in, and the client set-up.

Stage: shared by the producer, the consumer, the dead letters and the status. For a
stream name ``S`` and a consumer group ``G``:

=========================  ===========================================================
``S:{p}``                  partition ``p``'s stream, ``0 <= p < partitions``; each entry
                           has one field, ``r``, the record bytes
``S:meta``                 hash: ``partitions``, written by the first process, checked
                           by every other one
``S:{G}:lease:{p}``        the name of the member of ``G`` that holds partition ``p``
                           (``SET NX PX``, renewed while it lives)
``S:{G}:members``          sorted set: each live member, scored by when it expires
=========================  ===========================================================
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import ConfigError
from ._errors import RedisUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["FIELD", "MIN_SERVER", "StreamLayout", "check_client", "check_layout",
           "connect", "partition_of", "text"]

FIELD: Final = b"r"
"""The one field of every partition entry: the record bytes."""
MIN_SERVER: Final = (6, 2)
"""Streams came in Redis 5.0, XAUTOCLAIM in 6.2."""
SOCKET_TIMEOUT: Final = 5.0
"""Seconds a command may take before the client gives up on the connection."""
CONNECT_TIMEOUT: Final = 2.0
"""Seconds a connection attempt may take."""
MAX_CONNECTIONS: Final = 50
"""Connections ``connect``'s pool opens at most; more callers wait for one."""


def partition_of(partition_key: str, partitions: int) -> int:
    """Return the partition of ``partition_key``: the same in every process and release.

    CRC-32 of the UTF-8 key (as Redis Cluster maps keys to slots by CRC16): fixed, fast
    and evenly spread; not ``hash()``, which Python salts per process.
    """
    return zlib.crc32(partition_key.encode()) % partitions


def text(value: bytes | str) -> str:
    """Return a reply value as ``str`` (replies are bytes; ids are ASCII)."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """The key names of one partitioned stream (see the module docstring)."""

    stream: str
    partitions: int

    def __post_init__(self) -> None:
        if not self.stream:
            raise ConfigError("stream must be a non-empty key name")
        if isinstance(self.partitions, bool) or not isinstance(self.partitions, int) \
                or not 1 <= self.partitions <= 1024:
            raise ConfigError(f"partitions must be an int from 1 to 1024, got "
                              f"{self.partitions!r}")

    def partition(self, index: int) -> str:
        """Return the stream key of partition ``index``."""
        return f"{self.stream}:{index}"

    @property
    def meta(self) -> str:
        """The hash that records the partition count."""
        return f"{self.stream}:meta"

    def lease(self, group: str, index: int) -> str:
        """Return the lease key of partition ``index`` for ``group``."""
        return f"{self.stream}:{group}:lease:{index}"

    def members(self, group: str) -> str:
        """Return the sorted set of ``group``'s live members."""
        return f"{self.stream}:{group}:members"


def connect(url: str, *, max_connections: int = MAX_CONNECTIONS, **options: Any) -> Redis:
    """Return a redis-py asyncio client set up as this package needs it.

    Replies stay bytes (records are bytes), the protocol is RESP2 (the reply shapes parsed
    here), and a failed command is retried once, at once, on a fresh connection: enough
    to step over a connection that died while idle, such as after a Redis restart. The
    components retry outages themselves, with backoff and one log line per outage,
    instead of redis-py's ten silent retries. The pool holds ``max_connections`` and
    makes a caller wait for a free one (up to the socket timeout) instead of raising.
    ``options`` go to the connection pool (``BlockingConnectionPool.from_url``).
    """
    from . import require_redis  # noqa: PLC0415 - redis-py is an optional extra

    require_redis()
    from redis.asyncio import BlockingConnectionPool, Redis  # noqa: PLC0415
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    settings: dict[str, Any] = {
        "decode_responses": False, "protocol": 2, "retry": Retry(NoBackoff(), 1),
        "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
        "timeout": SOCKET_TIMEOUT,
    }
    settings.update(options)
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, **settings)
    client: Redis = Redis.from_pool(pool)
    check_client(client)
    return client


def check_client(redis: Redis) -> None:
    """Refuse a client whose replies this package cannot read.

    Raises:
        ConfigError: the client decodes replies to ``str`` or speaks RESP3.
    """
    kwargs = redis.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ConfigError("the Redis client must keep replies as bytes: create it with "
                          "decode_responses=False, or use cio_queue._redis.connect(url)")
    if kwargs.get("protocol") not in (None, 2, "2"):
        raise ConfigError("the Redis client must speak RESP2: create it with protocol=2, "
                          "or use cio_queue._redis.connect(url)")


async def check_layout(redis: Redis, layout: StreamLayout) -> None:
    """Check the server's version and record or compare the partition count.

    Raises:
        ConfigError: Redis is older than 6.2, or the stream was made with another
            partition count.
        RedisUnavailableError: Redis could not be reached.
    """
    from redis.exceptions import RedisError  # noqa: PLC0415

    try:
        info = await redis.info("server")
        pipe = redis.pipeline(transaction=True)
        pipe.hsetnx(layout.meta, "partitions", layout.partitions)
        pipe.hget(layout.meta, "partitions")
        _, recorded = await pipe.execute()
    except RedisError as exc:
        raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
    version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".")[:2])
    if version < MIN_SERVER:
        raise ConfigError(f"Redis {info.get('redis_version')} is too old: streams with "
                          f"XAUTOCLAIM need 6.2 or newer")
    if int(recorded) != layout.partitions:
        raise ConfigError(f"stream {layout.stream!r} has {int(recorded)} partitions in Redis, "
                          f"this process asked for {layout.partitions}: give every producer "
                          f"and consumer of a stream the same partitions")
