"""Benchmark cio-queue against its baselines, measured side by side in one run.

1. Enqueue cost: ``await EventQueue.track(...)`` against a bare ``asyncio.Queue.put_nowait``
   of the same arguments, and against an ``async def`` wrapper around ``put_nowait`` (which
   separates the coroutine-call overhead from the library's own work).
2. End-to-end delivery to ``cio_queue.testing.FakeTrackAPI`` running in its own process with a
   simulated per-request latency: cio-queue against the official ``customerio`` SDK called
   sequentially and from a thread pool.

cio-queue is measured with each transport (see TRANSPORTS); every delivery is counted both by
the client and by the server process.

Only ratios between numbers measured in the same run mean anything; absolute figures depend
on the machine. Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_core.py [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import logging
import os
import platform
import pstats
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import structlog
from customerio import CustomerIO, CustomerIOException
from fake_server import Server, server_process
from requests import PreparedRequest
from requests import Response as RequestsResponse
from requests.adapters import HTTPAdapter

from cio_queue import EventQueue, QueueConfig, Request, Response, __version__

# --- named constants (the defaults of the command-line options) --------------------------

ENQUEUE_CALLS: Final = 20_000
"""Timed enqueue calls per repetition."""
ENQUEUE_WARMUP: Final = 2_000
"""Untimed enqueue calls on the same queue before each timed run."""
ENQUEUE_REPEATS: Final = 5
"""Repetitions of each enqueue measurement; the median is reported."""
EVENTS: Final = 2_000
"""Events delivered by cio-queue and by the SDK thread pool."""
SEQUENTIAL_EVENTS: Final = 200
"""Events delivered by the sequential SDK baseline (at 20 ms each, 2,000 would take 40 s)."""
LATENCY: Final = 0.02
"""Seconds the fake server waits before answering each request."""
CONCURRENCY: Final = 10
"""cio-queue's max_concurrency (requests in flight)."""
THREADS: Final = 8
"""Worker threads of the SDK thread-pool baseline, one CustomerIO client each."""
BATCH_SIZE: Final = 100
FLUSH_INTERVAL: Final = 0.05
WARMUP_PER_CLIENT: Final = 3
"""Untimed requests per client (per connection for cio-queue) before a delivery phase."""

PHASE_TIMEOUT: Final = 90.0
"""Upper bound on any one delivery phase, including its warm-up."""
SDK_TIMEOUT: Final = 10.0
"""Per-request timeout of the SDK clients (its own default)."""
ENQUEUE_FLUSH_INTERVAL: Final = 3600.0
"""Long enough that the flusher never wakes during an enqueue measurement."""

QueueTransport = Literal["v1", "batch"]
TRANSPORTS: Final[tuple[QueueTransport, ...]] = ("v1", "batch")
"""cio-queue runs once per transport: "v1" sends one request per event, as the SDK does
(the like-for-like comparison); "batch" packs events into v2 batch requests."""

EVENT_NAME: Final = "purchase"
EVENT_DATA: Final[dict[str, Any]] = {"price": 9.5, "sku": "A-1"}
"""The one event payload every client sends, built once up front."""


# --- 1. enqueue cost ------------------------------------------------------------------------

_OK: Final = Response(200, {}, b"{}")


class _NullSender:
    """A Sender that never touches the network: every request succeeds at once."""

    async def send(self, request: Request) -> Response:
        return _OK

    async def aclose(self) -> None:
        return None


