"""A queue with a spool: an outage costs no failure and no wait, a restart resends the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from cio_queue import (
    EventQueue,
    Outcome,
    OutcomeStatus,
    QueueClosedError,
    QueueConfig,
    QueueFullError,
    Receipt,
    Request,
    Response,
    RetryPolicy,
    SpoolError,
    Statistics,
    _spooled,
)
from cio_queue._pipeline import CLOSE_MARGIN
from cio_queue._spool import SpoolStore
from cio_queue._spoolfile import SpoolFile
from cio_queue._spoolthread import SpoolThread
from cio_queue.testing import FakeTrackAPI, refused_url

from .recording import RecordingSender

pytestmark = pytest.mark.anyio


def config(spool: Path, **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "fake-site", "api_key": "fake-key", "base_url": "http://127.0.0.1:9",
        "flush_interval": 0.01, "rate_limit": None, "shutdown_timeout": 0.5,
        "retry": RetryPolicy(attempts=100, wait_initial=0.01, wait_max=0.05, wait_jitter=0,
                             timeout=60),
        "spool_path": spool, "max_queue_size": 10, "batch_size": 5,
    }
    values.update(overrides)
    return QueueConfig(**values)


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped
            + stats.dead_lettered + stats.spooled + stats.pending)


async def test_a_full_memory_spills_to_disk_and_loads_back_in_order(tmp_path: Path) -> None:
    """Beyond max_queue_size, operations wait on disk (no error, no wait) and come back FIFO."""
    sender = RecordingSender()
    sender.hold.clear()
    async with EventQueue(config(tmp_path / "spool"), sender=sender) as queue:
        receipts = [await queue.track(f"c{i:03}", "ev") for i in range(100)]
        stats = queue.statistics()
        assert (stats.enqueued, stats.pending, stats.spooled) == (100, 10, 90)
        assert stats.enqueued == settled_sum(stats)
        sender.hold.set()
        with anyio.fail_after(20):
            outcomes = [await r.wait() for r in receipts]
        stats = queue.statistics()
    assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}
    assert (stats.delivered, stats.pending, stats.spooled) == (100, 0, 0)
    people = [b.decode() for r in sender.requests for b in [r.body]]
    order = [int(p.split('"c')[1][:3]) for body in people for p in body.split('"id":')[1:]
             if '"c' in p[:4]]
    assert order == sorted(order)  # first in, first out, through the disk and back


async def test_what_aclose_cannot_send_stays_in_the_spool_for_the_next_start(
        tmp_path: Path) -> None:
    """API down at close: everything stays spooled; the next queue on it delivers it all."""
    spool = tmp_path / "spool"
    with refused_url() as down:
        async with EventQueue(config(spool, base_url=down)) as first:
            receipts = [await first.track(f"c{i}", "ev") for i in range(50)]
        stats = first.statistics()
    assert (stats.spooled, stats.pending, stats.failed) == (50, 0, 0)
    assert {r.outcome.status for r in receipts if r.outcome} == {OutcomeStatus.SPOOLED}
    async with FakeTrackAPI() as fake:
        async with EventQueue(config(spool, base_url=fake.url)) as second:
            with anyio.fail_after(20):
                await fake.wait_for_operations(50)
        stats = second.statistics()
        ids = sorted(e["id"] for e in fake.accepted_events())
    assert (stats.enqueued, stats.delivered, stats.spooled) == (50, 50, 0)
    assert ids == sorted(r.event_id or "" for r in receipts)


async def test_a_spool_row_that_cannot_be_read_back_ends_failed_and_is_counted(
        tmp_path: Path) -> None:
    """An unreadable row is logged, removed and settled failed: the counters still add up.

    It used to leave every counter: enqueued (recovered at start) by one more than all
    the outcomes together, for ever.
    """
    spool = tmp_path / "spool"
    with refused_url() as down:
        async with EventQueue(config(spool, base_url=down)) as first:
            for i in range(5):
                await first.track(f"c{i}", "ev")
    (path,) = spool.glob("*.sqlite3")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (key,) = db.execute("SELECT min(key) FROM spool").fetchone()
        db.execute("UPDATE spool SET record = ? WHERE key = ?", (b"not a packed operation", key))
    outcomes: list[Outcome] = []
    async with FakeTrackAPI() as fake:
        async with EventQueue(config(spool, base_url=fake.url),
                              on_outcome=outcomes.append) as second:
            with anyio.fail_after(20):
                await fake.wait_for_operations(4)
        stats = second.statistics()
    assert (stats.enqueued, stats.delivered, stats.failed, stats.spooled) == (5, 4, 1, 0)
    assert stats.enqueued == settled_sum(stats)
    (lost,) = [o for o in outcomes if o.status is OutcomeStatus.FAILED]
    assert (lost.kind, lost.reason) == ("unknown", "spool_unreadable")


async def test_an_unusable_spool_is_a_clear_error_at_start(tmp_path: Path) -> None:
    """A spool_path under a file cannot be used: start() raises SpoolError naming it."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    queue = EventQueue(config(blocker / "spool"), sender=RecordingSender())
    with anyio.fail_after(10), pytest.raises(SpoolError):
        await queue.start()
    await queue.aclose()


