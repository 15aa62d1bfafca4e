"""The courier: one attempt to carry a parcel of operations to the Track API, and its verdict.

Stage: delivery. A :class:`Parcel` is the operations that travel in one HTTP request
(a v1 request holds one; a v2 ``/api/v2/batch`` request as many as fit). The courier
builds the request when it is sent (no body is kept while a parcel waits), waits for the
shared 429 gate and the rate limit, sends it, and judges the answer by the RetryPolicy.
It returns a :data:`Step` and nothing else: it never settles an operation and keeps no
statistics; the dispatcher applies the step and the ledger settles.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any, Final, Protocol

import anyio

from ._config import QueueConfig
from ._exceptions import (
    CioQueueError,
    DeliveryError,
    RateLimitedError,
    RejectedError,
    TransportError,
    UnauthorizedError,
)
from ._ledger import DELIVERED, Entry, Verdict
from ._log import log
from ._outcome import OutcomeStatus
from ._pacing import RequestPacer
from ._packing import batch_body, partial_errors
from ._region import REGION_REQUEST, read_region
from ._sender import Request, Response, Sender, classify

__all__ = ["Closing", "Courier", "Done", "Order", "Parcel", "Retry", "SharedBudget", "Split",
           "Step", "Stranded"]

V1_PREFIX: Final = "/api/v1"
V2_BATCH_PATH: Final = "/api/v2/batch"

Order = tuple[int, int]
"""A parcel's place in line (``Parcel.order``): older parcels go first."""
_made: Final = count()  # parcels in the order they were made: ties in Parcel.order


class SharedBudget(Protocol):
    """A rate budget and a 429 gate shared with other processes (the fleet's FleetPacer)."""

    async def next_turn(self) -> tuple[bool, float]:
        """``(True, 0)`` for a start granted now, else ``(False, seconds to wait)``."""

    async def close_gate(self, seconds: float) -> float:
        """Keep every process from starting a request for ``seconds``."""


class Closing:
    """The shutdown deadline, shared by the dispatcher and the courier.

    ``event`` is set when ``aclose()`` begins; ``deadline`` (monotonic seconds) is when
    undelivered work is stranded. No attempt starts, and no backoff runs, past it.
    """

    __slots__ = ("deadline", "event")

    def __init__(self) -> None:
        self.deadline = math.inf
        self.event = asyncio.Event()

    def begin(self, deadline: float) -> None:
        """Start the shutdown: nothing may start after ``deadline``."""
        self.deadline = deadline
        self.event.set()

    def crossed(self, when: float) -> bool:
        """Whether ``when`` falls after the shutdown deadline."""
        return when > self.deadline


class Parcel:
    """Operations that travel in one request, with the retry state of that request.

    Attributes:
        entries: the operations, in order (one for v1).
        v2: whether they travel as one ``/api/v2/batch`` request.
        batch: the dispatcher's record of the flushed batch they came from.
        sent: requests sent for this parcel so far.
        failures: failed attempts that count toward ``RetryPolicy.attempts``.
        throttles: 429 answers, which count toward ``RetryPolicy.throttled_attempts``.
        first_sent: when the first attempt started (monotonic seconds), or None.
        order: the parcel's place in line, lower first: the rank of the parcel it was
            cut from (a split or a partial retry) or, for a new one, the order it was made
            in; then the order it was made in, so no two parcels ever tie.
    """

    __slots__ = ("batch", "elapsed", "entries", "failures", "first_sent", "order", "sent",
                 "status", "throttles", "v2")

    def __init__(self, entries: list[Entry], *, v2: bool, batch: Any,
                 rank: int | None = None) -> None:
        self.entries = entries
        self.v2 = v2
        self.batch = batch
        self.sent = 0
        self.failures = 0
        self.throttles = 0
        self.elapsed = 0.0  # how long the last attempt took, in seconds
        self.status: int | None = None  # the last attempt's HTTP status, None: no answer
        self.first_sent: float | None = None
        # A key per parcel, not a number per operation: a queued operation stays smaller.
        made = next(_made)
        self.order: Order = (made if rank is None else rank, made)


