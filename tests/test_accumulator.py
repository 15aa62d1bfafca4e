"""Unit tests of the pure batch accumulator and the request pacer."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_queue._accumulator import GRAIN, BatchAccumulator
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


@given(gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=200),
       takes=st.lists(st.integers(1, 7), max_size=60), drops=st.integers(0, 5))
def test_an_items_batch_is_due_within_a_grain_before_its_own_deadline(
        gaps: list[float], takes: list[int], drops: int) -> None:
    """An item's batch is due by its own arrival + flush_interval, at most a grain early.

    Whatever the arrivals, drops and takes, the oldest waiting item sets the deadline, and
    sharing a run's time moves it earlier by less than flush_interval / GRAIN.
    """
    interval = 1.0
    acc: BatchAccumulator[float] = BatchAccumulator(5, interval)
    now = 0.0
    for gap in gaps:
        now += gap
        acc.append(now, now)  # each item is its own arrival time
    for _ in range(min(drops, len(acc))):
        acc.popleft()
    for count in [*takes, len(gaps)]:
        if not len(acc):
            break
        oldest = acc._items[0]
        deadline = acc.deadline()
        assert deadline is not None
        assert oldest + interval - interval / GRAIN <= deadline <= oldest + interval
        assert acc.take(count)[0] == oldest
    assert acc.deadline() is None


def test_a_burst_keeps_one_arrival_time_per_run_not_per_item() -> None:
    """10,000 items arriving within a grain take one run; spaced items one each."""
    acc: BatchAccumulator[int] = BatchAccumulator(100, 5.0)
    for i in range(10_000):
        acc.append(i, 100.0 + i * 1e-6)
    assert len(acc._runs) == 1
    assert acc.deadline() == 105.0
    acc.take_all()
    for i in range(3):
        acc.append(i, 200.0 + i * 5.0 / GRAIN)  # a grain apart: a run each
    assert len(acc._runs) == 3
    assert acc.take(2) == [0, 1]
    assert acc.deadline() == 200.0 + 2 * 5.0 / GRAIN + 5.0


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
