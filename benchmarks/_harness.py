"""What every measured run shares: the workload, the stopwatch, and the delivery check.

A *run* is one client delivering a number of operations to the benchmark server. The
client warms up untimed, then calls ``Probe.start()``, which starts a fresh server ledger
and the clocks, does the measured work, and calls ``Probe.stop()`` once the last
operation has been delivered. The run's :class:`Run` then holds the wall time, the CPU
time of this process (the client, threads included) and of the server process, what the
client says it delivered, and the server's ledger; :func:`delivery_problem` compares them
event id by event id.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from ._server import Ledger, ServerHandle, event_checksum

EVENT_NAME: Final = "purchase"
EVENT_DATA: Final[dict[str, Any]] = {"price": 9.5, "sku": "A-1"}
"""The one event every client sends: ``track(uid, "purchase", {"price": 9.5, "sku": "A-1"})``."""
PRODUCERS: Final = 100
"""Concurrent producer tasks (think: request handlers) enqueueing the operations."""
CONCURRENCY: Final = 10
"""Requests in flight for every client that has such a limit (cio-queue's default)."""
OPS_PER_REQUEST: Final = 100
"""Operations per batch request (cio-queue's default batch_size, PostHog's flush_at)."""


def customer_id(i: int) -> str:
    """Return the customer id of operation ``i``: 1,000 distinct people, as in real traffic."""
    return f"user-{i % 1000}"


class IdTally:
    """The client's side of the delivery check: how many event ids, and their checksum."""

    __slots__ = ("checksum", "count")

    def __init__(self) -> None:
        self.count = 0
        self.checksum = 0

    def add(self, event_id: str | None) -> None:
        """Count one submitted event by its id (None: the client returned no id)."""
        if event_id is None:
            raise RuntimeError("the client under test returned no event id")
        self.count += 1
        self.checksum += event_checksum(event_id)


class GcClock:
    """CPU time the cyclic garbage collector takes in this thread, and its collections.

    It only watches, through ``gc.callbacks``: nothing about the collector's settings
    changes. A collection runs in the thread whose allocation set it off, so on the
    client's event loop thread this is the GC share of a run's client CPU.
    """

    __slots__ = ("_started", "collections", "seconds")

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]  # by generation collected
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.thread_time() - self._started
            self.collections[generation] += 1

    @contextmanager
    def watching(self) -> Iterator[GcClock]:
        """Count the collections that run inside the block."""
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)

    def figures(self, ops: int) -> dict[str, float]:
        """Return GC µs per operation, and the collections of each generation."""
        return {"gc_us": sum(self.seconds) / ops * 1e6 if ops else 0.0,
                **{f"gc{generation}": float(count)
                   for generation, count in enumerate(self.collections)}}


@dataclass(slots=True)
class Probe:
    """Start and stop the clocks (and the server's ledger) around a run's measured part."""

    server: ServerHandle | None
    started_wall: float = 0.0
    started_cpu: float = 0.0
    started_server_cpu: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    ledger: Ledger = field(default_factory=Ledger)
    ids: IdTally = field(default_factory=IdTally)

    def start(self) -> None:
        """Reset the server's ledger (before the clock starts) and start the clocks."""
        if self.server is not None:
            self.server.reset()
            self.started_server_cpu = self.server.ledger().cpu_seconds
        self.started_cpu = time.process_time()
        self.started_wall = time.perf_counter()

    def stop(self) -> None:
        """Stop the clocks, then fetch the server's ledger."""
        self.seconds = time.perf_counter() - self.started_wall
        self.cpu_seconds = time.process_time() - self.started_cpu
        if self.server is not None:
            self.ledger = self.server.ledger()
            self.server_cpu_seconds = self.ledger.cpu_seconds - self.started_server_cpu


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the client itself reports at the end of a run."""

    delivered: int
    """Operations the client counts as delivered."""
    requests: int | None = None
    """HTTP requests the client counts (None: it does not tell)."""
    settled_undelivered: int = 0
    """Operations the client settled without delivery (failed, dead-lettered)."""
    extra: dict[str, float] = field(default_factory=dict)
    """Figures particular to the run (e.g. percentiles), named."""


@dataclass(frozen=True, slots=True)
class Run:
    """One measured run: which figure, client, conditions, clocks, both sides' counts."""

    group: str
    client: str
    latency: float
    ops: int
    seconds: float
    cpu_seconds: float
    server_cpu_seconds: float
    outcome: Outcome
    ledger: Ledger
    ids_count: int
    ids_checksum: int
    expect_delivery: bool = True
    server_error: float = 0.0

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_seconds / self.ops * 1e6 if self.ops else 0.0

    @property
    def server_cpu_share(self) -> float:
        """The server's CPU time over the run's wall time: 1.0 is one core kept busy."""
        return self.server_cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_10k(self) -> float:
        return self.ledger.requests * 10_000 / self.ops if self.ops else 0.0

    def delivery_line(self) -> str:
        """One line stating both sides' counts."""
        led = self.ledger
        return (f"{self.client} @ {self.latency * 1000:g} ms: submitted {self.ops:,}, client "
                f"delivered {self.outcome.delivered:,}, server accepted {led.events:,} events "
                f"({led.distinct_events:,} distinct ids, checksum "
                f"{'matches' if led.checksum == self.ids_checksum else 'DIFFERS'}) in "
                f"{led.accepted_requests:,}/{led.requests:,} requests")


