"""The ledger: where every accepted operation stands, and the one place that settles it.

Stage: the end of the pipeline. Intake admits an operation (``QUEUED``), the dispatcher
hands it to a worker (``IN_FLIGHT``), and the courier's verdict comes back here:
:meth:`Ledger.decide` either settles it at once or, when its verdict must be written to
the dead-letter file first, hands it to the writer (``RECORDING``); operations still
undecided at the shutdown deadline are ``STRANDED`` and go the same way. Only
:meth:`Ledger.settle` gives an operation its Outcome: it resolves the receipt, frees its
place in the queue (the ``room`` semaphore, whose released places go to the callers that
waited longest; an operation the overflow policy drops passes its place to the one it
was dropped for instead), and runs the on_outcome hook. A verdict for an operation that is no
longer in flight (it was stranded while its request was out) is ignored, so nothing is
ever settled twice. Every counter is kept by the state transitions themselves.

In a fleet, operations also come from the Redis stream (:meth:`Ledger.take`): they hold
no place in ``room`` (the fleet bounds how many it takes), their dead letters go to the
fleet's stream with their acknowledgement, and those stranded at shutdown settle
``streamed``: unacknowledged, they stay in the stream for another member.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from ._exceptions import DeliveryError
from ._outcome import OutcomeStatus, Receipt
from ._room import Room

if TYPE_CHECKING:
    from ._operations import Operation

__all__ = ["DELIVERED", "IN_FLIGHT", "QUEUED", "RECORDING", "SETTLED", "SPOOLED", "STRANDED",
           "Entry", "HeldEntry", "Ledger", "Recorder", "Source", "State", "Verdict",
           "may_succeed_later"]


class State(enum.Enum):
    """Where an accepted operation stands."""

    QUEUED = "queued"
    """Accepted, waiting in the accumulator for its batch to leave."""
    IN_FLIGHT = "in_flight"
    """Handed to the dispatcher: waiting for a worker, being sent, or waiting to retry."""
    RECORDING = "recording"
    """Decided; waiting for its dead-letter record to be on disk."""
    STRANDED = "stranded"
    """Unsent when the queue stopped; waiting for its dead-letter record."""
    SPOOLED = "spooled"
    """With a spool: its retries ran out while the API was down or failing; it left
    memory and waits in the spool again, to be loaded and sent in its turn."""
    SETTLED = "settled"
    """Has its Outcome."""


# The states as constants: on CPython 3.11 reading a member through its Enum class costs
# about 70 ns (EnumType's __getattr__ routes every attribute read on the class through
# Python), and every operation passes through several transitions below.
QUEUED: Final = State.QUEUED
IN_FLIGHT: Final = State.IN_FLIGHT
RECORDING: Final = State.RECORDING
STRANDED: Final = State.STRANDED
SPOOLED: Final = State.SPOOLED
SETTLED: Final = State.SETTLED
_SPOOLED_OUTCOME: Final = OutcomeStatus.SPOOLED


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an operation's delivery ended, as the courier (or the shutdown) judged it."""

    status: OutcomeStatus
    reason: str | None = None
    error: DeliveryError | None = None


DELIVERED: Final = Verdict(OutcomeStatus.DELIVERED)
_RECORDED_STATUSES: Final = frozenset({OutcomeStatus.REJECTED, OutcomeStatus.FAILED})
RETURNED: Final = "returned"
"""The reason of an operation taken from the fleet's stream and left there unsent."""


def may_succeed_later(verdict: Verdict) -> bool:
    """A give-up on an error that is retryable: the API was down, failing or throttling."""
    return (verdict.status is OutcomeStatus.FAILED and verdict.error is not None
            and verdict.error.retryable)


