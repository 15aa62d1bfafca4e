"""Figure 1: the CPU one enqueue call costs the caller, against two baselines.

Measured paths, each ``calls`` times per repetition after ``warmup`` untimed calls on the
same object, repetitions interleaved so drift in the machine hits all alike:

* ``asyncio.Queue.put_nowait((uid, "purchase", data))``: the floor, a plain sync call;
* the same inside an awaited ``async def``: the floor plus the coroutine call every async
  API pays;
* ``await RawLoop.track(uid, "purchase", data)``: the raw loop's intake (v2 op with a
  ULID, orjson, list append), the goal's baseline;
* ``await EventQueue.track(uid, "purchase", data)`` on each transport, with the library's
  default config and a sender that answers 200 without I/O. The timed loop never yields,
  so the flusher does not run inside it: this is the intake alone, as a request handler
  pays it. Delivery costs are in figure 4.

The clock is this process's CPU time (``time.process_time_ns``), which other processes
on the machine do not advance; the garbage collector stays on, because what an enqueue
leaves behind is part of its cost, and each timed loop starts after a full collection.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from cio_queue import EventQueue, QueueConfig, Request, Response, Transport

from ._harness import EVENT_DATA, EVENT_NAME, customer_id
from ._raw import RawLoop

_OK: Final = Response(200, {}, b"{}")
CLOSE_TIMEOUT: Final = 60.0


class NullSender:
    """A Sender that never touches the network: every request succeeds at once."""

    async def send(self, request: Request) -> Response:
        return _OK

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class EnqueuePath:
    """The CPU cost per call of one enqueue path, in nanoseconds, per repetition."""

    label: str
    samples_ns: tuple[float, ...]
    problem: str | None = None

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)


async def _timed(calls: list[str], track: Callable[[str, str, dict[str, Any]], Awaitable[Any]],
                 profile: cProfile.Profile | None = None) -> float:
    """Return the CPU nanoseconds per ``await track(uid, "purchase", data)``."""
    name, data = EVENT_NAME, EVENT_DATA
    gc.collect()
    if profile is not None:
        profile.enable()
    started = time.process_time_ns()
    for uid in calls:
        await track(uid, name, data)
    per_call = (time.process_time_ns() - started) / len(calls)
    if profile is not None:
        profile.disable()
    return per_call


async def _put_nowait(calls: list[str], warmup: list[str]) -> tuple[float, str | None]:
    queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
    name, data = EVENT_NAME, EVENT_DATA
    for uid in warmup:
        queue.put_nowait((uid, name, data))
    gc.collect()
    started = time.process_time_ns()
    for uid in calls:
        queue.put_nowait((uid, name, data))
    per_call = (time.process_time_ns() - started) / len(calls)
    size = queue.qsize()
    return per_call, None if size == len(warmup) + len(calls) else f"put_nowait holds {size}"


async def _async_put(calls: list[str], warmup: list[str]) -> tuple[float, str | None]:
    queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()

    async def track(uid: str, name: str, data: dict[str, Any]) -> None:
        queue.put_nowait((uid, name, data))

    for uid in warmup:
        await track(uid, EVENT_NAME, EVENT_DATA)
    per_call = await _timed(calls, track)
    size = queue.qsize()
    return per_call, None if size == len(warmup) + len(calls) else f"async put holds {size}"


async def _raw_loop(calls: list[str], warmup: list[str]) -> tuple[float, str | None]:
    raw = RawLoop()
    for uid in warmup:
        await raw.track(uid, EVENT_NAME, EVENT_DATA)
    per_call = await _timed(calls, raw.track)
    size = len(raw.ops)
    return per_call, None if size == len(warmup) + len(calls) else f"raw loop holds {size}"


def _idle_queue(transport: Transport, capacity: int) -> EventQueue:
    """A queue with the default config, a null sender, and room for every call."""
    config = QueueConfig(site_id="bench-site", api_key="bench-key", transport=transport,
                         rate_limit=None, max_queue_size=capacity + 1)
    return EventQueue(config, sender=NullSender())


async def _cio_track(calls: list[str], warmup: list[str], transport: Transport,
                     profile: cProfile.Profile | None = None) -> tuple[float, str | None]:
    total = len(warmup) + len(calls)
    cio = _idle_queue(transport, total)
    try:
        for uid in warmup:
            await cio.track(uid, EVENT_NAME, EVENT_DATA)
        await asyncio.sleep(0)  # let the flusher start before the clock does
        per_call = await _timed(calls, cio.track, profile)
    finally:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            stats = await cio.aclose()  # untimed: the null sender takes everything at once
    problem = None
    if stats.enqueued != total or stats.delivered != total:
        problem = (f"EventQueue.track ({transport}): {stats.enqueued} enqueued, "
                   f"{stats.delivered} delivered to the null sender of {total}")
    return per_call, problem


PATHS: Final = ("put_nowait", "async put", "raw loop", "batch", "v1")
LABELS: Final = {
    "put_nowait": "asyncio.Queue.put_nowait(tuple)",
    "async put": "await async def wrapping put_nowait",
    "raw loop": "raw loop: v2 op + ULID + orjson + append",
    "batch": "await EventQueue.track (batch)",
    "v1": "await EventQueue.track (v1)",
}


async def measure_enqueue(calls: int, warmup: int, repeats: int) -> dict[str, EnqueuePath]:
    """Return each path's per-call CPU cost over ``repeats`` interleaved repetitions."""
    call_ids = [customer_id(i) for i in range(calls)]
    warm_ids = [f"warm-up-{i}" for i in range(warmup)]
    samples: dict[str, list[float]] = {path: [] for path in PATHS}
    problems: dict[str, str] = {}
    for _ in range(repeats):
        for path in PATHS:
            if path == "put_nowait":
                per_call, problem = await _put_nowait(call_ids, warm_ids)
            elif path == "async put":
                per_call, problem = await _async_put(call_ids, warm_ids)
            elif path == "raw loop":
                per_call, problem = await _raw_loop(call_ids, warm_ids)
            else:
                transport: Transport = "batch" if path == "batch" else "v1"
                per_call, problem = await _cio_track(call_ids, warm_ids, transport)
            samples[path].append(per_call)
            if problem is not None:
                problems[path] = problem
    return {path: EnqueuePath(LABELS[path], tuple(samples[path]), problems.get(path))
            for path in PATHS}


def profile_enqueue(calls: int, warmup: int, transport: Transport, top: int) -> str:
    """cProfile one timed enqueue loop; return the ``top`` functions by own time."""
    profile = cProfile.Profile()
    asyncio.run(_cio_track([customer_id(i) for i in range(calls)],
                           [f"warm-up-{i}" for i in range(warmup)], transport, profile))
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats(pstats.SortKey.TIME).print_stats(top)
    return out.getvalue()
