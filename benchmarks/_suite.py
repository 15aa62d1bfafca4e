"""Run every measurement, in order, against one server process; collect the results.

Each delivery run goes through :meth:`Suite.measure`: a fresh event loop (or thread pool),
a fresh server ledger, the delivery check, and one progress line. A run that crashes is
recorded as a problem and the suite goes on, so one broken peer does not hide the other
figures; any problem makes the command exit non-zero.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from cio_queue import DEFAULT_MAX_QUEUE_SIZE, Transport
from cio_queue._ulid import new_ulid

from . import _cio, _peers
from ._enqueue import EnqueuePath, measure_enqueue
from ._gather_queue import deliver_gather
from ._harness import (
    EVENT_DATA,
    PRODUCERS,
    Outcome,
    Probe,
    Run,
    customer_id,
    delivery_problem,
    harness_cpu_per_op,
    make_run,
)
from ._raw import Encoder, pipe_raw, send_raw, v2_event
from ._server import ServerHandle, server_process
from ._sizes import (
    ASYNC_CUSTOMERIO_CONCURRENCY,
    DEFAULT_RATE_LIMIT,
    HUNG_LATENCY,
    MAIN_LATENCY,
    POSTHOG_WORKERS,
    SDK_THREADS,
    SERVER_ERROR_SHARE,
    SWEEP_LATENCIES,
    ZERO_LATENCY,
    Sizes,
)

T = TypeVar("T")

RUN_TIMEOUT: Final = 600.0
"""Seconds any one asyncio run may take before it is cancelled and reported."""
QUIET_LOGGERS: Final = ("cio_queue", "posthog", "async_customerio", "urllib3", "backoff")
"""Loggers of the clients under test, kept at ERROR: a retry warning per 5xx is noise here."""

# Groups: which figure a run belongs to.
MATRIX: Final = "matrix"
SWEEP: Final = "sweep"
PEERS: Final = "peers"
MEMORY: Final = "memory"
ACLOSE: Final = "aclose"
SCALING: Final = "scaling"
SCALING_WARMUP: Final = "scaling warm-up"
"""A first run of figure 4's small size, checked but not plotted: the process's own warm-up
(allocator arenas, caches) would otherwise be billed to the small size alone."""
STREAM: Final = "stream"

CIO_VARIANTS: Final[tuple[tuple[Transport, float | None], ...]] = (
    ("batch", None), ("batch", DEFAULT_RATE_LIMIT), ("v1", None), ("v1", DEFAULT_RATE_LIMIT))
RAW_ENCODERS: Final[tuple[Encoder, ...]] = ("json", "orjson")
TRANSPORTS: Final[tuple[Transport, ...]] = ("batch", "v1")
PRODUCERS_NOTE: Final = f"ops from {PRODUCERS} producer tasks"


def raw_label(encoder: Encoder) -> str:
    return f"raw limit, {encoder}"


RAW_PIPELINE_LABEL: Final = "raw pipeline, orjson"


GATHER_LABEL: Final = "list + gather every 5 s"
SDK_SEQUENTIAL_LABEL: Final = "customerio SDK, sequential"
SDK_THREADS_LABEL: Final = f"customerio SDK, {SDK_THREADS} threads"
ASYNC_CUSTOMERIO_LABEL: Final = f"async-customerio, {ASYNC_CUSTOMERIO_CONCURRENCY} concurrent"


def posthog_label(workers: int) -> str:
    return f"PostHog AsyncClient, {workers} worker{'s' if workers > 1 else ''}"


@dataclass(slots=True)
class Results:
    """Everything one invocation measured."""

    sizes: Sizes
    server_loop: str = ""
    enqueue: dict[str, EnqueuePath] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    memory: list[_cio.MemoryFigure] = field(default_factory=list)
    aclose: list[_cio.AcloseFigure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    harness_us: float | None = None
    seconds: float = 0.0

    def find(self, group: str, client: str, latency: float | None = None,
             server_error: float | None = None) -> list[Run]:
        """Return the runs of a group and client, optionally at a latency / fault share."""
        return [r for r in self.runs if r.group == group and r.client == client
                and (latency is None or r.latency == latency)
                and (server_error is None or r.server_error == server_error)]

    def one(self, group: str, client: str, latency: float | None = None,
            server_error: float | None = None) -> Run | None:
        """Return the run, or of repeated runs the median by ops/s (the lower of two)."""
        found = sorted(self.find(group, client, latency, server_error),
                       key=lambda run: run.ops_per_second)
        return found[(len(found) - 1) // 2] if found else None

    def clients(self, group: str, latency: float | None = None) -> list[str]:
        """Return the clients of a group (at a latency), in the order they first ran."""
        return list(dict.fromkeys(r.client for r in self.runs if r.group == group
                                  and (latency is None or r.latency == latency)))


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine in a fresh event loop, cancelled after ``RUN_TIMEOUT``."""

    async def bounded() -> T:
        async with asyncio.timeout(RUN_TIMEOUT):
            return await factory()

    return asyncio.run(bounded())


