"""The consumer group against a real redis-server: leases, takeover after a kill, status."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from cio_queue import QueueClosedError
from cio_queue._redis import Consumer, Delivery, Producer, connect
from cio_queue._redis import _consumer as consumer_module
from cio_queue._redis._leases import LeaseState
from cio_queue._redis._streams import text
from tests import redis_children
from tests.redis_support import RedisServer, wait_until

pytestmark = pytest.mark.anyio

PARTITIONS = 4
PEOPLE = 12


async def _produce(redis: Redis, count: int) -> list[dict[str, Any]]:
    """Add ``count`` records for PEOPLE people, numbered per person; return them."""
    records: list[dict[str, Any]] = [{"person": f"p{n % PEOPLE}", "seq": n // PEOPLE}
                                     for n in range(count)]
    async with Producer(redis, "ops", partitions=PARTITIONS) as producer:
        for record in records:
            producer.add_nowait(json.dumps(record).encode(), record["person"])
    return records


async def _drain(consumer: Consumer, into: list[Delivery], until: Any, seconds: float) -> None:
    """Fetch and acknowledge until ``until()`` holds, for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"{consumer.name} did not finish within {seconds} s: "
                        f"{consumer.statistics()}, {len(into)} delivered")
        batch = await consumer.fetch(count=50, wait=0.1)
        into.extend(batch)
        async with anyio.create_task_group() as tasks:
            for delivery in batch:
                tasks.start_soon(consumer.ack, delivery.partition, delivery.entry_id)


def _in_order_per_person(deliveries: list[Delivery]) -> None:
    last: dict[str, int] = {}
    for delivery in deliveries:
        record = json.loads(delivery.record)
        assert record["seq"] > last.get(record["person"], -1), (record, last)
        last[record["person"]] = record["seq"]


async def test_two_consumers_split_the_partitions_and_keep_each_persons_order(
        redis: Redis, redis_server: RedisServer) -> None:
    """Two members hold two partitions each, read only those, in order; a leaver's move over."""
    records = await _produce(redis, 120)
    second = connect(redis_server.url)
    a = await Consumer.join(redis, "ops", "senders", "a", partitions=PARTITIONS, lease=0.6)
    b = await Consumer.join(second, "ops", "senders", "b", partitions=PARTITIONS, lease=0.6)
    await wait_until(lambda: len(a.partitions) == len(b.partitions) == 2, 5,
                     "each member holds two partitions")
    assert set(a.partitions).isdisjoint(b.partitions)
    got_a: list[Delivery] = []
    got_b: list[Delivery] = []
    everything = lambda: len(got_a) + len(got_b) >= len(records)  # noqa: E731
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_drain, a, got_a, everything, 10)
        tasks.start_soon(_drain, b, got_b, everything, 10)
    assert {d.partition for d in got_a} <= set(a.partitions)
    assert {d.partition for d in got_b} <= set(b.partitions)
    assert sorted(json.loads(d.record)["seq"] * PEOPLE + int(json.loads(d.record)["person"][1:])
                  for d in got_a + got_b) == list(range(len(records)))
    _in_order_per_person(got_a)
    _in_order_per_person(got_b)
    await a.aclose()
    await wait_until(lambda: len(b.partitions) == PARTITIONS, 3,
                     "the remaining member takes every partition once the other left")
    await b.aclose()
    await second.aclose()
    assert await redis.xlen("ops:0") == 0  # acknowledged entries are deleted


