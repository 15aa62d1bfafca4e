"""The dispatcher: when a batch leaves, who carries it, and what follows each attempt.

Stage: between intake and the courier. Intake appends operations to the pure
:class:`BatchAccumulator`. The flusher task moves a due batch (``batch_size`` waiting,
or the oldest ``flush_interval`` old) into parcels on the ready queue, and moves parcels
whose backoff has passed back onto it; it takes a new batch only while the ready queue is
short, so operations that cannot be sent yet wait in the accumulator as plain entries.
``max_concurrency`` worker tasks take parcels, oldest operations first, and let the
courier make one attempt each. A parcel waiting to retry is data in a heap, not a
sleeping task: it holds no worker, so it never holds up other batches, and shutdown finds
it by its due time. The verdicts go to the ledger; nothing here settles.

Per-person order: an operation that overwrites a person's state (identify, delete,
suppress, unsuppress, the device operations, merge) waits in that person's line until
every earlier such operation for the same person has been decided, so a retried identify
is never overtaken by a later one. A merge stands in both people's lines. Events are not
ordered. When a held operation's predecessor is stranded at shutdown, it is stranded too,
so the dead-letter file keeps them in order.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import anyio

from ._accumulator import BatchAccumulator
from ._config import QueueConfig
from ._courier import Closing, Courier, Done, Order, Parcel, Retry, Split, Step, Stranded
from ._exceptions import RateLimitedError, UnauthorizedError
from ._ledger import Entry, Ledger, Verdict, may_succeed_later
from ._log import debug_enabled, log
from ._ordering import MAY_BE_ORDERED, order_keys
from ._outcome import OutcomeStatus
from ._packing import pack
from ._telemetry import Telemetry

__all__ = ["SHUTDOWN_REASON", "Dispatcher"]

SHUTDOWN_REASON: Final = "shutdown_deadline"


class _Batch:
    """A flushed batch, followed through its parcels for one log line at the end.

    Operations held back behind an earlier one of the same person are counted ``held``
    here; they travel, and are logged, with a later batch.
    """

    __slots__ = ("counts", "error", "open", "requests", "size", "started", "status")

    def __init__(self, size: int, started: float) -> None:
        self.size = size
        self.started = started
        self.open = 0
        self.requests = 0
        self.counts = dict.fromkeys(("delivered", "rejected", "failed", "spooled", "retrying",
                                     "stranded", "held"), 0)
        self.status: int | None = None
        self.error: str | None = None

    def close_parcel(self, now: float) -> None:
        self.open -= 1
        if self.open <= 0:
            self.log(now)

    def log(self, now: float) -> None:
        counts = self.counts
        sent = counts["delivered"] + counts["held"] == self.size
        if sent and not debug_enabled():
            return
        fields = {"operations": self.size, "requests": self.requests, **counts,
                  "duration": round(now - self.started, 4)}
        if sent:
            log.debug("cio_queue.batch_sent", **fields)
        else:
            log.warning("cio_queue.batch_failed", **fields, status=self.status,
                        error=self.error)


class Dispatcher:
    """Run the flusher and the workers between the accumulator and the courier."""

    def __init__(self, config: QueueConfig, ledger: Ledger, courier: Courier,
                 closing: Closing, *, clock: Callable[[], float] = time.monotonic,
                 telemetry: Telemetry | None = None) -> None:
        self.acc: BatchAccumulator[Entry] = BatchAccumulator(config.batch_size,
                                                              config.flush_interval)
        ledger.waiting = self.acc.items  # the queued operations wait here, not in the ledger
        self.workers = config.max_concurrency
        self._ledger = ledger
        self._courier = courier
        self._closing = closing
        self._clock = clock
        self._ready: asyncio.PriorityQueue[tuple[Order, Parcel]] = asyncio.PriorityQueue()
        self._ready_limit = config.max_concurrency
        self._backoff: list[tuple[float, Order, Parcel]] = []
        # Each person's line of ordered operations: the head is in flight, the rest wait.
        self._lines: dict[tuple[str, str], deque[Entry]] = {}
        self._ordered = config.order_per_person
        # With a spool, an ordered operation whose retries ran out while the API was down
        # is not put back in the spool (the ledger's respool, at the tail, behind newer
        # operations of its person): it tries again where it is, holding its line.
        self._retry_in_place = config.order_per_person and config.spool_path is not None
        self._retry_pause = config.retry.wait_max
        self._released: list[Entry] = []  # came to the head of their lines: go next
        self._wake = asyncio.Event()
        self.batches = self.requests = self.retries = self.rate_limited = 0
        self.in_flight = 0  # attempts being made now
        self._telemetry = telemetry
        self.unauthorized = 0
        self._said_unauthorized = False  # one error per spell of refused credentials
        self._stalled_after = config.stalled_after
        self._last_answer = clock()  # the last final answer, or when work last arrived
        self._said_stalled = False  # one warning per stall
        self._last_error: str | None = None

    # --- intake side -----------------------------------------------------------------

    def submit(self, entry: Entry) -> None:
        """Queue an admitted operation for its batch."""
        now = self._clock()
        if self.acc.append(entry, now):  # the first one waiting (or a full batch)
            if self._ledger.pending == 1:
                self._last_answer = now  # the queue was idle: a stall is counted from now
            self._wake.set()

    def expedite(self) -> None:
        """Make everything queued now due at once (flush and shutdown)."""
        self.acc.expedite()
        self._wake.set()

    def take_oldest(self) -> Entry | None:
        """Remove the oldest queued operation (for a drop-oldest overflow), if any."""
        return self.acc.popleft() if len(self.acc) else None

    def begin_close(self, deadline: float) -> None:
        """Send what is queued at once; strand retries that could only start too late."""
        self._closing.begin(deadline)
        self.expedite()
        keep: list[tuple[float, Order, Parcel]] = []
        late: list[tuple[float, Order, Parcel]] = []
        for item in self._backoff:
            (late if self._closing.crossed(item[0]) else keep).append(item)
        if late:
            heapq.heapify(keep)
            self._backoff = keep
            for _, _, parcel in late:
                self._strand(parcel)

    # --- the flusher -------------------------------------------------------------------

    async def run_flusher(self) -> None:
        """Move due batches and due retries onto the ready queue, for ever."""
        acc, wake = self.acc, self._wake
        while True:
            now = self._clock()
            self._check_stall(now)
            self._release_retries(now)
            while self._ready.qsize() < self._ready_limit and (self._released or acc.due(now)):
                self._launch(now)
            wake.clear()
            wait = self._next_wake(now)
            if wait is None:
                await wake.wait()
            else:
                with anyio.move_on_after(wait):
                    await wake.wait()

    def _next_wake(self, now: float) -> float | None:
        """Seconds until the flusher has something to do by the clock alone, or None."""
        times = []
        if self._ready.qsize() < self._ready_limit:
            if self._released:
                return 0.0
            deadline = self.acc.deadline()
            if deadline is not None:
                times.append(deadline)
        if self._backoff:
            times.append(self._backoff[0][0])
        if self._watching_stall():
            assert self._stalled_after is not None
            times.append(self._last_answer + self._stalled_after)
        return max(0.0, min(times) - now) if times else None

    def _watching_stall(self) -> bool:
        return (self._stalled_after is not None and not self._said_stalled
                and self._ledger.undecided > 0)

    def _check_stall(self, now: float) -> None:
        """Warn once when the API has given no final answer for ``stalled_after``."""
        if self._watching_stall():
            assert self._stalled_after is not None
            if now - self._last_answer >= self._stalled_after:
                self._said_stalled = True
                log.warning("cio_queue.stalled", seconds=round(now - self._last_answer, 1),
                            pending=self._ledger.pending, last_error=self._last_error,
                            hint="the Track API has answered nothing final for this long; "
                                 "the operations wait and are retried")

    def _release_retries(self, now: float) -> None:
        backoff = self._backoff
        while backoff and backoff[0][0] <= now:
            _, order, parcel = heapq.heappop(backoff)
            self._ready.put_nowait((order, parcel))

    def _launch(self, now: float) -> None:
        """Take a batch: operations released from their lines first, then what is due.

        An operation that must wait for an earlier one of the same person stays in that
        person's line until it is decided (and then rides with a later batch), so the
        batch is filled up to ``batch_size`` with operations that may go now.
        """
        batch = self._take_released()
        held = 0
        acc, size = self.acc, self.acc.batch_size
        while len(batch) < size and acc.due(now):
            taken = acc.take(size - len(batch))
            self._ledger.dispatch(taken)
            if not self._ordered:
                batch.extend(taken)
                continue
            for entry in taken:
                if entry.op.kind in MAY_BE_ORDERED and not self._line_up(entry):
                    held += 1
                else:
                    batch.append(entry)
        self._send(batch, held, now)

    def _send(self, entries: list[Entry], held: int, now: float) -> None:
        """Put a batch's parcels on the ready queue for the workers."""
        self.batches += 1
        batch = _Batch(len(entries) + held, now)
        batch.counts["held"] = held
        parcels = _parcels(entries, batch)
        batch.open = len(parcels)
        if not parcels:
            batch.log(now)
        for parcel in parcels:
            self._ready.put_nowait((parcel.order, parcel))

    def _take_released(self) -> list[Entry]:
        count = min(len(self._released), self.acc.batch_size)
        taken, self._released = self._released[:count], self._released[count:]
        return taken

    def _line_up(self, entry: Entry) -> bool:
        """Put an ordered operation in its people's lines; say whether it may go now."""
        free = True
        for key in order_keys(entry.op):
            line = self._lines.get(key)
            if line is None:
                self._lines[key] = deque([entry])
            else:
                line.append(entry)
                free = False
        return free

    def _release(self, entry: Entry, *, stranded: bool) -> None:
        """An ordered operation is decided: let the next in its people's lines go.

        After a stranded one, the next are stranded too, so that they keep their order
        in the dead-letter file.
        """
        for key in order_keys(entry.op):
            line = self._lines.get(key)
            if not line or line[0] is not entry:
                continue
            line.popleft()
            if not line:
                del self._lines[key]
                continue
            follower = line[0]
            if stranded:
                self._ledger.strand([follower], SHUTDOWN_REASON)
                self._release(follower, stranded=True)
            elif all(self._lines[k][0] is follower for k in order_keys(follower.op)):
                self._released.append(follower)
                self._wake.set()

    # --- the workers ---------------------------------------------------------------------

    async def run_worker(self) -> None:
        """Carry parcels, one attempt at a time, for ever."""
        ready = self._ready
        while True:
            _, parcel = await ready.get()
            if len(self.acc) and ready.qsize() < self._ready_limit:
                self._wake.set()
            self.in_flight += 1
            try:
                step = await self._courier.attempt(parcel)
            finally:
                self.in_flight -= 1
            self._apply(parcel, step)

    def _apply(self, parcel: Parcel, step: Step) -> None:
        """Carry out what the courier decided after one attempt."""
        if not isinstance(step, Stranded):
            self._count_attempt(parcel, step)
        match step:
            case Done():
                self._last_answer, self._said_stalled = self._clock(), False
                self._decide(parcel, step)
            case Retry(delay=delay, error=error):
                if self._telemetry is not None and isinstance(error, RateLimitedError):
                    self._telemetry.throttled(delay)
                self._retry_later(parcel, self._clock() + delay)
            case Split(parts=parts, error=error):
                log.debug("cio_queue.batch_split", status=error.status,
                         operations=len(parcel.entries))
                parcel.batch.open += len(parts) - 1
                for part in parts:
                    half = Parcel(part, v2=True, batch=parcel.batch, rank=parcel.order[0])
                    self._ready.put_nowait((half.order, half))
            case Stranded():
                self._strand(parcel)

    def _count_attempt(self, parcel: Parcel, step: Done | Retry | Split) -> None:
        self.requests += 1
        parcel.batch.requests += 1
        self.retries += parcel.sent > 1
        self.rate_limited += isinstance(step.error, RateLimitedError)
        for entry in parcel.entries:
            entry.attempts += 1
        if step.error is not None:
            self._last_error = str(step.error)
        if self._telemetry is not None:
            self._report(parcel, step)
        if isinstance(step.error, UnauthorizedError):
            self.unauthorized += 1
            if not self._said_unauthorized:
                self._said_unauthorized = True
                log.error("cio_queue.unauthorized", status=step.error.status,
                          hint="the Track API refused the credentials: check site_id and "
                               "api_key, and that region (or base_url) is the workspace's; "
                               "the operations are kept as failed (dead-lettered) for a replay")
        elif step.error is None:
            self._said_unauthorized = False

    def _report(self, parcel: Parcel, step: Done | Retry | Split) -> None:
        telemetry = self._telemetry
        assert telemetry is not None
        method = "POST" if parcel.v2 else parcel.entries[0].op.method
        telemetry.request(parcel.elapsed, method, parcel.status,
                          type(step.error).__name__ if step.error is not None else None)
        if parcel.sent > 1:
            telemetry.retry()

    def _decide(self, parcel: Parcel, step: Done) -> None:
        batch: _Batch = parcel.batch
        counts = batch.counts
        entries, verdicts = parcel.entries, step.verdicts
        again: list[Entry] = []
        if self._retry_in_place:
            kept = [_keeps_its_place(e, v) for e, v in zip(entries, verdicts, strict=True)]
            if any(kept):
                again = [e for e, keep in zip(entries, kept, strict=True) if keep]
                entries = [e for e, keep in zip(entries, kept, strict=True) if not keep]
                verdicts = [v for v, keep in zip(verdicts, kept, strict=True) if not keep]
        for verdict, group in _runs(entries, verdicts):
            spooled = self._ledger.decide_all(group, verdict)
            counts["spooled"] += spooled
            counts[_COUNT_NAMES[verdict.status]] += len(group) - spooled
        if self._lines:
            for entry in entries:
                self._release(entry, stranded=False)
        if step.error is not None:
            batch.status, batch.error = step.status, str(step.error)
        if again:
            counts["retrying"] += len(again)
            batch.open += 1
            self._retry_later(Parcel(again, v2=parcel.v2, batch=batch, rank=parcel.order[0]),
                              self._clock() + self._retry_pause)
        batch.close_parcel(self._clock())

    def _retry_later(self, parcel: Parcel, due: float) -> None:
        if self._closing.crossed(due):
            self._strand(parcel)  # its backoff would end after the shutdown deadline
            return
        heapq.heappush(self._backoff, (due, parcel.order, parcel))
        self._wake.set()

    def _strand(self, parcel: Parcel) -> None:
        batch: _Batch = parcel.batch
        batch.counts["stranded"] += self._ledger.strand(parcel.entries, SHUTDOWN_REASON)
        batch.close_parcel(self._clock())
        if self._lines:
            for entry in parcel.entries:
                self._release(entry, stranded=True)