class Entry(Receipt):
    """An accepted operation and its state in the ledger; it is the caller's receipt.

    Usually the operation itself: an :class:`~cio_queue._operations.Operation` is an
    Entry, so one object per queued operation carries its wire bytes, its place in the
    ledger and the caller's receipt (a second object cost 56 bytes per queued operation
    and about 0.15 µs per enqueue). A receipt the caller keeps keeps its operation too,
    until the caller lets the receipt go.

    One that holds its operation apart is a :class:`HeldEntry`: with a row in the spool
    a ``SpooledEntry`` (``key`` set), taken from a fleet's stream a ``TakenEntry``
    (``source`` set), or an operation already admitted once; others pay no slot for them.
    """

    __slots__ = ("attempts", "state", "verdict")
    attempts: int
    state: State
    verdict: Verdict | None

    key: int | None = None
    """Its row in the spool (a SpooledEntry's)."""
    source: object = None
    """The stream entry it was taken from, in a fleet (a TakenEntry's)."""

    def __init__(self) -> None:
        # Only its subclasses are made: Operation (its own entry) and HeldEntry set every
        # field themselves. Entry(op, loop), as entries were once made, would be taken as
        # Receipt(kind=op, event_id=loop) and leave the entry's fields unset.
        raise TypeError("an Entry is an Operation, or a HeldEntry that holds one")

    @property
    def op(self) -> Operation:
        """The operation (the entry itself, unless held apart)."""
        raise NotImplementedError


class HeldEntry(Entry):
    """An entry that holds its operation apart, in ``op``."""

    __slots__ = ("op",)
    op: Operation  # a slot, where Entry has a property

    def __init__(self, op: Operation, loop: asyncio.AbstractEventLoop | None = None,
                 kind: str | None = None) -> None:
        # Receipt's fields, set here rather than by its __init__ (a call per operation).
        self.kind = op.kind if kind is None else kind  # the kind it was enqueued as
        self.event_id = op.event_id
        self._loop = loop
        self._outcome = None
        self.op = op
        self.state = QUEUED
        self.attempts = 0
        self.verdict: Verdict | None = None


class Recorder(Protocol):
    """Takes entries whose verdict must reach the dead-letter file before they settle."""

    def put(self, entry: Entry) -> None:
        """Queue the entry's record; the recorder calls Ledger.recorded once it is written."""


class Source(Protocol):
    """The fleet's stream, for the operations taken from it (``entry.source`` set)."""

    def put(self, entry: Entry) -> None:
        """Write the entry's dead letter with its acknowledgement; then Ledger.recorded."""

    def settled(self, entry: Entry, verdict: Verdict) -> None:
        """The entry settled: acknowledge it (unless it was returned) and free its place."""


