"""The fleet pacer against a real redis-server: one budget and one gate for all processes."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from cio_queue._redis import FleetPacer
from tests import redis_children
from tests.redis_support import RedisServer

pytestmark = pytest.mark.anyio

PROCESSES = 4
RATE = 50


def _run_fleet(url: str, name: str, seconds: float, **first: Any) -> list[dict[str, Any]]:
    """Run PROCESSES child processes pacing at RATE together; return their reports.

    ``first`` goes to the first child only (it closes the gate).
    """
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    ready, results = context.Queue(), context.Queue()
    children = [context.Process(target=redis_children.pace,
                                args=(url, name, RATE, ready, go, results),
                                kwargs={"seconds": seconds, **(first if n == 0 else {})})
                for n in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        for _ in children:  # all connected: their clocks start together at go
            ready.get(timeout=30)
        go.set()
        reports = [results.get(timeout=30 + seconds + redis_children.GATE_GRACE)
                   for _ in children]
        for child in children:
            child.join(timeout=10)
            assert child.exitcode == 0
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(timeout=10)
    return reports


async def test_one_process_is_spaced_and_gated(redis: Redis) -> None:
    """Starts come 1/rate apart; a closed gate holds them; a shorter close never shortens it."""
    pacer = FleetPacer(redis, "cio:site", 10)
    assert (await pacer.try_start()).granted
    turn = await pacer.try_start()
    assert not turn.granted
    assert 0.05 < turn.wait <= 0.1
    assert await pacer.close_gate(0.5) == pytest.approx(0.5, abs=0.01)
    assert 0.4 < await pacer.close_gate(0.1) <= 0.5
    assert 0.4 < (await pacer.try_start()).wait <= 0.5
    assert not await pacer.wait_turn(time.monotonic() + 0.2)  # would cross the deadline
    started = time.monotonic()
    assert await pacer.wait_turn(time.monotonic() + 5)
    assert time.monotonic() - started > 0.2
    assert await pacer.gate_remaining() == 0


def test_four_processes_never_put_more_than_rate_starts_in_a_second(
        redis_server: RedisServer) -> None:
    """4 processes asking as fast as they can at rate 50: no 1 s of Redis time has > 50."""
    reports = _run_fleet(redis_server.url, "cio:site", 2.5)
    grants = sorted(t for report in reports for t in report["grants"])
    for first, past_limit in zip(grants, grants[RATE:], strict=False):
        assert past_limit - first >= 1.0, "51 starts within one second"
    assert all(report["grants"] for report in reports), "every process got starts"
    assert len(grants) >= 0.6 * RATE * 2.5, f"the budget was used: {len(grants)} starts"


def test_a_429_gate_set_by_one_process_pauses_every_process(
        redis_server: RedisServer) -> None:
    """One process closes the gate for 2 s: no process starts until it reopens, then all do."""
    reports = _run_fleet(redis_server.url, "cio:site", 3.5, gate_at=0.5, gate_seconds=2.0)
    [gate] = [report["gate"] for report in reports if report["gate"] is not None]
    closed, reopens = (t / 1_000_000 for t in gate)
    assert reopens - closed == pytest.approx(2.0)
    for report in reports:
        assert not [t for t in report["grants"] if closed < t < reopens]
        assert any(t >= reopens for t in report["grants"]), "every process resumed"
    assert any(t < closed for report in reports for t in report["grants"])
