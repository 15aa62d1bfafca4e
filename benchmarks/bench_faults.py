"""Throughput through faults against a clean run, measured side by side in one run.

Delivers the same operations to ``FakeTrackAPI`` in its own process twice per transport:
once clean, once answering 10% of requests with a 5xx and 5% with a 429 (Retry-After:
1 s, which pauses every sender of the queue). Every operation must be delivered in both
runs; the ratio of delivered operations per second is the cost of the faults. Run from
the repository root::

    PYTHONPATH=. python benchmarks/bench_faults.py [--help]
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

from cio_queue import EventQueue, QueueConfig, RetryPolicy, Transport, __version__
from cio_queue.testing import FaultRates

OPERATIONS: Final[dict[Transport, int]] = {"batch": 10_000, "v1": 2_000}
LATENCY: Final = 0.02
CONCURRENCY: Final = 10
SERVER_ERROR_RATE: Final = 0.10
RATE_LIMITED_RATE: Final = 0.05
RETRY_AFTER: Final = 1.0
SEED: Final = 20261129
PHASE_TIMEOUT: Final = 240.0
# Generous attempts so that no operation runs out of them: the point is throughput.
RETRY: Final = RetryPolicy(attempts=20, timeout=120, wait_initial=0.05, wait_max=1.0)


@dataclass(frozen=True, slots=True)
class Run:
    """One measured delivery."""

    transport: Transport
    faulty: bool
    operations: int
    requests: int
    rate_limited: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Operations delivered per second."""
        return self.operations / self.seconds


async def _measure(server: Server, transport: Transport, faulty: bool, operations: int) -> Run:
    config = QueueConfig(site_id=server.site_id, api_key=server.api_key, base_url=server.url,
                         transport=transport, rate_limit=None, max_concurrency=CONCURRENCY,
                         flush_interval=0.05, retry=RETRY, max_queue_size=operations)
    async with asyncio.timeout(PHASE_TIMEOUT):
        async with EventQueue(config) as queue:
            started = time.perf_counter()
            for i in range(operations):
                await queue.track(f"person-{i % 700}", "purchase", {"price": 9.5, "n": i})
            stats = await queue.flush()
            seconds = time.perf_counter() - started
    if stats.delivered != operations:
        raise RuntimeError(f"{transport}: delivered {stats.delivered} of {operations}: {stats}")
    return Run(transport, faulty, operations, stats.requests, stats.rate_limited, seconds)


def main(argv: list[str] | None = None) -> None:
    """Measure clean and faulty runs for each transport and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=LATENCY)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"cio-queue {__version__}; latency {args.latency * 1000:.0f} ms, max_concurrency "
          f"{CONCURRENCY}; faults {SERVER_ERROR_RATE:.0%} 5xx, {RATE_LIMITED_RATE:.0%} 429 "
          f"(Retry-After {RETRY_AFTER:.0f} s), seed {SEED}")
    faults = FaultRates(server_error=SERVER_ERROR_RATE, rate_limited=RATE_LIMITED_RATE,
                        retry_after=RETRY_AFTER)
    runs: list[Run] = []
    for faulty in (False, True):
        with server_process(args.latency, faults if faulty else None, SEED) as server:
            for transport, operations in OPERATIONS.items():
                run = asyncio.run(_measure(server, transport, faulty, operations))
                runs.append(run)
                print(f"  measured {transport:<5} {'faulty' if faulty else 'clean '}: "
                      f"{operations} ops in {run.seconds:.2f} s", flush=True)
    print()
    print(f"{'transport':<10}{'run':<8}{'operations':>11}{'requests':>10}{'429s':>6}"
          f"{'seconds':>9}{'ops/s':>10}")
    for run in runs:
        print(f"{run.transport:<10}{'faulty' if run.faulty else 'clean':<8}"
              f"{run.operations:>11,}{run.requests:>10,}{run.rate_limited:>6}"
              f"{run.seconds:>9.2f}{run.per_second:>10,.0f}")
    print()
    for transport in OPERATIONS:
        clean_run, faulty_run = (
            next(r for r in runs if r.transport == transport and r.faulty is f)
            for f in (False, True))
        ratio = faulty_run.per_second / clean_run.per_second
        print(f"{transport}: faulty/clean throughput {ratio:.2f} "
              f"(every operation delivered in both runs)")


if __name__ == "__main__":
    main()
