"""Unit tests of the retry maths and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from cio_queue import RetryPolicy
from cio_queue._retry import parse_retry_after


def test_backoff_follows_the_documented_formula() -> None:
    """Without jitter, waits grow by wait_exp_base from wait_initial and stop at wait_max."""
    policy = RetryPolicy(wait_initial=0.5, wait_exp_base=3, wait_max=10, wait_jitter=0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]
    assert policy.backoff(10_000) == 10  # no OverflowError on huge attempt numbers


def test_jitter_stays_within_its_bound() -> None:
    """Jitter adds between 0 and wait_jitter seconds, never more than wait_max in total."""
    policy = RetryPolicy(wait_initial=1, wait_exp_base=2, wait_max=3, wait_jitter=0.5)
    rng = random.Random(1)
    waits = [policy.backoff(1, rng) for _ in range(500)]
    assert all(1 <= w <= 1.5 for w in waits)
    assert max(waits) - min(waits) > 0.4
    assert all(policy.backoff(3, rng) == 3 for _ in range(50))


def test_retry_after_is_clamped() -> None:
    """A server-given Retry-After is clamped to [retry_after_min, retry_after_max]."""
    policy = RetryPolicy(retry_after_max=30)
    assert policy.clamp_retry_after(3600) == 30
    assert policy.clamp_retry_after(-5) == policy.retry_after_min == 0.1
    assert policy.clamp_retry_after(0) == 0.1  # "retry now" still waits a little
    assert policy.clamp_retry_after(2.5) == 2.5
    assert RetryPolicy(retry_after_max=0.01).clamp_retry_after(0) == 0.01  # max wins


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("Wed, 21 Oct 2026 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
        (None, None),
        ("soon", None),
        ("-3", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    """Retry-After is read as delta seconds or an HTTP date; junk gives None."""
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == seconds
