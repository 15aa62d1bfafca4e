"""Child processes for the Redis tests (started with multiprocessing's spawn method).

Each function is a process's whole life: it talks to the parent through the queues and
events it is given, and every wait in it is bounded, so a broken test never leaves a
process behind for long.
"""

from __future__ import annotations

import asyncio
import json
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, Final

from cio_queue._redis import Consumer, Delivery, FleetPacer, connect

CHILD_LIFETIME: Final = 60.0
"""Seconds after which a child gives up waiting for the parent and exits."""


def pace(url: str, name: str, rate: float, ready: Queue[Any], go: Event, results: Queue[Any],
         *, seconds: float, gate_at: float | None = None, gate_seconds: float = 0.0) -> None:
    """Ask for starts as fast as grants come for ``seconds``; report their Redis times.

    The child says ``ready`` once connected, and its clock starts at ``go``, so that every
    child's ``seconds`` are the same seconds whatever the time each took to start. With
    ``gate_at``, close the gate for ``gate_seconds`` that many seconds in, and report when
    it was closed and until when, by Redis' clock. A child that a closed gate held goes on
    past ``seconds`` until it is granted a start after the gate reopened (at most
    GATE_GRACE seconds more): a loaded machine may delay the gate, never skip the resume.
    """
    asyncio.run(_pace(url, name, rate, ready, go, results, seconds, gate_at, gate_seconds))


GATE_GRACE: Final = 10.0


async def _pace(url: str, name: str, rate: float, ready: Queue[Any], go: Event,
                results: Queue[Any], seconds: float, gate_at: float | None,
                gate_seconds: float) -> None:
    redis = connect(url)
    pacer = FleetPacer(redis, name, rate)
    await pacer.gate_remaining()  # connected and the scripts compiled before the start
    ready.put(name)
    if not go.wait(CHILD_LIFETIME):
        return
    grants: list[float] = []
    gate: tuple[int, int] | None = None
    held_at = 0.0  # when a closed gate last refused this child a start (Redis time)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds or (
            held_at and grants[-1:] < [held_at] and elapsed < seconds + GATE_GRACE):
        if gate_at is not None and gate is None and elapsed >= gate_at:
            await pacer.close_gate(gate_seconds)
            until = int(await redis.get(f"{name}:gate") or 0)
            gate = (until - round(gate_seconds * 1_000_000), until)
        turn = await pacer.try_start()
        if turn.granted:
            grants.append(turn.server_time)
        elif turn.wait:
            if await pacer.gate_remaining() > 0:
                held_at = turn.server_time
            await asyncio.sleep(min(turn.wait, max(0.001, seconds - elapsed)))
    stats = pacer.statistics()
    await redis.aclose()
    results.put({"grants": grants, "gate": gate, "late": stats.late})


def consume_then_hang(url: str, stream: str, group: str, name: str, partitions: int,
                      lease: float, take: int, ack: int, report: Queue[Any]) -> None:
    """Join, wait for ``take`` deliveries, ack the first ``ack``, report, then hang.

    The parent kills this process while it hangs: the rest stays pending, unacknowledged.
    """
    asyncio.run(_consume_then_hang(url, stream, group, name, partitions, lease, take, ack,
                                   report))


async def _consume_then_hang(url: str, stream: str, group: str, name: str, partitions: int,
                             lease: float, take: int, ack: int, report: Queue[Any]) -> None:
    redis = connect(url)
    consumer = await Consumer.join(redis, stream, group, name, partitions=partitions,
                                   lease=lease)
    report.put({"joined": True})
    deliveries: list[Delivery] = []
    end = time.monotonic() + CHILD_LIFETIME
    while len(deliveries) < take and time.monotonic() < end:
        deliveries.extend(await consumer.fetch(count=take - len(deliveries), wait=0.2))
    for delivery in deliveries[:ack]:
        await consumer.ack(delivery.partition, delivery.entry_id)
    report.put({
        "partitions": list(consumer.partitions),
        "delivered": [(d.entry_id, d.partition, json.loads(d.record)) for d in deliveries],
        "acked": [(d.partition, d.entry_id) for d in deliveries[:ack]],
    })
    await asyncio.sleep(CHILD_LIFETIME)  # killed here