def delivery_problem(run: Run) -> str | None:
    """Return why a run failed its delivery check, or None when every op arrived once."""
    led, out = run.ledger, run.outcome
    if run.ids_count != run.ops:
        return f"{run.client}: the client returned {run.ids_count} event ids for {run.ops} ops"
    if led.without_id:
        return f"{run.client}: the server accepted {led.without_id} operations without an id"
    if not run.expect_delivery:
        # Hung-server runs: nothing may arrive, and the client must settle every operation.
        if led.events or out.delivered:
            return f"{run.client}: {led.events} events arrived from a run that expected none"
        if out.settled_undelivered != run.ops:
            return (f"{run.client}: settled {out.settled_undelivered} of {run.ops} operations "
                    "it could not deliver")
        return None
    if out.delivered != run.ops:
        return f"{run.client}: the client counted {out.delivered} of {run.ops} delivered"
    if led.events != run.ops or led.distinct_events != run.ops:
        return (f"{run.client}: the server accepted {led.events} events with "
                f"{led.distinct_events} distinct ids for {run.ops} operations")
    if led.checksum != run.ids_checksum:
        return f"{run.client}: the server's event ids are not the ones the client submitted"
    return None


def make_run(group: str, client: str, latency: float, ops: int, probe: Probe,
             outcome: Outcome, *, expect_delivery: bool = True,
             server_error: float = 0.0) -> Run:
    """Freeze a probe and the client's outcome into a Run."""
    return Run(group=group, client=client, latency=latency, ops=ops, seconds=probe.seconds,
               cpu_seconds=probe.cpu_seconds, server_cpu_seconds=probe.server_cpu_seconds,
               outcome=outcome, ledger=probe.ledger, ids_count=probe.ids.count,
               ids_checksum=probe.ids.checksum, expect_delivery=expect_delivery,
               server_error=server_error)


async def produce(ops: int, enqueue: Callable[[int], Awaitable[str | None]], ids: IdTally,
                  latencies: list[int] | None = None, producers: int = PRODUCERS) -> None:
    """Enqueue operations ``0..ops-1`` from ``producers`` tasks, each yielding after a call.

    Producer ``p`` enqueues operations ``p, p + producers, ...``. Each call's wall time in
    nanoseconds goes to ``latencies`` when given. The yield after every call lets the
    queue's background work interleave with intake, as it does behind a web server.
    """

    async def producer(first: int) -> None:
        for i in range(first, ops, producers):
            if latencies is None:
                ids.add(await enqueue(i))
            else:
                started = time.perf_counter_ns()
                event_id = await enqueue(i)
                latencies.append(time.perf_counter_ns() - started)
                ids.add(event_id)
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        for p in range(min(producers, ops)):
            group.create_task(producer(p))


async def harness_cpu_per_op(ops: int) -> float:
    """Return the CPU µs per operation of :func:`produce` itself, with a no-op enqueue.

    This is the producers' share of every cio-queue and peer run's client CPU (a task
    switch per call and the id tally); the raw limit, whose operations are pre-built,
    does not pay it.
    """
    ids = [f"{i:026d}" for i in range(ops)]

    async def enqueue(i: int) -> str:
        return ids[i]

    started = time.process_time()
    await produce(ops, enqueue, IdTally())
    return (time.process_time() - started) / ops * 1e6


def percentile(samples: list[int], fraction: float) -> float:
    """Return the nearest-rank percentile of ``samples`` (0 < fraction <= 1)."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return float(ordered[rank])
