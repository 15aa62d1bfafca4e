"""The fleet layer: many cio-queue processes, one Redis, one buffer, one rate budget.

Stage: below the queue core, beside the courier. A fleet of processes on several hosts
sends to one Customer.io workspace, which has one rate budget; this package gives them
what they must share, through redis-py's asyncio client (``redis.asyncio``):

- :class:`Producer` appends serialised operations to a Redis Stream, split into
  ``partitions`` streams by a stable hash of the person, in group commits; it buffers
  locally while Redis is away, so nothing accepted is lost (``_producer``).
- :class:`Consumer` is one member of a consumer group: it leases partitions, hands out
  their entries in stream order, takes over the partitions of dead members with their
  unacknowledged entries, and acknowledges an entry only when the queue says it is
  settled (``_consumer``; its leases are kept by ``_leases``, its acknowledgements
  written in group commits by ``_acks``).
- :class:`FleetPacer` is :class:`~cio_queue._pacing.RequestPacer`'s contract for the
  whole fleet: one Lua script grants a start or says how long to wait, and a 429 seen by
  any process closes the gate for all (``_pacer``).
- :class:`DeadLetterStream` holds dead-letter records in a stream, in the file's JSON
  format (``_deadletters``); :func:`status` reports all of it (``_status``).

redis-py is an optional extra (``pip install 'cio-queue[redis]'``): importing this
package never needs it, and the first use of a name that does raises
:class:`~cio_queue.ConfigError` naming the extra. Redis 6.2 or newer (streams, XAUTOCLAIM)
on one primary; Redis Cluster is not supported (scripts touch several keys).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from ._consumer import Consumer, ConsumerStatistics, Delivery
    from ._deadletters import DeadLetter, DeadLetterStream
    from ._errors import BacklogFullError, ProducerClosedError, RedisUnavailableError
    from ._pacer import FleetPacer, PacerStatistics, Turn
    from ._producer import Producer, ProducerStatistics, Unwritten
    from ._status import status
    from ._streams import connect, partition_of

__all__ = [
    "BacklogFullError",
    "Consumer",
    "ConsumerStatistics",
    "DeadLetter",
    "DeadLetterStream",
    "Delivery",
    "FleetPacer",
    "PacerStatistics",
    "Producer",
    "ProducerClosedError",
    "ProducerStatistics",
    "RedisUnavailableError",
    "Turn",
    "Unwritten",
    "connect",
    "partition_of",
    "require_redis",
    "status",
]

EXTRA_HINT: Final = "pip install 'cio-queue[redis]'"
MIN_REDIS_PY: Final = (5, 0, 1)

_HOMES: Final = {
    "BacklogFullError": "._errors",
    "ProducerClosedError": "._errors",
    "RedisUnavailableError": "._errors",
    "Consumer": "._consumer",
    "ConsumerStatistics": "._consumer",
    "Delivery": "._consumer",
    "DeadLetter": "._deadletters",
    "DeadLetterStream": "._deadletters",
    "FleetPacer": "._pacer",
    "PacerStatistics": "._pacer",
    "Turn": "._pacer",
    "Producer": "._producer",
    "ProducerStatistics": "._producer",
    "Unwritten": "._producer",
    "status": "._status",
    "connect": "._streams",
    "partition_of": "._streams",
}


def require_redis() -> None:
    """Check that redis-py, new enough, is installed.

    Raises:
        ConfigError: redis-py is missing or older than 5.0.1; the message says how to
            install the extra.
    """
    try:
        redis = importlib.import_module("redis")
        importlib.import_module("redis.asyncio")
    except ImportError as exc:
        raise ConfigError(f"the Redis fleet layer needs redis-py: {EXTRA_HINT}") from exc
    version = tuple(int(part) for part in redis.__version__.split(".")[:3] if part.isdigit())
    if version < MIN_REDIS_PY:
        raise ConfigError(f"the Redis fleet layer needs redis-py 5.0.1 or newer, found "
                          f"{redis.__version__}: {EXTRA_HINT}")


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_redis()
    return getattr(importlib.import_module(home, __name__), name)
