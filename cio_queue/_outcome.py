"""Outcomes: how every accepted operation ends, and the receipts that report it.

Stage: the end of the pipeline, where the ledger settles an operation and its receipt,
the on_outcome hook and the statistics report it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._exceptions import DeliveryError, QueueUsageError
from ._log import log

__all__ = ["Outcome", "OutcomeStatus", "Receipt", "Statistics", "run_on_outcome"]


class OutcomeStatus(enum.Enum):
    """The one way an accepted operation ends."""

    DELIVERED = "delivered"
    """The API answered 2xx."""
    REJECTED = "rejected"
    """The API refused it (a 3xx, or a 4xx other than 401/403/408/429); not retried."""
    FAILED = "failed"
    """Retries ran out, the credentials were refused, or it was unsent at the shutdown
    deadline with no dead-letter file."""
    DROPPED = "dropped"
    """The overflow policy dropped it from a full queue."""
    DEAD_LETTERED = "dead_lettered"
    """It was unsent at the shutdown deadline and was written to the dead-letter file."""
    FILTERED = "filtered"
    """The application's ``before_send`` hook dropped it at enqueue."""
    SPOOLED = "spooled"
    """It was unsent when the queue stopped and stays in the spool for the next start."""
    STREAMED = "streamed"
    """In a fleet: it is in the Redis stream for a member to deliver: handed off by this
    queue (reason ``"handed_off"``), or taken from the stream by this queue and left there
    unsent when it stopped (reason ``"returned"``)."""

    # Enum hashes a member by its name in Python code; members are singletons compared by
    # identity, so identity's C hash agrees, and counting by status costs less per operation.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final record of one operation.

    Attributes:
        status: how it ended.
        kind: the method that enqueued it, e.g. ``"track"``.
        customer_id: the person it was about, as given (None for anonymous events and merges).
        event_id: the event's dedupe id (events only).
        attempts: HTTP attempts made.
        reason: a short machine-readable cause for anything but delivery: ``"rejected"``
            (the API refused it); ``"retries_exhausted"``, ``"retry_timeout"``,
            ``"rate_limited"`` (too many 429s), ``"unauthorized"`` (401/403),
            ``"unreadable_partial_response"``, ``"sender_error"`` (retries given up, or no
            usable answer); ``"queue_full"`` (dropped); ``"shutdown_deadline"`` (unsent at
            aclose's deadline), ``"abandoned"`` (the event loop stopped the queue before
            aclose), ``"internal_error"``; ``"dead_letter_timeout"`` (its record was still
            being written when aclose's margin ran out); ``"spool_unreadable"`` (its spool
            row could not be read back; ``kind`` is ``"unknown"`` unless its caller still
            held its receipt).
        error: the last delivery error, if any.
    """

    status: OutcomeStatus
    kind: str
    customer_id: object = None
    event_id: str | None = None
    attempts: int = 0
    reason: str | None = None
    error: DeliveryError | None = None


OutcomeParts: TypeAlias = tuple["OutcomeStatus", object, "str | None", int, "str | None",
                                "DeliveryError | None"]
"""An Outcome's fields but ``kind``, in order: what a receipt keeps until it is asked.