class Suite:
    """One run of the whole suite against one server process."""

    def __init__(self, sizes: Sizes, server: ServerHandle,
                 emit: Callable[[str], None]) -> None:
        self.sizes = sizes
        self.server = server
        self.emit = emit
        self.results = Results(sizes, server_loop=server.loop)
        self.latency = -1.0
        self.server_error = 0.0

    def configure(self, latency: float, server_error: float = 0.0) -> None:
        self.server.configure(latency=latency, server_error=server_error)
        self.latency, self.server_error = latency, server_error

    def measure(self, group: str, client: str, ops: int, body: Callable[[Probe], Outcome],
                *, expect_delivery: bool = True) -> Run | None:
        """Run ``body`` with a fresh probe, check delivery, record and report the run."""
        gc.collect()
        probe = Probe(self.server)
        try:
            outcome = body(probe)
        except Exception as error:  # one broken client must not hide the other figures
            crash = f"{client} ({group}): crashed: {type(error).__name__}: {error}"
            self.results.problems.append(crash)
            self.emit(f"  FAILED  {crash}")
            return None
        run = make_run(group, client, self.latency, ops, probe, outcome,
                       expect_delivery=expect_delivery, server_error=self.server_error)
        self.results.runs.append(run)
        problem = delivery_problem(run)
        if problem is not None:
            self.results.problems.append(problem)
        verdict = "ok" if problem is None else f"DELIVERY FAILED: {problem}"
        if expect_delivery:
            self.emit(f"  {client:<42} {run.latency * 1000:>4g} ms {ops:>9,} ops "
                      f"{run.ops_per_second:>10,.0f} ops/s {run.cpu_us_per_op:>7.1f} µs "
                      f"CPU/op server {run.server_cpu_share:>4.0%}  {verdict}")
        else:
            self.emit(f"  {client:<52} hung {ops:>9,} ops {run.seconds:>8.2f} s "
                      f"measured, all settled undelivered: {verdict}")
        return run

    # --- the phases, in the order they run --------------------------------------------------

    def enqueue_cost(self) -> None:
        s = self.sizes
        self.emit(f"figure 1: enqueue CPU, {s.enqueue_calls:,} calls x {s.enqueue_repeats}")
        paths = asyncio.run(measure_enqueue(s.enqueue_calls, s.enqueue_warmup,
                                            s.enqueue_repeats))
        self.results.enqueue = paths
        for path in paths.values():
            self.emit(f"  {path.label:<44} {path.median_ns / 1000:>7.2f} µs CPU/call")
            if path.problem is not None:
                self.results.problems.append(path.problem)
                self.emit(f"  FAILED  {path.problem}")

    def cio(self, group: str, transport: Transport, rate_limit: float | None, ops: int,
            *, record_latency: bool = False) -> None:
        self.measure(group, _cio.label(transport, rate_limit), ops,
                     lambda probe: _run_async(lambda: _cio.deliver(
                         self.server, ops, transport, rate_limit, probe,
                         record_latency=record_latency, rate_window=self.sizes.rate_window)))

    def raw(self, group: str, encoder: Encoder, ops: int) -> None:
        def body(probe: Probe) -> Outcome:
            prebuilt = [v2_event(customer_id(i), new_ulid(), EVENT_DATA) for i in range(ops)]
            return _run_async(lambda: send_raw(self.server, prebuilt, encoder, probe))

        self.measure(group, raw_label(encoder), ops, body)

    def matrix(self, latency: float) -> None:
        """Figures 2, 6, 7 and 9: every cio-queue variant beside the raw limit."""
        s = self.sizes
        self.configure(latency)
        self.emit(f"figure 2: throughput at {latency * 1000:g} ms, {PRODUCERS_NOTE}")
        if self.results.harness_us is None:
            self.results.harness_us = asyncio.run(harness_cpu_per_op(s.throughput_ops))
            self.emit(f"  the producers alone (no-op enqueue): "
                      f"{self.results.harness_us:.1f} µs CPU/op")
        for transport, rate_limit in CIO_VARIANTS:
            if transport == "batch":
                ops = s.throughput_ops
            else:
                ops = s.v1_ops if rate_limit is None else s.v1_limited_ops
            self.cio(MATRIX, transport, rate_limit, ops, record_latency=True)
        for encoder in RAW_ENCODERS:
            self.raw(MATRIX, encoder, s.throughput_ops)
        self.pipeline(MATRIX, s.throughput_ops)
        self._repeat_goal_pair(MATRIX, with_pipeline=True)

    def pipeline(self, group: str, ops: int) -> None:
        self.measure(group, RAW_PIPELINE_LABEL, ops,
                     lambda probe: _run_async(lambda: pipe_raw(self.server, ops, probe)))

    def _repeat_goal_pair(self, group: str, *, with_pipeline: bool = False) -> None:
        """Run the goal's pair (batch without a limit, raw orjson) again, interleaved.

        The report keeps each one's median run, so one burst of noise on a shared machine
        does not decide a goal. The raw pipeline, the goal's context, may join them.
        """
        for _ in range(self.sizes.throughput_repeats - 1):
            self.cio(group, "batch", None, self.sizes.throughput_ops, record_latency=True)
            self.raw(group, "orjson", self.sizes.throughput_ops)
            if with_pipeline:
                self.pipeline(group, self.sizes.throughput_ops)

    def sweep(self) -> None:
        """Figure 9: the latencies the matrix did not cover."""
        self.emit("figure 9: throughput against latency")
        for latency in SWEEP_LATENCIES:
            if latency in (MAIN_LATENCY, ZERO_LATENCY):
                continue  # measured by the matrix
            self.configure(latency)
            self.cio(SWEEP, "batch", None, self.sizes.throughput_ops)
            self.raw(SWEEP, "orjson", self.sizes.throughput_ops)
            self._repeat_goal_pair(SWEEP)

    def peers(self) -> None:
        """Figure 10: the peers at the main latency."""
        s = self.sizes
        self.configure(MAIN_LATENCY)
        self.emit(f"figure 10: peers at {MAIN_LATENCY * 1000:g} ms")
        self.measure(PEERS, SDK_SEQUENTIAL_LABEL, s.sequential_ops,
                     lambda probe: _peers.sdk_sequential(self.server, s.sequential_ops, probe))
        self.measure(PEERS, SDK_THREADS_LABEL, s.per_event_ops,
                     lambda probe: _peers.sdk_threads(self.server, s.per_event_ops,
                                                      SDK_THREADS, probe))
        self.measure(PEERS, ASYNC_CUSTOMERIO_LABEL, s.per_event_ops,
                     lambda probe: _run_async(lambda: _peers.async_customerio(
                         self.server, s.per_event_ops, ASYNC_CUSTOMERIO_CONCURRENCY, probe)))
        for workers in POSTHOG_WORKERS:
            self._posthog(workers)
        self._gather()

    def _posthog(self, workers: int) -> None:
        ops = self.sizes.posthog_ops
        latencies: list[int] = []

        def body(probe: Probe) -> Outcome:
            outcome = _run_async(lambda: _peers.posthog(self.server, ops, workers, probe,
                                                        latencies))
            return _with_latency(outcome, latencies)

        self.measure(PEERS, posthog_label(workers), ops, body)

    def _gather(self) -> None:
        ops = self.sizes.gather_ops
        latencies: list[int] = []

        def body(probe: Probe) -> Outcome:
            outcome = _run_async(lambda: deliver_gather(self.server, ops, probe, latencies))
            return _with_latency(outcome, latencies)

        self.measure(PEERS, GATHER_LABEL, ops, body)

    def memory(self) -> None:
        """Figure 3: heap per queued operation behind the hung server."""
        ops = self.sizes.memory_ops
        self.configure(HUNG_LATENCY)
        self.emit(f"figure 3: memory per queued op, {ops:,} ops behind a hung server")
        for transport in TRANSPORTS:
            def body(probe: Probe, transport: Transport = transport) -> Outcome:
                outcome, figure = _run_async(lambda: _cio.queued_memory(
                    self.server, ops, transport, probe))
                self.results.memory.append(figure)
                self.emit(f"  {transport:<5} {figure.bytes_per_op:>8,.0f} B per queued op "
                          f"(JSON {figure.json_bytes} B, budget {figure.budget:,.0f} B)")
                return outcome

            self.measure(MEMORY, _cio.label(transport, None), ops, body,
                         expect_delivery=False)

    def aclose(self) -> None:
        """Figure 8: aclose() with operations pending behind the hung server."""
        s = self.sizes
        self.configure(HUNG_LATENCY)
        self.emit(f"figure 8: aclose() with {s.aclose_pending:,} pending, hung server, "
                  f"shutdown_timeout={s.aclose_deadline:g} s")
        with tempfile.TemporaryDirectory(prefix="cio-bench-") as tmp:
            for transport in TRANSPORTS:
                for dead_letter in (True, False):
                    path = Path(tmp) / f"{transport}.jsonl" if dead_letter else None
                    name = (f"{_cio.label(transport, None)}, "
                            f"{'dead-letter file' if dead_letter else 'no file'}")

                    def body(probe: Probe, transport: Transport = transport,
                             path: Path | None = path) -> Outcome:
                        outcome, figure = _run_async(lambda: _cio.aclose_time(
                            self.server, s.aclose_pending, transport, s.aclose_deadline,
                            path, probe))
                        self.results.aclose.append(figure)
                        return outcome

                    self.measure(ACLOSE, name, s.aclose_pending, body, expect_delivery=False)

    def scaling(self) -> None:
        """Figure 4: CPU per operation at a small and a large count, 0 ms, overflow=block."""
        s = self.sizes
        self.configure(ZERO_LATENCY)
        small, large = s.scaling_ops
        self.emit(f"figure 4: CPU per op at {small:,} and {large:,} ops (after one discarded "
                  f"run of {small:,})")
        # Interleaved, and each count repeated: one run of the large count varied by 10%
        # from the next, as much as the goal's margin; the short runs more often (see
        # Sizes.scaling_small_runs).
        runs = [(SCALING_WARMUP, small),
                *[(SCALING, ops) for _ in range(s.scaling_repeats)
                  for ops in (*[small] * s.scaling_small_runs, large)]]
        for group, ops in runs:
            self.measure(group, _cio.label("batch", None), ops, self._blocking_stream(ops))

    def _blocking_stream(self, ops: int) -> Callable[[Probe], Outcome]:
        """A batch run with the default queue size, producers blocking when it is full."""

        def body(probe: Probe) -> Outcome:
            return _run_async(lambda: _cio.deliver(
                self.server, ops, "batch", None, probe, overflow="block",
                max_queue_size=DEFAULT_MAX_QUEUE_SIZE))

        return body

    def stream(self) -> None:
        """Figure 5: a sustained stream, clean and with 10% of requests answered 5xx."""
        ops = self.sizes.stream_ops
        self.emit(f"figure 5: a stream of {ops:,} ops at {MAIN_LATENCY * 1000:g} ms, clean "
                  f"and with {SERVER_ERROR_SHARE:.0%} 5xx")
        for share in (0.0, SERVER_ERROR_SHARE):
            self.configure(MAIN_LATENCY, server_error=share)
            self.measure(STREAM, _cio.label("batch", None), ops, self._blocking_stream(ops))
        self.configure(MAIN_LATENCY)


