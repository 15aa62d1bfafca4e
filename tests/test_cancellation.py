"""Cancellation never loses an accepted operation nor breaks the statistics invariant.

Callers, the app around the queue, the queue's own tasks and ``aclose()`` itself are
cancelled at awkward moments, with anyio cancel scopes and with plain ``Task.cancel()``
(what asyncio.wait_for, aiohttp's handler cancellation and signal handlers use).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from cio_queue import (
    EventQueue,
    HttpSender,
    Outcome,
    OutcomeStatus,
    QueueConfig,
    Receipt,
    RetryPolicy,
    Statistics,
)
from cio_queue.testing import FakeTrackAPI, FaultRates

from .recording import RecordingSender

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(attempts=1000, timeout=60, wait_initial=0.02, wait_max=0.02,
                         wait_jitter=0)


def config(url: str = "http://127.0.0.1:9", **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "fake-site", "api_key": "fake-key", "base_url": url,
        "flush_interval": 0.01, "rate_limit": None, "retry": FAST_RETRY,
        "shutdown_timeout": 5.0, "transport": "v1",
    }
    values.update(overrides)
    return QueueConfig(**values)


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped
            + stats.dead_lettered + stats.pending)


def dead_lettered_customers(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(json.loads(line)["customer_id"] for line in path.read_text().splitlines())


def queue_tasks() -> list[asyncio.Task[Any]]:
    """The running tasks that belong to an EventQueue (its flusher, workers and writer)."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("cio_queue.")]


# --- callers ------------------------------------------------------------------------------

async def test_a_caller_cancelled_while_blocked_on_a_full_queue_enqueues_nothing() -> None:
    """A blocked enqueue that is cancelled adds nothing; the others go through."""
    sender = RecordingSender()
    sender.hold.clear()
    queue = EventQueue(config(max_queue_size=2, batch_size=1, overflow="block"), sender=sender)
    await queue.track("a", "ev")
    await queue.track("b", "ev")
    blocked = {name: asyncio.ensure_future(queue.track(name, "ev")) for name in "cde"}
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()
    assert not any(task.done() for task in blocked.values())
    blocked["d"].cancel()
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()
        stats = queue.statistics()
        assert stats.enqueued == 2 == settled_sum(stats)
        sender.hold.set()
        receipts = [await blocked["c"], await blocked["e"]]
        final = await queue.aclose()
    assert blocked["d"].cancelled()
    assert all(r.outcome and r.outcome.status is OutcomeStatus.DELIVERED for r in receipts)
    assert final.enqueued == final.delivered == 4
    assert final.enqueued == settled_sum(final)
    assert sorted(r.path.split("/")[-2] for r in sender.requests) == ["a", "b", "c", "e"]


async def test_room_handed_to_a_caller_cancelled_at_that_moment_goes_to_the_next() -> None:
    """A blocked caller cancelled just as it is woken must not strand the callers behind it."""
    sender = RecordingSender()
    sender.hold.clear()
    tasks: dict[str, asyncio.Future[Receipt]] = {}

    def cancel_b_on_first_outcome(outcome: Outcome) -> None:
        # Runs inside the settle that hands the freed room to "b": b is woken, then cancelled.
        if outcome.customer_id == "a":
            tasks["b"].cancel()

    queue = EventQueue(config(max_queue_size=1, batch_size=1, overflow="block"),
                       sender=sender, on_outcome=cancel_b_on_first_outcome)
    await queue.track("a", "ev")
    tasks["b"] = asyncio.ensure_future(queue.track("b", "ev"))
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()
    tasks["c"] = asyncio.ensure_future(queue.track("c", "ev"))
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()
    sender.hold.set()
    try:
        with anyio.fail_after(2):  # there is room: "c" must get in
            receipt = await tasks["c"]
            outcome = await receipt.wait()
    finally:
        stats = await queue.aclose()
    assert tasks["b"].cancelled()
    assert outcome.status is OutcomeStatus.DELIVERED
    assert stats.enqueued == stats.delivered == 2
    assert stats.pending == 0


# --- the app around the queue, and the queue's own tasks -------------------------------------

