"""The batch accumulator: pure bookkeeping of what waits for the flusher (no I/O, no awaits).

Stage: between intake and the dispatcher's flusher, which asks it when a batch is due.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

__all__ = ["BatchAccumulator"]

T = TypeVar("T")


GRAIN: Final = 64
"""Arrivals less than ``flush_interval / GRAIN`` after the start of the newest run of
items join that run and take its time: one time per run, not one float per item."""


class BatchAccumulator(Generic[T]):
    """Hold items in arrival order and say when a batch should leave.

    A batch is due as soon as ``batch_size`` items wait, or once the oldest waiting item
    is ``flush_interval`` seconds old, whichever comes first. Times are float seconds on
    whatever monotonic clock the caller passes in.

    Arrival times are kept per run: an item that arrives less than ``flush_interval /
    GRAIN`` after the newest run began counts as arriving when that run began. An item's
    batch may so leave up to that much (under 1.6 %) before its own ``flush_interval``
    is up, never after; and a busy queue keeps a time per run instead of per item.
    """

    __slots__ = ("_counts", "_forced", "_grain", "_items", "_starts", "batch_size",
                 "flush_interval")

    def __init__(self, batch_size: int, flush_interval: float) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._grain = flush_interval / GRAIN
        self._items: deque[T] = deque()
        # Runs of items: when each began and how many items it holds (two deques: a
        # run costs what an item's time used to, however spaced the arrivals are).
        self._starts: deque[float] = deque()
        self._counts: deque[int] = deque()
        self._forced = 0  # the oldest items made due at once by expedite()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: T, now: float) -> bool:
        """Add an item; return True when the flusher must re-plan (new deadline or full batch)."""
        items = self._items
        items.append(item)
        starts = self._starts
        if starts and 0.0 <= now - starts[-1] < self._grain:
            self._counts[-1] += 1
        else:
            starts.append(now)
            self._counts.append(1)
        size = len(items)
        return size in (1, self.batch_size)

    def items(self) -> list[T]:
        """Every item waiting, oldest first."""
        return list(self._items)

    def expedite(self) -> None:
        """Make every item waiting now due at once (a flush, or the shutdown)."""
        self._forced = len(self._items)

    def popleft(self) -> T:
        """Remove and return the oldest item (for a drop-oldest overflow)."""
        self._forced = max(0, self._forced - 1)
        self._forget(1)
        return self._items.popleft()

    def deadline(self) -> float | None:
        """Return when the oldest item's batch is due, or None when empty."""
        if not self._starts:
            return None
        oldest = self._starts[0]
        if self._forced:
            return oldest  # already past: due now
        return oldest + self.flush_interval

    def due(self, now: float) -> bool:
        """Return whether a batch should leave now."""
        size = len(self._items)
        if size >= self.batch_size or self._forced:
            return True
        return size > 0 and now >= self._starts[0] + self.flush_interval

    def take(self, limit: int | None = None) -> list[T]:
        """Remove and return the oldest items, at most ``limit`` (default ``batch_size``)."""
        count = min(self.batch_size if limit is None else limit, len(self._items))
        items = self._items
        batch = [items.popleft() for _ in range(count)]
        self._forget(count)
        self._forced = max(0, self._forced - count)
        return batch

    def _forget(self, count: int) -> None:
        """Drop the arrival times of the ``count`` oldest items."""
        counts = self._counts
        while count:
            first = counts[0]
            if first > count:
                counts[0] = first - count
                return
            count -= first
            counts.popleft()
            self._starts.popleft()

    def take_all(self) -> list[list[T]]:
        """Remove everything, as a list of batches of at most ``batch_size``."""
        batches = []
        while self._items:
            batches.append(self.take())
        return batches