def _runs(entries: list[Entry], verdicts: Sequence[Verdict]
          ) -> list[tuple[Verdict, list[Entry]]]:
    """The operations of a parcel in runs of one verdict each, in order.

    Usually one run (a 2xx, or a refusal, gives every operation the same verdict), which
    the ledger takes in one call; a 207 that names some makes a run of each stretch.
    """
    if not verdicts:
        return []
    first = verdicts[0]
    if verdicts.count(first) == len(verdicts):
        return [(first, entries)]
    runs, start = [], 0
    for index in range(1, len(verdicts) + 1):
        if index == len(verdicts) or verdicts[index] is not verdicts[start]:
            runs.append((verdicts[start], entries[start:index]))
            start = index
    return runs


def _keeps_its_place(entry: Entry, verdict: Verdict) -> bool:
    """An ordered, spooled operation given up while the API was down: it tries again."""
    return entry.key is not None and may_succeed_later(verdict) and bool(order_keys(entry.op))


def _parcels(entries: list[Entry], batch: _Batch) -> list[Parcel]:
    """Split a batch into requests: v1 singles, and the rest packed into v2 requests.

    Sealing decided each operation's form: one with v2 bytes travels by ``/api/v2/batch``.
    """
    parcels = [Parcel([e], v2=False, batch=batch) for e in entries if e.op.v2 is None]
    if len(parcels) < len(entries):
        packed = [e for e in entries if e.op.v2 is not None]
        for group in pack([len(e.op.v2 or b"") for e in packed]):
            parcels.append(Parcel(packed[group.start:group.stop], v2=True, batch=batch))
    assert sum(len(p.entries) for p in parcels) == len(entries)
    return parcels


_COUNT_NAMES: Final = {
    OutcomeStatus.DELIVERED: "delivered",
    OutcomeStatus.REJECTED: "rejected",
    OutcomeStatus.FAILED: "failed",
    OutcomeStatus.DROPPED: "failed",
    OutcomeStatus.DEAD_LETTERED: "failed",
}
