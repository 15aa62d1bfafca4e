"""cio-queue: a non-blocking, batching asyncio client for the Customer.io Track API.

Stage: none; the public names of every stage, gathered for ``import cio_queue``.
"""

from ._before_send import OperationView
from ._config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_RATE_LIMIT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    Overflow,
    QueueConfig,
    Region,
    SpoolDurability,
    Transport,
)
from ._exceptions import (
    CioQueueError,
    ConfigError,
    DeliveryError,
    InvalidEventError,
    QueueClosedError,
    QueueFullError,
    QueueUsageError,
    RateLimitedError,
    RejectedError,
    ReplayInProgressError,
    ServerError,
    SpoolError,
    TransportError,
    UnauthorizedError,
)
from ._operations import Timestamp
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue
from ._region import AccountRegion
from ._replay import replay
from ._retry import RetryPolicy
from ._sender import HttpSender, Request, Response, Sender
from ._sync import SyncEventQueue, SyncReceipt
from ._typed import DeclaredEvent, Event, EventCatalog, TypedEventQueue
from ._version import __version__

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "AccountRegion",
    "CioQueueError",
    "ConfigError",
    "DeclaredEvent",
    "DeliveryError",
    "Event",
    "EventCatalog",
    "EventQueue",
    "HttpSender",
    "InvalidEventError",
    "OperationView",
    "Outcome",
    "OutcomeStatus",
    "Overflow",
    "QueueClosedError",
    "QueueConfig",
    "QueueFullError",
    "QueueUsageError",
    "RateLimitedError",
    "Receipt",
    "Region",
    "RejectedError",
    "ReplayInProgressError",
    "Request",
    "Response",
    "RetryPolicy",
    "Sender",
    "ServerError",
    "SpoolDurability",
    "SpoolError",
    "Statistics",
    "SyncEventQueue",
    "SyncReceipt",
    "Timestamp",
    "Transport",
    "TransportError",
    "TypedEventQueue",
    "UnauthorizedError",
    "__version__",
    "replay",
]
