"""The faults the fake server injects: what they are, how often, and the answers they give.

Stage: outside the pipeline; the testing kit's fake Track API.

Faults come first from a script, in arrival order, then at random from `FaultRates` with a
seeded generator, so a seed replays the same faults for the same arrival order.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from ._responses import meta_error, server_error

_SERVER_ERROR_STATUSES: Final = (500, 502, 503, 504)


class Fault(enum.Enum):
    """Name the faults that `FakeTrackAPI.script` can queue."""

    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    RATE_LIMITED_NO_HEADER = "rate_limited_no_header"
    DROP_CONNECTION = "drop_connection"
    AMBIGUOUS = "ambiguous"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities (0..1) of each random fault per request; their sum must be <= 1.

    `retry_after` is the Retry-After value sent with `rate_limited` (rounded up to whole
    seconds, as the header only carries integers) and `slow_seconds` is how long a `slow`
    request stalls before being processed.
    """

    server_error: float = 0.0
    rate_limited: float = 0.0
    rate_limited_no_header: float = 0.0
    drop_connection: float = 0.0
    ambiguous: float = 0.0
    slow: float = 0.0
    retry_after: float = 1.0
    slow_seconds: float = 5.0

    def __post_init__(self) -> None:
        """Reject probabilities outside 0..1, a sum above 1 and negative durations."""
        rates = [p for _, p in self.weighted()]
        if any(not 0.0 <= p <= 1.0 for p in rates):
            raise ValueError("fault probabilities must be within 0..1")
        if math.fsum(rates) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to at most 1")
        if self.retry_after < 0 or self.slow_seconds < 0:
            raise ValueError("retry_after and slow_seconds must be >= 0")

    def weighted(self) -> list[tuple[Fault, float]]:
        """Return each fault with its probability, in a fixed order (keeps seeds stable)."""
        return [
            (Fault.SERVER_ERROR, self.server_error),
            (Fault.RATE_LIMITED, self.rate_limited),
            (Fault.RATE_LIMITED_NO_HEADER, self.rate_limited_no_header),
            (Fault.DROP_CONNECTION, self.drop_connection),
            (Fault.AMBIGUOUS, self.ambiguous),
            (Fault.SLOW, self.slow),
        ]


class FaultPlan:
    """Decide each request's fault: the scripted ones first, then random ones."""

    def __init__(self, seed: int) -> None:
        # Reproducible fault injection, not cryptography (S311 is only enabled in some configs).
        self._rng = random.Random(seed)  # noqa: S311, RUF100
        self._script: deque[Fault | int] = deque()

    def script(self, *faults: Fault | int) -> None:
        """Queue faults (or bare HTTP statuses) for the next requests, in arrival order."""
        for item in faults:
            if not isinstance(item, Fault) and not 100 <= item <= 599:
                raise ValueError(f"not an HTTP status: {item!r}")
        self._script.extend(faults)

    def clear(self) -> None:
        """Forget the scripted faults not used yet."""
        self._script.clear()

    def next(self, rates: FaultRates | None) -> tuple[Fault | int | None, int]:
        """Pick the next request's fault and, for a server error, its status (else 0)."""
        fault: Fault | int | None = None
        if self._script:
            fault = self._script.popleft()
        elif rates is not None:
            fault = self._draw(rates)
        if fault is Fault.SERVER_ERROR:
            return fault, self._rng.choice(_SERVER_ERROR_STATUSES)
        return fault, 0

    def _draw(self, rates: FaultRates) -> Fault | None:
        """Draw a random fault with the given probabilities (None: no fault)."""
        draw = self._rng.random()
        for candidate, probability in rates.weighted():
            if draw < probability:
                return candidate
            draw -= probability
        return None


def fault_response(
    fault: Fault | int | None, error_status: int, rates: FaultRates
) -> web.Response | None:
    """Build the answer for faults that refuse the request outright, else return None."""
    if isinstance(fault, int):
        return web.json_response({}, status=fault)
    if fault is Fault.SERVER_ERROR:
        return server_error(error_status)
    if fault in (Fault.RATE_LIMITED, Fault.RATE_LIMITED_NO_HEADER):
        response = meta_error(429, "Too Many Requests")
        if fault is Fault.RATE_LIMITED:
            response.headers["Retry-After"] = str(math.ceil(rates.retry_after))
        return response
    return None
