"""Exceptions of the fleet layer, in cio-queue's tree.

Stage: the fleet link (what its Redis components raise).

::

    CioQueueError
    ├── ConfigError                 the extra is missing, Redis is too old, a partition
    │                               count or client option disagrees
    ├── QueueFullError
    │   └── BacklogFullError        the producer's local buffer is full
    ├── QueueClosedError
    │   └── ProducerClosedError     add after aclose()
    └── RedisUnavailableError       a call that cannot wait found Redis unreachable

Components that can wait (the producer's flusher, the consumer's lease keeper and acker,
the pacer's ``wait_turn``) never raise on an outage: they retry with backoff and log one
error per outage. redis-py's own exceptions never escape this package.
"""

from __future__ import annotations

from typing import ClassVar

from .._exceptions import CioQueueError, QueueClosedError, QueueFullError

__all__ = ["BacklogFullError", "ProducerClosedError", "RedisUnavailableError"]


class BacklogFullError(QueueFullError):
    """Raised by Producer.add_nowait() when its local buffer is full; nothing was added."""


class ProducerClosedError(QueueClosedError):
    """Raised by a Producer's add calls once its aclose() has begun."""


class RedisUnavailableError(CioQueueError):
    """Raised when Redis cannot be reached by a call that does not retry on its own."""

    retryable: ClassVar[bool] = True
