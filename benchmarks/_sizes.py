"""How big each measurement is in each mode, and the conditions shared by all of them.

Full mode is what the README's figures come from (under 10 minutes on 2 cores); quick
mode keeps every measurement and shrinks the sizes (under a minute; the test suite runs
it); smoke mode shrinks them further and only proves, in about 10 s, that the suite runs
end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAIN_LATENCY: Final = 0.020
"""Seconds the server waits before answering: a typical round trip to the Track API."""
ZERO_LATENCY: Final = 0.0
SWEEP_LATENCIES: Final = (0.0, 0.005, 0.020, 0.050)
"""Figure 9: throughput against these latencies."""
HUNG_LATENCY: Final = 3600.0
"""A server that never answers within a run: memory and aclose() are measured against it."""
HUNG_REQUEST_TIMEOUT: Final = 3600.0
"""cio-queue's request_timeout against the hung server, so no request times out and retries
while memory is measured."""
SERVER_ERROR_SHARE: Final = 0.10
"""Figure 5: the share of requests the faulty server answers with a 5xx (500/502/503/504)."""
DEFAULT_RATE_LIMIT: Final = 100.0
"""cio-queue's default rate_limit (requests/s), measured beside rate_limit=None."""
SDK_THREADS: Final = 8
"""Worker threads of the official SDK's thread-pool run, one client each."""
ASYNC_CUSTOMERIO_CONCURRENCY: Final = 10
POSTHOG_WORKERS: Final = (1, 10)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """Operation counts and repetitions of one mode.

    Attributes:
        name: the mode's name, as the report shows it.
        enqueue_calls: timed enqueue calls per repetition (figure 1).
        enqueue_warmup: untimed calls on the same queue before each repetition.
        enqueue_repeats: repetitions per enqueue path, interleaved; the median is kept.
        throughput_ops: operations of the batch and raw runs (figures 2, 6, 7, 9).
        throughput_repeats: runs of the throughput goals' pair (cio-queue batch without a
            rate limit, raw orjson) at each latency, interleaved; the median counts.
        v1_ops: operations of cio-queue's v1 runs without a rate limit.
        v1_limited_ops: operations of cio-queue's v1 runs at 100 requests/s.
        sequential_ops: events of the official SDK called sequentially.
        per_event_ops: events of the per-request peers (SDK threads, async-customerio).
        posthog_ops: events of each PostHog AsyncClient run.
        gather_ops: events of the list + gather baseline.
        memory_ops: operations queued behind the hung server (figure 3).
        scaling_ops: the small and large operation counts of figure 4.
        scaling_repeats: runs of the large count of figure 4, each after
            ``scaling_small_runs`` runs of the small count; the median CPU per op of
            each count is kept.
        scaling_small_runs: runs of the small count before each run of the large one.
            A small run lasts a hundredth as long, so one slow spell of a shared machine
            can cover it whole (its CPU per op then rises by half or more), where a large
            run averages over the spell: more small runs keep one spell from setting
            their median.
        stream_ops: operations of the sustained stream, clean and faulty (figure 5).
        aclose_pending: operations pending when aclose() is timed (figure 8).
        aclose_deadline: the shutdown_timeout of those runs, in seconds.
        rate_window: seconds a rate-limited run idles after its warm-up, so its timed
            part starts with the limiter's one-second window empty.
    """

    name: str
    enqueue_calls: int
    enqueue_warmup: int
    enqueue_repeats: int
    throughput_ops: int
    throughput_repeats: int
    v1_ops: int
    v1_limited_ops: int
    sequential_ops: int
    per_event_ops: int
    posthog_ops: int
    gather_ops: int
    memory_ops: int
    scaling_ops: tuple[int, int]
    scaling_repeats: int
    scaling_small_runs: int
    stream_ops: int
    aclose_pending: int
    aclose_deadline: float
    rate_window: float = 1.0


FULL: Final = Sizes(
    name="full",
    enqueue_calls=20_000, enqueue_warmup=2_000, enqueue_repeats=7,
    throughput_ops=10_000, throughput_repeats=5, v1_ops=2_000, v1_limited_ops=1_000,
    sequential_ops=200, per_event_ops=2_000, posthog_ops=10_000, gather_ops=10_000,
    memory_ops=100_000, scaling_ops=(10_000, 1_000_000), scaling_repeats=3,
    scaling_small_runs=3,
    stream_ops=1_000_000, aclose_pending=100_000, aclose_deadline=1.0,
)
QUICK: Final = Sizes(
    name="quick",
    enqueue_calls=5_000, enqueue_warmup=1_000, enqueue_repeats=3,
    throughput_ops=2_000, throughput_repeats=3, v1_ops=400, v1_limited_ops=100,
    sequential_ops=50, per_event_ops=400, posthog_ops=1_000, gather_ops=1_000,
    memory_ops=10_000, scaling_ops=(10_000, 100_000), scaling_repeats=2,
    scaling_small_runs=1,
    stream_ops=20_000, aclose_pending=10_000, aclose_deadline=0.5, rate_window=0.5,
)
SMOKE: Final = Sizes(
    name="smoke",
    enqueue_calls=500, enqueue_warmup=100, enqueue_repeats=1,
    throughput_ops=300, throughput_repeats=1, v1_ops=40, v1_limited_ops=10,
    sequential_ops=5, per_event_ops=40, posthog_ops=200, gather_ops=200,
    memory_ops=500, scaling_ops=(500, 2_000), scaling_repeats=1,
    scaling_small_runs=1,
    stream_ops=1_000, aclose_pending=500, aclose_deadline=0.2, rate_window=0.0,
)
