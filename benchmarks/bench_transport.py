"""Compare the two transports, v1 and batch, measured side by side in one run.

For each transport: HTTP requests per 10,000 mixed operations, end-to-end throughput to
``FakeTrackAPI`` in its own process with a simulated 20 ms latency, and the same with the
default fair-use ``rate_limit`` of 100 requests per second. Only ratios between numbers
from the same run mean anything. Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_transport.py [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Final

import structlog
from fake_server import Server, server_process

from cio_queue import EventQueue, QueueConfig, Transport, __version__

OPERATIONS: Final = 10_000
RATE_LIMITED_OPERATIONS: Final = 1_000
"""Fewer operations for the rate-limited runs: v1 at 100 requests/s needs 10 s per 1,000."""
LATENCY: Final = 0.02
CONCURRENCY: Final = 10
RATE_LIMIT: Final = 100.0
BATCH_SIZE: Final = 100
FLUSH_INTERVAL: Final = 0.05
WARMUP: Final = 200
PHASE_TIMEOUT: Final = 120.0
TRANSPORTS: Final[tuple[Transport, ...]] = ("v1", "batch")


@dataclass(frozen=True, slots=True)
class Run:
    """One measured delivery."""

    transport: Transport
    rate_limit: float | None
    operations: int
    requests: int
    accepted: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Operations delivered per second."""
        return self.operations / self.seconds


async def _push(queue: EventQueue, prefix: str, count: int) -> None:
    """Enqueue a mix shaped like web traffic: 1 identify, 1 page view, 3 events per 5."""
    for i in range(count):
        person = f"{prefix}-{i % 500}"
        kind = i % 5
        if kind == 0:
            await queue.identify(person, email=f"{person}@example.com", plan="pro")
        elif kind == 1:
            await queue.pageview(person, "/pricing", referrer="ad")
        else:
            await queue.track(person, "purchase", {"price": 9.5, "sku": f"A-{i}"})


async def _measure(server: Server, transport: Transport, rate_limit: float | None,
                   operations: int) -> Run:
    config = QueueConfig(site_id=server.site_id, api_key=server.api_key, base_url=server.url,
                         transport=transport, rate_limit=rate_limit,
                         max_concurrency=CONCURRENCY, batch_size=BATCH_SIZE,
                         flush_interval=FLUSH_INTERVAL, max_queue_size=operations + WARMUP)
    async with asyncio.timeout(PHASE_TIMEOUT):
        async with EventQueue(config) as queue:
            await _push(queue, "warmup", WARMUP)  # open the pooled connections
            warm = await queue.flush()
            before = server.accepted()
            started = time.perf_counter()
            await _push(queue, f"{transport}-{rate_limit}", operations)
            done = await queue.flush()
            seconds = time.perf_counter() - started
    delivered = done.delivered - warm.delivered
    if delivered != operations:
        raise RuntimeError(f"{transport}: delivered {delivered} of {operations}")
    return Run(transport, rate_limit, operations, done.requests - warm.requests,
               server.accepted() - before, seconds)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=OPERATIONS)
    parser.add_argument("--rate-limited-operations", type=int, default=RATE_LIMITED_OPERATIONS)
    parser.add_argument("--latency", type=float, default=LATENCY)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every phase and print one table of figures and ratios."""
    args = _parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"cio-queue {__version__}; latency {args.latency * 1000:.0f} ms, "
          f"max_concurrency {CONCURRENCY}, batch_size {BATCH_SIZE}")
    runs: list[Run] = []
    with server_process(args.latency) as server:
        for rate, count in ((None, args.operations), (RATE_LIMIT, args.rate_limited_operations)):
            for transport in TRANSPORTS:
                run = asyncio.run(_measure(server, transport, rate, count))
                runs.append(run)
                print(f"  measured {transport:<5} rate_limit={rate}: {run.operations} ops in "
                      f"{run.seconds:.2f} s", flush=True)
    print()
    print(f"{'transport':<10}{'rate_limit':>11}{'operations':>11}{'requests':>10}"
          f"{'req/10k ops':>12}{'seconds':>9}{'ops/s':>10}")
    for run in runs:
        print(f"{run.transport:<10}{run.rate_limit or '-':>11}{run.operations:>11,}"
              f"{run.requests:>10,}{run.requests * 10_000 / run.operations:>12,.0f}"
              f"{run.seconds:>9.2f}{run.per_second:>10,.0f}")
        if run.accepted != run.requests:
            print(f"  note: the server accepted {run.accepted} requests, the client sent "
                  f"{run.requests}")
    by_key = {(r.transport, r.rate_limit): r for r in runs}
    print()
    for rate in (None, RATE_LIMIT):
        v1, batch = by_key["v1", rate], by_key["batch", rate]
        print(f"rate_limit={rate}: batch/v1 throughput {batch.per_second / v1.per_second:.1f}x, "
              f"requests per operation {v1.requests / v1.operations:.2f} vs "
              f"{batch.requests / batch.operations:.3f}")


if __name__ == "__main__":
    main()