Making a frozen dataclass costs about a microsecond, most operations are never asked
about, and the counters need only the status and reason.
"""


class Receipt:
    """Returned by every enqueue call; ``await receipt.wait()`` gives the final Outcome.

    Awaiting it is optional: the operation is delivered (or its failure recorded)
    whether or not anybody waits. An EventQueue's receipt is the queue's own record of
    the operation (``_ledger.Entry``): one kept keeps the operation in memory with it.
    """

    __slots__ = ("__weakref__", "_loop", "_outcome", "event_id", "kind")

    def __init__(self, kind: str, event_id: str | None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.kind = kind
        self.event_id = event_id
        self._loop = loop  # the queue's loop, where the outcome will be set
        # One slot (8 bytes on every queued operation) for where it stands: None, or
        # the future a caller of wait() waits on, until it settles; then the Outcome, or
        # its parts until somebody asks for it (see _settle_parts).
        self._outcome: Outcome | OutcomeParts | asyncio.Future[Outcome] | None = None

    def __repr__(self) -> str:
        outcome = self.outcome
        state = outcome.status.value if outcome is not None else "pending"
        return f"<Receipt {self.kind} {state}>"

    @property
    def outcome(self) -> Outcome | None:
        """The Outcome once settled, else None."""
        outcome = self._outcome
        if type(outcome) is tuple:
            outcome = self._outcome = Outcome(outcome[0], self.kind, *outcome[1:])
        elif asyncio.isfuture(outcome):
            return None  # somebody waits: not settled yet
        return outcome  # type: ignore[return-value]  # neither parts nor a future

    def done(self) -> bool:
        """Return whether the operation has settled."""
        outcome = self._outcome
        return outcome is not None and not asyncio.isfuture(outcome)

    async def wait(self) -> Outcome:
        """Wait until the operation settles and return its Outcome.

        This waits as long as delivery takes (bounded by the retry policy's timeout and
        the shutdown deadline); wrap it in ``anyio.fail_after`` for a tighter bound.

        Raises:
            QueueUsageError: called from an event loop other than the queue's.
        """
        outcome = self.outcome
        if outcome is not None:
            return outcome
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise QueueUsageError("this receipt belongs to a queue on another event loop; "
                                  "wait for it there")
        waiter = self._outcome
        if waiter is None:
            waiter = self._outcome = loop.create_future()
        assert asyncio.isfuture(waiter)
        return await asyncio.shield(waiter)

    def _settle(self, outcome: Outcome) -> None:
        waiter, self._outcome = self._outcome, outcome
        if asyncio.isfuture(waiter) and not waiter.done():
            waiter.set_result(outcome)

    def _settle_parts(self, parts: OutcomeParts) -> None:
        """Settle, making the Outcome only once somebody asks (or already waits)."""
        if self._outcome is None:  # nobody waits (unsettled, its slot holds a future else)
            self._outcome = parts
        else:
            self._settle(Outcome(parts[0], self.kind, *parts[1:]))


@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of a queue's counters.

    ``enqueued + taken == delivered + rejected + failed + dropped + filtered +
    dead_lettered + spooled + streamed + pending`` holds in every snapshot (``taken`` and
    ``streamed`` stay 0 outside a fleet).

    Attributes:
        enqueued: operations accepted by an enqueue call (including any later dropped).
        delivered: operations the API accepted.
        rejected: operations the API refused with a non-retryable status.
        failed: operations given up after retries, or unsent at shutdown with no file.
        dropped: operations dropped by the overflow policy.
        filtered: operations the ``before_send`` hook dropped.
        dead_lettered: operations unsent at shutdown and written to the dead-letter file.
        spooled: with a spool, operations on disk only: accepted while memory was full and
            not loaded back yet, or left in the spool when the queue stopped (and, after a
            restart, counted here until loaded). Operations recovered from the spool at
            start count as enqueued.
        streamed: in a fleet, operations handed to the Redis stream by this queue, plus
            those it took from the stream and left there unsent when it stopped.
        taken: in a fleet, operations this queue took from the stream to deliver.
        pending: operations in memory and not yet settled (queued, in flight, retrying).
        queued: of the pending, those still waiting for the flusher.
        batches: batches the flusher has handed to the sender.
        requests: HTTP requests started (attempts, including retries).
        retries: attempts after an operation's first.
        rate_limited: 429 responses received.
        unauthorized: 401 and 403 responses received (bad credentials or region).
    """

    enqueued: int = 0
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    spooled: int = 0
    streamed: int = 0
    taken: int = 0
    pending: int = 0
    queued: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    unauthorized: int = 0


def run_on_outcome(callback: Callable[[Outcome], Any], outcome: Outcome,
                   loop: asyncio.AbstractEventLoop | None,
                   tasks: set[asyncio.Task[Any]]) -> None:
    """Run the user's ``on_outcome`` for ``outcome``; it never stops delivery.

    A sync callback runs here; an async one becomes a task of ``loop``, kept in ``tasks``
    until it ends (so a close can wait for it). What either raises is logged, never
    raised. With no running loop left (it failed), an async callback cannot run and is
    closed unawaited.
    """
    try:
        result = callback(outcome)
    except Exception:  # noqa: BLE001 - a user's callback never stops delivery
        log.exception("cio_queue.on_outcome_failed", kind=outcome.kind)
        return
    if not inspect.isawaitable(result):
        return
    if loop is None or not loop.is_running():
        if inspect.iscoroutine(result):
            result.close()
        return
    task = loop.create_task(_await(result), name="cio_queue.on_outcome")
    tasks.add(task)
    task.add_done_callback(functools.partial(_callback_done, tasks))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _callback_done(tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("cio_queue.on_outcome_failed", exc_info=task.exception())
