"""The cio-queue command line: demo, replay, import and fake-server.

Stage: outside the pipeline; commands that drive a queue (or the fake) from a shell.

demo tries the queue against a fake Track API, replay sends a dead-letter file again,
import sends a JSON-lines or CSV file, and fake-server serves the fake Track API for
local development.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final

from ._clitools import number, on_signals
from ._config import QueueConfig
from ._exceptions import CioQueueError, ConfigError
from ._fleetcli import add_fleet_parsers
from ._importcli import add_import_parser, run_import
from ._log import LOGGER_NAME
from ._queue import EventQueue
from ._replay import replay
from ._version import __version__

if TYPE_CHECKING:
    from .testing import FaultRates

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


_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


async def _replay(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.base_url:
        overrides["base_url"] = args.base_url
    config = QueueConfig.from_env(**overrides)
    if args.path.startswith(_REDIS_SCHEMES):
        from ._replaystream import replay_stream  # noqa: PLC0415 - redis-py is an extra

        where = f"the dead-letter stream of {args.stream or config.stream_name}"
        stats = await replay_stream(args.path, config, stream=args.stream)
    else:
        where = args.path
        stats = await replay(args.path, config)
    print(f"delivered {stats.delivered:,}   rejected {stats.rejected:,}   failed "
          f"{stats.failed + stats.dead_lettered:,}   (still in {where}: "
          f"{stats.rejected + stats.failed + stats.dead_lettered:,})")
    return 0 if stats.delivered == stats.enqueued else 1


async def _fake_server(args: argparse.Namespace) -> int:
    from .testing import FakeTrackAPI  # noqa: PLC0415 - only these commands need the server

    fake = FakeTrackAPI(site_id=args.site_id, api_key=args.api_key, host=args.host,
                        port=args.port, latency=args.latency, seed=args.seed,
                        faults=_fault_rates(args.fault_rate), region=args.region)
    stop = asyncio.Event()
    async with fake:
        for name, value in (("CUSTOMERIO_SITE_ID", fake.site_id),
                            ("CUSTOMERIO_API_KEY", fake.api_key),
                            ("CUSTOMERIO_BASE_URL", _reachable_url(args.host, fake.port))):
            print(f"export {name}={shlex.quote(value)}")
        faults = ", ".join(f"{name} {rate:g}" for name, rate in args.fault_rate) or "none"
        print(f"cio-queue fake-server: a fake Track API on {args.host}:{fake.port} "
              f"(latency {args.latency:g} s, faults: {faults}); Ctrl-C or SIGTERM stops it",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        with on_signals(stop.set):
            await stop.wait()
    print(f"cio-queue fake-server: stopped; {len(fake.requests):,} requests and "
          f"{len(fake.operations):,} operations accepted", file=sys.stderr)
    return 0


def _fault_rates(pairs: Sequence[tuple[str, float]]) -> FaultRates | None:
    """Build the fake's FaultRates from ``--fault-rate NAME=P`` pairs (None: no faults)."""
    from .testing import FaultRates  # noqa: PLC0415 - only fake-server needs it

    if not pairs:
        return None
    try:
        return FaultRates(**dict(pairs))
    except ValueError as exc:
        raise ConfigError(f"--fault-rate: {exc}") from None


def _reachable_url(host: str, port: int) -> str:
    """The base URL to reach a server listening on ``host``: loopback for a wildcard."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"http://{host}:{port}"


def _fault_rate(text: str) -> tuple[str, float]:
    """Parse ``NAME=P`` for ``--fault-rate``: a fault of FaultRates and a probability."""
    from .testing import Fault  # noqa: PLC0415 - only fake-server needs it

    name, sep, value = text.partition("=")
    names = [fault.value for fault in Fault]
    if not sep or name not in names:
        raise argparse.ArgumentTypeError(f"expected NAME=P with NAME one of {', '.join(names)}; "
                                         f"got {text!r}")
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{name}'s probability must be within 0..1, "
                                         f"got {value!r}")
    return name, rate


def _parser() -> argparse.ArgumentParser:
    # The module docstring is the description --help shows: plain text, no markup.
    parser = argparse.ArgumentParser(prog="cio-queue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cio-queue {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show the library's INFO logs (-vv: DEBUG too)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="push mixed operations through a local fake Track API")
    demo.set_defaults(run=_demo)
    demo.add_argument("--operations", type=number(int, 1), default=10_000)
    demo.add_argument("--tasks", type=number(int, 1), default=100,
                      help="concurrent handler tasks")
    demo.add_argument("--concurrency", type=number(int, 1), default=20,
                      help="requests in flight")
    demo.add_argument("--latency", type=number(float, 0), default=0.02,
                      help="fake server seconds")
    demo.add_argument("--transport", choices=("batch", "v1"), default="batch")
    demo.add_argument("--rate-limit", type=number(float, 0), default=100.0,
                      help="requests per second, 0 for none")
    rep = sub.add_parser("replay", help="re-send a dead-letter file, or a fleet's dead-letter "
                                        "stream given as redis://... (credentials from "
                                        "CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY / "
                                        "CUSTOMERIO_REGION / CUSTOMERIO_BASE_URL)")
    rep.set_defaults(run=_replay)
    rep.add_argument("path", help="a dead-letter file, or the fleet's Redis URL")
    rep.add_argument("--stream", help="with a Redis URL: the fleet's stream (default: "
                                      "cio-queue:$CUSTOMERIO_SITE_ID)")
    rep.add_argument("--base-url", help="Track API scheme://host[:port], overriding the region")
    fake = sub.add_parser("fake-server", help="run the fake Track API until Ctrl-C or SIGTERM, "
                                              "printing the CUSTOMERIO_* variables to export")
    fake.set_defaults(run=_fake_server)
    fake.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (0.0.0.0 to serve other containers)")
    fake.add_argument("--port", type=number(int, 0, 65_535), default=0, help="0 for a free port")
    fake.add_argument("--latency", type=number(float, 0), default=0.0,
                      help="seconds before each answer")
    fake.add_argument("--fault-rate", type=_fault_rate, action="append", default=[],
                      metavar="NAME=P", help="answer this share of requests with a fault, "
                      "e.g. server_error=0.1 (repeatable)")
    fake.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    fake.add_argument("--site-id", default="fake-site", help="the site id it accepts")
    fake.add_argument("--api-key", default="fake-key", help="the API key it accepts")
    fake.add_argument("--region", choices=("us", "eu"), default="us",
                      help="the region GET /api/v1/accounts/region names")
    add_import_parser(sub)
    add_fleet_parsers(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    """Show logs on stderr: WARNING and above, and the library's INFO (-v) or DEBUG (-vv).

    The command line is an application, so it sets up logging (the library never does);
    ``basicConfig`` leaves alone a process that already has handlers, such as a program
    that calls ``main()`` after setting up logging its own way.
    """
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbosity:
        level = logging.INFO if verbosity == 1 else logging.DEBUG
        logging.getLogger(LOGGER_NAME).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for bad input, with one line)."""
    args = _parser().parse_args(argv)  # exits 2 with argparse's message on bad arguments
    _configure_logging(args.verbose)
    if args.command == "import":
        return run_import(args)  # handles its own errors and signals
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        return asyncio.run(command(args))
    except CioQueueError as exc:
        print(f"cio-queue: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that is missing or unreadable, a disk full, a port taken
        where = f": {exc.filename}" if exc.filename else ""
        print(f"cio-queue: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