async def test_a_sync_enqueue_cancelled_before_its_commit_returned_leaves_no_row(
        tmp_path: Path) -> None:
    """A sync enqueue cancelled while it waits for its commit did not enqueue: no row stays.

    Otherwise the next start would send an operation whose call never returned, and the
    spool would keep rows that statistics() does not count.
    """
    spool = tmp_path / "spool"
    with refused_url() as down:
        async with EventQueue(config(spool, base_url=down, spool_durability="sync")) as queue:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await queue.track("c1", "ev")  # cancelled at its wait for the commit
            assert scope.cancelled_caught
        stats = queue.statistics()
    assert (stats.enqueued, stats.spooled) == (0, 0)
    assert list(spool.iterdir()) == []  # the file had no row left, so it was removed


async def wait_until(condition: Any, within: float = 20.0) -> None:
    """Poll ``condition()`` until it holds, at most ``within`` seconds.

    For the queue's counters, which no event announces.
    """
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the counter
            await anyio.sleep(0.01)


async def test_an_outage_longer_than_the_retry_policy_loses_nothing(tmp_path: Path) -> None:
    """With a spool, an operation whose retries run out waits in the spool, then is sent.

    The retry policy gives up after two attempts; the outage lasts many times longer. Every
    operation is delivered once the API is back, none ends failed: a spool turns an outage
    of any length into a delay.
    """
    retry = RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.01, wait_jitter=0, timeout=60)
    async with FakeTrackAPI() as fake:
        await fake.stop()
        async with EventQueue(config(tmp_path / "spool", base_url=fake.url,
                                     retry=retry)) as queue:
            receipts = [await queue.track(f"c{i:03}", "ev") for i in range(30)]
            # Four batches of five, two attempts each: the first ten operations ran out of
            # attempts, and ten more were taken in after them.
            await wait_until(lambda: queue.statistics().requests >= 4 * 2)
            stats = queue.statistics()
            assert stats.enqueued == settled_sum(stats)
            await fake.start()
            with anyio.fail_after(20):
                outcomes = [await receipt.wait() for receipt in receipts]
            stats = queue.statistics()
        ids = {event["id"] for event in fake.accepted_events()}
    assert {outcome.status for outcome in outcomes} == {OutcomeStatus.DELIVERED}
    assert ids == {receipt.event_id for receipt in receipts}
    assert (stats.delivered, stats.failed, stats.spooled, stats.pending) == (30, 0, 0, 0)


