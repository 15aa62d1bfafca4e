"""Benchmark SyncEventQueue's enqueue cost from many threads, against its baselines.

1. ``SyncEventQueue.track(...)`` called from THREADS threads at once.
2. The obvious alternative: an EventQueue on a loop thread, each call a
   ``asyncio.run_coroutine_threadsafe(queue.track(...), loop).result()`` round trip.
3. For reference, ``await EventQueue.track(...)`` on the loop itself, and
   ``SyncEventQueue.track`` from one thread.

Nothing is sent while the calls are timed (the batch is as large as the queue and the
flush interval an hour); each queue is then closed, which delivers everything to
``cio_queue.testing.FakeTrackAPI`` in its own process, and the server's count is checked.
Two figures per variant: wall time per call (all threads' calls over the elapsed time:
with the GIL, the CPU a call costs) and the time one call holds up its thread. Only
ratios measured in the same run carry over to another machine. From the repository root::

    python -m benchmarks.sync_queue [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cio_queue import EventQueue, QueueConfig, SyncEventQueue

from ._server import ServerHandle as Server
from ._server import server_process

THREADS: Final = 8
"""Caller threads, as a WSGI server or a Celery worker would have."""
CALLS_PER_THREAD: Final = 2_500
"""Timed calls per thread per repetition."""
WARMUP_PER_THREAD: Final = 250
"""Untimed calls per thread before each timed run."""
REPEATS: Final = 3
"""Repetitions of each measurement; the median is reported."""
JOIN_TIMEOUT: Final = 120.0
"""Upper bound on one timed run."""


@dataclass(frozen=True, slots=True)
class Timing:
    """One run: wall microseconds per call, and microseconds a call holds up its thread."""

    wall_us: float
    thread_us: float


def _config(server: Server, capacity: int) -> QueueConfig:
    return QueueConfig(site_id=server.site_id, api_key=server.api_key, base_url=server.track_url,
                       max_queue_size=capacity, batch_size=capacity, flush_interval=3600.0,
                       rate_limit=None, shutdown_timeout=60.0)


def _run_threads(threads: int, calls: int, call: Callable[[int, int], object]) -> Timing:
    """Run ``call(thread, n)`` WARMUP + ``calls`` times on each thread; time the ``calls``."""
    start = threading.Barrier(threads + 1)
    elapsed: list[float] = []

    def work(index: int) -> None:
        for n in range(WARMUP_PER_THREAD):
            call(index, -n - 1)
        start.wait()
        began = time.perf_counter()
        for n in range(calls):
            call(index, n)
        elapsed.append(time.perf_counter() - began)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    wall = time.perf_counter() - began
    return Timing(wall / (threads * calls) * 1e6, statistics.mean(elapsed) / calls * 1e6)


def time_sync_queue(server: Server, threads: int, calls: int) -> Timing:
    capacity = threads * (calls + WARMUP_PER_THREAD)
    cio = SyncEventQueue(_config(server, capacity))
    cio.start()
    timing = _run_threads(threads, calls,
                          lambda t, n: cio.track(f"user-{t}", "tick", {"n": n}))
    stats = cio.close()
    assert stats.delivered == capacity, stats
    return timing


def time_round_trips(server: Server, threads: int, calls: int) -> Timing:
    capacity = threads * (calls + WARMUP_PER_THREAD)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    queue = EventQueue(_config(server, capacity))
    asyncio.run_coroutine_threadsafe(queue.start(), loop).result()

    def call(index: int, n: int) -> object:
        coro = queue.track(f"user-{index}", "tick", {"n": n})
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    timing = _run_threads(threads, calls, call)
    stats = asyncio.run_coroutine_threadsafe(queue.aclose(), loop).result()
    assert stats.delivered == capacity, stats
    loop.call_soon_threadsafe(loop.stop)
    runner.join(JOIN_TIMEOUT)
    loop.close()
    return timing


def time_await_in_loop(server: Server, calls: int) -> Timing:
    capacity = calls + WARMUP_PER_THREAD

    async def run() -> Timing:
        async with EventQueue(_config(server, capacity)) as queue:
            for n in range(WARMUP_PER_THREAD):
                await queue.track("user", "tick", {"n": -n - 1})
            began = time.perf_counter()
            for n in range(calls):
                await queue.track("user", "tick", {"n": n})
            per_call = (time.perf_counter() - began) / calls * 1e6
        assert queue.statistics().delivered == capacity
        return Timing(per_call, per_call)

    return asyncio.run(run())


def median(runs: list[Timing]) -> Timing:
    return Timing(statistics.median(r.wall_us for r in runs),
                  statistics.median(r.thread_us for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS_PER_THREAD,
                        help="timed calls per thread per repetition")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    calls, repeats = args.calls, args.repeats
    logging.getLogger("cio_queue").setLevel(logging.WARNING)

    variants: dict[str, Callable[[Server], Timing]] = {
        f"SyncEventQueue.track, {THREADS} threads":
            lambda s: time_sync_queue(s, THREADS, calls),
        f"run_coroutine_threadsafe round trip, {THREADS} threads":
            lambda s: time_round_trips(s, THREADS, calls),
        "SyncEventQueue.track, 1 thread": lambda s: time_sync_queue(s, 1, calls),
        "await EventQueue.track, on the loop": lambda s: time_await_in_loop(s, calls),
    }
    results: dict[str, Timing] = {}
    with server_process() as server:
        server.configure(latency=0.0)
        for name, measure in variants.items():
            results[name] = median([measure(server) for _ in range(repeats)])
    print(f"Python {sys.version.split()[0]}, {THREADS} threads x {calls} calls, "
          f"median of {repeats}")
    print(f"{'variant':<52} {'wall us/call':>13} {'us per call in its thread':>26}")
    for name, timing in results.items():
        print(f"{name:<52} {timing.wall_us:>13.1f} {timing.thread_us:>26.1f}")
    ours = results[f"SyncEventQueue.track, {THREADS} threads"]
    trips = results[f"run_coroutine_threadsafe round trip, {THREADS} threads"]
    print(f"round trip / SyncEventQueue: wall {trips.wall_us / ours.wall_us:.1f}x, "
          f"per thread {trips.thread_us / ours.thread_us:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
