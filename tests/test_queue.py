"""Component tests of EventQueue with an in-memory sender (no HTTP)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from cio_queue import (
    EventQueue,
    InvalidEventError,
    Outcome,
    OutcomeStatus,
    QueueClosedError,
    QueueConfig,
    QueueFullError,
    QueueUsageError,
    Response,
    RetryPolicy,
    Statistics,
    TransportError,
)

from .recording import RecordingSender

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.01, wait_jitter=0,
                         timeout=5)


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": "http://127.0.0.1:9", "transport": "v1",
        "flush_interval": 0.05, "rate_limit": None, "retry": FAST_RETRY,
        "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped
            + stats.dead_lettered + stats.pending)


async def test_a_full_batch_leaves_at_once() -> None:
    """batch_size waiting operations are sent without waiting for flush_interval."""
    sender = RecordingSender()
    async with EventQueue(config(batch_size=10, flush_interval=60), sender=sender) as queue:
        started = time.monotonic()
        for i in range(10):
            await queue.track(i, "ev")
        with anyio.fail_after(5):
            await sender.wait_for(10)
        assert time.monotonic() - started < 30
        assert queue.statistics().batches == 1


async def test_a_partial_batch_leaves_when_its_oldest_operation_is_flush_interval_old() -> None:
    """A lone operation waits flush_interval, measured from its own enqueue, then leaves."""
    sender = RecordingSender()
    async with EventQueue(config(batch_size=100, flush_interval=0.3), sender=sender) as queue:
        started = time.monotonic()
        await queue.track("a", "ev")
        with anyio.fail_after(5):
            await sender.wait_for(1)
        first = time.monotonic() - started
        assert first >= 0.3
        # Not a fixed ticker: the next operation's clock starts at its own enqueue.
        second_start = time.monotonic()
        await queue.track("b", "ev")
        with anyio.fail_after(5):
            await sender.wait_for(2)
        assert time.monotonic() - second_start >= 0.3


async def test_enqueue_does_no_io_and_returns_before_delivery() -> None:
    """An enqueue call returns while the sender is stuck, and the receipt settles later."""
    sender = RecordingSender()
    sender.hold.clear()
    async with EventQueue(config(batch_size=1), sender=sender) as queue:
        receipt = await queue.identify("42", plan="pro")
        assert not receipt.done()
        with anyio.fail_after(5):
            await sender.wait_for(1)
        assert not receipt.done()
        sender.hold.set()
        with anyio.fail_after(5):
            outcome = await receipt.wait()
        assert outcome.status is OutcomeStatus.DELIVERED
        assert outcome.attempts == 1


async def test_every_operation_ends_in_exactly_one_outcome() -> None:
    """2xx delivers, 4xx rejects once, 5xx and transport errors retry then fail."""
    def answer(request: Any) -> Any:
        if "/rejected" in request.path:
            return 400
        if "/flaky" in request.path:
            return 503
        if "/down" in request.path:
            return TransportError("connection refused")
        return 200

    sender = RecordingSender(answer)
    outcomes: list[Outcome] = []
    async with EventQueue(config(), sender=sender, on_outcome=outcomes.append) as queue:
        receipts = {name: await queue.delete(name)
                    for name in ("ok", "rejected", "flaky", "down")}
        with anyio.fail_after(5):
            results = {name: await r.wait() for name, r in receipts.items()}
    assert results["ok"].status is OutcomeStatus.DELIVERED
    assert results["rejected"].status is OutcomeStatus.REJECTED
    assert results["rejected"].attempts == 1
    assert results["rejected"].error is not None
    assert results["rejected"].error.status == 400
    assert results["flaky"].status is OutcomeStatus.FAILED
    assert results["flaky"].reason == "retries_exhausted"
    assert results["flaky"].attempts == FAST_RETRY.attempts
    assert results["down"].status is OutcomeStatus.FAILED
    assert isinstance(results["down"].error, TransportError)
    assert sorted(str(o.customer_id) for o in outcomes) == ["down", "flaky", "ok", "rejected"]
    stats = queue.statistics()
    assert (stats.delivered, stats.rejected, stats.failed, stats.pending) == (1, 1, 2, 0)
    assert stats.retries == 2 * (FAST_RETRY.attempts - 1)


async def test_an_outcome_read_after_settling_is_whole_and_the_same_each_time() -> None:
    """A receipt nobody waited on makes its Outcome when read: every field, made once."""
    sender = RecordingSender(lambda request: 400 if "/bad" in request.path else 200)
    async with EventQueue(config(), sender=sender) as queue:
        good = await queue.track("ok", "ev", {"a": 1})
        bad = await queue.identify("bad", plan="x")
    assert good.done()
    assert bad.done()
    outcome = good.outcome
    assert outcome == Outcome(OutcomeStatus.DELIVERED, "track", "ok", good.event_id, 1)
    assert good.outcome is outcome
    with anyio.fail_after(5):
        assert await good.wait() is outcome
    refused = bad.outcome
    assert refused is not None
    assert refused.error is not None
    assert (refused.status, refused.kind, refused.customer_id, refused.event_id,
            refused.attempts, refused.reason, refused.error.status) == (
        OutcomeStatus.REJECTED, "identify", "bad", None, 1, "rejected", 400)
    assert repr(good) == "<Receipt track delivered>"


async def test_statistics_invariant_holds_at_every_moment() -> None:
    """enqueued equals the sum of the outcomes plus pending in every snapshot."""
    sender = RecordingSender(lambda r: 500 if r.path.endswith("3/events") else 200)
    snapshots: list[Statistics] = []

    def check(_: Outcome) -> None:
        snapshots.append(queue.statistics())

    queue = EventQueue(config(batch_size=7, max_queue_size=50, overflow="drop_oldest"),
                       sender=sender, on_outcome=check)
    async with queue:
        for i in range(300):
            await queue.track(i % 10, "ev")
            snapshots.append(queue.statistics())
    snapshots.append(queue.statistics())
    assert all(s.enqueued == settled_sum(s) for s in snapshots)
    final = snapshots[-1]
    assert final.pending == 0
    assert final.enqueued == 300


async def test_closed_queue_refuses_intake() -> None:
    """After aclose every enqueue call raises QueueClosedError, and aclose is idempotent."""
    sender = RecordingSender()
    queue = EventQueue(config(), sender=sender)
    await queue.track("1", "ev")
    first = await queue.aclose()
    assert first.delivered == 1
    with pytest.raises(QueueClosedError):
        await queue.identify("1")
    with pytest.raises(QueueClosedError):
        await queue.merge_customers("id", "1", "id", "2")
    assert await queue.aclose() == first
    assert sender.closed


async def test_closing_an_unstarted_queue_closes_its_sender() -> None:
    """aclose on a queue that never started returns empty statistics and refuses intake."""
    sender = RecordingSender()
    queue = EventQueue(config(), sender=sender)
    assert await queue.aclose() == Statistics()
    assert await queue.aclose() == Statistics()  # idempotent here too
    assert sender.closed
    with pytest.raises(QueueClosedError):
        await queue.track("1", "ev")


async def test_bad_input_enqueues_nothing() -> None:
    """An invalid call raises at the call site and leaves the counters untouched."""
    sender = RecordingSender()
    async with EventQueue(config(), sender=sender) as queue:
        await queue.track("1", "ok")
        with pytest.raises(InvalidEventError, match=r"data\.when"):
            await queue.track("1", "bad", {"when": object()})
        await queue.track("1", "ok")
    stats = queue.statistics()
    assert (stats.enqueued, stats.delivered) == (2, 2)
    assert len(sender.requests) == 2


async def test_overflow_raise() -> None:
    """overflow='raise' raises QueueFullError at once and counts nothing."""
    sender = RecordingSender()
    sender.hold.clear()
    async with EventQueue(config(max_queue_size=3, batch_size=1, overflow="raise"),
                          sender=sender) as queue:
        for i in range(3):
            await queue.track(i, "ev")
        with pytest.raises(QueueFullError):
            await queue.track(9, "ev")
        assert queue.statistics().enqueued == 3
        sender.hold.set()


async def test_overflow_drop_newest_and_drop_oldest_report_every_drop() -> None:
    """Drops are counted, reported through on_outcome and the receipt, never silent."""
    for policy, dropped_id in (("drop_newest", 9), ("drop_oldest", 0)):
        sender = RecordingSender()
        sender.hold.clear()
        outcomes: list[Outcome] = []
        async with EventQueue(config(max_queue_size=4, batch_size=2, flush_interval=60,
                                     overflow=policy),
                              sender=sender, on_outcome=outcomes.append) as queue:
            receipts = [await queue.track(i, "ev") for i in (0, 1)]  # these two go in flight
            with anyio.fail_after(5):
                await sender.wait_for(2)
            receipts += [await queue.track(i, "ev") for i in (2, 3)]
            last = await queue.track(9, "ev")
            dropped = [o for o in outcomes if o.status is OutcomeStatus.DROPPED]
            assert [o.customer_id for o in dropped] == [2 if policy == "drop_oldest" else 9]
            assert dropped[0].reason == "queue_full"
            assert queue.statistics().dropped == 1
            assert last.done() == (policy == "drop_newest")
            sender.hold.set()
        assert dropped_id in (0, 9)
        stats = queue.statistics()
        assert stats.enqueued == 5
        assert stats.delivered == 4
        assert stats.pending == 0


async def test_overflow_block_waits_for_room_then_times_out() -> None:
    """overflow='block' waits until an operation settles, or raises after enqueue_timeout."""
    sender = RecordingSender()
    sender.hold.clear()
    async with EventQueue(config(max_queue_size=2, batch_size=1, overflow="block",
                                 enqueue_timeout=0.2), sender=sender) as queue:
        await queue.track(1, "ev")
        await queue.track(2, "ev")
        started = time.monotonic()
        with pytest.raises(QueueFullError, match="enqueue_timeout"):
            await queue.track(3, "ev")
        assert time.monotonic() - started >= 0.2
        waiting = asyncio.ensure_future(queue.track(4, "ev"))
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()
        assert not waiting.done()
        sender.hold.set()
        with anyio.fail_after(5):
            receipt = await waiting
            assert (await receipt.wait()).status is OutcomeStatus.DELIVERED


async def test_blocked_callers_are_released_with_queue_closed_error() -> None:
    """aclose wakes callers blocked on a full queue with QueueClosedError."""
    sender = RecordingSender()
    sender.hold.clear()
    queue = EventQueue(config(max_queue_size=1, batch_size=1, overflow="block",
                              shutdown_timeout=0.2), sender=sender)
    await queue.track(1, "ev")
    waiting = asyncio.ensure_future(queue.track(2, "ev"))
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()
        assert not waiting.done()
        await queue.aclose()
        with pytest.raises(QueueClosedError):
            await waiting
    assert queue.statistics().pending == 0


async def test_on_outcome_errors_never_stop_delivery() -> None:
    """A raising sync or async callback is logged and delivery goes on."""
    seen: list[str] = []

    def bad_sync(outcome: Outcome) -> None:
        seen.append("sync")
        raise RuntimeError("callback bug")

    async def bad_async(outcome: Outcome) -> None:
        seen.append("async")
        raise RuntimeError("callback bug")

    for callback in (bad_sync, bad_async):
        sender = RecordingSender()
        async with EventQueue(config(), sender=sender, on_outcome=callback) as queue:
            for i in range(5):
                await queue.track(i, "ev")
        assert queue.statistics().delivered == 5
    assert seen.count("sync") == 5
    assert seen.count("async") == 5


async def test_concurrency_limit_is_reached_and_never_exceeded() -> None:
    """At most max_concurrency sends are in flight, and under load exactly that many are."""
    sender = RecordingSender()
    sender.hold.clear()
    async with EventQueue(config(max_concurrency=7, batch_size=50), sender=sender) as queue:
        for i in range(200):
            await queue.track(i, "ev")
        with anyio.fail_after(5):
            await sender.wait_for(7)
            await anyio.wait_all_tasks_blocked()
        assert sender.in_flight == 7
        sender.hold.set()
    assert sender.max_in_flight == 7
    assert queue.statistics().delivered == 200


async def test_a_backing_off_batch_does_not_hold_up_others() -> None:
    """While one batch waits to retry, later batches are sent and delivered."""
    slow_retry = RetryPolicy(attempts=3, wait_initial=30, wait_jitter=0, wait_max=30,
                             timeout=120)
    sender = RecordingSender()
    sender.script.append(503)
    async with EventQueue(config(batch_size=1, retry=slow_retry, shutdown_timeout=0.5),
                          sender=sender) as queue:
        stuck = await queue.track("first", "ev")
        with anyio.fail_after(5):
            await sender.wait_for(1)
        later = [await queue.track(i, "ev") for i in range(20)]
        with anyio.fail_after(5):
            for receipt in later:
                assert (await receipt.wait()).status is OutcomeStatus.DELIVERED
        assert not stuck.done()
    # The shutdown deadline abandons its 30 s backoff rather than waiting it out.
    assert stuck.outcome is not None
    assert stuck.outcome.status is OutcomeStatus.FAILED
    assert stuck.outcome.reason == "shutdown_deadline"


async def test_retry_after_replaces_the_backoff() -> None:
    """A 503 with Retry-After waits that long, not the computed backoff."""
    policy = RetryPolicy(attempts=3, wait_initial=10, wait_jitter=0, timeout=30)
    sender = RecordingSender()
    sender.script.append(Response(503, {"Retry-After": "0.2"}, b""))
    async with EventQueue(config(batch_size=1, retry=policy), sender=sender) as queue:
        started = time.monotonic()
        receipt = await queue.track("1", "ev")
        with anyio.fail_after(5):
            outcome = await receipt.wait()
        assert 0.2 <= time.monotonic() - started < 5
        assert outcome.status is OutcomeStatus.DELIVERED
        assert outcome.attempts == 2


async def test_a_429_pauses_every_sender_and_costs_no_attempt() -> None:
    """A 429 closes a shared gate: no request starts until Retry-After has passed."""
    sender = RecordingSender()
    sender.script.append(Response(429, {"Retry-After": "0.3"}, b""))
    policy = RetryPolicy(attempts=1, timeout=10)
    async with EventQueue(config(batch_size=1, retry=policy), sender=sender) as queue:
        first = await queue.track("1", "ev")
        with anyio.fail_after(5):
            await sender.wait_for(1)
        gate_closed_at = time.monotonic()
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()  # the 429 has come back: the gate is shut
        others = [await queue.track(i, "ev") for i in range(5)]
        with anyio.fail_after(5):
            outcomes = [await r.wait() for r in [first, *others]]
    assert all(o.status is OutcomeStatus.DELIVERED for o in outcomes)
    assert outcomes[0].attempts == 2  # attempts=1 yet it was retried: the 429 cost nothing
    assert queue.statistics().rate_limited == 1
    assert time.monotonic() - gate_closed_at >= 0.3


async def test_retry_timeout_bounds_an_operation() -> None:
    """No attempt starts later than RetryPolicy.timeout after the first one."""
    policy = RetryPolicy(attempts=100, timeout=0.3, wait_initial=0.05, wait_jitter=0,
                         wait_exp_base=1)
    sender = RecordingSender(lambda r: 502)
    async with EventQueue(config(batch_size=1, retry=policy), sender=sender) as queue:
        started = time.monotonic()
        receipt = await queue.track("1", "ev")
        with anyio.fail_after(5):
            outcome = await receipt.wait()
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.reason == "retry_timeout"
    assert time.monotonic() - started < 2
    assert 3 <= outcome.attempts <= 8


async def test_flush_sends_everything_queued_now() -> None:
    """flush() sends a partial batch at once and returns when it has settled."""
    sender = RecordingSender()
    async with EventQueue(config(flush_interval=60), sender=sender) as queue:
        receipts = [await queue.identify(i) for i in range(5)]
        with anyio.fail_after(5):
            stats = await queue.flush()
        assert all(r.done() for r in receipts)
        assert stats.delivered == 5


async def test_using_a_queue_from_another_event_loop_fails_clearly() -> None:
    """A queue bound to one loop raises QueueUsageError from another, never hangs."""
    sender = RecordingSender()
    async with EventQueue(config(), sender=sender) as queue:
        await queue.track("1", "ev")

        def other_loop() -> None:
            async def use() -> None:
                await queue.track("2", "ev")
            asyncio.run(use())

        with pytest.raises(QueueUsageError, match="another event loop"):
            await anyio.to_thread.run_sync(other_loop)


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not made for Windows")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_using_a_queue_from_another_event_loop_in_its_own_thread_fails_clearly(
        loop_kind: str) -> None:
    """The same thread, but another loop than the queue's (which is idle): refused too.

    asyncio's loops say which thread runs them, uvloop's do not: both must be told apart.
    """
    new_loop = asyncio.new_event_loop if loop_kind == "asyncio" else _uvloop_factory()
    sender = RecordingSender()
    queue = EventQueue(config(), sender=sender)
    first, second = new_loop(), new_loop()
    try:
        first.run_until_complete(queue.track("1", "ev"))
        first.run_until_complete(queue.track("1b", "ev"))  # its own loop, once started
        with pytest.raises(QueueUsageError, match="another event loop"):
            second.run_until_complete(queue.track("2", "ev"))
        stats = first.run_until_complete(asyncio.wait_for(queue.aclose(), 10))
        assert (stats.enqueued, stats.delivered) == (2, 2)
    finally:
        first.close()
        second.close()


def test_a_call_that_must_wait_from_a_loop_nested_in_the_queues_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """nest_asyncio lets a second loop run inside a callback of the first, in one thread.

    There the thread alone cannot tell the loops apart: a call that would wait on the
    queue's loop (here for room, overflow="block") must still be refused at once, not
    wait out enqueue_timeout on a loop that cannot run.
    """

    def check_running(self: asyncio.BaseEventLoop) -> None:  # what nest_asyncio.apply() does
        if self.is_running():
            raise RuntimeError("This event loop is already running")

    monkeypatch.setattr(asyncio.BaseEventLoop, "_check_running", check_running)

    async def main() -> None:
        sender = RecordingSender()
        sender.hold.clear()
        queue = EventQueue(config(max_queue_size=1, batch_size=1, overflow="block",
                                  enqueue_timeout=30),
                           sender=sender)
        await queue.track("1", "ev")  # takes the only place, and holds it in flight
        outer, inner = asyncio.get_running_loop(), asyncio.new_event_loop()
        try:
            with pytest.raises(QueueUsageError, match="another event loop"):
                inner.run_until_complete(asyncio.wait_for(queue.track("2", "ev"), 20))
        finally:
            inner.close()
            asyncio.events._set_running_loop(outer)  # as nest_asyncio restores it
        sender.hold.set()
        stats = await asyncio.wait_for(queue.aclose(), 10)
        assert (stats.enqueued, stats.delivered) == (1, 1)

    asyncio.run(main())


async def test_waiting_for_a_receipt_from_another_event_loop_fails_clearly() -> None:
    """receipt.wait() on a loop other than the queue's raises QueueUsageError at once."""
    sender = RecordingSender()
    sender.hold.clear()
    async with EventQueue(config(), sender=sender) as queue:
        receipt = await queue.track("1", "ev")

        def other_loop() -> None:
            asyncio.run(asyncio.wait_for(receipt.wait(), 5))  # bounded even if it hangs

        with anyio.fail_after(10), pytest.raises(QueueUsageError, match="another event loop"):
            await anyio.to_thread.run_sync(other_loop)
        sender.hold.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
async def test_using_a_queue_in_a_forked_child_fails_clearly() -> None:
    """In a forked child the inherited queue raises QueueUsageError instead of hanging."""
    sender = RecordingSender()
    async with EventQueue(config(), sender=sender) as queue:
        await queue.track("1", "ev")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what happened through the pipe, then leave
            call = queue.track("2", "ev")
            try:
                call.send(None)  # the child has no loop of its own: run the call's first step
            except QueueUsageError:
                os.write(write_end, b"usage-error")
            except BaseException:
                os.write(write_end, b"other-error")
            else:
                os.write(write_end, b"no-error")
            os._exit(0)
        os.close(write_end)
        with anyio.fail_after(10):
            message = await anyio.to_thread.run_sync(os.read, read_end, 100)
            await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        os.close(read_end)
    assert message == b"usage-error"
