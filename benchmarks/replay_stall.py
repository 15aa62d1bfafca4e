"""Benchmark how late a large replay makes the event loop that runs it.

``cio_queue.replay`` reads a dead-letter file in chunks on a worker thread and yields to
the event loop every ``SUBMIT_STEP`` operations it enqueues, so an application can replay
on the loop that serves it. ``tests/test_replay.py`` proves that bound by counting; this
times it. A dead-letter file of ``--records`` tracks is made the way the tests make one
(a real queue against an API that is down, one attempt each), then replayed to
``FakeTrackAPI`` running in a process of its own (``_server``), as fast as it goes
(``rate_limit=None``). Meanwhile a watchdog task sleeps ``--sleep`` seconds in a loop and
records how late each wake-up is. The same watchdog then runs on the same loop, idle, for
as long as the replay took, and the two are printed side by side: wake-ups, p50, p99 and
worst lateness. Nothing is asserted; only the comparison carries over to another machine.
From the repository root::

    python -m benchmarks.replay_stall [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import cio_queue
from cio_queue import EventQueue, QueueConfig, RetryPolicy, Statistics
from cio_queue._replay import SUBMIT_STEP
from cio_queue.testing import refused_url

from ._server import ServerHandle, server_process

RECORDS: Final = 50_000
SLEEP: Final = 0.010
"""Seconds the watchdog sleeps between two wake-ups."""
BATCH: Final = 100
REPLAY_TIMEOUT: Final = 600.0


async def write_dead_letters(path: Path, count: int) -> None:
    """Fill ``path`` with ``count`` tracks that failed against a server that is down.

    As ``tests/test_replay.py`` makes its files: one attempt each, every operation ends up
    in the file (failed, or dead-lettered at shutdown).
    """
    with refused_url() as url:
        config = QueueConfig(site_id="bench-site", api_key="bench-key", base_url=url,
                             rate_limit=None, flush_interval=0.01, batch_size=BATCH,
                             retry=RetryPolicy(attempts=1), dead_letter_path=path,
                             max_queue_size=count, overflow="block", max_concurrency=50,
                             shutdown_timeout=60, metrics=False)
        async with EventQueue(config) as queue:
            for n in range(count):
                await queue.track(f"c{n}", f"ev-{n}", {"n": n})
    stats = queue.statistics()
    if stats.failed + stats.dead_lettered != count:
        raise SystemExit(f"only {stats.failed + stats.dead_lettered} of {count} operations "
                         f"reached the dead-letter file: {stats}")


async def watchdog(sleep: float, lateness: list[float]) -> None:
    """Sleep ``sleep`` seconds in a loop; note how late (s) each wake-up is."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(sleep)
        lateness.append(time.perf_counter() - started - sleep)


async def replay_watched(path: Path, server: ServerHandle, sleep: float
                         ) -> tuple[Statistics, float, list[float]]:
    """Replay ``path`` to the server while the watchdog runs; return stats, seconds, lateness."""
    config = QueueConfig(site_id=server.site_id, api_key=server.api_key,
                         base_url=server.track_url, rate_limit=None, metrics=False)
    lateness: list[float] = []
    watching = asyncio.create_task(watchdog(sleep, lateness))
    await asyncio.sleep(0)  # the watchdog is asleep before the replay begins
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REPLAY_TIMEOUT):
            stats = await cio_queue.replay(path, config)
    finally:
        watching.cancel()
    return stats, time.perf_counter() - started, lateness


async def idle_watched(seconds: float, sleep: float) -> list[float]:
    """The watchdog alone on the loop for ``seconds``."""
    lateness: list[float] = []
    watching = asyncio.create_task(watchdog(sleep, lateness))
    await asyncio.sleep(seconds)
    watching.cancel()
    return lateness


async def run(path: Path, server: ServerHandle, sleep: float
              ) -> tuple[Statistics, float, list[float], list[float], str]:
    loop = type(asyncio.get_running_loop()).__name__
    stats, seconds, busy = await replay_watched(path, server, sleep)
    idle = await idle_watched(seconds, sleep)
    return stats, seconds, busy, idle, loop


def _ms(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


def _row(name: str, lateness: list[float]) -> str:
    ordered = sorted(lateness)
    return (f"  {name:24} {len(ordered):9,} {_ms(ordered, 0.5):8.2f} {_ms(ordered, 0.99):8.2f} "
            f"{ordered[-1] * 1000:8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=RECORDS,
                        help="tracks in the dead-letter file")
    parser.add_argument("--sleep", type=float, default=SLEEP,
                        help="seconds the watchdog sleeps between two wake-ups")
    args = parser.parse_args(argv)
    logging.getLogger("cio_queue").setLevel(logging.CRITICAL)  # a file of failures, on purpose
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as workdir, \
            server_process() as server:
        path = Path(workdir) / "dead.jsonl"
        started = time.perf_counter()
        asyncio.run(write_dead_letters(path, args.records))
        made = time.perf_counter() - started
        size = path.stat().st_size
        server.reset()
        stats, seconds, busy, idle, loop = asyncio.run(run(path, server, args.sleep))
        ledger = server.ledger()
        left = sum(1 for line in path.open("rb") if line.strip()) if path.exists() else 0
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} (1 min) at the start")
    print(f"dead-letter file: {args.records:,} tracks, {size / 1e6:.1f} MB, made in "
          f"{made:.1f} s")
    print(f"replay to FakeTrackAPI in another process ({server.loop}), rate_limit=None: "
          f"{seconds:.1f} s, {stats.delivered:,} delivered ({stats.delivered / seconds:,.0f}/s), "
          f"{stats.rejected + stats.failed:,} not; the server accepted "
          f"{ledger.distinct_events:,} distinct events; {left:,} lines left in the file; "
          f"a yield every {SUBMIT_STEP} operations enqueued")
    print(f"watchdog: asyncio.sleep({args.sleep:g}) in a loop on the replay's own event loop "
          f"({loop}), lateness of each wake-up (ms):")
    print(f"  {'':24} {'wake-ups':>9} {'p50':>8} {'p99':>8} {'worst':>8}")
    print(_row("during the replay", busy))
    print(_row(f"idle, the same {seconds:.1f} s", idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
