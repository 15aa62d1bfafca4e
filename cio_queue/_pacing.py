"""Request pacing shared by every sender of a queue: the 429 gate and the rate limit.

Stage: delivery (the courier asks it before every request). Pure arithmetic on a
monotonic clock the caller passes in; the courier does the sleeping.
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
    """Say when the next request may start, within the rate limit and the shared 429 gate.

    With ``rate`` requests per second, starts are at least ``1 / rate`` seconds apart (no
    bursts that the network or the server's own queue could bunch up further), and, for
    ``n = max(1, floor(rate))``, no window of ``n / rate`` seconds plus RATE_GUARD ever
    holds more than ``n`` of them: a sliding log of the times requests really started
    (:meth:`start`), so a request that started late, because its event loop was busy,
    can never let the next ones crowd a window. A 429 closes the gate: no request starts
    before it reopens.
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

    def delay(self, now: float) -> float:
        """Return the seconds until a request may start (0 or less: it may start now)."""
        start = now if now >= self.gate_until else self.gate_until
        log = self._log
        if log:
            start = max(start, log[-1] + self._interval)
            if len(log) >= self._size:
                start = max(start, log[0] + self._window)
        return start - now

    def start(self, now: float) -> None:
        """Note that a request starts now (after :meth:`delay` said it may)."""
        if self._size:
            log = self._log
            log.append(now)
            if len(log) > self._size:
                log.popleft()
