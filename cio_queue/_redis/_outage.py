"""One component's view of Redis being away: one error when it goes, backoff, one line back.

Stage: shared by the producer, the consumer and the pacer, which all retry on their own.
"""

from __future__ import annotations

import random
import time
from typing import Any, Final

from .._log import log

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "Outage"]

BACKOFF_BASE: Final = 0.05
"""Seconds: the first retry after a failure waits between half of this and all of it."""
BACKOFF_CAP: Final = 1.0
"""Seconds: no retry waits longer, so service resumes within a second of Redis' return."""


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
