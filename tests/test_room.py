"""Room: the queue's places, handed to waiters oldest first, never lost or made up."""

from __future__ import annotations

import asyncio
import gc

import anyio
import pytest

from cio_queue._room import Room

pytestmark = pytest.mark.anyio  # waiters are futures of a running loop


def test_places_are_taken_until_none_is_free_and_given_back_up_to_the_capacity() -> None:
    room = Room(2)
    assert room.try_acquire()
    assert room.try_acquire()
    assert not room.try_acquire()
    assert room.value == 0  # a try that found no place took none
    room.release()
    room.release()
    assert room.value == 2
    with pytest.raises(ValueError, match="more places"):
        room.release()


async def test_a_freed_place_goes_to_the_oldest_waiter_still_waiting() -> None:
    room = Room(2)
    assert room.try_acquire()
    assert room.try_acquire()
    first, failed, cancelled, last = (room.waiter() for _ in range(4))
    failed.set_exception(RuntimeError("its deadline passed"))
    cancelled.cancel()
    room.release()
    assert first.done()
    assert first.result() is None
    room.release()  # passes over the failed and the cancelled one
    assert last.done()
    assert room.value == 0  # both places went to waiters, none to the pool
    room.forget(failed)
    room.forget(cancelled)
    room.release()  # first's and last's holders give them back: nobody waits now
    room.release()
    assert room.value == 2


async def test_a_place_given_to_a_waiter_whose_caller_gives_up_goes_to_the_next() -> None:
    room = Room(1)
    assert room.try_acquire()
    gave_up, next_one = room.waiter(), room.waiter()
    room.release()  # to gave_up, whose caller is cancelled before it resumes
    room.forget(gave_up)
    assert next_one.done()
    assert room.value == 0


async def test_forgetting_a_failed_wait_takes_it_out_of_the_queue_and_retrieves_it(
        caplog: pytest.LogCaptureFixture) -> None:
    room = Room(1)
    assert room.try_acquire()
    waiter = room.waiter()
    waiter.set_exception(RuntimeError("the queue closed"))
    room.forget(waiter)
    del waiter
    gc.collect()
    room.release()
    assert room.value == 1  # no stale waiter took it
    assert "never retrieved" not in caplog.text  # asyncio logs an unretrieved failure


async def test_a_cancelled_acquire_holds_no_place() -> None:
    room = Room(1)
    assert room.try_acquire()
    with anyio.move_on_after(0.01):
        await room.acquire()
    room.release()
    assert room.value == 1
    await room.acquire()  # a free place is taken at once
    assert room.value == 0


async def test_waiters_are_served_in_the_order_they_came() -> None:
    room = Room(1)
    assert room.try_acquire()
    served: list[int] = []

    async def take(i: int) -> None:
        await room.acquire()
        served.append(i)

    async with anyio.create_task_group() as tasks:
        for i in range(5):
            tasks.start_soon(take, i)
        await anyio.wait_all_tasks_blocked()
        for _ in range(5):
            room.release()
            await asyncio.sleep(0)
    assert served == [0, 1, 2, 3, 4]
    assert room.value == 0