async def test_a_killed_members_pending_entries_are_claimed_and_handed_out_again(
        redis: Redis, redis_server: RedisServer) -> None:
    """SIGKILL one member mid-batch: after its lease, the other resends its unacked entries."""
    records = await _produce(redis, 120)
    b = await Consumer.join(redis, "ops", "senders", "b", partitions=PARTITIONS, lease=1.0)
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    child = context.Process(target=redis_children.consume_then_hang, args=(
        redis_server.url, "ops", "senders", "a", PARTITIONS, 1.0, 12, 5, report))
    child.start()
    try:
        # Wait on a thread: b's lease keeper must go on running meanwhile.
        assert await anyio.to_thread.run_sync(report.get, True, 30) == {"joined": True}
        await wait_until(lambda: len(b.partitions) == 2, 5, "b gives two partitions to a")
        got_b: list[Delivery] = []
        async with anyio.create_task_group() as tasks:
            # b works through its own partitions while a takes 12 and acks 5 of them.
            tasks.start_soon(_drain, b, got_b, lambda: not report.empty(), 30)
        from_a = await anyio.to_thread.run_sync(report.get, True, 30)
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=10)
        killed_at = time.monotonic()
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
    assert len(from_a["delivered"]) == 12
    assert set(from_a["partitions"]).isdisjoint(b.partitions)
    acked_by_a = {tuple(key) for key in from_a["acked"]}
    unacked_by_a = {(p, entry_id) for entry_id, p, _ in from_a["delivered"]} - acked_by_a
    total = len(records) - len(acked_by_a)
    await _drain(b, got_b, lambda: len({(d.partition, d.entry_id) for d in got_b}) >= total, 15)
    assert time.monotonic() - killed_at < 10
    assert len(b.partitions) == PARTITIONS
    seen = {(d.partition, d.entry_id) for d in got_b}
    assert unacked_by_a <= seen  # handed out again
    assert not acked_by_a & seen  # settled entries are not
    assert len(seen) == total  # nothing lost
    _in_order_per_person(got_b)  # takeover resends a's unacked entries before newer ones
    assert b.statistics().claimed >= len(unacked_by_a)
    await b.aclose()