@pytest.mark.parametrize("transport", ["batch", "v1"])
async def test_a_persons_changes_keep_their_order_when_retries_run_out_in_an_outage(
        tmp_path: Path, transport: str) -> None:
    """A state change that runs out of retries tries again where it is, holding its line.

    Put back in the spool behind the rest, it would come back after a newer change of the
    same person, which would then be overwritten with the older value.
    """
    sender = RecordingSender()
    sender.script.extend([503, 503])  # the first identify runs out of its two attempts
    retry = RetryPolicy(attempts=2, wait_initial=0.05, wait_max=0.05, wait_jitter=0, timeout=30)
    cfg = config(tmp_path / "spool", transport=transport, batch_size=1, retry=retry)
    async with EventQueue(cfg, sender=sender) as queue:
        first = await queue.identify("42", plan="old")
        with anyio.fail_after(20):
            await sender.wait_for(1)
        second = await queue.identify("42", plan="new")
        with anyio.fail_after(20):
            outcomes = [await first.wait(), await second.wait()]
    assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * 2
    plans = [json.loads(r.body)["batch"][0]["attributes"]["plan"] if transport == "batch"
             else json.loads(r.body)["plan"] for r in sender.requests]
    assert plans == ["old", "old", "old", "new"]


@pytest.mark.parametrize(("overflow", "status"), [("raise", None),
                                                   ("drop_newest", OutcomeStatus.DROPPED)])
async def test_a_full_spool_applies_the_overflow_policy(tmp_path: Path, overflow: str,
                                                         status: OutcomeStatus | None) -> None:
    """Memory full and max_spool_bytes reached: the overflow policy decides, never silence."""
    sender = RecordingSender()
    sender.hold.clear()  # nothing is answered: memory fills, then the spool
    cfg = config(tmp_path / "spool", max_spool_bytes=32_768, overflow=overflow)
    async with EventQueue(cfg, sender=sender) as queue:
        accepted = []
        refused: QueueFullError | Receipt | None = None
        for i in range(1000):
            try:
                receipt = await queue.track(f"c{i:03}", "ev", {"pad": "x" * 100})
            except QueueFullError as exc:
                refused = exc
                break
            if receipt.done():
                refused = receipt
                break
            accepted.append(receipt)
        stats = queue.statistics()
        assert stats.enqueued == settled_sum(stats)
        assert 10 < len(accepted) < 1000  # memory (10) and some of the spool, then full
        if status is None:
            assert isinstance(refused, QueueFullError)
        else:
            assert isinstance(refused, Receipt)
            assert refused.outcome is not None
            assert (refused.outcome.status, refused.outcome.reason) == (status, "queue_full")
            assert stats.dropped == 1
        sender.hold.set()
        with anyio.fail_after(20):
            outcomes = [await r.wait() for r in accepted]
    assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}


async def test_drop_oldest_with_a_full_spool_gives_the_freed_place_to_the_new_operation(
        tmp_path: Path) -> None:
    """Memory and spool full, the loader waiting for a place: drop_oldest still admits.

    The dropped operation's place passes to the one it was dropped for. Given back to the
    room, it went to the spool's loader, and the call raised anyio.WouldBlock.
    """
    sender = RecordingSender()
    sender.hold.clear()  # nothing is answered: memory fills, then the spool
    # One batch of 8 in flight; the 2 after it stay in the accumulator, to be dropped.
    cfg = config(tmp_path / "spool", max_spool_bytes=32_768, overflow="drop_oldest",
                 max_concurrency=1, batch_size=8, flush_interval=3600)
    pad = {"pad": "x" * 100}
    async with EventQueue(cfg, sender=sender) as queue:
        receipts = [await queue.track(f"c{i:03}", "ev", pad) for i in range(8)]
        with anyio.fail_after(20):
            await sender.wait_for(1)  # c000 to c007 in flight
        receipts += [await queue.track(f"c{i:03}", "ev", pad) for i in range(8, 11)]
        assert queue.statistics().spooled == 1  # memory is full: c010 waits on disk
        assert queue._run is not None
        room = queue._run.ledger.room
        await wait_until(lambda: room.waiting == 1)  # the loader, for c010's place
        # Until the spool is full too, and four calls have each dropped the oldest queued
        # in memory (a dropped one's row leaves the spool, which may then take the next).
        while queue.statistics().dropped < 4:
            assert len(receipts) < 1000
            receipts.append(await queue.track(f"c{len(receipts):03}", "ev", pad))
            assert not receipts[-1].done()  # admitted: in memory, or on disk
        stats = queue.statistics()
        assert stats.enqueued == settled_sum(stats) == len(receipts)
        dropped = [i for i, r in enumerate(receipts) if r.done()]
        assert dropped[:2] == [8, 9]  # the queued in memory, oldest first
        assert len(dropped) == 4
        assert all(receipts[i].outcome == Outcome(OutcomeStatus.DROPPED, "track", f"c{i:03}",
                                                  receipts[i].event_id, 0, "queue_full")
                   for i in dropped)
        assert room.waiting == 1  # the loader still waits: no place went to it
        sender.hold.set()
    # The rest was delivered, or stays in the spool for the next start: none is lost.
    statuses = [r.outcome.status if r.outcome else None for r in receipts]
    assert [i for i, s in enumerate(statuses) if s is OutcomeStatus.DROPPED] == dropped
    assert {s for i, s in enumerate(statuses) if i not in dropped} <= {
        OutcomeStatus.DELIVERED, OutcomeStatus.SPOOLED}
    stats = queue.statistics()
    assert stats.enqueued == settled_sum(stats) == len(receipts)
    assert stats.delivered >= 8  # at least the batch in flight when the hold was lifted