class _AsyncPutWrapper:
    """The cheapest possible ``async def track``: a method that only does ``put_nowait``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()

    async def track(self, customer_id: str, name: str, data: dict[str, Any]) -> None:
        self.queue.put_nowait((customer_id, name, data))


def _per_call_us(start_ns: int, calls: int) -> float:
    return (time.perf_counter_ns() - start_ns) / calls / 1000


# The garbage collector stays enabled in every measurement: the objects an enqueue
# allocates and keeps alive are part of what it costs an application. Each timed loop
# starts right after a full collection so that earlier garbage is not billed to it.


async def _time_put_nowait(ids: list[str], warmup: list[str]) -> float:
    queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
    for cid in warmup:
        queue.put_nowait((cid, EVENT_NAME, EVENT_DATA))
    gc.collect()
    start = time.perf_counter_ns()
    for cid in ids:
        queue.put_nowait((cid, EVENT_NAME, EVENT_DATA))
    per_call = _per_call_us(start, len(ids))
    assert queue.qsize() == len(warmup) + len(ids)
    return per_call


async def _time_async_wrapper(ids: list[str], warmup: list[str]) -> float:
    wrapper = _AsyncPutWrapper()
    for cid in warmup:
        await wrapper.track(cid, EVENT_NAME, EVENT_DATA)
    gc.collect()
    start = time.perf_counter_ns()
    for cid in ids:
        await wrapper.track(cid, EVENT_NAME, EVENT_DATA)
    per_call = _per_call_us(start, len(ids))
    assert wrapper.queue.qsize() == len(warmup) + len(ids)
    return per_call


def _idle_queue(capacity: int, transport: QueueTransport) -> EventQueue:
    """Return a queue whose flusher never wakes for ``capacity`` operations.

    ``batch_size`` equals ``max_queue_size`` equals the number of calls plus one, so no
    batch fills up and no overflow policy runs, and the flush interval is an hour.
    """
    config = QueueConfig(site_id="bench-site", api_key="bench-key", batch_size=capacity,
                         max_queue_size=capacity, flush_interval=ENQUEUE_FLUSH_INTERVAL,
                         transport=transport, rate_limit=None, shutdown_timeout=PHASE_TIMEOUT / 2)
    return EventQueue(config, sender=_NullSender())


async def _time_track(ids: list[str], warmup: list[str], transport: QueueTransport,
                      profile: cProfile.Profile | None = None) -> float:
    queue = _idle_queue(len(warmup) + len(ids) + 1, transport)
    try:
        for cid in warmup:
            await queue.track(cid, EVENT_NAME, EVENT_DATA)
        await asyncio.sleep(0)  # let the flusher start and park on its hour-long timer
        gc.collect()
        if profile is not None:
            profile.enable()
        start = time.perf_counter_ns()
        for cid in ids:
            await queue.track(cid, EVENT_NAME, EVENT_DATA)
        per_call = _per_call_us(start, len(ids))
        if profile is not None:
            profile.disable()
        stats = queue.statistics()
        # Nothing may have left the queue during the measurement.
        assert stats.enqueued == stats.queued == len(warmup) + len(ids), stats
        assert stats.requests == 0, stats
    finally:
        # Untimed: the null sender "delivers" everything, so aclose() returns promptly.
        async with asyncio.timeout(PHASE_TIMEOUT):
            await queue.aclose()
    return per_call


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Median and spread of the per-call cost, in microseconds, of one enqueue path."""

    label: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


async def _bench_enqueue(calls: int, warmup_calls: int, repeats: int) -> list[EnqueueResult]:
    ids = [f"customer-{i}" for i in range(calls)]
    warmup = [f"warmup-{i}" for i in range(warmup_calls)]
    runs: dict[str, list[float]] = {"put": [], "wrapper": [], **{t: [] for t in TRANSPORTS}}
    # Interleaved, so that drift in the machine's speed hits all three alike.
    for _ in range(repeats):
        runs["put"].append(await _time_put_nowait(ids, warmup))
        runs["wrapper"].append(await _time_async_wrapper(ids, warmup))
        for transport in TRANSPORTS:
            runs[transport].append(await _time_track(ids, warmup, transport))
    return [
        EnqueueResult("asyncio.Queue.put_nowait", tuple(runs["put"])),
        EnqueueResult("async def wrapper + put_nowait", tuple(runs["wrapper"])),
        *(EnqueueResult(f"await EventQueue.track ({t})", tuple(runs[t])) for t in TRANSPORTS),
    ]


def _profile_track(calls: int, warmup_calls: int, top: int, transport: QueueTransport) -> str:
    """Profile one timed enqueue run; return the top functions by own time."""
    ids = [f"customer-{i}" for i in range(calls)]
    warmup = [f"warmup-{i}" for i in range(warmup_calls)]
    profile = cProfile.Profile()
    asyncio.run(_time_track(ids, warmup, transport, profile))
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(top)
    return out.getvalue()


