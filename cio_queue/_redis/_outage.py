"""Waiting in this package: out an outage (one error, backoff, one line back), or for an event.

Stage: shared by the producer, the consumer and the pacer, which all retry on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable
from typing import Any, Final

from .._log import log

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "STOP_TIMEOUT", "Outage", "stop_tasks", "wait_event"]

BACKOFF_BASE: Final = 0.05
"""Seconds: the first retry after a failure waits between half of this and all of it."""
BACKOFF_CAP: Final = 1.0
"""Seconds: no retry waits longer, so service resumes within a second of Redis' return."""
STOP_TIMEOUT: Final = 2.0
"""Seconds ``stop_tasks`` keeps cancelling a task that goes on running."""
_RECANCEL: Final = 0.05
"""Seconds between two cancellations of a task that did not stop."""


class Outage:
    """Count consecutive failures, say how long to back off, and log each change once.

    The n-th consecutive failure backs off ``min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (n - 1))``
    seconds times a random factor in [0.5, 1) ("equal jitter": never a hot loop, and a
    fleet does not retry in step). The first failure logs one ERROR
    ``cio_queue.redis_unreachable``; the first success after it one WARNING
    ``cio_queue.redis_reconnected`` with the outage's length; failures in between log
    nothing. The fields given here are added to both, with those given on each call.
    """

    __slots__ = ("_fields", "down_since", "failures")

    def __init__(self, component: str, **fields: Any) -> None:
        self._fields = {"component": component, **fields}
        self.failures = 0
        self.down_since: float | None = None

    @property
    def down(self) -> bool:
        """Whether the last attempt failed."""
        return self.failures > 0

    def failed(self, exc: BaseException, **fields: Any) -> float:
        """Note a failed attempt and return the seconds to wait before the next one."""
        self.failures += 1
        if self.failures == 1:
            self.down_since = time.monotonic()
            log.error("cio_queue.redis_unreachable", **self._fields, **fields,
                      error=f"{type(exc).__name__}: {exc}")
        step = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(self.failures - 1, 16))
        return step * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def recovered(self, **fields: Any) -> None:
        """Note a successful attempt (logs only when it ends an outage)."""
        if self.failures:
            since = self.down_since if self.down_since is not None else time.monotonic()
            log.warning("cio_queue.redis_reconnected", **self._fields, **fields,
                        failures=self.failures, seconds=round(time.monotonic() - since, 3))
            self.failures = 0
            self.down_since = None


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; return whether it is set.

    ``asyncio.timeout``, not an anyio scope: the package's own tasks are stopped with
    ``Task.cancel()``, and an anyio scope whose deadline passes just as that cancel
    arrives can swallow it (the task then never ends); asyncio's timeout counts
    cancellations and lets the outside one through.
    """
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()
    return event.is_set()


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], seconds: float = STOP_TIMEOUT) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again those that go on.

    redis-py's asyncio client can swallow a cancellation that arrives at the wrong moment
    of a command (redis/redis-py#2028, #2551; seen here in ``Pipeline.execute``), and
    the task then runs on as if nothing happened. So one ``cancel()`` is not enough: this
    repeats it every 50 ms until the task ends, for ``seconds`` at most, and logs an
    error naming any task that outlived that.
    """
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL)
    for task in pending:
        log.error("cio_queue.redis_task_not_stopped", task=task.get_name(), seconds=seconds)
