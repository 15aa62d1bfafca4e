"""Benchmark what OpenTelemetry metrics cost per operation.

Measured side by side in one run:

- **The per-operation hook alone**: ``QueueMetrics.settled()`` (a dict tally, read by the
  observable counter at collection) with the SDK configured, beside what a synchronous
  SDK ``Counter.add(1, attributes)`` with pre-built attributes would cost instead.
- **End to end**: ``OPERATIONS`` ``track`` calls through an EventQueue (batch transport, a
  sender that answers 200 in-process, so no network time hides the difference), enqueue
  to last delivery, in CPU seconds per operation: with no telemetry (``metrics=False``,
  the baseline), with metrics through OpenTelemetry's API alone (``metrics=None`` and no
  SDK: the global no-op provider), and with the SDK (a ``MeterProvider`` with an
  in-memory reader, collected at the end of each round). Rounds are interleaved and the
  median is reported, with its ratio to the baseline.

Only the ratios carry over to another machine. Run from the repository root::

    python -m benchmarks.otel_cost [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from cio_queue import EventQueue, OutcomeStatus, QueueConfig, Request, Response
from cio_queue._otel import metrics_for

OPERATIONS: Final = 20_000
ROUNDS: Final = 7
HOOK_CALLS: Final = 200_000
WARMUP_OPERATIONS: Final = 2_000
BATCH: Final = 100
OK: Final = Response(200, {}, b"{}")


class InstantSender:
    """Answer every request 200 at once, in-process."""

    async def send(self, request: Request) -> Response:
        return OK

    async def aclose(self) -> None:
        return None


def config(**overrides: Any) -> QueueConfig:
    return QueueConfig(site_id="site", api_key="key", base_url="http://127.0.0.1:9",
                       rate_limit=None, batch_size=BATCH, max_queue_size=10 * BATCH,
                       **overrides)


async def run_queue(operations: int, **overrides: Any) -> float:
    """CPU seconds per operation, enqueue to last delivery."""
    started = time.process_time()
    async with EventQueue(config(**overrides), sender=InstantSender()) as queue:
        for n in range(operations):
            await queue.track(str(n % 1000), "purchase", {"price": 9.5, "sku": "A-1"})
            if n % BATCH == BATCH - 1:
                await asyncio.sleep(0)  # let the flusher and the workers run, as an app does
        await queue.flush()
    elapsed = time.process_time() - started
    delivered = queue.statistics().delivered
    if delivered != operations:
        raise SystemExit(f"only {delivered} of {operations} operations were delivered")
    return elapsed / operations


def with_sdk() -> tuple[dict[str, Any], Callable[[], object]]:
    reader = InMemoryMetricReader()
    return {"meter_provider": MeterProvider(metric_readers=[reader])}, reader.get_metrics_data


VARIANTS: Final[dict[str, Callable[[], tuple[dict[str, Any], Callable[[], object]]]]] = {
    "no telemetry (metrics=False)": lambda: ({"metrics": False}, lambda: None),
    "API only, no SDK (metrics=None)": lambda: ({}, lambda: None),
    "SDK MeterProvider, in-memory reader": with_sdk,
}


async def end_to_end(operations: int, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for make in VARIANTS.values():  # warm-up: imports, the instruments, the caches
        overrides, _ = make()
        await run_queue(WARMUP_OPERATIONS, **overrides)
    for _ in range(rounds):
        for name, make in VARIANTS.items():
            overrides, collect = make()
            times[name].append(await run_queue(operations, **overrides))
            collect()
    return {name: statistics.median(values) for name, values in times.items()}


def hook_costs(calls: int) -> dict[str, float]:
    """Seconds per call of the settled() hook and of the synchronous alternative."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    telemetry = metrics_for(config(meter_provider=provider))
    assert telemetry is not None
    status = OutcomeStatus.DELIVERED
    counter = provider.get_meter("benchmark").create_counter("operations")
    attributes = {"cio_queue.name": "default", "cio_queue.outcome": "delivered"}

    def best(statement: Callable[[], object]) -> float:
        statement()
        return min(timeit.repeat(statement, number=calls, repeat=5)) / calls

    return {"QueueMetrics.settled(): a dict tally": best(lambda: telemetry.settled(status, None)),
            "SDK Counter.add(1, pre-built attributes)": best(lambda: counter.add(1, attributes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=OPERATIONS,
                        help="operations per end-to-end round")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="end-to-end rounds")
    parser.add_argument("--calls", type=int, default=HOOK_CALLS, help="hook calls timed")
    args = parser.parse_args()

    print(f"per-operation hook, best of 5 x {args.calls:,} calls:")
    for name, seconds in hook_costs(args.calls).items():
        print(f"  {name:42} {seconds * 1e6:7.3f} µs")
    medians = asyncio.run(end_to_end(args.operations, args.rounds))
    base = medians["no telemetry (metrics=False)"]
    print(f"end to end, {args.operations:,} track calls, batch transport, in-process sender, "
          f"CPU per operation, median of {args.rounds} interleaved rounds:")
    for name, seconds in medians.items():
        print(f"  {name:42} {seconds * 1e6:7.2f} µs {seconds / base:6.2f}x "
              f"(+{(seconds - base) * 1e6:.2f} µs)")


if __name__ == "__main__":
    main()
