"""Unit tests of the pure batch accumulator and the request pacer."""

from __future__ import annotations

import itertools

import pytest

from cio_queue._accumulator import BatchAccumulator
from cio_queue._pacing import RATE_GUARD, RequestPacer


def test_a_batch_is_due_when_full() -> None:
    """batch_size waiting items make a batch due at once, whatever their age."""
    acc: BatchAccumulator[int] = BatchAccumulator(3, 5.0)
    assert acc.append(1, 0.0)  # first item: a new deadline to plan for
    assert not acc.append(2, 0.0)
    assert not acc.due(0.0)
    assert acc.append(3, 0.0)  # full
    assert acc.due(0.0)
    assert acc.take() == [1, 2, 3]
    assert not acc.due(100.0)


def test_a_batch_is_due_when_the_oldest_item_is_flush_interval_old() -> None:
    """A partial batch is due once its oldest item has waited flush_interval."""
    acc: BatchAccumulator[str] = BatchAccumulator(100, 5.0)
    acc.append("a", 10.0)
    acc.append("b", 12.0)
    assert acc.deadline() == 15.0
    assert not acc.due(14.99)
    assert acc.due(15.0)
    assert acc.take() == ["a", "b"]
    assert acc.deadline() is None


def test_take_all_splits_into_batches_and_popleft_drops_the_oldest() -> None:
    """take_all returns batch_size chunks in order; popleft removes the oldest item."""
    acc: BatchAccumulator[int] = BatchAccumulator(4, 1.0)
    for i in range(10):
        acc.append(i, float(i))
    assert acc.popleft() == 0
    assert acc.deadline() == 2.0
    assert acc.take_all() == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert len(acc) == 0


def starts_of(pacer: RequestPacer, ready_at: list[float]) -> list[float]:
    """When requests ready at ``ready_at`` start, each starting as soon as it may."""
    starts = []
    for ready in ready_at:
        start = ready + max(0.0, pacer.delay(ready))
        pacer.start(start)
        starts.append(start)
    return starts


def test_pacer_never_lets_a_window_hold_more_than_the_rate() -> None:
    """With rate r, starts are 1/r apart and any one-second window holds at most r of them."""
    starts = starts_of(RequestPacer(10), [0.0] * 35)
    assert starts[:10] == pytest.approx([i / 10 for i in range(10)])
    assert starts[10] == pytest.approx(1.0 + RATE_GUARD)  # the window, not just the spacing
    for i in range(len(starts) - 10):
        assert starts[i + 10] - starts[i] >= 1.0 + RATE_GUARD - 1e-9
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(starts))


def test_pacer_counts_the_time_a_request_really_started() -> None:
    """A request that started late (a busy loop) moves the window: no burst after it."""
    pacer = RequestPacer(2)
    pacer.start(0.0)
    pacer.start(0.9)  # it was allowed at 0.5, but its loop was busy until 0.9
    assert pacer.delay(1.0) == pytest.approx(0.4)  # 1/rate after the real start, not 1.01
    pacer.start(1.4)
    assert pacer.delay(1.4) == pytest.approx(0.9 + 1.0 + RATE_GUARD - 1.4)  # the window


def test_pacer_does_not_let_slight_lateness_slow_the_schedule() -> None:
    """Starts a little behind the schedule keep it: the rate is kept, not lost to timers."""
    pacer = RequestPacer(100)
    late = 0.003  # every start 3 ms behind its slot, as asyncio timers may be
    starts = []
    now = 0.0
    for _ in range(300):
        now += max(0.0, pacer.delay(now)) + late
        pacer.start(now)
        starts.append(now)
    assert starts[-1] - starts[0] < 3.0 + 0.05  # about 100 per second, not 100 / 1.3
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.005 - 1e-9


def test_pacer_without_a_rate_only_obeys_the_gate() -> None:
    """rate=None means no limit, but a closed 429 gate still holds every request back."""
    pacer = RequestPacer(None)
    assert pacer.delay(5.0) <= 0
    pacer.start(5.0)
    pacer.close_gate(5.0, 2.0)
    pacer.close_gate(5.5, 0.5)  # a shorter pause never shortens the gate
    assert pacer.delay(6.0) == 1.0
    assert pacer.delay(7.5) <= 0


def test_pacer_with_a_fractional_rate() -> None:
    """A rate below one per second spaces requests 1/rate seconds apart."""
    pacer = RequestPacer(0.5)
    assert pacer.delay(0.0) <= 0
    pacer.start(0.0)
    assert pacer.delay(0.0) == 2.0 + RATE_GUARD
    assert pacer.delay(10.0) <= 0  # long idle: no wait at all
