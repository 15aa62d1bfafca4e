"""Benchmark what a ``before_send`` hook costs per operation.

Measured side by side in one run, for a ``track`` call with a small event (five fields,
one of them a list of three objects):

- **The hook stage alone**: ``apply_before_send`` on a built operation (what intake does
  between building and sealing it), for a hook that passes the view as it is, one that
  edits it in place, and one that returns a changed copy (``dataclasses.replace``).
- **End to end**: ``OPERATIONS`` ``track`` calls through an EventQueue (batch transport, a
  sender that answers 200 in-process, so no network time hides the difference), enqueue
  to last delivery, in CPU seconds per operation: with no hook (the baseline) and with the
  three hooks above. Rounds are interleaved and the median is reported, with its ratio to
  the baseline.

Only the ratios carry over to another machine. Run from the repository root::

    python -m benchmarks.before_send_cost [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Final

from cio_queue import EventQueue, OperationView, QueueConfig, Request, Response
from cio_queue import _operations as ops
from cio_queue._before_send import apply_before_send

OPERATIONS: Final = 20_000
ROUNDS: Final = 7
STAGE_CALLS: Final = 100_000
WARMUP_OPERATIONS: Final = 2_000
BATCH: Final = 100
OK: Final = Response(200, {}, b"{}")
DATA: Final = {"price": 9.5, "sku": "A-1", "currency": "EUR", "quantity": 2,
               "items": [{"id": n, "name": "item"} for n in range(3)]}


class InstantSender:
    """Answer every request 200 at once, in-process."""

    async def send(self, request: Request) -> Response:
        return OK

    async def aclose(self) -> None:
        return None


def passes(view: OperationView) -> OperationView:
    return view


def edits_in_place(view: OperationView) -> OperationView:
    view.attributes["app_version"] = "1.2"
    return view


def replaces(view: OperationView) -> OperationView:
    return dataclasses.replace(view, attributes={**view.attributes, "app_version": "1.2"})


HOOKS: Final[dict[str, Callable[[OperationView], OperationView] | None]] = {
    "no hook": None,
    "hook returns the view as it is": passes,
    "hook edits the view in place": edits_in_place,
    "hook returns dataclasses.replace(...)": replaces,
}


def config(hook: Callable[[OperationView], OperationView] | None) -> QueueConfig:
    return QueueConfig(site_id="site", api_key="key", base_url="http://127.0.0.1:9",
                       rate_limit=None, batch_size=BATCH, max_queue_size=10 * BATCH,
                       metrics=False, before_send=hook)


async def run_queue(operations: int, hook: Callable[[OperationView], OperationView] | None
                    ) -> float:
    """CPU seconds per operation, enqueue to last delivery."""
    started = time.process_time()
    async with EventQueue(config(hook), sender=InstantSender()) as queue:
        for n in range(operations):
            await queue.track(str(n % 1000), "purchase", DATA)
            if n % BATCH == BATCH - 1:
                await asyncio.sleep(0)  # let the flusher and the workers run, as an app does
        await queue.flush()
    elapsed = time.process_time() - started
    delivered = queue.statistics().delivered
    if delivered != operations:
        raise SystemExit(f"only {delivered} of {operations} operations were delivered")
    return elapsed / operations


async def end_to_end(operations: int, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in HOOKS}
    for hook in HOOKS.values():  # warm-up: imports, the caches
        await run_queue(WARMUP_OPERATIONS, hook)
    for _ in range(rounds):
        for name, hook in HOOKS.items():
            times[name].append(await run_queue(operations, hook))
    return {name: statistics.median(values) for name, values in times.items()}


def stage_costs(calls: int) -> dict[str, float]:
    """Seconds per call of the hook stage (a new operation each call, as at enqueue)."""
    def best(hook: Callable[[OperationView], OperationView]) -> float:
        times = []
        for _ in range(5):
            built = [ops.track("42", "purchase", DATA, None, None) for _ in range(calls)]
            started = time.process_time()
            for op in built:
                apply_before_send(hook, op)
            times.append(time.process_time() - started)
        return min(times) / calls

    return {name: best(hook) for name, hook in HOOKS.items() if hook is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=OPERATIONS,
                        help="operations per end-to-end round")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="end-to-end rounds")
    parser.add_argument("--calls", type=int, default=STAGE_CALLS, help="stage calls timed")
    args = parser.parse_args()

    print(f"the hook stage alone (apply_before_send), CPU per call, best of 5 x "
          f"{args.calls:,} calls:")
    for name, seconds in stage_costs(args.calls).items():
        print(f"  {name:40} {seconds * 1e6:7.3f} µs")
    medians = asyncio.run(end_to_end(args.operations, args.rounds))
    base = medians["no hook"]
    print(f"end to end, {args.operations:,} track calls, batch transport, in-process sender, "
          f"CPU per operation, median of {args.rounds} interleaved rounds:")
    for name, seconds in medians.items():
        print(f"  {name:40} {seconds * 1e6:7.2f} µs {seconds / base:6.2f}x "
              f"(+{(seconds - base) * 1e6:.2f} µs)")


if __name__ == "__main__":
    main()