def _with_latency(outcome: Outcome, latencies: list[int]) -> Outcome:
    return Outcome(delivered=outcome.delivered, requests=outcome.requests,
                   settled_undelivered=outcome.settled_undelivered,
                   extra={**outcome.extra, **_cio.latency_figures(latencies)})


def quiet_client_logs() -> None:
    """Keep the clients' own warnings out of the output; the checks catch real failures."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def run_suite(sizes: Sizes, emit: Callable[[str], None]) -> Results:
    """Run every phase against one server process and return the results."""
    quiet_client_logs()
    started = time.perf_counter()
    with server_process() as server:
        emit(f"server: pid {server.pid} on {server.loop}, Track API {server.track_url}, "
             f"PostHog {server.posthog_url}")
        suite = Suite(sizes, server, emit)
        phases: list[Callable[[], None]] = [
            suite.enqueue_cost, lambda: suite.matrix(MAIN_LATENCY),
            lambda: suite.matrix(ZERO_LATENCY), suite.sweep, suite.peers, suite.memory,
            suite.aclose, suite.scaling, suite.stream]
        for phase in phases:
            phase_started = time.perf_counter()
            phase()
            emit(f"  ({time.perf_counter() - phase_started:.1f} s)")
    suite.results.seconds = time.perf_counter() - started
    return suite.results