# --- 2. end-to-end delivery -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One delivery phase: what was sent, how long it took, what arrived."""

    label: str
    events: int
    seconds: float
    delivered: int
    """Counted by the client: cio-queue statistics, or SDK responses with status 200."""
    requests: int
    """HTTP requests the client started in the timed part (one per event for v1)."""
    accepted: int
    """Counted by the server over the whole phase, warm-up included."""
    expected_accepted: int
    workers: int
    """Requests the client keeps in flight at most."""
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def check(self) -> None:
        """Fail loudly unless every event arrived exactly once."""
        if self.delivered != self.events or self.accepted != self.expected_accepted:
            raise RuntimeError(
                f"{self.label}: client counted {self.delivered}/{self.events} delivered in "
                f"{self.requests} requests, server accepted "
                f"{self.accepted}/{self.expected_accepted} requests")


async def _deliver_with_queue(server: Server, events: int, concurrency: int,
                              transport: QueueTransport) -> DeliveryResult:
    config = QueueConfig(site_id=server.site_id, api_key=server.api_key, base_url=server.url,
                         transport=transport, rate_limit=None, max_concurrency=concurrency,
                         batch_size=BATCH_SIZE, flush_interval=FLUSH_INTERVAL)
    ids = [f"queue-{i}" for i in range(events)]
    warmup = WARMUP_PER_CLIENT * concurrency  # enough to open every pooled connection
    before = server.accepted()
    async with asyncio.timeout(PHASE_TIMEOUT):
        queue = EventQueue(config)
        try:
            for i in range(warmup):
                await queue.track(f"queue-warmup-{i}", EVENT_NAME, EVENT_DATA)
            warm = await queue.flush()
            start = time.perf_counter()
            for cid in ids:
                await queue.track(cid, EVENT_NAME, EVENT_DATA)
            done = await queue.flush()
            seconds = time.perf_counter() - start
        finally:
            close_start = time.perf_counter()
            await queue.aclose()
            close_seconds = time.perf_counter() - close_start
    # Requests, not events, on the server side: a packing transport sends fewer of them.
    return DeliveryResult(
        f"cio-queue {transport}, max_concurrency={concurrency}", events, seconds,
        delivered=done.delivered - warm.delivered, requests=done.requests - warm.requests,
        accepted=server.accepted() - before, expected_accepted=done.requests,
        workers=concurrency,
        note=f"timed to flush(); aclose() took {close_seconds * 1000:.0f} ms more")


class _PlainHTTPAdapter(HTTPAdapter):
    """Send the SDK's ``https://`` requests as plain HTTP to the loopback fake server.

    The SDK builds every URL itself, always with https; only the scheme changes here, at
    the last moment, so its request building, JSON encoding and auth stay exactly as
    shipped.
    """

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> RequestsResponse:
        if request.url is not None and request.url.startswith("https://"):
            request.url = "http://" + request.url.removeprefix("https://")
        return super().send(request, *args, **kwargs)


def _sdk_client(server: Server) -> Any:
    parts = urlsplit(server.url)
    client = CustomerIO(site_id=server.site_id, api_key=server.api_key, host=parts.hostname,
                        port=parts.port, timeout=SDK_TIMEOUT)
    # Mounting replaces the SDK's own retrying adapter on "https://". max_retries=0 keeps
    # the benchmark clean (a retry would hide a failure); every request is counted below.
    client.http.mount("https://", _PlainHTTPAdapter(max_retries=0))
    return client


def _sdk_track(client: Any, customer_id: str) -> bool:
    """Track one event with the SDK; return whether it got a 200."""
    try:
        response = client.track(customer_id, EVENT_NAME, EVENT_DATA)
    except CustomerIOException:
        return False
    return bool(response.status_code == 200)


def _deliver_sequentially(server: Server, events: int) -> DeliveryResult:
    ids = [f"sequential-{i}" for i in range(events)]
    before = server.accepted()
    client = _sdk_client(server)
    try:
        for i in range(WARMUP_PER_CLIENT):
            _sdk_track(client, f"sequential-warmup-{i}")
        start = time.perf_counter()
        deadline = start + PHASE_TIMEOUT
        delivered = 0
        for cid in ids:
            delivered += _sdk_track(client, cid)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the sequential SDK run exceeded {PHASE_TIMEOUT}s")
        seconds = time.perf_counter() - start
    finally:
        client.close()
    return DeliveryResult("customerio SDK, sequential", events, seconds, delivered=delivered,
                          requests=events, accepted=server.accepted() - before,
                          expected_accepted=WARMUP_PER_CLIENT + events, workers=1)


