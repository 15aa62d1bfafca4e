"""The fleet layer's waiting helpers: backoff, stopping tasks, timed waits (no Redis needed)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cio_queue._redis._outage import BACKOFF_BASE, BACKOFF_CAP, Outage, stop_tasks, wait_event

pytestmark = pytest.mark.anyio


def test_backoff_doubles_with_equal_jitter_up_to_the_cap(
        caplog: pytest.LogCaptureFixture) -> None:
    """The n-th failure waits base * 2**(n-1), capped, times [0.5, 1); one error, one recovery."""
    caplog.set_level(logging.WARNING, logger="cio_queue")
    outage = Outage("producer", stream="ops")
    for n in range(1, 12):
        step = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (n - 1))
        assert step / 2 <= outage.failed(ConnectionError("down")) <= step
    outage.recovered()
    outage.recovered()
    assert [r.getMessage().split()[0] for r in caplog.records] == [
        "cio_queue.redis_unreachable", "cio_queue.redis_reconnected"]
    assert not outage.down


async def test_stop_tasks_ends_a_task_that_swallows_a_cancellation() -> None:
    """A task that ignores one cancel, as redis-py's client sometimes does, is still stopped."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # carries on, like a swallowed cancellation
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop_tasks([task], seconds=2)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_wait_event_times_out_and_lets_an_outside_cancellation_through() -> None:
    """wait_event returns False on timeout, True when set, and never eats a cancel."""
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    event.set()
    assert await wait_event(event, 0)
    waiter = asyncio.create_task(wait_event(asyncio.Event(), 60))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
