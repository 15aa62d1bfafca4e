"""A process that runs an EventQueue with a spool, for the spool's acceptance tests.

Run as ``python spool_queue_child.py SPOOL URL LOG [options]``. It imports everything,
prints ``warm``, and waits for a ``go`` line on stdin, so a test can start it ahead of
time and let it begin at the moment it chooses. Then it starts an EventQueue on SPOOL
(``base_url=URL``), prints ``started``, and enqueues ``track`` events from ``--tasks``
tasks at ``--rate`` events per second in all, ``--count`` of them (or until stdin closes).
Right after each ``await queue.track(...)`` returns it appends ``EVENT_ID N T`` to LOG
with one ``os.write`` (nothing a SIGKILL could lose in a buffer; T is
``time.monotonic()``, the same clock in every process on the host). Event N is
``track(TAG, "tick", {"tag": TAG, "n": N})``.

Once ``--count`` events were enqueued it prints ``produced``. When stdin closes it stops
enqueueing and, with ``--drain``, waits until nothing is spooled or pending (everything
delivered), then closes the queue and prints ``closed`` and the final statistics as JSON.
Without ``--drain`` it closes at once, leaving what is unsent in the spool.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Final

from cio_queue import EventQueue, QueueConfig, RetryPolicy, Statistics

DRAIN_TIMEOUT: Final = 60.0
"""Seconds ``--drain`` may wait for everything to be delivered."""
DRAIN_POLL: Final = 0.02
"""Seconds between two looks at the statistics while draining (no event announces it)."""
RETRY: Final = RetryPolicy(attempts=10_000, timeout=3600.0, wait_initial=0.05, wait_max=0.25,
                           wait_jitter=0.05)
"""Outlasts every outage of the tests, and resends soon after the API is back."""


def say(*words: object) -> None:
    """Print one line, straight to the pipe."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("spool")
    parser.add_argument("url")
    parser.add_argument("log")
    parser.add_argument("--tag", default="w")
    parser.add_argument("--durability", choices=("batched", "sync"), default="batched")
    parser.add_argument("--commit-interval", type=float, default=0.05)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--max-queue-size", type=int, default=100)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--events-log", default=None, help="the cio_queue log, at INFO")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> Statistics:
    """Enqueue as told until stdin closes; then drain (or not) and close."""
    config = QueueConfig(
        site_id="fake-site", api_key="fake-key", base_url=args.url, spool_path=args.spool,
        spool_durability=args.durability, spool_commit_interval=args.commit_interval,
        max_queue_size=args.max_queue_size,
        batch_size=50, flush_interval=0.05, rate_limit=None, request_timeout=2.0,
        shutdown_timeout=2.0, retry=RETRY)
    log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    queue = EventQueue(config)
    await queue.start()
    say("started")
    numbers = iter(range(args.count if args.count is not None else 10**9))
    interval = args.tasks / args.rate

    async def produce() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for number in numbers:
            receipt = await queue.track(args.tag, "tick", {"tag": args.tag, "n": number})
            os.write(log, f"{receipt.event_id} {number} {time.monotonic()}\n".encode())
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def produce_all() -> None:
        await asyncio.gather(*(produce() for _ in range(args.tasks)))
        say("produced")

    producers = asyncio.create_task(produce_all())
    await asyncio.to_thread(sys.stdin.buffer.read)  # until stdin closes
    producers.cancel()
    await asyncio.gather(producers, return_exceptions=True)
    if args.drain:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            while (stats := queue.statistics()).spooled or stats.pending:  # noqa: ASYNC110
                await asyncio.sleep(DRAIN_POLL)
    return await queue.aclose()


def main(argv: list[str]) -> None:
    """Wait for ``go``, run, and print the final statistics."""
    args = parse(argv)
    if args.events_log is not None:
        logging.basicConfig(filename=args.events_log, level=logging.INFO,
                            format="%(created).3f %(levelname)s %(message)s")
    say("warm")
    if sys.stdin.buffer.readline().strip() != b"go":
        return  # the test ended before it needed this process
    stats = asyncio.run(run(args))
    say("closed", json.dumps(dataclasses.asdict(stats)))


if __name__ == "__main__":
    main(sys.argv[1:])
