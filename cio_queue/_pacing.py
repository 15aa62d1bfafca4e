"""Request pacing shared by every sender of a queue: the 429 gate and the rate limit.

Pure arithmetic on a monotonic clock the caller passes in; the queue does the sleeping.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

__all__ = ["RATE_GUARD", "RequestPacer"]

RATE_GUARD: Final = 0.01
"""Seconds added to the rate window, so that network jitter between two requests a window
apart can never make the server see one request too many in a second."""


class RequestPacer:
    """Hand out start times so that requests respect a rate limit and a shared 429 gate.

    With ``rate`` requests per second, starts are spread at least ``1 / rate`` seconds
    apart (no bursts that the network or the server's own queue could bunch up further),
    and, for ``n = max(1, floor(rate))``, no window of ``n / rate`` seconds plus
    RATE_GUARD ever holds more than ``n`` of them: a sliding log, so the server sees at
    most the rate in any second even when arrival times wobble. A 429 closes the gate:
    no request starts before it reopens.
    """

    __slots__ = ("_interval", "_log", "_size", "_window", "gate_until")

    def __init__(self, rate: float | None) -> None:
        self.gate_until = -math.inf
        if rate is None:
            self._size = 0
            self._window = self._interval = 0.0
        else:
            self._size = max(1, math.floor(rate))
            self._window = self._size / rate + RATE_GUARD
            self._interval = 1 / rate
        self._log: deque[float] = deque()

    def close_gate(self, now: float, seconds: float) -> None:
        """Keep every request from starting for ``seconds`` from ``now`` (never shortens)."""
        self.gate_until = max(self.gate_until, now + seconds)

    def reserve(self, now: float) -> float:
        """Reserve the earliest allowed start time; return the seconds to wait for it."""
        start = now if now >= self.gate_until else self.gate_until
        if self._size:
            log = self._log
            if log:
                start = max(start, log[-1] + self._interval)
            if len(log) >= self._size:
                start = max(start, log.popleft() + self._window)
            log.append(start)
        return start - now
