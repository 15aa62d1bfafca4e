"""Retry policy: when a failed request is tried again, and when it is given up.

Stage: delivery; the courier judges each failed attempt by it. Pure arithmetic.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from ._exceptions import ConfigError

__all__ = ["DEFAULT_RETRY_AFTER_MAX", "DEFAULT_RETRY_AFTER_MIN", "RetryPolicy",
           "parse_retry_after"]

DEFAULT_RETRY_AFTER_MAX: Final = 60.0
"""Largest Retry-After, in seconds, that is obeyed; a longer one is clamped to this."""
DEFAULT_RETRY_AFTER_MIN: Final = 0.1
"""Least wait, in seconds, after a Retry-After of zero (or one in the past)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How each operation is retried, in stamina's vocabulary; all times in float seconds.

    The wait before attempt ``n + 1``, after attempt ``n`` (counting from 1) failed with a
    retryable error, is::

        min(wait_max, wait_initial * wait_exp_base ** (n - 1) + uniform(0, wait_jitter))

    A ``Retry-After`` header on the failed response replaces that wait, clamped to
    ``[retry_after_min, retry_after_max]`` (so ``Retry-After: 0`` on every answer cannot
    turn into a flood). The operation is given up, and ends ``failed``, when ``attempts``
    attempts have failed, when it has been answered 429 ``throttled_attempts`` times
    (429s do not count toward ``attempts``), or when the next attempt would start more
    than ``timeout`` seconds after the first one began. A non-retryable error (a 3xx, a
    4xx other than 408/429) ends it at once. Time spent waiting for a 429 gate opened by
    another request, or for the rate limiter, does not use up attempts, but does count
    against ``timeout``.

    Attributes:
        attempts: total attempts per operation, including the first (>= 1).
        timeout: seconds from the first attempt after which no new attempt starts.
        wait_initial: the first backoff, before jitter.
        wait_max: the cap on any one backoff.
        wait_jitter: the upper bound of the uniform random seconds added to each backoff.
        wait_exp_base: the growth factor between successive backoffs.
        retry_after_max: the cap on an obeyed Retry-After.
        retry_after_min: the least wait after a Retry-After (below ``retry_after_max``).
        throttled_attempts: 429 answers an operation may get before it is given up.
    """

    attempts: int = 8
    timeout: float = 60.0
    wait_initial: float = 0.2
    wait_max: float = 10.0
    wait_jitter: float = 0.5
    wait_exp_base: float = 2.0
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX
    retry_after_min: float = DEFAULT_RETRY_AFTER_MIN
    throttled_attempts: int = 20

    def __post_init__(self) -> None:
        for name in ("attempts", "throttled_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RetryPolicy.{name} must be an int >= 1; use 1 to turn "
                                  "retries off")
        for name in ("timeout", "wait_initial", "wait_max", "wait_jitter", "retry_after_max",
                     "retry_after_min"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ConfigError(f"RetryPolicy.{name} must be a finite number of seconds >= 0")
        if not _is_real(self.wait_exp_base) or self.wait_exp_base < 1:
            raise ConfigError("RetryPolicy.wait_exp_base must be a number >= 1")

    def backoff(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Return the seconds to wait after attempt ``failed_attempt`` (from 1) failed."""
        jitter = (rng or random).uniform(0, self.wait_jitter) if self.wait_jitter else 0.0
        try:
            base = self.wait_initial * self.wait_exp_base ** (failed_attempt - 1)
        except OverflowError:
            base = self.wait_max
        return min(self.wait_max, base + jitter)

    def clamp_retry_after(self, seconds: float) -> float:
        """Return a server-given Retry-After clamped to ``[retry_after_min, retry_after_max]``.

        ``retry_after_max`` wins where the two cross.
        """
        return min(max(seconds, self.retry_after_min), self.retry_after_max)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header (delta seconds or an HTTP date) into seconds from now.

    Returns None when the header is absent or unparseable; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(delta, 0.0)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
