"""The ``cio-queue`` command line: ``demo``, ``replay`` and ``import``.

Outside the pipeline: it drives an EventQueue (and the fake Track API) like an app would.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import structlog

from ._config import QueueConfig
from ._exceptions import CioQueueError
from ._importcli import add_import_parser, run_import
from ._queue import EventQueue
from ._replay import replay
from ._version import __version__

__all__ = ["main"]

_DEMO_PLANS = ("Free", "Pro", "Team")


async def _handler(queue: EventQueue, worker: int, count: int, latencies: list[int]) -> None:
    """Act like a web handler: a few operations per request, each timed at the call site."""
    rng = random.Random(worker)  # noqa: S311 - demo data, not secrets
    clock = time.perf_counter_ns
    for n in range(count):
        person = f"user-{worker}-{rng.randrange(50)}"
        choice = n % 10
        started = clock()
        if choice == 0:
            await queue.identify(person, email=f"{person}@example.com",
                                 plan=rng.choice(_DEMO_PLANS), created_at=1_700_000_000 + n)
        elif choice == 1:
            await queue.pageview(person, f"/pricing?ref={worker}", referrer="demo")
        elif choice == 2:
            await queue.add_device(person, f"device-{worker}-{n}", "ios", app_version="1.2.3")
        else:
            await queue.track(person, "purchase", {"price": round(rng.uniform(1, 99), 2),
                                                   "items": [{"sku": f"sku-{n}", "qty": 1}]})
        latencies.append(clock() - started)
        if n % 20 == 19:
            await asyncio.sleep(0)  # a real handler awaits I/O between requests


async def _demo(args: argparse.Namespace) -> int:
    from .testing import FakeTrackAPI  # noqa: PLC0415 - only the demo needs the test server

    per_task, extra = divmod(args.operations, args.tasks)
    async with FakeTrackAPI(latency=args.latency) as fake:
        config = QueueConfig(site_id=fake.site_id, api_key=fake.api_key, base_url=fake.url,
                             transport=args.transport, max_concurrency=args.concurrency,
                             rate_limit=args.rate_limit or None, flush_interval=1.0)
        rate = f"{config.rate_limit:g} requests/s" if config.rate_limit else "no rate limit"
        print(f"cio-queue {__version__} demo: {args.operations:,} operations from {args.tasks} "
              f"concurrent handlers to a fake Track API at {fake.url} "
              f"({args.latency * 1000:.0f} ms latency; {config.transport} transport, "
              f"{args.concurrency} requests in flight, {rate})")
        latencies: list[int] = []
        started = time.perf_counter()
        async with EventQueue(config) as queue:
            progress = asyncio.create_task(_progress(queue, args.operations))
            await asyncio.gather(*(
                _handler(queue, worker, per_task + (worker < extra), latencies)
                for worker in range(args.tasks)))
            enqueued_in = time.perf_counter() - started
            await queue.flush()
            progress.cancel()
        elapsed = time.perf_counter() - started
        stats = queue.statistics()
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2] / 1000
        p99 = ordered[int(len(ordered) * 0.99)] / 1000
        print(f"\r{' ' * 70}\r", end="")
        print(f"enqueued     {stats.enqueued:>10,} in {enqueued_in:.3f} s")
        print(f"delivered    {stats.delivered:>10,} (the server recorded "
              f"{len(fake.operations):,})")
        print(f"rejected     {stats.rejected:>10,}   failed {stats.failed:,}   "
              f"dropped {stats.dropped:,}   pending {stats.pending:,}")
        print(f"requests     {stats.requests:>10,} in {stats.batches:,} batches")
        print(f"throughput   {stats.delivered / elapsed:>10,.0f} operations/s end to end "
              f"({elapsed:.2f} s)")
        print(f"enqueue      p50 {p50:.1f} µs   p99 {p99:.1f} µs   "
              f"mean {statistics.fmean(ordered) / 1000:.1f} µs")
        ok = stats.delivered == stats.enqueued == len(fake.operations)
        print("every operation delivered exactly once" if ok else "MISMATCH: see counts above")
        return 0 if ok else 1


async def _progress(queue: EventQueue, total: int) -> None:
    while True:
        stats = queue.statistics()
        print(f"\r  enqueued {stats.enqueued:>6,}/{total:,}   delivered {stats.delivered:>6,}",
              end="", flush=True)
        await asyncio.sleep(0.25)


async def _replay(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.base_url:
        overrides["base_url"] = args.base_url
    config = QueueConfig.from_env(**overrides)
    stats = await replay(args.path, config)
    print(f"delivered {stats.delivered:,}   rejected {stats.rejected:,}   failed "
          f"{stats.failed + stats.dead_lettered:,}   (still in {args.path}: "
          f"{stats.rejected + stats.failed + stats.dead_lettered:,})")
    return 0 if stats.delivered == stats.enqueued else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cio-queue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cio-queue {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's logs")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="push mixed operations through a local fake Track API")
    demo.add_argument("--operations", type=int, default=10_000)
    demo.add_argument("--tasks", type=int, default=100, help="concurrent handler tasks")
    demo.add_argument("--concurrency", type=int, default=20, help="requests in flight")
    demo.add_argument("--latency", type=float, default=0.02, help="fake server seconds")
    demo.add_argument("--transport", choices=("batch", "v1"), default="batch")
    demo.add_argument("--rate-limit", type=float, default=100.0,
                      help="requests per second, 0 for none")
    rep = sub.add_parser("replay", help="re-send a dead-letter file (credentials from "
                                        "CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY / "
                                        "CUSTOMERIO_REGION)")
    rep.add_argument("path")
    rep.add_argument("--base-url", help="Track API scheme://host[:port], overriding the region")
    add_import_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    # An application may configure structlog; the library itself never does.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    if args.command == "import":
        return run_import(args)
    command = _demo if args.command == "demo" else _replay
    try:
        return asyncio.run(command(args))
    except CioQueueError as exc:
        print(f"cio-queue: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that is missing, unreadable or on a full disk
        where = f": {exc.filename}" if exc.filename else ""
        print(f"cio-queue: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