async def test_a_partition_is_given_back_only_once_the_read_in_flight_returned(
        redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member's blocked read of a partition ends before the partition changes hands.

    a's read is blocked on its only partition when a learns that it must give the
    partition to b. Given back at once, b took it over and made its takeover claim while
    a's read still waited: the next entry then woke a's read and landed in a's pending
    list, where b found it only at its stray check, a third of a lease later, after the
    entries that followed (one person's state changes out of order). Now a keeps the
    partition until its read returned, and b reads the entries in order.
    """
    second = connect(redis_server.url)
    # One partition; "m2" ranks after "m1", so once both are live a's share is 0. A long
    # lease: no heartbeat comes on its own during the test, only those asked for.
    monkeypatch.setattr(consumer_module, "MAX_BLOCK", 1.5)
    a = await Consumer.join(redis, "ops", "senders", "m2", partitions=1, lease=120)
    got_a: list[Delivery] = []

    async def take() -> None:
        while True:
            got_a.extend(await a.fetch(count=10, wait=1.5))

    async def a_read_is_blocked() -> bool:
        clients = await redis.client_list()
        return any(client.get("cmd") == "xreadgroup" and "b" in str(client.get("flags"))
                   for client in clients)

    got_b: list[Delivery] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(take)
        with anyio.fail_after(10):
            while not await a_read_is_blocked():  # noqa: ASYNC110 - state in Redis
                await anyio.sleep(0.01)
        b = await Consumer.join(second, "ops", "senders", "m1", partitions=1, lease=120)
        assert b.partitions == ()  # a holds the only partition
        a._leases.beat_now()  # a heartbeat now: a learns its share is 0
        with anyio.fail_after(10):
            while 0 not in b.partitions:  # b takes it as soon as a gives it back
                b._leases.beat_now()
                await anyio.sleep(0.01)
        await b.fetch(count=10, wait=0.01)  # b's takeover claim: nothing is pending
        await redis.xadd("ops:0", {b"r": b'{"late": true}'})
        await redis.xadd("ops:0", {b"r": b'{"newer": true}'})
        await _drain(b, got_b, lambda: len(got_b) >= 2, 10)
        tasks.cancel_scope.cancel()
    assert [json.loads(d.record) for d in got_b] == [{"late": True}, {"newer": True}]
    assert got_a == []
    await a.aclose()
    await b.aclose()
    await second.aclose()


async def test_an_entry_acknowledged_while_its_partition_is_claimed_is_not_handed_out_again(
        redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry settled during a claim of its partition is not handed out a second time.

    A stray check sends a READING partition back to claiming its pending entries. An entry
    this member handed out can then be in the claim's reply (still pending when Redis ran
    the claim) and acknowledged before the reply is read, so no longer outstanding here:
    handed out again, it would be delivered twice with no failure anywhere. The
    interleaving is forced by acknowledging the entry inside the claim call.
    """
    a = await Consumer.join(redis, "ops", "senders", "m1", partitions=1, lease=120)
    await redis.xadd("ops:0", {b"r": b'{"once": true}'})
    first: list[Delivery] = []
    await _drain_unacked(a, first, 1)
    lease = a._leases.held[0]
    lease.state, lease.cursor = LeaseState.CLAIMING, "0-0"  # as a stray check does
    claim = a._redis.xautoclaim

    async def claim_then_acknowledge(*args: Any, **kwargs: Any) -> Any:
        reply = await claim(*args, **kwargs)
        assert [text(entry_id) for entry_id, _ in reply[1]] == [first[0].entry_id]
        await a.ack(first[0].partition, first[0].entry_id)  # committed meanwhile
        return reply

    monkeypatch.setattr(a._redis, "xautoclaim", claim_then_acknowledge)
    again = await a.fetch(count=10, wait=0.1)
    assert again == []
    assert lease.state is LeaseState.READING  # the claim went through to the end
    await a.aclose()


async def test_an_entry_acknowledged_during_a_stray_check_is_no_stray(
        redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stray check counts what was handed out as it went, not only what still is.

    An entry handed out, and acknowledged between Redis answering the check's XPENDING
    and the check reading the answer, is pending in that answer but no longer outstanding
    here. Counted as a stray, it sent the partition back to claiming, dropping the read in
    flight and claiming the whole pending list again. Forced by acknowledging the entry
    inside the check's pipeline call.
    """
    a = await Consumer.join(redis, "ops", "senders", "m1", partitions=1, lease=120)
    await redis.xadd("ops:0", {b"r": b'{"once": true}'})
    first: list[Delivery] = []
    await _drain_unacked(a, first, 1)
    lease = a._leases.held[0]
    assert lease.state is LeaseState.READING
    pipeline = a._leases._redis.pipeline

    def pipeline_that_acknowledges(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        if kwargs.get("transaction") is False:  # the check's, not the acknowledgement's
            execute = pipe.execute

            async def execute_then_acknowledge(raise_on_error: bool = True) -> Any:
                answers = await execute(raise_on_error)
                await a.ack(first[0].partition, first[0].entry_id)
                return answers

            monkeypatch.setattr(pipe, "execute", execute_then_acknowledge)
        return pipe

    monkeypatch.setattr(a._leases._redis, "pipeline", pipeline_that_acknowledges)
    await a._leases._find_strays()
    assert lease.state is LeaseState.READING  # no stray: handed out, then settled
    await a.aclose()


async def _drain_unacked(consumer: Consumer, into: list[Delivery], count: int) -> None:
    """Fetch until ``count`` entries were handed out, acknowledging none."""
    with anyio.fail_after(10):
        while len(into) < count:
            into.extend(await consumer.fetch(count=10, wait=0.1))


async def test_an_ack_after_aclose_comes_back_cancelled_and_the_entry_stays_pending(
        redis: Redis) -> None:
    """Nothing sends an ack queued after aclose(): its future is cancelled, never left hanging."""
    await _produce(redis, 1)
    consumer = await Consumer.join(redis, "ops", "senders", "a", partitions=PARTITIONS,
                                   lease=1.0)
    taken: list[Delivery] = []
    with anyio.fail_after(10):
        while not taken:
            taken.extend(await consumer.fetch(count=1, wait=0.1))
        await consumer.aclose()
        (delivery,) = taken
        late = consumer.ack_nowait(delivery.partition, delivery.entry_id)
        assert late.cancelled()
        with pytest.raises(QueueClosedError, match="closed; the entry stays pending"):
            await consumer.ack(delivery.partition, delivery.entry_id)
    pending = await redis.xpending(f"ops:{delivery.partition}", "senders")
    assert pending["pending"] == 1