async def test_a_call_whose_sync_commit_outlasts_the_start_of_aclose_still_settles(
        tmp_path: Path) -> None:
    """aclose() begins while a call waits for its "sync" commit: it still gets an outcome.

    Admitted once its row was committed, the operation came after the shutdown's last
    look at the ledger: its receipt never settled and the closed queue said pending 1.
    Now it settles ``spooled`` (its row stays for the next start), or ``delivered`` if
    the commit ever won the race; the next queue on the spool sends what stayed.
    """
    spool = tmp_path / "spool"
    outcomes: list[Outcome] = []
    queue = EventQueue(config(spool, spool_durability="sync"), sender=RecordingSender(),
                       on_outcome=outcomes.append)
    await queue.track("warm-up", "ev")  # the spool is open: the call below commits
    with anyio.fail_after(30):
        await queue.flush()  # nothing for the shutdown to drain
    call = asyncio.ensure_future(queue.track("c1", "ev"))
    await asyncio.sleep(0)  # the call is waiting for its commit
    with anyio.fail_after(30):
        stats = await queue.aclose()
        receipt = await call
    assert receipt.outcome is not None
    status = receipt.outcome.status
    assert status in (OutcomeStatus.SPOOLED, OutcomeStatus.DELIVERED)
    assert stats.pending == 0
    assert stats.enqueued == settled_sum(stats) == 2
    assert [o for o in outcomes if o.customer_id == "c1"] == [receipt.outcome]  # once
    async with FakeTrackAPI() as fake:
        async with EventQueue(config(spool, base_url=fake.url)) as second:
            if status is OutcomeStatus.SPOOLED:
                with anyio.fail_after(30):
                    await fake.wait_for_operations(1)
        assert [e["id"] for e in fake.accepted_events()] == (
            [receipt.event_id] if status is OutcomeStatus.SPOOLED else [])
        assert second.statistics().delivered == (status is OutcomeStatus.SPOOLED)


class SlowSender(RecordingSender):
    """A RecordingSender whose requests take 5 ms, as a nearby API's would."""

    async def send(self, request: Request) -> Response:
        """Answer 5 ms later than RecordingSender would."""
        await asyncio.sleep(0.005)
        return await super().send(request)