def _deliver_with_threads(server: Server, events: int, threads: int) -> DeliveryResult:
    ids = [f"threaded-{i}" for i in range(events)]
    local = threading.local()
    clients: list[Any] = []
    clients_lock = threading.Lock()
    # A barrier makes each of the pool's threads take exactly one warm-up task, so every
    # thread has its own client with an open connection before the clock starts.
    barrier = threading.Barrier(threads, timeout=PHASE_TIMEOUT)

    def client_for_thread() -> Any:
        # requests.Session is not guaranteed thread-safe: one client per thread.
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = _sdk_client(server)
            with clients_lock:
                clients.append(client)
        return client

    def send(customer_id: str) -> bool:
        return _sdk_track(client_for_thread(), customer_id)

    def warm_up(thread: int) -> None:
        for i in range(WARMUP_PER_CLIENT):
            send(f"threaded-warmup-{thread}-{i}")
        barrier.wait()

    before = server.accepted()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="sdk")
    try:
        list(pool.map(warm_up, range(threads), timeout=PHASE_TIMEOUT))
        start = time.perf_counter()
        delivered = sum(pool.map(send, ids, timeout=PHASE_TIMEOUT))
        seconds = time.perf_counter() - start
    finally:
        # Queued work is dropped; running requests end within the SDK's timeout.
        pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            client.close()
    return DeliveryResult(
        f"customerio SDK, ThreadPoolExecutor({threads})", events, seconds, delivered=delivered,
        requests=events, accepted=server.accepted() - before,
        expected_accepted=threads * WARMUP_PER_CLIENT + events, workers=threads)


def _run_queue_phase(server: Server, events: int, concurrency: int,
                     transport: QueueTransport) -> DeliveryResult:
    return asyncio.run(_deliver_with_queue(server, events, concurrency, transport))


# --- reporting --------------------------------------------------------------------------------


def _environment() -> list[str]:
    return [
        f"command: {shlex.join(sys.orig_argv)}  (cwd {os.getcwd()})",
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work skews it)",
        f"versions: cio-queue {__version__}, aiohttp {version('aiohttp')}, "
        f"customerio {version('customerio')}, requests {version('requests')}, "
        f"urllib3 {version('urllib3')}",
    ]


def _enqueue_table(results: list[EnqueueResult]) -> list[str]:
    base = results[0].median
    lines = [f"{'enqueue path':<34}{'median µs/call':>15}{'min..max':>18}{'vs put_nowait':>15}"]
    for r in results:
        spread = f"{min(r.samples):.3f}..{max(r.samples):.3f}"
        lines.append(f"{r.label:<34}{r.median:>15.3f}{spread:>18}{r.median / base:>14.1f}x")
    wrapper = results[1].median
    for transport, r in zip(TRANSPORTS, results[2:], strict=True):
        lines.append(f"EventQueue.track ({transport}) vs async def wrapper: "
                     f"{r.median / wrapper:.1f}x (the library's own work, coroutine call "
                     "excluded)")
    return lines