async def test_cancelling_the_app_during_a_slow_send_settles_every_operation(
        tmp_path: Path) -> None:
    """The app's task group is cancelled mid-send: every operation still ends settled."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI(latency=60) as fake:
        cfg = config(fake.url, dead_letter_path=path, batch_size=10, request_timeout=60)
        queue = EventQueue(cfg)
        receipts: list[Receipt] = []

        async def app() -> None:
            async with queue:
                for i in range(25):
                    receipts.append(await queue.track(f"c{i}", "ev"))
                await anyio.sleep_forever()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(app)
                await fake.wait_until(lambda: fake.in_flight >= 10)
                tg.cancel_scope.cancel()
    stats = queue.statistics()
    assert stats.enqueued == 25 == settled_sum(stats)
    assert (stats.pending, stats.dead_lettered) == (0, 25)
    assert all(r.outcome and r.outcome.reason == "shutdown_deadline" for r in receipts)
    assert dead_lettered_customers(path) == sorted(f"c{i}" for i in range(25))


async def test_operations_of_a_cancelled_batch_task_are_still_settled_at_close(
        tmp_path: Path) -> None:
    """Batch tasks cancelled from outside (a cancel-all-tasks shutdown): aclose spills them."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI(latency=60) as fake:
        cfg = config(fake.url, dead_letter_path=path, batch_size=10, request_timeout=60,
                     shutdown_timeout=1.0)
        sender = HttpSender(cfg)
        queue = EventQueue(cfg, sender=sender)
        try:
            for i in range(25):
                await queue.track(f"c{i}", "ev")
            with anyio.fail_after(10):
                await fake.wait_until(lambda: fake.in_flight >= 10)
                tasks = queue_tasks()
                assert len(tasks) >= 2  # the flusher and the workers
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)
                stats = await queue.aclose()
        finally:
            await sender.aclose()
    assert stats.enqueued == 25 == settled_sum(stats)
    assert stats.pending == 0
    assert stats.dead_lettered == 25
    assert dead_lettered_customers(path) == sorted(f"c{i}" for i in range(25))


# --- aclose itself -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["cancel_scope", "task_cancel"])
async def test_cancelling_aclose_while_a_batch_retries_still_settles_everything(
        tmp_path: Path, how: str) -> None:
    """aclose cancelled while it waits for retrying operations: its shielded part spills all."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI(faults=FaultRates(server_error=1.0)) as fake:
        cfg = config(fake.url, dead_letter_path=path, batch_size=10, shutdown_timeout=30)
        queue = EventQueue(cfg)
        receipts = [await queue.track(f"c{i}", "ev") for i in range(20)]
        with anyio.fail_after(10):
            await fake.wait_until(lambda: len(fake.log) >= 60)  # every op is retrying
            if how == "cancel_scope":
                with anyio.move_on_after(0.2) as scope:
                    await queue.aclose()
                assert scope.cancelled_caught
            else:
                closing = asyncio.ensure_future(queue.aclose())
                await fake.wait_until(lambda: len(fake.log) >= 120)
                closing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await closing
            stats = queue.statistics()
            assert await queue.aclose() == stats  # already closed: returns at once
    assert stats.enqueued == 20 == settled_sum(stats)
    assert stats.pending == 0
    assert stats.dead_lettered == 20
    assert all(r.outcome and r.outcome.status is OutcomeStatus.DEAD_LETTERED for r in receipts)
    assert dead_lettered_customers(path) == sorted(f"c{i}" for i in range(20))


async def test_cancelling_aclose_twice_still_settles_everything(tmp_path: Path) -> None:
    """A second Task.cancel() during aclose's cleanup must not stop the spill."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI(faults=FaultRates(server_error=1.0)) as fake:
        cfg = config(fake.url, dead_letter_path=path, batch_size=10, shutdown_timeout=30)
        sender = HttpSender(cfg)
        queue = EventQueue(cfg, sender=sender)
        try:
            for i in range(20):
                await queue.track(f"c{i}", "ev")
            with anyio.fail_after(10):
                await fake.wait_until(lambda: len(fake.log) >= 60)
            closing = asyncio.ensure_future(queue.aclose())
            with anyio.fail_after(10):
                await fake.wait_until(lambda: len(fake.log) >= 120)
            closing.cancel()
            await asyncio.sleep(0)  # aclose is now in its cleanup, waiting for the batches
            assert closing.cancel()  # ...and is cancelled again there
            with pytest.raises(asyncio.CancelledError):
                await closing
            with anyio.fail_after(5):
                stats = await queue.aclose()
        finally:
            await sender.aclose()
    assert stats.enqueued == 20 == settled_sum(stats)
    assert stats.pending == 0
    assert dead_lettered_customers(path) == sorted(f"c{i}" for i in range(20))