async def test_a_call_committed_while_the_drain_loads_the_disk_ends_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that ends after aclose() began, with rows still on disk: one outcome.

    Its row is one of those waiting on disk, which the drain may load and send: settled
    ``spooled`` at once instead, it was loaded by the loader's next read all the same,
    sent, and settled a second time (two outcomes, the counters off by one).
    """
    monkeypatch.setattr(_spooled, "LOAD_CHUNK", 5)  # the loader reads ahead sooner
    sender = SlowSender()
    sender.hold.clear()  # memory fills (10), the rest waits on disk
    outcomes: list[Outcome] = []
    # One request at a time: the drain lasts while the loader brings the disk back.
    queue = EventQueue(config(tmp_path / "spool", spool_durability="sync", max_concurrency=1,
                              shutdown_timeout=30), sender=sender, on_outcome=outcomes.append)
    with anyio.fail_after(30):
        await asyncio.gather(*(queue.track(f"c{i:02}", "ev") for i in range(23)))
    assert queue.statistics().spooled == 13
    call = asyncio.ensure_future(queue.track("late", "ev"))
    await asyncio.sleep(0)  # the call is waiting for its commit
    closing = asyncio.ensure_future(queue.aclose())
    await asyncio.sleep(0)  # the shutdown has begun
    with anyio.fail_after(30):
        receipt = await call
        sender.hold.set()
        stats = await closing
    assert [o for o in outcomes if o.customer_id == "late"] == [receipt.outcome]
    assert receipt.outcome is not None
    sent = sum(b'"late"' in request.body for request in sender.requests)
    assert sent == (receipt.outcome.status is OutcomeStatus.DELIVERED)
    assert stats.enqueued == settled_sum(stats) == 24
    assert stats.pending == 0


# The three tests below meet races between the spool's loader and a "sync" call. Each holds
# the spool's thread in a job, so that a call's commit, and the loader's next read, queue
# up behind it; the thread runs queued jobs (the read) before a due commit.


async def leave_on_disk(spool: Path, count: int) -> None:
    """Leave operations ``c0`` to ``c{count - 1}`` in the spool: the next queue's backlog."""
    with refused_url() as down:
        async with EventQueue(config(spool, base_url=down)) as first:
            for i in range(count):
                await first.track(f"c{i}", "ev")
    assert first.statistics().spooled == count


def spooler_of(queue: EventQueue) -> tuple[_spooled.Spooler, SpoolStore]:
    """The running queue's spooler and its open store."""
    run = queue._run
    assert run is not None
    assert run.spooler is not None
    assert run.spooler.store is not None
    return run.spooler, run.spooler.store


def hold_the_thread(store: SpoolStore) -> threading.Event:
    """Hold the store's thread in a job until the event returned is set (30 s at most)."""
    unblock = threading.Event()

    def job(_file: object) -> None:
        unblock.wait(30)

    store._thread.submit(job)
    return unblock


def sync_queue_over_the_backlog(spool: Path, monkeypatch: pytest.MonkeyPatch,
                                max_queue_size: int,
                                ) -> tuple[EventQueue, RecordingSender, list[Outcome]]:
    """A "sync" queue on ``spool`` whose loader reads two rows at a time; its sender holds."""
    monkeypatch.setattr(_spooled, "LOAD_CHUNK", 2)
    sender = RecordingSender()
    sender.hold.clear()
    outcomes: list[Outcome] = []
    queue = EventQueue(config(spool, spool_durability="sync", max_queue_size=max_queue_size,
                              batch_size=1, shutdown_timeout=30),
                       sender=sender, on_outcome=outcomes.append)
    return queue, sender, outcomes


def record_reads(store: SpoolStore, monkeypatch: pytest.MonkeyPatch,
                 release: threading.Event | None = None,
                 ) -> tuple[list[list[tuple[int, bytes]]], threading.Event]:
    """Record each read of the store's thread, and set the event returned after the first.

    With ``release``, each read then waits (on the thread) until it is set.
    """
    thread = store._thread
    reads: list[list[tuple[int, bytes]]] = []
    read_once = threading.Event()

    def read(file: SpoolFile, after: int, limit: int) -> list[tuple[int, bytes]]:
        rows = SpoolThread.read(thread, file, after, limit)
        reads.append(rows)
        read_once.set()
        if release is not None:
            release.wait(30)
        return rows

    monkeypatch.setattr(thread, "read", read)
    return reads, read_once


