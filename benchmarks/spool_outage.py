"""Benchmark the README's FastAPI example, with its spool, through a 60 s outage of the API.

The recipe (the code block after ``<!-- recipe: fastapi -->`` in README.md) runs as
written under uvicorn in this process, against ``FakeTrackAPI`` in a process of its own
(``_server``). A load process sends ``POST /signup`` at a steady ``--rate`` for ``--before``
+ ``--outage`` + ``--after`` seconds, on schedule whatever the answers take (an open loop).
The API goes down ``--before`` seconds in (connections refused) and comes back
``--outage`` seconds later.

Measured: every answer's status and time (before, during and after the outage), the time
of each enqueue call inside the handler, the queue's ``statistics()``, this process's
resident memory and the spool's size every ``SAMPLE`` seconds, and how long after the
recovery the last event was delivered. The server's ledger is checked against every event
id the app answered. With the default ``max_queue_size`` (10,000) and 300 requests/s,
memory fills about 33 s into the outage and the spool takes the rest. Only the shape (all
200, answers as fast during the outage, memory flat once full, everything delivered)
carries over to another machine. From the repository root::

    python -m benchmarks.spool_outage [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import aiohttp
import uvicorn

from cio_queue import EventQueue, Receipt

from ._server import ServerHandle, server_process

README: Final = Path(__file__).resolve().parent.parent / "README.md"
RATE: Final = 300.0
BEFORE: Final = 10.0
OUTAGE: Final = 60.0
AFTER: Final = 10.0
SAMPLE: Final = 0.5
"""Seconds between two samples of the queue's statistics and the process's memory."""
TIMELINE_STEP: Final = 10.0
"""Seconds between two rows of the printed timeline (from the outage's start)."""
START_TIMEOUT: Final = 30.0
DELIVERY_TIMEOUT: Final = 180.0
"""Seconds after the last request within which every event must be delivered."""
REQUEST_TIMEOUT: Final = 30.0
SPOOL_DIRECTORY: Final = "cio-spool"
"""The recipe's ``spool_path``, relative to the working directory (a temporary one)."""


# --- the load process ------------------------------------------------------------------


@dataclass
class Load:
    """What the load process saw: per request, its status and answer time, and the ids."""

    started: float = 0.0
    statuses: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def _send(url: str, rate: float, duration: float, conn: Connection) -> Load:
    load = Load()
    count = int(rate * duration)
    load.statuses, load.seconds = [0] * count, [0.0] * count
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def sign_up(number: int) -> None:
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/signup",
                                        params={"email": f"u{number}@example.com"}) as answer:
                    load.statuses[number] = answer.status
                    if answer.status == 200:
                        load.event_ids.append((await answer.json())["event_id"])
            except (aiohttp.ClientError, TimeoutError) as error:
                load.errors[type(error).__name__] += 1
            load.seconds[number] = time.perf_counter() - started

        loop = asyncio.get_running_loop()
        load.started = time.monotonic()
        began = loop.time()
        conn.send(("started", load.started))
        async with asyncio.TaskGroup() as requests:
            for number in range(count):
                await asyncio.sleep(max(0.0, began + number / rate - loop.time()))
                requests.create_task(sign_up(number))
    return load


def _load_process(url: str, rate: float, duration: float, conn: Connection) -> None:
    conn.send(("done", asyncio.run(_send(url, rate, duration, conn))))


# --- the app ---------------------------------------------------------------------------


