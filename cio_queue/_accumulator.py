"""The batch accumulator: pure bookkeeping of what waits for the flusher (no I/O, no awaits).

Stage: between intake and the dispatcher's flusher, which asks it when a batch is due.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["BatchAccumulator"]

T = TypeVar("T")


class BatchAccumulator(Generic[T]):
    """Hold items in arrival order and say when a batch should leave.

    A batch is due as soon as ``batch_size`` items wait, or once the oldest waiting item
    is ``flush_interval`` seconds old, whichever comes first. Times are float seconds on
    whatever monotonic clock the caller passes in.
    """

    __slots__ = ("_arrivals", "_forced", "_items", "batch_size", "flush_interval")

    def __init__(self, batch_size: int, flush_interval: float) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._items: deque[T] = deque()
        self._arrivals: deque[float] = deque()
        self._forced = 0  # the oldest items made due at once by expedite()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: T, now: float) -> bool:
        """Add an item; return True when the flusher must re-plan (new deadline or full batch)."""
        items = self._items
        items.append(item)
        self._arrivals.append(now)
        size = len(items)
        return size in (1, self.batch_size)

    def expedite(self) -> None:
        """Make every item waiting now due at once (a flush, or the shutdown)."""
        self._forced = len(self._items)

    def popleft(self) -> T:
        """Remove and return the oldest item (for a drop-oldest overflow)."""
        self._forced = max(0, self._forced - 1)
        self._arrivals.popleft()
        return self._items.popleft()

    def deadline(self) -> float | None:
        """Return when the oldest item's batch is due, or None when empty."""
        if not self._arrivals:
            return None
        if self._forced:
            return self._arrivals[0]  # already past: due now
        return self._arrivals[0] + self.flush_interval

    def due(self, now: float) -> bool:
        """Return whether a batch should leave now."""
        size = len(self._items)
        if size >= self.batch_size or self._forced:
            return True
        return size > 0 and now >= self._arrivals[0] + self.flush_interval

    def take(self, limit: int | None = None) -> list[T]:
        """Remove and return the oldest items, at most ``limit`` (default ``batch_size``)."""
        count = min(self.batch_size if limit is None else limit, len(self._items))
        items, arrivals = self._items, self._arrivals
        batch = [items.popleft() for _ in range(count)]
        for _ in range(count):
            arrivals.popleft()
        self._forced = max(0, self._forced - count)
        return batch

    def take_all(self) -> list[list[T]]:
        """Remove everything, as a list of batches of at most ``batch_size``."""
        batches = []
        while self._items:
            batches.append(self.take())
        return batches