def _delivery_table(results: list[DeliveryResult], latency: float) -> list[str]:
    lines = [f"{'delivery':<40}{'events':>8}{'requests':>10}{'seconds':>9}{'events/s':>10}"
             f"{'ceiling':>9}{'of ceiling':>12}"]
    for r in results:
        # Little's law: with `workers` requests in flight and `latency` seconds each, no
        # client can exceed workers / latency requests per second (events, at one each).
        ceiling = r.workers / latency * r.events / r.requests
        lines.append(f"{r.label:<40}{r.events:>8}{r.requests:>10}{r.seconds:>9.2f}{r.rate:>10.0f}"
                     f"{ceiling:>9.0f}{r.rate / ceiling:>11.0%}")
    return lines


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=ENQUEUE_CALLS,
                        help="timed enqueue calls per repetition (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=ENQUEUE_WARMUP,
                        help="untimed enqueue calls before each repetition (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=ENQUEUE_REPEATS,
                        help="repetitions of the enqueue measurement (default %(default)s)")
    parser.add_argument("--events", type=int, default=EVENTS,
                        help="events for cio-queue and the SDK thread pool "
                             "(default %(default)s)")
    parser.add_argument("--sequential-events", type=int, default=SEQUENTIAL_EVENTS,
                        help="events for the sequential SDK baseline (default %(default)s)")
    parser.add_argument("--latency", type=float, default=LATENCY,
                        help="fake server latency in seconds (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help="cio-queue max_concurrency (default %(default)s)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="SDK thread-pool size (default %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one enqueue run and print the top functions")
    parser.add_argument("--skip-delivery", action="store_true",
                        help="measure only the enqueue cost")
    args = parser.parse_args(argv)
    for name in ("calls", "repeats", "events", "sequential_events", "concurrency", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.latency <= 0:
        parser.error("--warmup must be >= 0 and --latency > 0")
    return args


def _section(title: str, emit: Callable[[str], None]) -> None:
    emit("")
    emit(f"== {title} " + "=" * max(0, 86 - len(title)))


def main(argv: list[str] | None = None) -> None:
    """Run every measurement and print the comparison."""
    args = _parse_args(argv)
    # An application may configure logging: this one keeps the per-batch info lines quiet.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def emit(line: str) -> None:
        print(line, flush=True)

    for line in _environment():
        emit(line)

    _section(f"1. enqueue cost: {args.calls:,} calls after {args.warmup:,} warm-up, "
             f"median of {args.repeats}", emit)
    enqueue = asyncio.run(_bench_enqueue(args.calls, args.warmup, args.repeats))
    for line in _enqueue_table(enqueue):
        emit(line)
    if args.profile:
        for transport in TRANSPORTS:
            _section(f"cProfile of one EventQueue.track ({transport}) run, top 10 by own time",
                     emit)
            emit(_profile_track(args.calls, args.warmup, 10, transport).rstrip())

    deliveries: list[DeliveryResult] = []
    if not args.skip_delivery:
        _section(f"2. delivery to FakeTrackAPI in a child process, "
                 f"latency {args.latency * 1000:.0f} ms per request", emit)
        with server_process(args.latency) as server:
            emit(f"fake server: {server.url}")
            phases: list[Callable[[], DeliveryResult]] = [
                *(partial(_run_queue_phase, server, args.events, args.concurrency, transport)
                  for transport in TRANSPORTS),
                lambda: _deliver_sequentially(server, args.sequential_events),
                lambda: _deliver_with_threads(server, args.events, args.threads),
            ]
            for phase in phases:
                result = phase()
                result.check()
                deliveries.append(result)
                emit(f"{result.label}: {result.events} events in {result.seconds:.2f} s, "
                     f"{result.delivered} delivered in {result.requests} requests (client), "
                     f"{result.accepted} requests accepted "
                     f"(server, incl. warm-up){'; ' + result.note if result.note else ''}")

    _section("summary", emit)
    for line in _enqueue_table(enqueue):
        emit(line)
    if deliveries:
        emit("")
        for line in _delivery_table(deliveries, args.latency):
            emit(line)
        *queues, sequential, threaded = deliveries
        emit(f"throughput ratios in events/s (the sequential SDK run sent {sequential.events} "
             f"events, the others {threaded.events}):")
        for transport, queue in zip(TRANSPORTS, queues, strict=True):
            emit(f"  cio-queue {transport:<5} / sequential SDK: "
                 f"{queue.rate / sequential.rate:>7.1f}x   "
                 f"/ SDK thread pool: {queue.rate / threaded.rate:>6.2f}x   "
                 f"({queue.workers} vs {threaded.workers} requests in flight, "
                 f"{queue.events / queue.requests:.0f} event(s) per request)")
        emit("ceiling = requests in flight / latency x events per request (Little's law); "
             "every delivery was verified by client and server counts")
    emit("")
    emit(f"command: {shlex.join(sys.orig_argv)}")


if __name__ == "__main__":
    main()