async def late_call_behind_a_read(queue: EventQueue, sender: RecordingSender,
                                  store: SpoolStore, sent: int) -> asyncio.Future[Receipt]:
    """Start ``track("late")`` while the loader's next read queues up beside its commit.

    With the store's thread held, the call adds its row and waits for its commit; the
    sender answers until ``sent`` requests have come, by when the loader has asked for its
    next rows; then the thread runs that read first (a job), and the commit after it.
    """
    unblock = hold_the_thread(store)
    call = asyncio.ensure_future(queue.track("late", "ev"))
    await asyncio.sleep(0)  # its row is added; its commit waits behind the job
    sender.hold.set()
    await sender.wait_for(sent)
    unblock.set()
    return call


def late_flags(rows: list[tuple[int, bytes]]) -> list[bool]:
    """Which rows of a read are the ``late`` call's."""
    return [b'"late"' in record for _, record in rows]


async def test_a_row_read_while_its_call_awaits_the_commit_is_sent_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader reads uncommitted rows too: one whose call awaits its commit isn't its own.

    Such a row is not counted on disk yet. Loaded all the same, it was admitted as a copy
    of the call's operation: once the disk-only rows had run out, the call put the
    original in memory as well (sent twice); else it counted its row on disk, where its
    receipt waited for the shutdown to settle it ``spooled`` (two outcomes).
    """
    spool = tmp_path / "spool"
    await leave_on_disk(spool, 5)
    queue, sender, outcomes = sync_queue_over_the_backlog(spool, monkeypatch, 2)
    with anyio.fail_after(30):
        await queue.start()
        # The loader reads c0 and c1, admits them (memory is full), and asks at once for
        # the next two, c2 and c3: they wait for room.
        await sender.wait_for(2)
        _, store = spooler_of(queue)
        reads, _ = record_reads(store, monkeypatch)
        # c0 to c3 are sent; the loader asks for the rows after c3; that read (c4 and the
        # late row) runs first, then the commit.
        call = await late_call_behind_a_read(queue, sender, store, sent=4)
        receipt = await call
        # The race was met: a read returned c4 and the late row while its call committed
        # (the read of c2 and c3 may have run after the patch as well).
        assert [False, True] in [late_flags(rows) for rows in reads]
        stats = await queue.aclose()
    assert [o for o in outcomes if o.customer_id == "late"] == [receipt.outcome]
    assert receipt.outcome is not None
    assert receipt.outcome.status is OutcomeStatus.DELIVERED
    assert sum(b'"late"' in request.body for request in sender.requests) == 1
    assert stats.delivered == stats.enqueued == settled_sum(stats) == 6


async def test_a_row_respooled_while_a_call_awaits_its_commit_does_not_strand_that_call(
        tmp_path: Path) -> None:
    """A respool that starts the disk-only rows must not put them past a committing row.

    The respooled row came first on disk, so the loader's reads began after it; the call,
    resuming behind it, counted its own (older) row on disk, where the loader never looked:
    it waited for the next start, and the shutdown's count of the disk-only ones was off.
    """
    sender = RecordingSender()
    sender.hold.clear()
    outcomes: list[Outcome] = []
    retry = RetryPolicy(attempts=1, wait_initial=0.01, wait_max=0.05, wait_jitter=0,
                        timeout=30)
    queue = EventQueue(config(tmp_path / "spool", spool_durability="sync", batch_size=1,
                              retry=retry, shutdown_timeout=30),
                       sender=sender, on_outcome=outcomes.append)
    with anyio.fail_after(30):
        first = await queue.track("first", "ev")  # in memory, then in flight, held
        await sender.wait_for(1)
        spooler, store = spooler_of(queue)
        unblock = hold_the_thread(store)
        call = asyncio.ensure_future(queue.track("late", "ev"))
        await asyncio.sleep(0)  # its row is added; its commit waits behind the job
        sender.script.append(503)  # "first" runs out of its one attempt: respooled
        sender.hold.set()
        await spooler._backlog.wait()  # set by the respool, the first row on disk only
        assert spooler.disk_only == 1
        unblock.set()  # the commit: the call counts its row on disk, behind "first"
        late = await call
        first_outcome = await first.wait()
        late_outcome = await late.wait()
        stats = await queue.aclose()
    assert first_outcome.status is late_outcome.status is OutcomeStatus.DELIVERED
    assert sorted(str(o.customer_id) for o in outcomes) == ["first", "late"]
    assert stats.delivered == stats.enqueued == settled_sum(stats) == 2


async def test_a_call_cancelled_while_the_loader_reads_its_row_is_never_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read may return the row of a call that is cancelled before the loader sees it.

    The call removed its row and was told its operation was not enqueued; the loader,
    finding the row no longer committing, took it for one waiting on disk and sent it
    (an outcome for an operation never counted as enqueued).
    """
    spool = tmp_path / "spool"
    await leave_on_disk(spool, 3)
    queue, sender, outcomes = sync_queue_over_the_backlog(spool, monkeypatch, 1)
    with anyio.fail_after(30):
        await queue.start()
        await sender.wait_for(1)  # c0 in flight, held; c1 read, waiting for room
        _, store = spooler_of(queue)
        release = threading.Event()
        paused, snapshot = record_reads(store, monkeypatch, release)
        # c0 and c1 are sent; the loader asks for the rows after c1; that read (c2 and the
        # late row) runs first, and pauses.
        call = await late_call_behind_a_read(queue, sender, store, sent=2)
        assert await anyio.to_thread.run_sync(snapshot.wait, 30)
        assert late_flags(paused[0]) == [False, True]
        call.cancel()  # the call removes its row
        with pytest.raises(asyncio.CancelledError):
            await call
        release.set()
        await sender.wait_for(3)  # c2
        stats = await queue.aclose()
    assert [o.customer_id for o in outcomes] == ["c0", "c1", "c2"]
    assert not any(b'"late"' in request.body for request in sender.requests)
    assert stats.delivered == stats.enqueued == settled_sum(stats) == 3
    assert store.rows == 0


