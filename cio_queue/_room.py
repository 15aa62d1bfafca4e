"""The queue's places: how many operations may be pending, and who waits for one.

Stage: shared by intake (which takes a place for each operation it admits, or waits for
one with ``overflow="block"``), the spool's loader (which takes one for each operation it
brings back from disk) and the ledger (which gives one back as each operation settles).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Room"]


class Room:
    """A counting semaphore whose freed places go to its waiters first, oldest first.

    A waiter is a future: :meth:`waiter` queues one, :meth:`release` resolves the oldest
    one still waiting, and its owner may fail it instead (a deadline, the shutdown), which
    wakes the caller with that error and no place. So a call that waits needs no cancel
    scope of its own: an anyio scope cost about 5 µs per wait, and a producer held by a
    full queue waits on almost every call.
    """

    __slots__ = ("_max", "_value", "_waiters")

    def __init__(self, capacity: int) -> None:
        self._value = capacity
        self._max = capacity
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def value(self) -> int:
        """Places free now."""
        return self._value

    @property
    def waiting(self) -> int:
        """Waiters queued (one that failed or was cancelled may stay until passed over)."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a place if one is free; return whether it did (no exception when not)."""
        if self._value:
            self._value -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a place, waiting for one in turn; a cancelled wait holds none."""
        if self.try_acquire():
            return
        waiter = self.waiter()
        try:
            await waiter
        except BaseException:
            self.forget(waiter)
            raise

    def waiter(self) -> asyncio.Future[None]:
        """Queue a future that :meth:`release` resolves when a place is given to it.

        Its owner awaits it; when the wait ends other than by that result (cancelled, or
        failed by the owner), the owner calls :meth:`forget`.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def forget(self, waiter: asyncio.Future[None]) -> None:
        """Tidy up after a wait that ended other than by a place, and return any place.

        A place given to the waiter just before its caller was cancelled goes back (to
        the next waiter, or the pool); a failure set on it is marked retrieved.
        """
        if not waiter.done():
            waiter.cancel()
        if waiter.cancelled() or waiter.exception() is not None:
            with contextlib.suppress(ValueError):  # release() may have passed over it
                self._waiters.remove(waiter)
        else:
            self.release()  # it was given a place its caller will not use

    def release(self) -> None:
        """Give a place back: to the oldest waiter still waiting, else to the pool.

        Raises:
            ValueError: more places given back than there are.
        """
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # one cancelled or failed is passed over
                waiter.set_result(None)
                return
        if self._value == self._max:
            raise ValueError("released more places than the room has")
        self._value += 1
