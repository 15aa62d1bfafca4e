"""cio-queue under test: delivery runs, memory behind a hung server, and aclose() time.

Every queue here uses the library's defaults (``batch_size=100``, ``flush_interval=5.0``,
``max_concurrency=10``, the default retry policy) except for what a run states:
the transport, the rate limit, and, where a run needs it, ``max_queue_size``,
``overflow``, ``request_timeout`` and ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cio_queue import DEFAULT_MAX_QUEUE_SIZE, EventQueue, Overflow, QueueConfig, Transport

from ._harness import (
    CONCURRENCY,
    EVENT_DATA,
    EVENT_NAME,
    OPS_PER_REQUEST,
    GcClock,
    Outcome,
    Probe,
    customer_id,
    percentile,
    produce,
)
from ._server import ServerHandle
from ._sizes import HUNG_REQUEST_TIMEOUT

SETTLE_TIMEOUT: Final = 30.0
"""Seconds a hung-server run may wait for its requests to start."""


def queue_config(server: ServerHandle, transport: Transport, rate_limit: float | None,
                 **overrides: Any) -> QueueConfig:
    """Return the library's default config aimed at the benchmark server."""
    return QueueConfig(site_id=server.site_id, api_key=server.api_key,
                       base_url=server.track_url, transport=transport, rate_limit=rate_limit,
                       **overrides)


def label(transport: Transport, rate_limit: float | None) -> str:
    limit = "None" if rate_limit is None else f"{rate_limit:g}"
    return f"cio-queue {transport}, rate_limit={limit}"


def warmup_ops(transport: Transport) -> int:
    """Operations that open every pooled connection twice over."""
    return 2 * CONCURRENCY * (OPS_PER_REQUEST if transport == "batch" else 1)


async def deliver(server: ServerHandle, ops: int, transport: Transport,
                  rate_limit: float | None, probe: Probe, *, overflow: Overflow = "raise",
                  max_queue_size: int | None = None, record_latency: bool = False,
                  rate_window: float = 0.0) -> Outcome:
    """Deliver ``ops`` track events from ``PRODUCERS`` tasks; time until all are delivered.

    With ``overflow="raise"`` the queue is made big enough for every operation (the
    default 10,000, or more), so no call ever meets a full queue; ``"block"`` keeps the
    default size and makes producers wait for room, as a sustained stream does. A
    rate-limited run idles ``rate_window`` seconds after its warm-up, so the limiter's
    window holds none of the warm-up's requests when the clock starts. ``drain_s`` in the
    outcome is the time from the last call's return to the last delivery; ``gc_us``
    the cyclic GC's CPU per operation in the timed part, ``gc0`` to ``gc2`` its
    collections of each generation there (see :class:`GcClock`).
    """
    size = max_queue_size or max(DEFAULT_MAX_QUEUE_SIZE, ops + warmup_ops(transport))
    config = queue_config(server, transport, rate_limit, max_queue_size=size,
                          overflow=overflow)
    latencies: list[int] | None = [] if record_latency else None
    async with EventQueue(config) as cio:

        async def enqueue(i: int) -> str | None:
            receipt = await cio.track(customer_id(i), EVENT_NAME, EVENT_DATA)
            return receipt.event_id

        for i in range(warmup_ops(transport)):
            await cio.track(f"warm-up-{i}", EVENT_NAME, EVENT_DATA)
        warm = await cio.flush()
        if rate_limit is not None:
            await asyncio.sleep(rate_window)
        gc.collect()
        with GcClock().watching() as collector:
            probe.start()
            await produce(ops, enqueue, probe.ids, latencies)
            produced = time.perf_counter()
            done = await cio.flush()
            probe.stop()
        drain = time.perf_counter() - produced
    extra = {**collector.figures(ops), **({} if latencies is None
                                           else latency_figures(latencies))}
    return Outcome(delivered=done.delivered - warm.delivered,
                   requests=done.requests - warm.requests,
                   settled_undelivered=done.failed + done.rejected - warm.failed - warm.rejected,
                   extra={**extra, "retries": float(done.retries - warm.retries),
                          "drain_s": drain})


def latency_figures(latencies: list[int]) -> dict[str, float]:
    """Return the p50, p99 and max of per-call wall times, in microseconds."""
    if not latencies:
        return {}
    return {"p50_us": percentile(latencies, 0.50) / 1000,
            "p99_us": percentile(latencies, 0.99) / 1000,
            "max_us": max(latencies) / 1000}


# --- behind a hung server ---------------------------------------------------------------


def json_size(transport: Transport) -> int:
    """Return the JSON bytes one track op takes on the wire with ``transport``.

    The batch transport's v2 element (compact JSON) or the v1 body (as the official SDK
    encodes it); the event id is a 26-character ULID either way.
    """
    event_id = "0" * 26
    if transport == "batch":
        element = {"type": "person", "identifiers": {"id": customer_id(123)},
                   "action": "event", "name": EVENT_NAME, "id": event_id,
                   "attributes": EVENT_DATA}
        return len(json.dumps(element, separators=(",", ":")))
    return len(json.dumps({"name": EVENT_NAME, "data": EVENT_DATA, "id": event_id}))


