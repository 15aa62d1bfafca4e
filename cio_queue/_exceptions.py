"""Exceptions raised by cio-queue.

Stage: none; the errors of every stage (see below which raises which).

``ConfigError`` comes from the configuration and the next four from intake, at the call
site; ``SpoolError`` from the spool (``spool_path``), when the queue starts or when a
commit fails; the delivery errors are the courier's, and travel in the Outcome. The tree::

    CioQueueError
    ├── ConfigError            (also ValueError)
    ├── InvalidEventError      (also ValueError)
    ├── QueueClosedError
    ├── QueueFullError
    ├── QueueUsageError        (also RuntimeError)
    ├── SpoolError             the spool directory or file cannot be used or written
    ├── ReplayInProgressError  replay() of a file that another replay is working through
    └── DeliveryError          .status, .retryable
        ├── RejectedError      4xx other than 401/403/408/429, 3xx, 1xx, >= 600: never retried
        ├── UnauthorizedError  401, 403: bad credentials or region; never retried
        ├── ServerError        5xx and 408: retried
        ├── RateLimitedError   429: retried after the shared gate opens
        └── TransportError     network error or timeout: retried

Delivery errors never reach a caller of ``identify``/``track``: they end up in the
operation's :class:`~cio_queue.Outcome`. Whether one is retried is decided by its
``retryable`` class attribute, never by switching on status codes elsewhere.
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "CioQueueError",
    "ConfigError",
    "DeliveryError",
    "InvalidEventError",
    "QueueClosedError",
    "QueueFullError",
    "QueueUsageError",
    "RateLimitedError",
    "RejectedError",
    "ReplayInProgressError",
    "ServerError",
    "SpoolError",
    "TransportError",
    "UnauthorizedError",
]


class CioQueueError(Exception):
    """Root of every exception cio-queue raises."""


class ConfigError(CioQueueError, ValueError):
    """Raised when a QueueConfig or RetryPolicy is given an invalid value."""


class InvalidEventError(CioQueueError, ValueError):
    """Raised at the call site when an operation's input is invalid; nothing was enqueued.

    Attributes:
        field: the argument or attribute path at fault, e.g. ``"data.items[2].price"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class QueueClosedError(CioQueueError):
    """Raised by an enqueue call after ``aclose()`` has begun."""


CLOSED_WHILE_WAITING: Final = "the EventQueue closed while this call waited"
"""Why a call that waited (for room, for the spool) gets QueueClosedError."""


class QueueFullError(CioQueueError):
    """Raised when the queue is full and the overflow policy is "raise" or "block" timed out."""


class QueueUsageError(CioQueueError, RuntimeError):
    """Raised when a queue is used from another event loop or a forked child process."""


class SpoolError(CioQueueError):
    """Raised when the spool directory or a spool file cannot be used, or a commit fails."""


class ReplayInProgressError(CioQueueError):
    """Raised by ``replay()`` when another replay of the same file is running."""


class DeliveryError(CioQueueError):
    """A request for an operation failed; carried by the operation's Outcome.

    Attributes:
        status: the HTTP status, or None when no response arrived.
        retry_after: seconds from the response's Retry-After header, or None.
        retryable: whether a later attempt may succeed (a class attribute).
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RejectedError(DeliveryError):
    """The API refused the operation (4xx other than 408/429) or redirected it; never retried."""

    retryable = False


class UnauthorizedError(DeliveryError):
    """The API refused the credentials (401 or 403): the key, the site id or the region."""

    retryable = False


class ServerError(DeliveryError):
    """The API answered 5xx or 408; a later attempt may succeed."""

    retryable = True


class RateLimitedError(DeliveryError):
    """The API answered 429; every sender pauses until Retry-After (or a default) passes."""

    retryable = True


class TransportError(DeliveryError):
    """No usable response arrived: connection refused or dropped, or the request timed out."""

    retryable = True