class Ledger:
    """Track every accepted operation from admission to its one Outcome.

    ``pending`` (admitted, not settled) never exceeds ``capacity``: intake takes a place
    from :attr:`room` before admitting, and settling gives it back (or, for an operation
    dropped by the overflow policy, passes it to the one admitted in its stead).
    """

    def __init__(self, capacity: int, *, recorder: Recorder | None,
                 on_settled: Callable[[Receipt, Verdict], None],
                 unspool: Callable[[int], None] | None = None,
                 source: Source | None = None) -> None:
        self.room = Room(capacity)
        self.recorder = recorder
        # With a spool: settling removes an operation's row, and what is stranded stays
        # there (settled spooled) for the next start instead of going to the recorder.
        self._unspool = unspool
        self.source = source
        # With a spool: takes back an operation whose retries ran out on a failure that a
        # later attempt may overcome; False when it cannot (set by the Spooler).
        self.respool: Callable[[Entry], bool] | None = None
        self._on_settled = on_settled
        # The queued operations, oldest first: they wait in the accumulator, which says
        # (set by the dispatcher that owns it). Indexing them here as well cost 30 to 50
        # bytes per queued operation; the accumulator holds them in order already.
        self.waiting: Callable[[], list[Entry]] = list
        # The rest of the pending (handed to the dispatcher, or waiting for the disk):
        # at most the operations in flight and retrying, in the order they were handed.
        self._live: dict[Entry, None] = {}
        self.enqueued = 0
        self.taken = 0  # operations taken from the fleet's stream
        self.queued = 0
        self._in_flight = 0
        self.settled = dict.fromkeys(OutcomeStatus, 0)
        self._decided = asyncio.Event()
        self._decided.set()

    @property
    def pending(self) -> int:
        """Operations admitted and not yet settled."""
        return len(self._live) + self.queued

    @property
    def undecided(self) -> int:
        """Operations still queued or in flight (pending ones not waiting for the disk)."""
        return self.queued + self._in_flight

    def unsettled(self) -> list[Entry]:
        """Every pending operation, oldest first (the queued ones are the newest)."""
        # What the shutdown stranded stays in the accumulator, no longer queued.
        return [*self._live, *(e for e in self.waiting() if e.state is QUEUED)]

    async def wait_decided(self) -> None:
        """Wait until no operation is queued or in flight."""
        await self._decided.wait()

    # --- transitions -----------------------------------------------------------------

    def admit(self, entry: Entry, *, counted: bool = True) -> None:
        """Record an accepted operation; its caller holds a place taken from ``room``.

        ``counted=False`` for one loaded back from the spool, already counted as enqueued.
        """
        if counted:
            self.enqueued += 1
        if not self.queued and not self._in_flight:
            self._decided.clear()  # set exactly while nothing is queued or in flight
        self.queued += 1

    def take(self, entry: Entry) -> None:
        """Record an operation taken from the fleet's stream (``entry.source`` is set)."""
        self.taken += 1
        self.admit(entry, counted=False)

    def refuse(self, entry: Entry, verdict: Verdict) -> None:
        """Count an operation that was accepted and settled at once, without a place.

        Dropped by the overflow policy, filtered by before_send, or (with a spool) left
        on disk for the next start by a shutdown that began during its commit.
        """
        self.enqueued += 1
        entry.state = SETTLED
        self._finish(entry, verdict)

    def lose(self, receipt: Receipt, verdict: Verdict) -> None:
        """Settle an accepted operation that holds no place and this queue will not send.

        One that waited in the spool only: whose row could not be read back (``receipt``
        is its entry if its caller still holds it, else a receipt made for the outcome),
        or that the shutdown leaves there for the next start.
        """
        if isinstance(receipt, Entry):
            receipt.state = SETTLED
            self._finish(receipt, verdict)
        else:
            self._report(receipt, verdict, None, 0)  # nothing known but its outcome

    def dispatch(self, entries: Iterable[Entry]) -> None:
        """Mark queued operations as handed to the dispatcher."""
        live = self._live
        for entry in entries:
            entry.state = IN_FLIGHT
            live[entry] = None
            self.queued -= 1
            self._in_flight += 1

    def drop(self, entry: Entry, verdict: Verdict) -> None:
        """Settle a queued operation that the overflow policy dropped for a new one.

        Its place passes to the new operation, whose caller now holds it: given back to
        the room, it could go to a waiter instead (the spool's loader), and the
        operation it was dropped for would find none.
        """
        assert entry.state is QUEUED
        self.queued -= 1
        self._settle(entry, verdict, release=False)
        self._check_decided()

    def decide(self, entry: Entry, verdict: Verdict) -> None:
        """Take the courier's verdict on one in-flight operation (see :meth:`decide_all`)."""
        self.decide_all((entry,), verdict)

    def decide_all(self, entries: Iterable[Entry], verdict: Verdict) -> int:
        """Take one verdict of the courier's on in-flight operations; late ones are ignored.

        With a spool, an operation given up on an error that a later attempt may overcome
        (the API down or failing) does not fail: it goes back to the spool (``SPOOLED``),
        unsettled, and frees its place in memory. Returns how many went back.

        An answer is usually one verdict for every operation of a request (a 2xx, or a
        refusal): what depends on the verdict alone is worked out once for them all.
        """
        respool = self.respool if may_succeed_later(verdict) else None
        recorded = verdict.status in _RECORDED_STATUSES
        respooled = 0
        for entry in entries:
            if entry.state is not IN_FLIGHT:
                continue
            self._in_flight -= 1
            if respool is not None and entry.key is not None and respool(entry):
                entry.state = SPOOLED
                del self._live[entry]
                self.room.release()
                respooled += 1
                continue
            recorder = (None if not recorded else self.recorder if entry.source is None
                        else self.source)
            if recorder is not None:
                entry.state = RECORDING
                entry.verdict = verdict
                recorder.put(entry)
            else:
                self._settle(entry, verdict)
        self._check_decided()
        return respooled

    def strand(self, entries: Iterable[Entry], reason: str) -> int:
        """End the delivery of queued or in-flight operations that will not be sent.

        Those taken from the fleet's stream stay there and settle ``streamed``; with a
        spool they stay there and settle ``spooled``; else, with a dead-letter file,
        they wait for their record and settle ``dead_lettered``; else they settle
        ``failed`` at once. Returns how many were stranded.
        """
        count = 0
        for entry in entries:
            if entry.state is QUEUED:
                self.queued -= 1
            elif entry.state is IN_FLIGHT:
                self._in_flight -= 1
            else:
                continue
            count += 1
            if entry.source is not None:
                self._settle(entry, Verdict(OutcomeStatus.STREAMED, RETURNED))
            elif self._unspool is not None:
                self._settle(entry, Verdict(OutcomeStatus.SPOOLED, reason))
            elif self.recorder is None:
                self._settle(entry, Verdict(OutcomeStatus.FAILED, reason))
            else:
                entry.state = STRANDED
                entry.verdict = Verdict(OutcomeStatus.DEAD_LETTERED, reason)
                self._live[entry] = None  # a queued one joins those waiting for the disk
                self.recorder.put(entry)
        self._check_decided()
        return count

    def strand_all(self, reason: str) -> int:
        """Strand every operation that is still queued or in flight."""
        return self.strand(self.unsettled(), reason)

    def recorded(self, entries: Iterable[Entry], *, written: bool,
                 reason: str | None = None) -> None:
        """Settle operations whose dead-letter record was written (or could not be).

        A stranded operation whose record did not reach the disk ends ``failed`` (with
        ``reason`` when given); a rejected or failed one keeps its status. One taken from
        the fleet's stream whose dead letter was not written stays in the stream
        unacknowledged: it settles ``streamed``.
        """
        for entry in entries:
            verdict = entry.verdict
            if entry.state not in (RECORDING, STRANDED) or verdict is None:
                continue
            if entry.source is not None and not written:
                verdict = Verdict(OutcomeStatus.STREAMED, RETURNED)
            elif entry.state is STRANDED and not written:
                verdict = Verdict(OutcomeStatus.FAILED, reason or verdict.reason,
                                  verdict.error)
            self._settle(entry, verdict)

    def waiting_for_disk(self) -> Iterator[Entry]:
        """The operations whose records have not been confirmed written."""
        return (e for e in self._live if e.state in (RECORDING, STRANDED))

    # --- settling ----------------------------------------------------------------------

    def _settle(self, entry: Entry, verdict: Verdict, *, release: bool = True) -> None:
        entry.state = SETTLED
        entry.verdict = None
        self._live.pop(entry, None)  # a queued one (dropped, stranded) was not there
        if entry.source is not None:
            assert self.source is not None
            self.source.settled(entry, verdict)
        else:
            if release:
                self.room.release()
            if entry.key is not None and verdict.status is not _SPOOLED_OUTCOME:
                assert self._unspool is not None
                self._unspool(entry.key)
        self._finish(entry, verdict)

    def _finish(self, entry: Entry, verdict: Verdict) -> None:
        self._report(entry, verdict, entry.op.customer_id, entry.attempts)

    def _report(self, receipt: Receipt, verdict: Verdict, customer_id: object,
                attempts: int) -> None:
        """Count the outcome, settle the receipt, and tell the pipeline."""
        status = verdict.status
        self.settled[status] += 1
        receipt._settle_parts((status, customer_id, receipt.event_id, attempts,
                               verdict.reason, verdict.error))
        self._on_settled(receipt, verdict)

    def _check_decided(self) -> None:
        if not self.queued and not self._in_flight:
            self._decided.set()
