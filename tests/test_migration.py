"""Coming from the official SDK or async-customerio: the shapes people already write."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from cio_queue import EventQueue, InvalidEventError, OutcomeStatus, QueueConfig, RetryPolicy
from cio_queue.testing import FakeTrackAPI

from .recording import RecordingSender

pytestmark = pytest.mark.anyio


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": "http://127.0.0.1:9",
        "transport": "v1", "flush_interval": 0.01, "rate_limit": None,
        "retry": RetryPolicy(attempts=1), "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


async def sent(calls: Any, **overrides: Any) -> list[tuple[str, Any]]:
    """Run ``calls(queue)`` and return (path, JSON body) of each request sent."""
    sender = RecordingSender()
    async with EventQueue(config(**overrides), sender=sender) as queue:
        await calls(queue)
    return [(r.path, json.loads(r.body)) for r in sender.requests]


async def test_identify_takes_async_customerios_identifier_keyword() -> None:
    """identify(identifier=...) names the person when id is not given."""
    async def calls(queue: EventQueue) -> None:
        await queue.identify(identifier="42", plan="pro")
        await queue.identify(id="43", identifier="kept as an attribute")

    assert await sent(calls) == [
        ("/api/v1/customers/42", {"plan": "pro"}),
        ("/api/v1/customers/43", {"identifier": "kept as an attribute"}),
    ]


async def test_track_takes_event_data_as_keyword_properties() -> None:
    """track(cid, name, **properties), async-customerio's shape, sends them as data."""
    async def calls(queue: EventQueue) -> None:
        await queue.track("42", "purchase", price=9.5, sku="A-1", id="E1")
        await queue.track("42", "purchase", {"price": 1}, sku="B")
        await queue.track_anonymous("anon-1", "visited", page="/pricing", id="E2")

    (first, second, third) = await sent(calls)
    assert first == ("/api/v1/customers/42/events",
                     {"name": "purchase", "data": {"price": 9.5, "sku": "A-1"}, "id": "E1"})
    assert second[1]["data"] == {"price": 1, "sku": "B"}
    assert third[1]["data"] == {"page": "/pricing"}
    assert third[1]["id"] == "E2"


async def test_keyword_properties_need_dict_data() -> None:
    """Keyword properties beside data that is not a dict: InvalidEventError naming data."""
    async with EventQueue(config(), sender=RecordingSender()) as queue:
        with pytest.raises(InvalidEventError, match=r"^data"):
            await queue.track("42", "ev", ["not", "a", "dict"], sku="B")  # type: ignore[arg-type]
        assert queue.statistics().enqueued == 0


@pytest.mark.parametrize("transport", ["v1", "batch"])
async def test_batch_sends_v2_operations_as_given(transport: str) -> None:
    """batch([...]) sends raw v2 operations by /api/v2/batch, whatever the transport."""
    async with FakeTrackAPI() as fake:
        cfg = config(transport=transport, base_url=fake.url, site_id=fake.site_id,
                     api_key=fake.api_key)
        async with EventQueue(cfg) as queue:
            receipts = await queue.batch([
                {"type": "person", "identifiers": {"id": "42"}, "action": "identify",
                 "attributes": {"plan": "pro"}},
                {"type": "person", "identifiers": {"email": "a@b.co"}, "action": "event",
                 "name": "signed_up", "attributes": {"source": "ad"}},
            ])
            with anyio.fail_after(10):
                outcomes = [await r.wait() for r in receipts]
        assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}
        assert [r.path for r in fake.requests] == ["/api/v2/batch"]
        ops = [a.op for a in fake.operations]
    assert ops[0]["attributes"] == {"plan": "pro"}
    assert ops[1]["id"] == receipts[1].event_id  # events get a dedupe id, as every event does
    assert len(receipts[1].event_id or "") == 26


async def test_batch_checks_every_operation_before_queueing_any() -> None:
    """One operation without an action: InvalidEventError naming it, and nothing queued."""
    async with EventQueue(config(), sender=RecordingSender()) as queue:
        with pytest.raises(InvalidEventError, match=r"operations\[1\]\.action"):
            await queue.batch([{"type": "person", "identifiers": {"id": "1"},
                                "action": "delete"},
                               {"type": "person", "identifiers": {"id": "2"}}])
        with pytest.raises(InvalidEventError, match="operations"):
            await queue.batch("not a list")  # type: ignore[arg-type]
        assert queue.statistics().enqueued == 0
