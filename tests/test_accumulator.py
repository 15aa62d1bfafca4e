"""Unit tests of the pure batch accumulator, a parcel's place in line, and the pacer."""

from __future__ import annotations

import heapq
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_queue import _operations as ops
from cio_queue._accumulator import GRAIN, BatchAccumulator
from cio_queue._courier import Parcel
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


@given(steps=st.lists(st.one_of(
    st.tuples(st.just("append"), st.floats(0.0, 0.2)),
    st.tuples(st.just("take"), st.integers(1, 7)),
    st.tuples(st.just("popleft"), st.just(0)),
    st.tuples(st.just("expedite"), st.just(0))), max_size=300))
def test_an_items_batch_is_due_within_a_grain_before_its_own_deadline(
        steps: list[tuple[str, float]]) -> None:
    """An item's batch is due by its own arrival + flush_interval, at most a grain early.

    Against a model that keeps every item's own time, through any mix of appends, takes,
    drops and expedites: the same items come out in the same order, and the deadline is
    the oldest item's own one, moved earlier by less than flush_interval / GRAIN (or
    already past once expedited).
    """
    interval = 1.0
    acc: BatchAccumulator[float] = BatchAccumulator(5, interval)
    model: list[float] = []
    forced = 0
    now = 0.0
    for action, value in steps:
        if action == "append":
            now += value
            acc.append(now, now)  # each item is its own arrival time
            model.append(now)
        elif action == "take" and model:
            count = min(int(value), len(model))
            assert acc.take(int(value)) == model[:count]
            del model[:count]
            forced = max(0, forced - count)
        elif action == "popleft" and model:
            assert acc.popleft() == model.pop(0)
            forced = max(0, forced - 1)
        elif action == "expedite":
            acc.expedite()
            forced = len(model)
        assert len(acc) == len(model) == sum(acc._counts)
        deadline = acc.deadline()
        if not model:
            assert deadline is None
        elif forced:
            assert deadline is not None
            assert deadline <= model[0]
        else:
            assert deadline is not None
            assert model[0] + interval - interval / GRAIN <= deadline <= model[0] + interval
            if len(model) < acc.batch_size:  # a full batch is due at once
                assert acc.due(deadline)
                assert not acc.due(deadline - 1e-6)


def test_a_burst_keeps_one_arrival_time_per_run_not_per_item() -> None:
    """10,000 items arriving within a grain take one run; spaced items one each."""
    acc: BatchAccumulator[int] = BatchAccumulator(100, 5.0)
    for i in range(10_000):
        acc.append(i, 100.0 + i * 1e-6)
    assert len(acc._starts) == len(acc._counts) == 1
    assert acc.deadline() == 105.0
    acc.take_all()
    for i in range(3):
        acc.append(i, 200.0 + i * 5.0 / GRAIN)  # a grain apart: a run each
    assert len(acc._starts) == len(acc._counts) == 3
    assert acc.take(2) == [0, 1]
    assert acc.deadline() == 200.0 + 2 * 5.0 / GRAIN + 5.0


def _parcel(*, rank: int | None = None) -> Parcel:
    op = ops.track("42", "ev", {}, None, None).seal(batch=True)
    return Parcel([op], v2=True, batch=None, rank=rank)


def test_a_parcel_cut_from_another_keeps_its_place_before_newer_ones() -> None:
    """A split half or a partial retry takes the place of the parcel it was cut from.

    Other parcels go in the order they were made, and no two parcels ever tie.
    """
    first, second = _parcel(), _parcel()
    halves = [_parcel(rank=first.order[0]), _parcel(rank=first.order[0])]
    third = _parcel()
    line = [(p.order, p) for p in (third, *halves, second, first)]
    heapq.heapify(line)  # a tie would compare two Parcels: TypeError
    assert [heapq.heappop(line)[1] for _ in range(5)] == [first, *halves, second, third]
    assert len({p.order for p in (first, second, third, *halves)}) == 5


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