async def test_a_batch_that_meets_the_shutdown_midway_raises_queue_closed_error(
        tmp_path: Path) -> None:
    """The rest of a batch() gets QueueClosedError, never an AssertionError or SpoolError.

    What it accepted before the shutdown began settles as any accepted operation does.
    """
    cfg = config(tmp_path / "spool", spool_durability="sync")
    queue = EventQueue(cfg, sender=RecordingSender())
    await queue.track("warm-up", "ev")
    elements = [{"type": "person", "identifiers": {"id": f"c{i}"}, "action": "event",
                 "name": "ev"} for i in range(5)]
    call = asyncio.ensure_future(queue.batch(elements))
    await asyncio.sleep(0)  # its first element is waiting for its commit
    with anyio.fail_after(30):
        stats = await queue.aclose()
        with pytest.raises(QueueClosedError):
            await call
    assert stats.pending == 0
    assert stats.enqueued == settled_sum(stats) >= 2


async def test_aclose_keeps_its_bound_with_a_spool_and_a_hung_api(tmp_path: Path) -> None:
    """A hung API and a full spool: aclose() returns within shutdown_timeout + the margin."""
    sender = RecordingSender()
    sender.hold.clear()  # every request hangs
    cfg = config(tmp_path / "spool", shutdown_timeout=0.5)
    queue = EventQueue(cfg, sender=sender)
    await queue.start()
    for i in range(200):
        await queue.track(f"c{i:03}", "ev")
    started = time.monotonic()
    with anyio.fail_after(30):
        stats = await queue.aclose()
    took = time.monotonic() - started
    sender.hold.set()
    assert took < 3 * (0.5 + CLOSE_MARGIN)
    assert (stats.spooled, stats.pending, stats.failed) == (200, 0, 0)
