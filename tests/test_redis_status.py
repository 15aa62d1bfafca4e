"""status(): the fleet's state in one call, against a real redis-server."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from redis.asyncio import Redis

from cio_queue._redis import Consumer, Delivery, FleetPacer, Producer, status

pytestmark = pytest.mark.anyio

PARTITIONS = 4


async def test_status_reports_partitions_members_leases_rate_and_gate(redis: Redis) -> None:
    """status() shows length, pending, lag and holder per partition, members, rate, gate."""
    async with Producer(redis, "ops", partitions=PARTITIONS) as producer:
        for n in range(40):
            producer.add_nowait(b"%d" % n, f"p{n % 12}")
    consumer = await Consumer.join(redis, "ops", "senders", "c", partitions=PARTITIONS,
                                   lease=5.0)
    taken: list[Delivery] = []
    with anyio.fail_after(5):
        while len(taken) < 10:
            taken.extend(await consumer.fetch(count=10 - len(taken), wait=0.1))
    pacer = FleetPacer(redis, "cio:site", 50)
    for _ in range(3):
        assert await pacer.wait_turn(time.monotonic() + 5)
    await pacer.close_gate(30)

    report = await status(redis, "ops", "senders", pacer="cio:site")

    assert report["partitions"] == PARTITIONS
    assert report["length"] == 40
    assert report["pending"] == 10
    assert report["lag"] == 30
    assert report["consumers"] == {"c": 10}
    assert set(report["members"]) == {"c"}
    assert 0 < report["members"]["c"] <= 5
    for item in report["per_partition"]:
        assert item["holder"] == "c"
        assert 0 < item["lease_remaining"] <= 5
        assert item["lag"] == item["length"] - item["pending"]
    # A grant that came back too late to be used still counts: it may have been a start.
    assert report["pacer"]["starts_last_second"] == 3 + pacer.statistics().late
    assert 29 < report["pacer"]["gate_remaining"] <= 30
    json.dumps(report)  # ready for the CLI
    await consumer.aclose()