def _recipe(directory: Path) -> ModuleType:
    """Import the README's FastAPI recipe, as written, from a file in ``directory``."""
    text = README.read_text(encoding="utf-8")
    source = text.split("<!-- recipe: fastapi -->\n```python\n", 1)[1].split("\n```", 1)[0]
    path = directory / "recipe_fastapi.py"
    path.write_text(source + "\n", encoding="utf-8")
    spec = importlib.util.spec_from_file_location("recipe_fastapi", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Watch:
    """The app's queue, seen from its enqueue calls and a sampler."""

    queue: EventQueue | None = None
    calls: list[float] = field(default_factory=list)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    """(monotonic time, pending, spooled, resident bytes, spool bytes)"""


@contextlib.contextmanager
def _timed_enqueue(watch: Watch) -> Iterator[None]:
    """Time every ``EventQueue.track`` call and remember the queue it was made on."""
    track = EventQueue.track

    async def timed(self: EventQueue, *args: Any, **kwargs: Any) -> Receipt:
        started = time.perf_counter()
        receipt = await track(self, *args, **kwargs)
        watch.calls.append(time.perf_counter() - started)
        watch.queue = self
        return receipt

    EventQueue.track = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        EventQueue.track = track  # type: ignore[method-assign]


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _spool_bytes() -> int:
    return sum(path.stat().st_size for path in Path(SPOOL_DIRECTORY).glob("spool-*"))


async def _sample(watch: Watch) -> None:
    while True:
        if watch.queue is not None:
            stats = watch.queue.statistics()
            watch.samples.append((time.monotonic(), stats.pending, stats.spooled,
                                  _resident_bytes(), _spool_bytes()))
        await asyncio.sleep(SAMPLE)


@contextlib.asynccontextmanager
async def _serving(app: Any) -> Any:
    # IPPROTO_TCP, so that asyncio sets TCP_NODELAY on the accepted connections.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           ws="none", http="h11", loop="none"))
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    async with asyncio.timeout(START_TIMEOUT):
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        listener.close()


# --- the run ---------------------------------------------------------------------------


@dataclass
class Result:
    load: Load
    watch: Watch
    down_at: float
    up_at: float
    delivered_after: float
    missing: int
    duplicates: int
    final: Any


async def _run(server: ServerHandle, args: argparse.Namespace, workdir: Path) -> Result:
    os.environ.update(CUSTOMERIO_SITE_ID=server.site_id, CUSTOMERIO_API_KEY=server.api_key,
                      CUSTOMERIO_BASE_URL=server.track_url)
    watch = Watch()
    recipe = _recipe(workdir)
    ctx = multiprocessing.get_context("spawn")
    duration = args.before + args.outage + args.after
    with _timed_enqueue(watch):
        async with _serving(recipe.app) as url:
            sampler = asyncio.create_task(_sample(watch))
            parent, child = ctx.Pipe()
            loader = ctx.Process(target=_load_process, args=(url, args.rate, duration, child),
                                 daemon=True)
            loader.start()
            child.close()
            _, started = await asyncio.to_thread(parent.recv)
            await asyncio.sleep(max(0.0, started + args.before - time.monotonic()))
            await asyncio.to_thread(server.down)
            down_at = time.monotonic()
            await asyncio.sleep(max(0.0, started + args.before + args.outage
                                    - time.monotonic()))
            await asyncio.to_thread(server.up)
            up_at = time.monotonic()
            _, load = await asyncio.to_thread(parent.recv)
            await asyncio.to_thread(loader.join, START_TIMEOUT)
            async with asyncio.timeout(DELIVERY_TIMEOUT):
                # The ledger lives in the server process: no event can signal it, so poll.
                while missing := await asyncio.to_thread(  # noqa: ASYNC110
                        server.missing, load.event_ids):
                    await asyncio.sleep(0.2)
            delivered_after = time.monotonic() - up_at
            sampler.cancel()
        assert watch.queue is not None
        final = watch.queue.statistics()
    ledger = server.ledger()
    return Result(load, watch, down_at, up_at, delivered_after, missing,
                  ledger.events - ledger.distinct_events, final)


def _ms(values: list[float], fraction: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000:.1f}"


def _nearest(samples: list[tuple[float, int, int, int, int]], at: float
             ) -> tuple[float, int, int, int, int]:
    return min(samples, key=lambda sample: abs(sample[0] - at))


def _report(result: Result, args: argparse.Namespace) -> int:
    load, watch = result.load, result.watch
    count = len(load.statuses)
    print(f"README FastAPI recipe (spool_path={SPOOL_DIRECTORY!r}, the default "
          f"max_queue_size) under uvicorn; {args.rate:g} requests/s for "
          f"{args.before + args.outage + args.after:g} s, the API down from {args.before:g} s "
          f"to {args.before + args.outage:g} s")
    statuses = Counter(load.statuses)
    print(f"answers: {count:,} requests, {statuses[200]:,} answered 200, others "
          f"{ {s: n for s, n in statuses.items() if s != 200} or 'none'}, client errors "
          f"{dict(load.errors) or 'none'}")
    before = int(args.rate * args.before)
    during = int(args.rate * (args.before + args.outage))
    phases = {"before": load.seconds[:before], "during": load.seconds[before:during],
              "after": load.seconds[during:]}
    print("answer time p50 / p99 / max (ms): " + "; ".join(
        f"{name} {_ms(times, 0.5)} / {_ms(times, 0.99)} / {_ms(times, 1.0)}"
        for name, times in phases.items() if times))
    print(f"enqueue call in the handler: p50 {statistics.median(watch.calls) * 1e6:.0f} µs, "
          f"p99 {_ms(watch.calls, 0.99)} ms, max {_ms(watch.calls, 1.0)} ms")
    samples = watch.samples
    outage = [s for s in samples if result.down_at <= s[0] <= result.up_at]
    peak_pending = max(s[1] for s in samples)
    filled = next((s for s in outage if s[1] >= peak_pending), outage[-1])
    mib = 1 << 20
    print(f"memory: peak pending {peak_pending:,}; resident {outage[0][3] / mib:.0f} MiB at "
          f"the outage's start, {filled[3] / mib:.0f} MiB when memory filled "
          f"({filled[0] - result.down_at:.0f} s in), {outage[-1][3] / mib:.0f} MiB at its "
          f"end; spooled {outage[-1][2]:,} at the end of the outage, spool files "
          f"{max(s[4] for s in samples) / mib:.1f} MiB at most")
    moments = [result.down_at + k * TIMELINE_STEP
               for k in range(int(args.outage // TIMELINE_STEP) + 1)]
    moments.append(result.up_at + result.delivered_after)
    timeline = [_nearest(samples, at) for at in moments]
    print("   t (s)  pending  spooled  resident MiB  spool MiB")
    for when, pending, spooled, resident, spool in timeline:
        print(f"  {when - result.down_at:6.0f}  {pending:7,}  {spooled:7,}  "
              f"{resident / mib:12.0f}  {spool / mib:9.1f}")
    print(f"delivery: every answered event id delivered {result.delivered_after:.1f} s after "
          f"the API came back; {result.duplicates:,} duplicates (same event id)")
    final = result.final
    print(f"final statistics: {final}")
    ok = (statuses[200] == count and not load.errors and not result.missing
          and final.failed == final.dead_lettered == final.spooled == 0)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=RATE, help="requests per second")
    parser.add_argument("--before", type=float, default=BEFORE, help="seconds before the outage")
    parser.add_argument("--outage", type=float, default=OUTAGE, help="seconds the API is down")
    parser.add_argument("--after", type=float, default=AFTER, help="seconds of load after it")
    args = parser.parse_args(argv)
    logging.getLogger("cio_queue").setLevel(logging.ERROR)
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as workdir, \
            server_process() as server:
        os.chdir(workdir)  # the recipe's spool_path is relative
        try:
            server.configure(latency=0.0)
            server.reset()
            result = asyncio.run(_run(server, args, Path(workdir)))
        finally:
            os.chdir(here)
    return _report(result, args)


if __name__ == "__main__":
    sys.exit(main())
