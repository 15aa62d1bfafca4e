"""Benchmark the spool store: what ``add`` costs the event loop, and how often it commits.

From ``TASKS`` concurrent tasks, each adding ``CHUNK`` records at a time (timed), then
waiting for their commit (``sync``) or yielding (``batched``), then removing them, as
settled operations are. Measured side by side in one run:

- the baseline: ``asyncio.Queue.put_nowait`` of the same records, in the same pattern;
- ``SpoolStore.add`` with ``batched`` and with ``sync`` durability, on a real SQLite file
  in a temporary directory: its cost per call, commits per second, rows per commit, rows
  made durable per second, and the worst lateness of a 5 ms timer meanwhile (the loop's
  stall).

The stall with ``sync`` is the loop's own work, not the disk: one commit resolves hundreds
of futures, and their tasks all run in the next loop iteration; it is the same with the
commits replaced by a sleep. With ``batched``, the loop adds as fast as it can, so the
commits are as far apart as ``commit_interval`` allows and carry thousands of rows.

Only the ratio to the baseline carries over to another machine. Run from the repository
root::

    python -m benchmarks.spool [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from cio_queue._spool import SpoolStore

TASKS: Final = 100
CHUNK: Final = 10
ROWS: Final = 50_000
RECORD_BYTES: Final = 400
"""About the size of a serialised track call with a few attributes."""
WARMUP_ROWS: Final = 2_000
WATCHDOG_PERIOD: Final = 0.005


@dataclass
class Result:
    name: str
    add_seconds: float = 0.0
    adds: int = 0
    elapsed: float = 0.0
    commits: int = 0
    worst_lateness: float = 0.0

    @property
    def add_cost(self) -> float:
        return self.add_seconds / self.adds


async def _watchdog(result: Result, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(WATCHDOG_PERIOD)
        late = time.perf_counter() - started - WATCHDOG_PERIOD
        result.worst_lateness = max(result.worst_lateness, late)


async def _drive(result: Result, rows: int, step: Callable[[Result], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    watchdog = asyncio.create_task(_watchdog(result, stop))
    started = time.perf_counter()
    rounds = rows // (TASKS * CHUNK)

    async def task() -> None:
        for _ in range(rounds):
            await step(result)

    await asyncio.gather(*(task() for _ in range(TASKS)))
    result.elapsed = time.perf_counter() - started
    stop.set()
    await watchdog


async def baseline(rows: int) -> Result:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    record = b"r" * RECORD_BYTES
    result = Result("asyncio.Queue.put_nowait")

    async def step(result: Result) -> None:
        started = time.perf_counter()
        for _ in range(CHUNK):
            queue.put_nowait(record)
        result.add_seconds += time.perf_counter() - started
        result.adds += CHUNK
        await asyncio.sleep(0)
        for _ in range(CHUNK):
            queue.get_nowait()

    await _drive(result, rows, step)
    return result


async def spool(rows: int, durability: str) -> Result:
    record = b"r" * RECORD_BYTES
    result = Result(f"SpoolStore.add, {durability}")
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as directory:
        store = await SpoolStore.open(directory, durability="sync" if durability == "sync"
                                      else "batched")

        async def step(result: Result) -> None:
            started = time.perf_counter()
            added = [store.add(record) for _ in range(CHUNK)]
            result.add_seconds += time.perf_counter() - started
            result.adds += CHUNK
            durable = [future for _, future in added if future is not None]
            if durable:
                await asyncio.gather(*durable)
            else:
                await asyncio.sleep(0)
            for key, _ in added:
                store.remove(key)

        before = store.statistics().commits
        await _drive(result, rows, step)
        result.commits = store.statistics().commits - before
        await store.close()
    return result


async def main(rows: int) -> None:
    for durability in ("batched", "sync"):  # warm-up: imports, SQLite, the page cache
        await spool(WARMUP_ROWS, durability)
    await baseline(WARMUP_ROWS)
    base = await baseline(rows)
    results = [base, await spool(rows, "batched"), await spool(rows, "sync")]
    print(f"{rows:,} records of {RECORD_BYTES} bytes from {TASKS} tasks, {CHUNK} per turn")
    print(f"{'':28} {'per add':>9} {'x base':>7} {'rows/s':>9} {'commits/s':>10} "
          f"{'rows/commit':>12} {'worst stall':>12}")
    for result in results:
        per_commit = f"{result.adds / result.commits:,.0f}" if result.commits else "-"
        commits = f"{result.commits / result.elapsed:,.0f}" if result.commits else "-"
        print(f"{result.name:28} {result.add_cost * 1e6:7.2f}µs "
              f"{result.add_cost / base.add_cost:6.1f}x {result.adds / result.elapsed:9,.0f} "
              f"{commits:>10} {per_commit:>12} {result.worst_lateness * 1000:9.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help="records per run")
    args = parser.parse_args()
    asyncio.run(main(args.rows))
