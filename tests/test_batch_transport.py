"""The v2 batch transport over real HTTP: wire shapes, packing, 207/400/413, v1 fallback."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from cio_queue import EventQueue, InvalidEventError, OutcomeStatus, QueueConfig, RetryPolicy
from cio_queue._packing import MAX_BATCH_BODY_BYTES, pack
from cio_queue.testing import FakeTrackAPI, Fault

pytestmark = pytest.mark.anyio


def batch_config(fake: FakeTrackAPI, **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": fake.site_id, "api_key": fake.api_key, "base_url": fake.url,
        "transport": "batch", "rate_limit": None, "flush_interval": 0.05,
        "retry": RetryPolicy(wait_initial=0.01, wait_jitter=0, timeout=10),
    }
    values.update(overrides)
    return QueueConfig(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTrackAPI]:
    async with FakeTrackAPI() as server:
        yield server


def batch_requests(fake: FakeTrackAPI) -> list[Any]:
    return [r for r in fake.log if r.path == "/api/v2/batch"]


async def test_every_action_has_its_documented_v2_shape(fake: FakeTrackAPI) -> None:
    """Each operation maps to the v2 element the spec documents, identifiers read like v1."""
    async with EventQueue(batch_config(fake)) as queue:
        # One person per state-changing operation, so none waits for another (see below).
        await queue.identify("42", plan="pro", created_at=1_700_000_000)
        await queue.identify("ada@example.com", plan="team")
        await queue.identify("cio_a3000001", plan="free")
        await queue.track("42", "purchase", {"price": 9.5}, id="E1", timestamp=1_700_000_001)
        await queue.backfill("42", "imported", 1_600_000_000, source="csv")
        await queue.pageview("42", "/pricing", referrer="ad")
        await queue.add_device("43", "tok-1", "ios", last_used=1_700_000_002, app_version="1.2")
        await queue.delete_device("44", "tok/1")
        await queue.delete("45")
        await queue.suppress("46")
        await queue.unsuppress("47")
        await queue.merge_customers("email", "a@b.co", "cio_id", "b3000002")
    ops = [a.op for a in fake.operations]
    assert [a.api for a in fake.operations] == ["v2"] * 12
    person = {"type": "person", "identifiers": {"id": "42"}}
    backfill_id, page_id = ops[4].pop("id"), ops[5].pop("id")
    assert len(backfill_id) == len(page_id) == 26

    def of(person_id: str) -> dict[str, Any]:
        return {"type": "person", "identifiers": {"id": person_id}}

    assert ops == [
        {**person, "action": "identify",
         "attributes": {"plan": "pro", "created_at": 1_700_000_000}},
        {"type": "person", "identifiers": {"email": "ada@example.com"}, "action": "identify",
         "attributes": {"plan": "team"}},
        {"type": "person", "identifiers": {"cio_id": "a3000001"}, "action": "identify",
         "attributes": {"plan": "free"}},
        {**person, "action": "event", "name": "purchase", "id": "E1", "timestamp": 1_700_000_001,
         "attributes": {"price": 9.5}},
        {**person, "action": "event", "name": "imported", "timestamp": 1_600_000_000,
         "attributes": {"source": "csv"}},
        {**person, "action": "page", "name": "/pricing", "attributes": {"referrer": "ad"}},
        {**of("43"), "action": "add_device", "device": {
            "token": "tok-1", "platform": "ios", "last_used": 1_700_000_002,
            "attributes": {"app_version": "1.2"}}},
        {**of("44"), "action": "delete_device", "device": {"token": "tok/1"}},
        {**of("45"), "action": "delete"},
        {**of("46"), "action": "suppress"},
        {**of("47"), "action": "unsuppress"},
        {"type": "person", "action": "merge", "primary": {"email": "a@b.co"},
         "secondary": {"cio_id": "b3000002"}},
    ]
    assert len(batch_requests(fake)) == 1


async def test_one_persons_state_changes_go_out_one_after_another(fake: FakeTrackAPI) -> None:
    """State-changing operations of one person in one flush are sent in order, one at a time."""
    async with EventQueue(batch_config(fake)) as queue:
        await queue.add_device("42", "tok-1", "ios")
        await queue.track("42", "clicked")
        await queue.delete_device("42", "tok-1")
        await queue.delete("42")
    requests = batch_requests(fake)
    actions = [[op["action"] for op in json.loads(r.body)["batch"]] for r in requests]
    assert actions == [["add_device", "event"], ["delete_device"], ["delete"]]


async def test_a_flush_goes_out_in_as_few_requests_as_fit(fake: FakeTrackAPI) -> None:
    """3 KB and 6 KB operations pack into the fewest bodies under 500,000 bytes."""
    blobs = ["x" * 3000, "y" * 6000]
    count = 300
    config = batch_config(fake, batch_size=count, flush_interval=60, max_queue_size=count)
    async with EventQueue(config) as queue:
        receipts = [await queue.track(i, "big", {"blob": blobs[i % 2]}) for i in range(count)]
        with anyio.fail_after(10):
            await queue.flush()
    assert all(r.outcome and r.outcome.status is OutcomeStatus.DELIVERED for r in receipts)
    sent = batch_requests(fake)
    sizes = [len(json.dumps(op, separators=(",", ":"))) for op in
             (json.loads(r.body)["batch"] for r in sent) for op in op]
    assert all(len(r.body) < MAX_BATCH_BODY_BYTES for r in sent)
    assert len(sent) == len(pack(sizes))
    assert len(sent) == math.ceil(sum(len(r.body) for r in sent) / MAX_BATCH_BODY_BYTES)
    # Every request but the last is full: the next operation would not have fitted.
    for request, following in itertools.pairwise(sent):
        first_of_next = json.dumps(json.loads(following.body)["batch"][0],
                                   separators=(",", ":"))
        assert len(request.body) + 1 + len(first_of_next) >= MAX_BATCH_BODY_BYTES
    assert len(fake.operations) == count


async def test_an_operation_over_32_kb_is_refused_at_enqueue(fake: FakeTrackAPI) -> None:
    """With the batch transport, an operation over 32 KB raises InvalidEventError at once."""
    async with EventQueue(batch_config(fake)) as queue:
        with pytest.raises(InvalidEventError, match="32768"):
            await queue.track("42", "big", {"blob": "x" * 33_000})
        assert queue.statistics().enqueued == 0


async def test_a_207_rejects_exactly_the_listed_operations(fake: FakeTrackAPI) -> None:
    """Scattered bad indexes end rejected with the server's reason; the rest are never resent."""
    bad = {3, 17, 18, 64, 99}
    fake.reject_op = lambda op: "blocked name" if op.get("name", "").startswith("bad") else None
    config = batch_config(fake, batch_size=100, flush_interval=60)
    async with EventQueue(config) as queue:
        receipts = [await queue.track(i, f"bad-{i}" if i in bad else f"ok-{i}")
                    for i in range(100)]
        with anyio.fail_after(10):
            outcomes = [await r.wait() for r in receipts]
    for i, outcome in enumerate(outcomes):
        if i in bad:
            assert outcome.status is OutcomeStatus.REJECTED
            assert outcome.error is not None
            assert outcome.error.status == 207
            assert "blocked name" in str(outcome.error)
        else:
            assert outcome.status is OutcomeStatus.DELIVERED
    assert len(batch_requests(fake)) == 1
    assert len(fake.operations) == 95


