"""What typed events cost per call: ``python -m benchmarks.typed_events [--quick]``.

Times ``await track(uid, event, data)`` in CPU nanoseconds per call (this process's
``time.process_time_ns``, after a warm-up and a full collection, as figure 1 does) on an
EventQueue, on a TypedEventQueue, and on a TypedEventQueue with ``validate_events=True``,
for two events: the suite's flat ``purchase`` (two keys) and an ``order`` with a Literal,
an optional key and a list of three nested TypedDicts. Repetitions are interleaved, so
drift in the machine hits every path alike; the table gives medians and each path's cost
over EventQueue's in the same run, and the check by itself (no queue), which is the
figure to trust when the machine is busy: the queue paths' differences are within their
noise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any, Final, Literal, NotRequired, TypedDict

from cio_queue import Event, EventCatalog, EventQueue, QueueConfig, TypedEventQueue
from cio_queue._typed import _Checks

from ._enqueue import NullSender
from ._harness import EVENT_DATA, customer_id

CALLS: Final = 20_000
WARMUP: Final = 2_000
REPEATS: Final = 7
QUICK_CALLS: Final = 2_000
QUICK_REPEATS: Final = 3
CLOSE_TIMEOUT: Final = 60.0


class Purchase(TypedDict):
    """The suite's event: ``{"price": 9.5, "sku": "A-1"}``."""

    price: float
    sku: str


class Line(TypedDict):
    """One line of an order."""

    sku: str
    quantity: int
    price: float


class Order(TypedDict):
    """A nested event: a Literal, an optional key, and a list of TypedDicts."""

    total: float
    currency: Literal["EUR", "USD"]
    lines: list[Line]
    coupon: NotRequired[str | None]


class Shop(EventCatalog):
    """The two events measured."""

    purchase: Event[Purchase]
    order: Event[Order]


ORDER: Final[Order] = {"total": 31.5, "currency": "EUR", "coupon": None, "lines": [
    {"sku": "A-1", "quantity": 1, "price": 9.5},
    {"sku": "B-2", "quantity": 2, "price": 7.0},
    {"sku": "C-3", "quantity": 1, "price": 8.0},
]}
EVENTS: Final[dict[str, tuple[str, Any]]] = {
    "purchase": (Shop.purchase, EVENT_DATA), "order": (Shop.order, ORDER)}
QUEUES: Final = ("EventQueue", "TypedEventQueue", "validate_events=True")


def _queue(kind: str, capacity: int) -> EventQueue:
    config = QueueConfig(site_id="bench-site", api_key="bench-key", rate_limit=None,
                         max_queue_size=capacity + 1)
    if kind == "EventQueue":
        return EventQueue(config, sender=NullSender())
    return TypedEventQueue(config, events=Shop, sender=NullSender(),
                           validate_events=kind == "validate_events=True")


async def _per_call(kind: str, event: str, calls: list[str], warmup: list[str]) -> float:
    """Return the CPU nanoseconds per ``await track(uid, name, data)`` on a fresh queue."""
    name, data = EVENTS[event]
    cio = _queue(kind, len(calls) + len(warmup))
    track = cio.track
    try:
        for uid in warmup:
            await track(uid, name, data)
        await asyncio.sleep(0)  # let the flusher start before the clock does
        gc.collect()
        started = time.process_time_ns()
        for uid in calls:
            await track(uid, name, data)
        return (time.process_time_ns() - started) / len(calls)
    finally:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await cio.aclose()


async def measure(calls: int, repeats: int) -> dict[tuple[str, str], float]:
    """Return the median per-call cost of each (event, queue) over interleaved repeats."""
    call_ids = [customer_id(i) for i in range(calls)]
    warm_ids = [f"warm-up-{i}" for i in range(WARMUP)]
    samples: dict[tuple[str, str], list[float]] = {
        (event, kind): [] for event in EVENTS for kind in QUEUES}
    for _ in range(repeats):
        for (event, kind), values in samples.items():
            values.append(await _per_call(kind, event, call_ids, warm_ids))
    return {key: statistics.median(values) for key, values in samples.items()}


def check_alone(calls: int, repeats: int) -> dict[str, float]:
    """Return the median CPU nanoseconds of the run-time check by itself, per event."""
    checks = _Checks(Shop, None)
    medians = {}
    for event, (name, data) in EVENTS.items():
        samples = []
        for _ in range(repeats):
            gc.collect()
            started = time.process_time_ns()
            for _ in range(calls):
                checks.event(name, data)
            samples.append((time.process_time_ns() - started) / calls)
        medians[event] = statistics.median(samples)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    args = parser.parse_args()
    calls, repeats = (QUICK_CALLS, QUICK_REPEATS) if args.quick else (CALLS, REPEATS)
    medians = asyncio.run(measure(calls, repeats))
    alone = check_alone(calls * 5, repeats)
    print(f"await track(...), CPU per call, median of {repeats} x {calls:,} calls\n")
    print("| event | queue | per call | over EventQueue |")
    print("|---|---|---:|---:|")
    for event in EVENTS:
        base = medians[event, "EventQueue"]
        for kind in QUEUES:
            cost = medians[event, kind]
            print(f"| {event} | {kind} | {cost / 1000:.2f} µs | "
                  f"{(cost - base) / 1000:+.2f} µs ({cost / base:.2f}x) |")
        print(f"| {event} | the check alone | {alone[event] / 1000:.2f} µs | |")


if __name__ == "__main__":
    main()
