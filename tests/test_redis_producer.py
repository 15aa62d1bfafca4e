"""The Redis producer against a real redis-server: group commits, routing, outages."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from cio_queue import ConfigError
from cio_queue._redis import (
    BacklogFullError,
    Producer,
    ProducerClosedError,
    connect,
    partition_of,
    require_redis,
)
from tests.redis_support import RedisServer, wait_until

pytestmark = pytest.mark.anyio


def test_partition_of_is_stable_across_processes_and_releases() -> None:
    """A person's partition is a fixed function of the key (CRC-32, not the salted hash)."""
    assert [partition_of(key, 8) for key in ("42", "ada@example.com", "", "émile")] \
        == [partition_of(key, 8) for key in ("42", "ada@example.com", "", "émile")]
    assert [partition_of(key, 8) for key in ("42", "ada@example.com", "cio_03000001", "émile",
                                             "7")] == [0, 0, 1, 3, 2]
    assert partition_of("42", 1) == 0
    assert {partition_of(str(n), 8) for n in range(200)} == set(range(8))


def test_missing_extra_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, the layer's first use says which extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=r"cio-queue\[redis\]"):
        require_redis()


async def test_concurrent_adds_share_few_commits_and_return_after_the_ack(
        redis: Redis) -> None:
    """200 concurrent add() calls ride a handful of pipelines, each returning once written."""
    async with Producer(redis, "ops", partitions=4) as producer:
        async def add(n: int) -> None:
            person = f"person-{n % 10}"
            entry_id = await producer.add(b"record-%d" % n, person)
            stream = f"ops:{partition_of(person, 4)}"
            # add() returned, so the entry is in Redis already: no waiting here.
            assert await redis.xrange(stream, entry_id, entry_id) == [
                (entry_id.encode(), {b"r": b"record-%d" % n})]

        async with anyio.create_task_group() as tasks:
            for n in range(200):
                tasks.start_soon(add, n)
        stats = producer.statistics()
        assert stats.written == stats.added == 200
        assert stats.commits <= 5, stats
        assert stats.backlog == 0


async def test_one_persons_records_share_a_partition_in_order(redis: Redis) -> None:
    """Every record of one person lands in its partition's stream, in the order added."""
    async with Producer(redis, "ops", partitions=8) as producer:
        futures = [producer.add_nowait(b"%s:%d" % (p.encode(), n), p)
                   for n in range(30) for p in ("ann", "bob", "cy")]
        await asyncio.gather(*futures)
    for person in ("ann", "bob", "cy"):
        entries: Any = await redis.xrange(f"ops:{partition_of(person, 8)}")
        mine = [fields[b"r"] for _, fields in entries if fields[b"r"].startswith(person.encode())]
        assert mine == [b"%s:%d" % (person.encode(), n) for n in range(30)]


async def test_add_nowait_returns_before_the_write_and_a_full_batch_skips_the_linger(
        redis: Redis) -> None:
    """add_nowait only buffers; max_batch waiting entries are written without the linger."""
    async with Producer(redis, "ops", partitions=2, linger=1.0, max_batch=10) as producer:
        first = producer.add_nowait(b"0", "a")
        assert not first.done()
        assert await redis.xlen("ops:0") + await redis.xlen("ops:1") == 0
        rest = [producer.add_nowait(b"%d" % n, "a") for n in range(1, 10)]
        with anyio.fail_after(0.5):  # far less than the 1 s linger
            ids = await asyncio.gather(first, *rest)
        assert len(set(ids)) == 10
        assert producer.statistics().commits == 1


async def test_a_stream_made_with_other_partitions_is_refused(redis: Redis) -> None:
    """Producers that disagree on the partition count would scatter a person: refused."""
    async with Producer(redis, "ops", partitions=8):
        pass
    with pytest.raises(ConfigError, match="has 8 partitions"):
        await Producer(redis, "ops", partitions=4).start()


async def test_a_client_that_decodes_replies_is_refused(redis_server: RedisServer) -> None:
    """Records are bytes: a client with decode_responses=True is a configuration error."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses=False"):
            Producer(client, "ops", partitions=2)
    finally:
        await client.aclose()


async def test_unreachable_redis_fills_the_buffer_and_close_hands_records_back(
        caplog: pytest.LogCaptureFixture) -> None:
    """With no Redis, records wait locally until full; one error is logged; nothing is lost."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    client = connect(f"redis://127.0.0.1:{port}/0")
    caplog.set_level(logging.ERROR, logger="cio_queue")
    producer = Producer(client, "ops", partitions=2, max_backlog=50)
    await producer.start()
    for n in range(50):
        producer.add_nowait(b"%d" % n, f"p{n}")
    assert producer.full
    with pytest.raises(BacklogFullError):
        producer.add_nowait(b"50", "p50")
    await wait_until(lambda: producer.statistics().failed_commits >= 3, 10,
                     "three commits failed")
    assert producer.backlog == 50
    unwritten = await producer.aclose(time.monotonic() + 0.1)
    assert [u.record for u in unwritten] == [b"%d" % n for n in range(50)]
    assert [u.partition_key for u in unwritten] == [f"p{n}" for n in range(50)]
    errors = [r for r in caplog.records if r.getMessage().startswith("cio_queue.redis_unreachable")]
    assert len(errors) == 1
    with pytest.raises(ProducerClosedError):
        producer.add_nowait(b"late", "p")
    await client.aclose()
