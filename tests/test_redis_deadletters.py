"""Dead letters in a Redis Stream: the file's record format, read back for replay."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from cio_queue import _operations
from cio_queue._deadrecord import dumps_record, operation_from_record, record_for
from cio_queue._redis import DeadLetterStream, RedisUnavailableError, connect

pytestmark = pytest.mark.anyio


def _records(count: int) -> list[dict[str, object]]:
    ops = [_operations.track(str(n), "purchase", {"price": n}, None, None) for n in range(count)]
    return [record_for(op, reason="rejected", attempts=1, status=400, error="bad", now=time.time())
            for op in ops]


async def test_records_read_back_as_the_file_holds_them_and_rebuild_operations(
        redis: Redis) -> None:
    """Each entry is the record's JSON line, in order; replay rebuilds the same operation."""
    letters = DeadLetterStream(redis, "cio:dead")
    records = _records(1_200)  # more than one page of reading
    ids = [await letters.add(records[0]), *await letters.add_many(records[1:])]
    read = [letter async for letter in letters.read()]
    assert [letter.entry_id for letter in read] == ids
    assert [letter.record for letter in read] == records
    assert [letter.line for letter in read] == [dumps_record(r) for r in records]
    assert operation_from_record(read[7].record or {}).body \
        == _operations.track("7", "purchase", {"price": 7}, records[7]["event_id"], None).body
    assert [letter.entry_id async for letter in letters.read(after=ids[-2])] == ids[-1:]
    assert await letters.remove(ids[:1_000]) == 1_000
    assert await letters.length() == 200


async def test_only_dead_letter_records_are_accepted(redis: Redis) -> None:
    """A dict that is not a cio-queue/dead-letter/1 record is refused, and nothing is added."""
    letters = DeadLetterStream(redis, "cio:dead")
    with pytest.raises(ValueError, match="dead-letter/1"):
        await letters.add_many([*_records(2), {"format": "other"}])
    assert await letters.length() == 0


async def test_an_unreachable_redis_raises_a_retryable_error() -> None:
    """Dead letters cannot wait: the caller gets RedisUnavailableError and keeps the file."""
    client = connect("redis://127.0.0.1:9/0")  # the discard port: nothing listens there
    try:
        with pytest.raises(RedisUnavailableError) as caught:
            await DeadLetterStream(client, "cio:dead").add(_records(1)[0])
        assert caught.value.retryable
    finally:
        await client.aclose()
