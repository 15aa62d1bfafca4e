"""The fleet's commands: ``cio-queue worker`` sends from the stream, ``cio-queue status`` shows it.

Stage: outside the pipeline; the command line of a fleet.

Both find the fleet's Redis in ``--redis-url`` or ``CIO_QUEUE_REDIS_URL``; the worker
takes its credentials from the ``CUSTOMERIO_*`` variables, as replay does, and the
stream's default name from ``CUSTOMERIO_SITE_ID``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Final

from ._clitools import number, on_signals
from ._config import DEFAULT_REDIS_GROUP, QueueConfig
from ._exceptions import ConfigError
from ._queue import EventQueue

__all__ = ["REDIS_URL_VARIABLE", "add_fleet_parsers", "redis_url_of"]

REDIS_URL_VARIABLE: Final = "CIO_QUEUE_REDIS_URL"


def add_fleet_parsers(sub: Any) -> None:
    """Add ``worker`` and ``status`` to the ``cio-queue`` parser's subparsers."""
    worker = sub.add_parser(
        "worker", help="deliver from the fleet's Redis stream until Ctrl-C or SIGTERM "
                       "(credentials from CUSTOMERIO_*)")
    worker.set_defaults(run=_worker)
    _fleet_arguments(worker)
    worker.add_argument("--name", help="this member's name in the group (default: host, "
                                       "process id and a random suffix)")
    worker.add_argument("--partitions", type=number(int, 1), default=None,
                        help="the stream's partition count (default 16; the same everywhere)")
    worker.add_argument("--rate-limit", type=number(float, 0), default=None,
                        help="requests per second for the whole fleet (default 100; 0 for none)")
    worker.add_argument("--concurrency", type=number(int, 1), default=None,
                        help="requests in flight from this worker (default 10)")
    status = sub.add_parser("status", help="print the fleet's stream, consumers, lag, rate "
                                           "used and 429 gate")
    status.set_defaults(run=_status)
    _fleet_arguments(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help=f"the fleet's Redis (default: ${REDIS_URL_VARIABLE})")
    parser.add_argument("--stream", help="the stream's name (default: cio-queue:"
                                         "$CUSTOMERIO_SITE_ID)")
    parser.add_argument("--group", default=DEFAULT_REDIS_GROUP,
                        help=f"the senders' consumer group (default {DEFAULT_REDIS_GROUP})")


def redis_url_of(args: argparse.Namespace) -> str:
    """The fleet's Redis from ``--redis-url`` or the environment.

    Raises:
        ConfigError: neither names one.
    """
    url = args.redis_url or os.environ.get(REDIS_URL_VARIABLE, "").strip()
    if not url:
        raise ConfigError(f"no Redis: pass --redis-url or set {REDIS_URL_VARIABLE}")
    return str(url)


def _stream_of(args: argparse.Namespace) -> str:
    if args.stream:
        return str(args.stream)
    site_id = os.environ.get("CUSTOMERIO_SITE_ID", "").strip()
    if not site_id:
        raise ConfigError("no stream: pass --stream or set CUSTOMERIO_SITE_ID")
    return f"cio-queue:{site_id}"


async def _worker(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"redis_url": redis_url_of(args), "redis_group": args.group,
                                 "redis_stream": args.stream, "redis_consumer": args.name}
    if args.partitions is not None:
        overrides["redis_partitions"] = args.partitions
    if args.rate_limit is not None:
        overrides["rate_limit"] = args.rate_limit or None
    if args.concurrency is not None:
        overrides["max_concurrency"] = args.concurrency
    config = QueueConfig.from_env(**overrides)
    stop = asyncio.Event()
    async with EventQueue(config) as queue:
        print(f"cio-queue worker: delivering from {config.stream_name} "
              f"(group {config.redis_group}); Ctrl-C or SIGTERM stops it",
              file=sys.stderr, flush=True)
        with on_signals(stop.set):
            await stop.wait()
    stats = queue.statistics()
    print(f"cio-queue worker: stopped; took {stats.taken:,}, delivered {stats.delivered:,}, "
          f"rejected {stats.rejected:,}, failed {stats.failed:,}, left in the stream "
          f"{stats.streamed:,}", file=sys.stderr)
    return 0


async def _status(args: argparse.Namespace) -> int:
    from ._fleet import budget_key  # noqa: PLC0415 - redis-py is an optional extra
    from ._redis import connect, status  # noqa: PLC0415

    stream = _stream_of(args)
    # The budget is the workspace's: its site id, or the one the default stream name holds.
    site_id = (os.environ.get("CUSTOMERIO_SITE_ID", "").strip()
               or (stream.removeprefix("cio-queue:") if stream.startswith("cio-queue:") else ""))
    redis = connect(redis_url_of(args))
    try:
        report = await status(redis, stream, args.group,
                              pacer=budget_key(site_id) if site_id else None)
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_status(report))
    return 0


def format_status(report: dict[str, Any]) -> str:
    """The status as a few aligned lines for a terminal."""
    lines = [
        f"stream     {report['stream']} ({report['partitions']} partitions, "
        f"group {report['group']})",
        f"entries    {report['length']:,} in the stream: {report['pending']:,} being sent, "
        f"{report['lag']:,} waiting (lag)",
    ]
    members = report["members"]
    lines.append(f"members    {len(members)} live")
    pending = report["consumers"]
    for name in sorted(set(members) | set(pending)):
        held = sum(1 for p in report["per_partition"] if p["holder"] == name)
        lines.append(f"  {name}: {held} partitions, {pending.get(name, 0):,} in hand")
    pacer = report["pacer"]
    if pacer is not None:
        gate = pacer["gate_remaining"]
        lines.append(f"rate       {pacer['starts_last_second']} requests started in the last "
                     "second")
        lines.append(f"429 gate   {f'closed for {gate:.1f} s' if gate > 0 else 'open'}")
    return "\n".join(lines)
