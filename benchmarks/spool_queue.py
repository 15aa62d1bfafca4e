"""Benchmark EventQueue with a spool (``batched`` and ``sync``) beside the in-memory queue.

Three variants, each measured in the same run: the in-memory queue (no ``spool_path``), a
spool with ``spool_durability="batched"`` (the default) and one with ``"sync"``. All use
the library's defaults otherwise (batch transport, ``rate_limit=None`` so the limiter
does not cap throughput), against ``FakeTrackAPI`` in a process of its own at 0 ms.

1. **Enqueue cost**: ``await queue.track(...)`` from one task, ``CALLS`` times (``SYNC_CALLS``
   with ``sync``: each call waits for its own commit, an fsync), with a sender that never
   touches the network. The CPU time of this process per call (the spool's thread
   included) and the wall time per call; the median of ``REPEATS`` interleaved runs.
2. **Throughput**: ``OPS`` track events from 100 producer tasks (think request handlers),
   each yielding after every call, delivered end to end: operations per second until the
   last is delivered, CPU per operation, and the wall time of each enqueue call (p50,
   p99, max). With ``sync``, concurrent callers share group commits. Each run is checked
   event id by event id against the server's ledger.

Only ratios to the in-memory queue, measured in the same run, carry over to another
machine. From the repository root::

    python -m benchmarks.spool_queue [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Final

from cio_queue import EventQueue, SpoolDurability

from ._cio import latency_figures, queue_config
from ._enqueue import NullSender
from ._harness import (
    EVENT_DATA,
    EVENT_NAME,
    Outcome,
    Probe,
    customer_id,
    delivery_problem,
    make_run,
    produce,
)
from ._server import ServerHandle, server_process

CALLS: Final = 20_000
"""Timed enqueue calls per repetition (in memory, and with ``batched``)."""
SYNC_CALLS: Final = 1_000
"""The same with ``sync``, where each call from a single task waits for its own fsync."""
WARMUP: Final = 1_000
REPEATS: Final = 3
OPS: Final = 20_000
"""Operations per throughput run."""
WARMUP_OPS: Final = 2_000
CLOSE_TIMEOUT: Final = 60.0

VARIANTS: Final[dict[str, SpoolDurability | None]] = {
    "in memory": None, "spool, batched": "batched", "spool, sync": "sync"}


@dataclass(frozen=True, slots=True)
class Cost:
    """One variant's enqueue cost: CPU and wall microseconds per call."""

    cpu_us: float
    wall_us: float


def _overrides(durability: SpoolDurability | None, directory: str) -> dict[str, Any]:
    if durability is None:
        return {}
    return {"spool_path": directory, "spool_durability": durability}


async def enqueue_cost(server: ServerHandle, durability: SpoolDurability | None,
                       calls: int) -> Cost:
    """Time ``calls`` awaited track calls from one task, after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as directory:
        config = queue_config(server, "batch", None, max_queue_size=WARMUP + calls + 1,
                              **_overrides(durability, directory))
        queue = EventQueue(config, sender=NullSender())
        try:
            for i in range(WARMUP):
                await queue.track(f"warm-up-{i}", EVENT_NAME, EVENT_DATA)
            await queue.flush()
            uids = [customer_id(i) for i in range(calls)]
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            for uid in uids:
                await queue.track(uid, EVENT_NAME, EVENT_DATA)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                stats = await queue.aclose()
        if stats.delivered != WARMUP + calls:
            raise RuntimeError(f"{durability}: {stats.delivered} of {WARMUP + calls} "
                               "delivered to the null sender")
    return Cost(cpu / calls * 1e6, wall / calls * 1e6)


async def throughput(server: ServerHandle, durability: SpoolDurability | None, ops: int,
                     probe: Probe) -> Outcome:
    """Deliver ``ops`` events from the producers; time until the last is delivered."""
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as directory:
        config = queue_config(server, "batch", None, max_queue_size=WARMUP_OPS + ops,
                              **_overrides(durability, directory))
        latencies: list[int] = []
        async with EventQueue(config) as queue:

            async def enqueue(i: int) -> str | None:
                return (await queue.track(customer_id(i), EVENT_NAME, EVENT_DATA)).event_id

            for i in range(WARMUP_OPS):
                await queue.track(f"warm-up-{i}", EVENT_NAME, EVENT_DATA)
            warm = await queue.flush()
            gc.collect()
            probe.start()
            await produce(ops, enqueue, probe.ids, latencies)
            done = await queue.flush()
            probe.stop()
    return Outcome(delivered=done.delivered - warm.delivered,
                   requests=done.requests - warm.requests,
                   settled_undelivered=done.failed + done.rejected,
                   extra=latency_figures(latencies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS, help="timed calls (enqueue cost)")
    parser.add_argument("--sync-calls", type=int, default=SYNC_CALLS)
    parser.add_argument("--ops", type=int, default=OPS, help="operations per throughput run")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    logging.getLogger("cio_queue").setLevel(logging.WARNING)
    costs: dict[str, list[Cost]] = {name: [] for name in VARIANTS}
    runs = {}
    problems = []
    with server_process() as server:
        server.configure(latency=0.0)
        for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
            for name, durability in VARIANTS.items():
                calls = args.sync_calls if durability == "sync" else args.calls
                costs[name].append(asyncio.run(enqueue_cost(server, durability, calls)))
        for name, durability in VARIANTS.items():
            probe = Probe(server)
            outcome = asyncio.run(throughput(server, durability, args.ops, probe))
            run = make_run("spool", name, 0.0, args.ops, probe, outcome)
            runs[name] = run
            if (problem := delivery_problem(run)) is not None:
                problems.append(problem)

    cost = {name: Cost(statistics.median(c.cpu_us for c in samples),
                       statistics.median(c.wall_us for c in samples))
            for name, samples in costs.items()}
    base_cost, base_run = cost["in memory"], runs["in memory"]
    print(f"Python {sys.version.split()[0]}; enqueue cost: {args.calls:,} calls from one task "
          f"({args.sync_calls:,} with sync), median of {args.repeats}; throughput: "
          f"{args.ops:,} events from 100 tasks, delivered at 0 ms")
    print(f"{'variant':<16} {'CPU/call':>10} {'wall/call':>11} {'x memory':>9} "
          f"{'ops/s':>9} {'x memory':>9} {'CPU/op':>9} {'call p50':>9} {'p99':>9} {'max':>9}")
    for name in VARIANTS:
        c, run = cost[name], runs[name]
        extra = run.outcome.extra
        print(f"{name:<16} {c.cpu_us:>8.1f}µs {c.wall_us:>9.1f}µs "
              f"{c.cpu_us / base_cost.cpu_us:>8.1f}x {run.ops_per_second:>9,.0f} "
              f"{run.ops_per_second / base_run.ops_per_second:>8.2f}x "
              f"{run.cpu_us_per_op:>7.1f}µs {extra.get('p50_us', 0):>7.0f}µs "
              f"{extra.get('p99_us', 0):>7.0f}µs {extra.get('max_us', 0):>7.0f}µs")
    for name in VARIANTS:
        print(f"  {runs[name].delivery_line()}")
    for problem in problems:
        print(f"DELIVERY FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