async def test_a_400_is_isolated_to_the_malformed_operation(fake: FakeTrackAPI) -> None:
    """One operation that fails its whole batch with 400 ends rejected alone; 99 deliver."""
    fake.malformed_op = lambda op: op.get("name") == "malformed"
    config = batch_config(fake, batch_size=100, flush_interval=60)
    async with EventQueue(config) as queue:
        receipts = [await queue.track(i, "malformed" if i == 42 else "fine") for i in range(100)]
        with anyio.fail_after(10):
            outcomes = [await r.wait() for r in receipts]
    assert [i for i, o in enumerate(outcomes) if o.status is not OutcomeStatus.DELIVERED] == [42]
    assert outcomes[42].status is OutcomeStatus.REJECTED
    assert len(fake.operations) == 99
    delivered_ids = [a.op["identifiers"]["id"] for a in fake.operations]
    assert len(set(delivered_ids)) == 99  # nothing delivered twice
    assert len(batch_requests(fake)) <= 2 * math.ceil(math.log2(100)) + 1


async def test_a_413_splits_the_request(fake: FakeTrackAPI) -> None:
    """A 413 makes the client split the batch and send the halves; all are delivered."""
    fake.script(413)
    config = batch_config(fake, batch_size=10, flush_interval=60)
    async with EventQueue(config) as queue:
        receipts = [await queue.identify(i, n=i) for i in range(10)]
        with anyio.fail_after(10):
            outcomes = [await r.wait() for r in receipts]
    assert all(o.status is OutcomeStatus.DELIVERED for o in outcomes)
    assert [r.status for r in batch_requests(fake)] == [413, 200, 200]
    assert len(fake.operations) == 10


async def test_anonymous_events_go_through_v1_in_the_same_flush(fake: FakeTrackAPI) -> None:
    """v2 has no anonymous person: those events use v1, the rest share one batch request."""
    config = batch_config(fake, batch_size=6, flush_interval=60)
    async with EventQueue(config) as queue:
        for i in range(4):
            await queue.track(i, "ev")
        await queue.track_anonymous("anon-1", "viewed", {"page": "/"}, id="A1")
        await queue.track_anonymous("", "invite", {"recipient": "a@b.co"}, id="A2")
        with anyio.fail_after(10):
            stats = await queue.flush()
    assert stats.batches == 1
    assert stats.delivered == 6
    assert sorted(r.path for r in fake.requests) == ["/api/v1/events", "/api/v1/events",
                                                     "/api/v2/batch"]
    assert {a.op["body"]["id"] for a in fake.operations if a.api == "v1"} == {"A1", "A2"}


async def test_retryable_batch_failures_follow_the_retry_policy(fake: FakeTrackAPI) -> None:
    """A 503 then a 429 on a batch request are retried; the batch is delivered once."""
    fake.script(503, Fault.RATE_LIMITED_NO_HEADER)
    config = batch_config(fake, batch_size=20, flush_interval=60, rate_limited_pause=0.05)
    async with EventQueue(config) as queue:
        receipts = [await queue.track(i, "ev") for i in range(20)]
        with anyio.fail_after(10):
            outcomes = [await r.wait() for r in receipts]
    assert all(o.status is OutcomeStatus.DELIVERED and o.attempts == 3 for o in outcomes)
    assert [r.status for r in batch_requests(fake)] == [503, 429, 200]
    assert queue.statistics().requests == 3
    assert len(fake.operations) == 20