@dataclass(frozen=True, slots=True)
class Done:
    """The attempt ended the parcel: one verdict per operation, in order."""

    verdicts: Sequence[Verdict]
    status: int | None = None
    error: DeliveryError | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the parcel again after ``delay`` seconds."""

    delay: float
    error: DeliveryError


@dataclass(frozen=True, slots=True)
class Split:
    """The API refused the request as a whole: send each part as a parcel of its own."""

    parts: tuple[list[Entry], list[Entry]]
    error: DeliveryError


@dataclass(frozen=True, slots=True)
class Stranded:
    """No attempt was made: the shutdown deadline comes before the request may start."""


Step = Done | Retry | Split | Stranded
STRANDED: Final = Stranded()


class Courier:
    """Carry parcels: pace, send, and judge each attempt."""

    def __init__(self, config: QueueConfig, sender: Sender, closing: Closing,
                 clock: Callable[[], float] = time.monotonic,
                 budget: SharedBudget | None = None) -> None:
        self._config = config
        self._policy = config.retry
        self._sender = sender
        self._closing = closing
        self._clock = clock
        # In a fleet the shared budget keeps the rate; the local pacer keeps the 429
        # gate too, so this process pauses at once, before the fleet's gate is closed.
        self._budget = budget
        self.pacer = RequestPacer(config.rate_limit if budget is None else None)
        self._routed = config.data_centre != "auto"
        self._routing = asyncio.Lock()

    async def attempt(self, parcel: Parcel) -> Step:
        """Make one attempt at delivering ``parcel`` and say what comes next."""
        if not await self._pace():
            return STRANDED
        now = self._clock()
        if parcel.first_sent is None:
            parcel.first_sent = now
        parcel.sent += 1
        parcel.status = None
        try:
            if not self._routed and (refused := await self._discover_region()) is not None:
                return self._judge_error(parcel, refused)
            response = await self._sender.send(self._request(parcel))
        except TransportError as exc:
            parcel.elapsed = self._clock() - now
            return self._judge_error(parcel, exc)
        except Exception as exc:  # noqa: BLE001 - a broken Sender must not stop the queue
            log.error("cio_queue.sender_failed", operations=len(parcel.entries),
                      error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            failure = DeliveryError(f"the sender raised {type(exc).__name__}: {exc}")
            return _all(parcel, Verdict(OutcomeStatus.FAILED, "sender_error", failure), failure)
        parcel.elapsed, parcel.status = self._clock() - now, response.status
        error = classify(response)
        if error is None:
            return self._accepted(parcel, response)
        step = self._judge_error(parcel, error)
        if self._budget is not None and isinstance(error, RateLimitedError):
            await self._share_gate()
        return step

    async def _discover_region(self) -> DeliveryError | None:
        """``region="auto"``: ask the API where the workspace lives, once, before sending.

        Returns the error of a refused answer (judged like the parcel's own); a transport
        error propagates to the caller like any failed attempt.
        """
        async with self._routing:
            if self._routed:
                return None
            response = await self._sender.send(REGION_REQUEST)
            error = classify(response)
            if error is not None:
                return error
            try:
                account = read_region(response)
            except DeliveryError as exc:
                log.warning("cio_queue.region_unknown", error=str(exc),
                            url=self._config.track_url)
            else:
                route_to = getattr(self._sender, "route_to", None)
                if self._config.base_url is None and route_to is not None:
                    route_to(account.url)
                log.info("cio_queue.region", region=account.region.name.lower(),
                         url=account.url)
            self._routed = True
            return None

    def _request(self, parcel: Parcel) -> Request:
        if parcel.v2:
            return Request("POST", V2_BATCH_PATH,
                           batch_body([e.op.v2 or b"" for e in parcel.entries]))
        op = parcel.entries[0].op
        return Request(op.method, V1_PREFIX + op.path, op.body)

    async def _pace(self) -> bool:
        """Wait for the 429 gate and the rate limit; False if that crosses the deadline."""
        pacer = self.pacer
        while True:
            now = self._clock()
            wait = pacer.delay(now)
            if wait <= 0:
                break
            if not await self._sleep(now, wait):
                return False
        budget = self._budget
        while budget is not None:
            granted, wait = await budget.next_turn()
            if granted:
                break
            if not await self._sleep(self._clock(), wait):
                return False
        pacer.start(self._clock())
        return True

    async def _sleep(self, now: float, wait: float) -> bool:
        """Sleep ``wait`` seconds; False, at once, if that would cross the shutdown deadline.

        Wakes early when the shutdown begins, to check against its deadline.
        """
        closing = self._closing
        if closing.crossed(now + wait):
            return False
        with anyio.move_on_after(wait):
            await (closing.event.wait() if not closing.event.is_set() else anyio.sleep(wait))
        return True

    async def _share_gate(self) -> None:
        """Close the fleet's gate as long as this process's own: every member pauses."""
        assert self._budget is not None
        seconds = self.pacer.gate_until - self._clock()
        try:
            async with asyncio.timeout(1.0):
                await self._budget.close_gate(seconds)
        except (TimeoutError, CioQueueError) as exc:
            log.warning("cio_queue.fleet_gate_not_shared", seconds=round(seconds, 3),
                        error=f"{type(exc).__name__}: {exc}")

    def _accepted(self, parcel: Parcel, response: Response) -> Done:
        count = len(parcel.entries)
        if response.status != 207:
            return Done([DELIVERED] * count, response.status)
        errors = partial_errors(response.body, count, truncated=response.truncated)
        if errors is None:
            # Which ones failed is unknown; keep them all (events dedupe by id on replay).
            log.error("cio_queue.unreadable_partial_response", operations=count)
            error = DeliveryError("207 with an unreadable error list", status=207)
            return _all(parcel, Verdict(OutcomeStatus.FAILED, "unreadable_partial_response",
                                        error), error)
        verdicts = [DELIVERED] * count
        for index, message in errors.items():
            verdicts[index] = Verdict(OutcomeStatus.REJECTED, "rejected",
                                      RejectedError(message, status=207))
        return Done(verdicts, 207)

    def _judge_error(self, parcel: Parcel, error: DeliveryError) -> Step:
        """Decide what follows a failed attempt: reject, split, retry or give up."""
        if not error.retryable:
            return self._refused(parcel, error)
        now = self._clock()
        if isinstance(error, RateLimitedError):
            parcel.throttles += 1
            if parcel.throttles >= self._policy.throttled_attempts:
                return _all(parcel, Verdict(OutcomeStatus.FAILED, "rate_limited", error), error)
            delay = self._throttle(now, error)
        else:
            parcel.failures += 1
            if parcel.failures >= self._policy.attempts:
                return _all(parcel, Verdict(OutcomeStatus.FAILED, "retries_exhausted", error),
                            error)
            delay = self._backoff(parcel.failures, error)
        assert parcel.first_sent is not None
        if now + delay - parcel.first_sent > self._policy.timeout:
            return _all(parcel, Verdict(OutcomeStatus.FAILED, "retry_timeout", error), error)
        return Retry(delay, error)

    def _refused(self, parcel: Parcel, error: DeliveryError) -> Step:
        """A non-retryable answer: bad credentials, a malformed request, or bad data."""
        if isinstance(error, UnauthorizedError):
            # Not the operations' fault: keep them (failed, dead-lettered) for a replay.
            return _all(parcel, Verdict(OutcomeStatus.FAILED, "unauthorized", error), error)
        if parcel.v2 and error.status in (400, 413) and len(parcel.entries) > 1:
            middle = len(parcel.entries) // 2
            return Split((parcel.entries[:middle], parcel.entries[middle:]), error)
        return _all(parcel, Verdict(OutcomeStatus.REJECTED, "rejected", error), error)

    def _throttle(self, now: float, error: RateLimitedError) -> float:
        """Close the shared gate after a 429 (which costs no attempt); return its pause."""
        delay = (self._config.rate_limited_pause if error.retry_after is None
                 else self._policy.clamp_retry_after(error.retry_after))
        self.pacer.close_gate(now, delay)
        return delay

    def _backoff(self, failures: int, error: DeliveryError) -> float:
        if error.retry_after is None:
            return self._policy.backoff(failures)
        return self._policy.clamp_retry_after(error.retry_after)


def _all(parcel: Parcel, verdict: Verdict, error: DeliveryError) -> Done:
    return Done([verdict] * len(parcel.entries), error.status, error)
