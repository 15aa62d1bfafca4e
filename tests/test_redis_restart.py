"""A Redis restart under load: producers buffer and flush after, consumers reconnect."""

from __future__ import annotations

import json
import logging
import time

import anyio
import pytest

from cio_queue._redis import Consumer, Delivery, Producer, connect
from tests.redis_support import RedisServer, wait_until

pytestmark = pytest.mark.anyio

RECORDS = 2_000
PARTITIONS = 4
OUTAGE = 2.0
"""Seconds redis-server stays down."""


async def test_a_redis_restart_under_load_loses_nothing(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL redis-server mid-stream (AOF on), restart it on the same port: all arrive."""
    caplog.set_level(logging.WARNING, logger="cio_queue")
    producer_client, consumer_client = connect(redis_server.url), connect(redis_server.url)
    producer = Producer(producer_client, "ops", partitions=PARTITIONS)
    await producer.start()
    consumer = await Consumer.join(consumer_client, "ops", "senders", "c",
                                   partitions=PARTITIONS, lease=1.0)
    seen: set[int] = set()
    deliveries: list[Delivery] = []
    added = 0

    async def produce() -> None:
        nonlocal added
        for n in range(RECORDS):
            producer.add_nowait(json.dumps({"n": n}).encode(), f"person-{n % 50}")
            added += 1
            if n % 10 == 9:
                await anyio.sleep(0.003)

    async def consume() -> None:
        deadline = time.monotonic() + 40
        while len(seen) < RECORDS:
            assert time.monotonic() < deadline, f"{len(seen)} of {RECORDS} arrived"
            batch = await consumer.fetch(count=200, wait=0.2)
            deliveries.extend(batch)
            seen.update(json.loads(d.record)["n"] for d in batch)
            async with anyio.create_task_group() as tasks:
                for delivery in batch:
                    tasks.start_soon(consumer.ack, delivery.partition, delivery.entry_id)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(produce)
        tasks.start_soon(consume)
        await wait_until(lambda: added >= RECORDS // 3 and len(seen) > 0, 20,
                         "a third of the records added and some consumed")
        await anyio.to_thread.run_sync(lambda: redis_server.stop(kill=True))
        await wait_until(lambda: not producer.statistics().connected, 10,
                         "the producer notices the outage")
        await anyio.sleep(OUTAGE)  # the outage itself; nothing is asserted after it
        assert producer.backlog > 0  # accepted during the outage, held locally
        await anyio.to_thread.run_sync(redis_server.start)

    assert seen == set(range(RECORDS))
    assert producer.backlog == 0
    stats = producer.statistics()
    assert stats.written >= RECORDS
    assert stats.failed_commits > 0
    unreachable = [r for r in caplog.records if r.getMessage().startswith(
        "cio_queue.redis_unreachable")]
    components = sorted(r.getMessage().split("component=")[1].split()[0] for r in unreachable)
    assert components == ["consumer", "producer"], "one error per component and outage"
    assert any(r.getMessage().startswith("cio_queue.redis_reconnected") for r in caplog.records)
    await wait_until(lambda: consumer.statistics().outstanding == 0, 10, "all acknowledged")
    assert await producer.aclose() == []
    await consumer.aclose()
    for client in (producer_client, consumer_client):
        await client.aclose()
