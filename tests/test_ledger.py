"""Unit tests of the ledger's bookkeeping (no I/O, no tasks, no awaits)."""

from __future__ import annotations

import asyncio

import pytest

from cio_queue import _operations as ops
from cio_queue._accumulator import BatchAccumulator
from cio_queue._dispatch import _runs
from cio_queue._intake import _as_entry
from cio_queue._ledger import DELIVERED, Entry, HeldEntry, Ledger, State, Verdict
from cio_queue._outcome import OutcomeStatus, Receipt

pytestmark = pytest.mark.anyio  # the ledger's semaphore and event need a running loop


class Recorder:
    """Takes the entries that wait for the dead-letter file, as the writer would."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def put(self, entry: Entry) -> None:
        """Keep the entry; the test says when its record is written."""
        self.entries.append(entry)


def queued(ledger: Ledger, acc: BatchAccumulator[Entry], count: int) -> list[Entry]:
    """Admit ``count`` operations as intake does: a place, the ledger, the accumulator."""
    entries = []
    for i in range(count):
        entry = _as_entry(ops.track(f"c{i}", "ev", None, None, None).seal(batch=True),
                          asyncio.get_running_loop())
        assert ledger.room.try_acquire()
        ledger.admit(entry)
        acc.append(entry, 0.0)
        entries.append(entry)
    return entries


async def test_the_queued_wait_in_the_accumulator_and_every_pending_one_is_found() -> None:
    """The ledger indexes only what left the accumulator; it still finds every pending one.

    Queued operations are the newest: unsettled() lists the handed-on ones first, then the
    queued in order. Stranded at shutdown, a queued operation joins those waiting for the
    disk, and settles once its record is written.
    """
    settled: list[tuple[Receipt, Verdict]] = []
    recorder = Recorder()
    ledger = Ledger(10, recorder=recorder, on_settled=lambda r, v: settled.append((r, v)))
    acc: BatchAccumulator[Entry] = BatchAccumulator(3, 5.0)
    ledger.waiting = acc.items
    entries = queued(ledger, acc, 5)
    assert ledger.unsettled() == entries
    assert ledger.pending == ledger.queued == 5
    first = acc.take()
    ledger.dispatch(first)
    assert ledger.unsettled() == entries
    assert (ledger.pending, ledger.queued, ledger.undecided) == (5, 2, 5)
    ledger.decide(first[0], DELIVERED)
    assert ledger.unsettled() == entries[1:]
    assert ledger.pending == 4
    assert ledger.strand_all("shutdown_deadline") == 4
    assert ledger.pending == 4  # waiting for their records, the queued two too
    assert list(ledger.waiting_for_disk()) == entries[1:]
    assert ledger.unsettled() == entries[1:]  # once each, though two are still in acc
    assert recorder.entries == entries[1:]
    ledger.recorded(recorder.entries, written=True)
    assert ledger.pending == 0
    assert ledger.unsettled() == []
    assert [r for r, _ in settled] == entries
    assert {e.outcome.status for e in entries[1:] if e.outcome} == {OutcomeStatus.DEAD_LETTERED}
    assert all(e.state is State.SETTLED for e in entries)
    assert ledger.room.value == 10


async def test_a_dropped_or_directly_stranded_queued_operation_settles_without_an_index() -> None:
    """Without a dead-letter file a queued operation settles at once; so does a dropped one."""
    ledger = Ledger(10, recorder=None, on_settled=lambda r, v: None)
    acc: BatchAccumulator[Entry] = BatchAccumulator(100, 5.0)
    ledger.waiting = acc.items
    entries = queued(ledger, acc, 3)
    victim = acc.popleft()
    ledger.drop(victim, Verdict(OutcomeStatus.DROPPED, "queue_full"))
    assert ledger.unsettled() == entries[1:]
    assert ledger.room.value == 7  # the dropped one's place is the new one's (below)
    ledger.strand_all("shutdown_deadline")  # before the caller admits the new one
    assert (ledger.pending, ledger.room.value) == (0, 9)
    assert [e.outcome.status for e in entries if e.outcome] == [
        OutcomeStatus.DROPPED, OutcomeStatus.FAILED, OutcomeStatus.FAILED]


async def test_a_dropped_operations_place_passes_to_the_new_one_not_to_a_waiter() -> None:
    """drop() leaves the victim's place held: the operation it made way for takes it.

    Given back to the room, the place would go to the oldest waiter (the spool's loader),
    and the new operation would have none.
    """
    ledger = Ledger(3, recorder=None, on_settled=lambda r, v: None)
    acc: BatchAccumulator[Entry] = BatchAccumulator(100, 5.0)
    ledger.waiting = acc.items
    entries = queued(ledger, acc, 3)
    waiter = ledger.room.waiter()  # the loader, waiting for a place
    ledger.drop(acc.popleft(), Verdict(OutcomeStatus.DROPPED, "queue_full"))
    assert (ledger.room.value, waiter.done()) == (0, False)
    newcomer = _as_entry(ops.track("new", "ev", None, None, None).seal(batch=True),
                         asyncio.get_running_loop())
    ledger.admit(newcomer)  # in the dropped one's place
    acc.append(newcomer, 0.0)
    assert ledger.unsettled() == [*entries[1:], newcomer]
    assert (ledger.pending, ledger.room.value, waiter.done()) == (3, 0, False)
    ledger.strand_all("shutdown_deadline")
    assert waiter.done()  # the first place given back goes to the waiter, the rest free
    assert (ledger.pending, ledger.room.value) == (0, 2)


async def test_a_receipt_keeps_its_waiters_future_and_its_outcome_in_one_slot() -> None:
    """Waiting, two waiters, a cancelled waiter, settling and asking again, on one entry.

    The entry is the caller's receipt, and its waiter's future shares the outcome's slot:
    neither may pass for the other.
    """
    ledger = Ledger(10, recorder=None, on_settled=lambda r, v: None)
    acc: BatchAccumulator[Entry] = BatchAccumulator(10, 5.0)
    ledger.waiting = acc.items
    (entry,) = queued(ledger, acc, 1)
    assert (entry.done(), entry.outcome) == (False, None)
    first = asyncio.ensure_future(entry.wait())
    second = asyncio.ensure_future(entry.wait())
    await asyncio.sleep(0)
    assert (entry.done(), entry.outcome) == (False, None)
    first.cancel()
    await asyncio.sleep(0)
    assert not entry.done()
    ledger.dispatch(acc.take())
    ledger.decide(entry, DELIVERED)
    assert entry.done()
    outcome = entry.outcome
    assert outcome is not None
    assert outcome.status is OutcomeStatus.DELIVERED
    assert (await second) is outcome
    assert (await entry.wait()) is outcome
    assert first.cancelled()
    assert repr(entry) == "<Receipt track delivered>"


async def test_an_operation_is_its_own_entry_once_and_is_held_by_a_new_one_after() -> None:
    """One object per queued operation; but one given to intake twice gets its own entry.

    The second admission must not share the first one's ledger state and receipt.
    """
    loop = asyncio.get_running_loop()
    op = ops.track("c1", "ev", None, None, None).seal(batch=True)
    first = _as_entry(op, loop)
    second = _as_entry(op, loop)
    assert first is op
    assert first.op is op
    assert type(second) is HeldEntry
    assert second.op is op
    assert (second.kind, second.event_id, second.state) == ("track", op.event_id, State.QUEUED)
    ledger = Ledger(2, recorder=None, on_settled=lambda receipt, verdict: None)
    for entry in (first, second):
        assert ledger.room.try_acquire()
        ledger.admit(entry)
    ledger.dispatch([first, second])
    ledger.decide(first, DELIVERED)
    assert first.done()
    assert not second.done()


def test_an_entry_is_made_only_as_an_operation_or_a_held_entry() -> None:
    """Entry(op, loop), as entries were once made, is refused rather than half made."""
    op = ops.track("c1", "ev", None, None, None).seal(batch=True)
    with pytest.raises(TypeError):
        Entry(op, None)  # type: ignore[call-arg]


async def test_one_verdict_settles_many_in_flight_and_a_late_one_is_ignored() -> None:
    """decide_all: the verdict of a whole request, taken once; a settled entry stays so."""
    settled: list[tuple[Receipt, Verdict]] = []
    ledger = Ledger(10, recorder=None, on_settled=lambda r, v: settled.append((r, v)))
    acc: BatchAccumulator[Entry] = BatchAccumulator(100, 5.0)
    ledger.waiting = acc.items
    entries = queued(ledger, acc, 4)
    ledger.dispatch(acc.take())
    ledger.decide(entries[3], DELIVERED)
    assert ledger.decide_all(entries, DELIVERED) == 0  # nothing went back to a spool
    assert [receipt for receipt, _ in settled] == [entries[3], *entries[:3]]
    assert (ledger.pending, ledger.undecided, ledger.room.value) == (0, 0, 10)
    assert ledger.settled[OutcomeStatus.DELIVERED] == 4


def test_a_parcels_verdicts_go_to_the_ledger_in_runs_of_one_verdict() -> None:
    """One run for a 2xx (the usual answer), a run per stretch for a 207 naming some."""
    loop = asyncio.new_event_loop()
    try:
        entries = [_as_entry(ops.track(f"c{i}", "ev", None, None, None).seal(batch=True), loop)
                   for i in range(5)]
    finally:
        loop.close()
    first = Verdict(OutcomeStatus.REJECTED, "rejected")
    second = Verdict(OutcomeStatus.REJECTED, "rejected")
    assert _runs(entries, [DELIVERED] * 5) == [(DELIVERED, entries)]
    assert _runs(entries, [DELIVERED, DELIVERED, first, DELIVERED, second]) == [
        (DELIVERED, entries[:2]), (first, [entries[2]]), (DELIVERED, [entries[3]]),
        (second, [entries[4]])]
    assert _runs([], []) == []
