"""Benchmark a fleet's throughput with 1, 2 and 4 processes, beside one in-memory queue.

Every variant delivers the same ``OPS`` track events end to end to ``FakeTrackAPI`` in a
process of its own (the benchmark server of ``_server``), which answers every request
after ``LATENCY`` (20 ms, a nearby API), and is checked event id by event id against the
server's ledger. The queues use the library's defaults otherwise (batch transport,
``batch_size`` 100, ``max_concurrency`` 10), with ``rate_limit=None`` so that no budget
caps throughput (a fleet member still asks the shared pacer, for its 429 gate, before
every request), and ``flush_interval`` 0.1 s instead of 5 s: a fleet's members split the
events between them, so each ends with a partial batch, which would otherwise wait the
full interval and time the interval, not the fleet:

- **in memory**: one process, one ``EventQueue`` without ``redis_url``;
- **fleet of N**: N processes on one redis-server (AOF, ``appendfsync`` as chosen), each
  an ``EventQueue`` with ``redis_url`` that enqueues ``OPS / N`` of the events and
  delivers a share of the stream (``consume=True``, the default).

Each process enqueues from one task as fast as its queue takes them (``overflow="block"``,
yielding to the loop every 100 calls), as ``tests/fleet_children.py``'s members do. The
clock runs from the moment every process is running its queue (and the members of a
fleet share the partitions) until the server's ledger holds every event id, so process
start-up is not counted. Only the ratios to the in-memory queue, measured in the same run,
carry over to another machine: on two cores, four processes (plus Redis and the server)
share the same two cores as one. From the repository root::

    python -m benchmarks.fleet_throughput [--ops 40000] [--processes 1 2 4]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cio_queue import ConfigError
from cio_queue._redis import connect, status
from tests.fleet_children import Member, Work, close_all, members, wait_for
from tests.redis_support import RedisServer, find_redis_server

from ._server import ServerHandle, server_process

OPS: Final = 40_000
"""Events per run, split evenly between the processes."""
LATENCY: Final = 0.020
"""Seconds the server takes to answer each request."""
FLUSH_INTERVAL: Final = 0.1
"""Seconds a partial batch waits for company (the library's default is 5 s)."""
PROCESSES: Final = (1, 2, 4)
REPEATS: Final = 1
DELIVERY_TIMEOUT: Final = 300.0
"""Seconds a run may take to deliver everything before it counts as failed."""
SHARE_TIMEOUT: Final = 60.0
"""Seconds the members of a fleet may take to share the partitions."""
GROUP: Final = "senders"


@dataclass(frozen=True, slots=True)
class Result:
    """One run: how long it took, and what the server got."""

    seconds: float
    events: int
    distinct: int
    missing: int
    requests: int

    def ops_per_second(self, ops: int) -> float:
        return ops / self.seconds

    def problem(self, ops: int) -> str | None:
        """What went wrong with the delivery, or None."""
        if self.missing or self.distinct != ops:
            return f"{self.missing} of {ops} event ids missing"
        if self.events != self.distinct:
            return f"{self.events - self.distinct} delivered twice"
        return None


def _options(server: ServerHandle, redis_url: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"site_id": server.site_id, "api_key": server.api_key,
                               "base_url": server.track_url, "rate_limit": None,
                               "overflow": "block", "shutdown_timeout": 30.0,
                               "flush_interval": FLUSH_INTERVAL}
    if redis_url is not None:
        options["redis_url"] = redis_url
    return options


def _shared(url: str, stream: str, names: set[str]) -> bool:
    """Whether the live members of the group are ``names``, each holding its share."""

    async def read() -> dict[str, Any]:
        client = connect(url)
        try:
            return await status(client, stream, GROUP)
        except ConfigError:  # the stream does not exist yet
            return {}
        finally:
            await client.aclose()

    fleet = asyncio.run(read())
    if not fleet or set(fleet["members"]) != names:
        return False
    holders = Counter(p["holder"] for p in fleet["per_partition"])
    share = fleet["partitions"] // len(names)
    return all(holders[name] >= share for name in names)


def run(server: ServerHandle, ops: int, processes: int, redis_url: str | None,
        label: str) -> Result:
    """Deliver ``ops`` events from ``processes`` members; time until all arrived."""
    server.reset()
    options = _options(server, redis_url)
    works = [Work(f"{label}-{k}", ops // processes, hold=True) for k in range(processes)]
    names = [f"{label}-member-{k}" for k in range(processes)]
    fleet = [Member(name, {**options, "redis_consumer": name} if redis_url else options, work)
             for name, work in zip(names, works, strict=True)]
    with members(*fleet):
        if redis_url is not None:
            stream = f"cio-queue:{server.site_id}"
            wait_for(lambda: _shared(redis_url, stream, set(names)), SHARE_TIMEOUT,
                     "the members share the partitions")
        started = time.perf_counter()
        for member in fleet:
            member.start_work()
        wait_for(lambda: server.ledger().distinct_events >= ops, DELIVERY_TIMEOUT,
                 f"{ops:,} events delivered")
        seconds = time.perf_counter() - started
        close_all(*fleet)
    ledger = server.ledger()
    ids = [event_id for work in works for event_id in work.ids()]
    return Result(seconds, ledger.events, ledger.distinct_events, server.missing(ids),
                  ledger.accepted_requests)


def fleet_run(server: ServerHandle, ops: int, processes: int, appendfsync: str,
              label: str) -> Result:
    """``run`` on a fresh redis-server, so every fleet starts from an empty stream."""
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory:
        redis = RedisServer(find_redis_server(), Path(directory), appendfsync=appendfsync)
        redis.start()
        try:
            return run(server, ops, processes, redis.url, label)
        finally:
            redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=OPS, help="events per run")
    parser.add_argument("--processes", type=int, nargs="+", default=list(PROCESSES),
                        help="fleet sizes to measure")
    parser.add_argument("--latency", type=float, default=LATENCY,
                        help="seconds the server takes to answer")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="runs of each variant, interleaved; the median is reported")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    args = parser.parse_args(argv)
    logging.getLogger("cio_queue").setLevel(logging.WARNING)
    variants = ["in memory", *(f"fleet of {n}" for n in args.processes)]
    results: dict[str, list[Result]] = {name: [] for name in variants}
    problems = []
    with server_process() as server:
        server.configure(latency=args.latency)
        for repeat in range(args.repeats):  # interleaved, so drift hits every variant alike
            for name in variants:
                label = f"r{repeat}-{name.replace(' ', '-')}"
                if name == "in memory":
                    result = run(server, args.ops, 1, None, label)
                else:
                    processes = int(name.rsplit(" ", 1)[1])
                    result = fleet_run(server, args.ops, processes, args.appendfsync, label)
                results[name].append(result)
                if (problem := result.problem(args.ops)) is not None:
                    problems.append(f"{name}: {problem}")

    rates = {name: statistics.median(r.ops_per_second(args.ops) for r in runs)
             for name, runs in results.items()}
    base = rates["in memory"]
    print(f"Python {sys.version.split()[0]}; {args.ops:,} track events per run, server "
          f"latency {args.latency * 1000:g} ms, batch transport, rate_limit=None, "
          f"flush_interval={FLUSH_INTERVAL:g} s; "
          f"redis-server AOF appendfsync={args.appendfsync}; median of {args.repeats}")
    print(f"{'variant':<12} {'processes':>9} {'ops/s':>9} {'x memory':>9} {'requests':>9}")
    for name in variants:
        processes = 1 if name == "in memory" else int(name.rsplit(" ", 1)[1])
        requests = results[name][-1].requests
        print(f"{name:<12} {processes:>9} {rates[name]:>9,.0f} {rates[name] / base:>8.2f}x "
              f"{requests:>9,}")
    if problems:
        for problem in problems:
            print(f"DELIVERY FAILED: {problem}")
        return 1
    print(f"delivery check: all {len(variants) * args.repeats} runs delivered every event "
          "id exactly once")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