FILL: Final = CONCURRENCY * OPS_PER_REQUEST
"""Operations enqueued first to occupy every concurrency slot with a hung request: full
batches, so the flusher dispatches them at once on either transport."""


async def _wait_for_hung_requests(server: ServerHandle, count: int) -> None:
    """Wait until the server holds ``count`` hung requests."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        # The condition lives in the server process: no event can signal it, so poll.
        while server.ledger().in_flight < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _wait_for_no_requests(server: ServerHandle) -> None:
    """Wait until the server has let go of the previous run's hung requests."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        while server.ledger().in_flight:  # noqa: ASYNC110 - polled, as above
            await asyncio.sleep(0.01)


@dataclass(frozen=True, slots=True)
class MemoryFigure:
    """Bytes of Python heap per operation queued behind a hung server."""

    transport: Transport
    ops: int
    bytes_per_op: float
    json_bytes: int

    @property
    def budget(self) -> float:
        """The goal's allowance: twice the op's JSON plus 300 bytes."""
        return 2 * self.json_bytes + 300


async def queued_memory(server: ServerHandle, ops: int, transport: Transport,
                        probe: Probe) -> tuple[Outcome, MemoryFigure]:
    """Measure the heap that ``ops`` queued operations hold while every request hangs.

    Every concurrency slot is first filled with a hung request, so the measured
    operations all stay in the queue. The heap is read with ``tracemalloc`` after a full
    collection, before and after the operations are enqueued; the server must accept
    nothing, and at the end every operation must be settled as failed.
    """
    fill = FILL
    config = queue_config(server, transport, None, max_queue_size=fill + ops,
                          request_timeout=HUNG_REQUEST_TIMEOUT, shutdown_timeout=0.1)
    await _wait_for_no_requests(server)
    cio = EventQueue(config)
    try:
        for i in range(fill):
            await cio.track(f"fill-{i}", EVENT_NAME, EVENT_DATA)
        await _wait_for_hung_requests(server, CONCURRENCY)
        probe.start()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(ops):
                receipt = await cio.track(customer_id(i), EVENT_NAME, EVENT_DATA)
                probe.ids.add(receipt.event_id)
                if i % OPS_PER_REQUEST == 0:
                    await asyncio.sleep(0)  # let the flusher see the batches form
            await asyncio.sleep(0.05)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        probe.stop()
    finally:
        stats = await cio.aclose()
    figure = MemoryFigure(transport, ops, (after - before) / ops, json_size(transport))
    undelivered = stats.failed + stats.dead_lettered - fill
    return Outcome(delivered=stats.delivered, requests=stats.requests,
                   settled_undelivered=undelivered), figure


@dataclass(frozen=True, slots=True)
class AcloseFigure:
    """How long ``aclose()`` took with operations pending behind a hung server."""

    transport: Transport
    dead_letter: bool
    pending: int
    deadline: float
    seconds: float

    @property
    def beyond_deadline(self) -> float:
        return self.seconds - self.deadline


async def aclose_time(server: ServerHandle, pending: int, transport: Transport,
                      deadline: float, dead_letter_path: Path | None,
                      probe: Probe) -> tuple[Outcome, AcloseFigure]:
    """Time ``aclose()`` with ``pending`` operations queued or in flight to a hung server.

    The clock covers only the ``aclose()`` call; everything must end dead-lettered (with
    a file) or failed (without), and with a file it must hold one line per operation.
    """
    config = queue_config(server, transport, None, max_queue_size=pending,
                          request_timeout=HUNG_REQUEST_TIMEOUT, shutdown_timeout=deadline,
                          dead_letter_path=dead_letter_path)
    await _wait_for_no_requests(server)
    cio = EventQueue(config)
    try:
        for i in range(pending):
            receipt = await cio.track(customer_id(i), EVENT_NAME, EVENT_DATA)
            probe.ids.add(receipt.event_id)
        full_batches = pending // OPS_PER_REQUEST if transport == "batch" else pending
        await _wait_for_hung_requests(server, min(CONCURRENCY, full_batches))
    except BaseException:
        await cio.aclose()
        raise
    probe.start()
    stats = await cio.aclose()
    probe.stop()
    undelivered = stats.failed + stats.dead_lettered
    if dead_letter_path is not None:
        with dead_letter_path.open("rb") as file:
            lines = sum(1 for _ in file)
        if lines != stats.dead_lettered:
            undelivered = lines  # shows up in the delivery check as a mismatch
    figure = AcloseFigure(transport, dead_letter_path is not None, pending, deadline,
                          probe.seconds)
    return Outcome(delivered=stats.delivered, requests=stats.requests,
                   settled_undelivered=undelivered), figure
