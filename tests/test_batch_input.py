"""``batch()``: operations given in their v2 form are checked at the call site.

An element the Track API documents as invalid raises ``InvalidEventError`` naming the
element and its field, from ``EventQueue.batch`` and ``SyncEventQueue.batch`` alike, and
nothing of that call is queued; every documented type and action still goes through and
reaches the (fake) API as it was given.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from cio_queue import (
    EventQueue,
    InvalidEventError,
    OutcomeStatus,
    QueueConfig,
    RetryPolicy,
    SyncEventQueue,
    Transport,
)
from cio_queue.testing import FakeTrackAPI
from cio_queue.testing._validation import ValidationError, check_op, validate_v2_op

from .recording import RecordingSender

WAIT = 10.0


def person(action: str, **fields: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": "42"}, "action": action, **fields}


def company(action: str, **fields: Any) -> dict[str, Any]:
    return {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "action": action, **fields}


def delivery(action: str, **fields: Any) -> dict[str, Any]:
    return {"type": "delivery", "identifiers": {"id": "RPIyMTM6OjEyMzQ="}, "action": action,
            **fields}


def config(base_url: str = "http://127.0.0.1:9", transport: Transport = "batch",
           **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": base_url, "transport": transport,
        "flush_interval": 0.01, "rate_limit": None, "retry": RetryPolicy(attempts=1),
        "shutdown_timeout": 5.0}
    return QueueConfig(**{**values, **overrides})


# (element, the field named after "operations[1].")
INVALID: list[tuple[dict[str, Any], str]] = [
    # The reviewer's four.
    ({"type": "person", "identifiers": [{"id": "42"}], "action": "identify"}, "identifiers"),
    (person("bogus"), "action"),
    (person("event", attributes={"price": 1}), "name"),
    (person("event", name="signed_up", timestamp="soon"), "timestamp"),
    # Their siblings, field by field.
    ({"type": "person", "action": "identify"}, "identifiers"),
    (person("identify", identifiers={"id": "1", "email": "a@b.co"}), "identifiers"),
    (person("identify", identifiers={"anonymous_id": "a"}), "identifiers.anonymous_id"),
    (person("delete", identifiers={"id": ""}), "identifiers.id"),
    (person("delete", identifiers={"id": 42}), "identifiers.id"),
    (person("delete", identifiers={"id": "x" * 151}), "identifiers.id"),
    (person("identify", timestamp="soon"), "timestamp"),
    (person("identify", timestamp=1_700_000_000.5), "timestamp"),
    (person("identify", timestamp=True), "timestamp"),
    (person("identify", attributes=["plan", "pro"]), "attributes"),
    (person("identify", attributes={"bio": "x" * 1001}), "attributes.bio"),
    (person("event", name=""), "name"),
    (person("event", name="n" * 101), "name"),
    (person("page", name="/home", attributes="x"), "attributes"),
    (person("screen", name="Home", id=7), "id"),
    (person("add_device"), "device"),
    (person("add_device", device={"platform": "ios"}), "device.token"),
    (person("add_device", device={"token": "t", "platform": "web"}), "device.platform"),
    (person("add_device", device={"token": "t", "platform": "ios", "last_used": "today"}),
     "device.last_used"),
    (person("add_device", device={"token": "t", "platform": "ios", "attributes": [1]}),
     "device.attributes"),
    (person("delete_device", device={}), "device.token"),
    (person("add_relationships"), "cio_relationships"),
    (person("delete_relationships", cio_relationships=[]), "cio_relationships"),
    (person("merge", primary={"id": "1"}, secondary={"id": "2"}), "identifiers"),
    ({"type": "person", "action": "merge", "primary": {"id": "1"}}, "secondary"),
    ({"type": "person", "action": "merge", "primary": {"phone": "+15550100"},
      "secondary": {"id": "2"}}, "primary.phone"),
    ({"identifiers": {"id": "42"}, "action": "identify"}, "type"),
    ({"type": "customer", "identifiers": {"id": "42"}, "action": "identify"}, "type"),
    ({"type": ["person"], "identifiers": {"id": "42"}, "action": "identify"}, "type"),
    (company("identify", identifiers={"object_id": "acme"}), "identifiers"),
    (company("identify", identifiers={"object_type_id": "1", "object_id": "acme",
                                      "cio_object_id": "o1"}), "identifiers"),
    (company("identify", identifiers={"object_type_id": 1, "object_id": "acme"}),
     "identifiers.object_type_id"),
    (company("delete", identifiers={"object_type_id": "1", "object_id": "x" * 151}),
     "identifiers.object_id"),
    (company("add_device"), "action"),
    (company("identify", attributes="acme"), "attributes"),
    (company("identify", cio_relationships={"identifiers": {"id": "42"}}),
     "cio_relationships"),
    (company("identify_anonymous", anonymous_id=5), "anonymous_id"),
    (company("add_relationships"), "cio_relationships"),
    (delivery("identify"), "action"),
    (delivery("event"), "name"),
    (delivery("event", name="opened", identifiers={"delivery_id": "d"}), "identifiers"),
    (delivery("event", name="opened", timestamp="now"), "timestamp"),
]
INVALID_IDS = [f"{element.get('type')}-{element.get('action')}-{field}"
               for element, field in INVALID]
FIRST = person("identify", attributes={"plan": "pro"})  # valid, and never queued


def check_refusal(info: pytest.ExceptionInfo[InvalidEventError], field: str) -> None:
    assert info.value.field == f"operations[1].{field}"
    assert str(info.value).startswith(f"operations[1].{field}: ")
    assert "Traceback" not in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(("element", "field"), INVALID, ids=INVALID_IDS)
async def test_event_queue_batch_refuses_an_invalid_element_naming_its_field(
        element: dict[str, Any], field: str) -> None:
    """InvalidEventError naming operations[1].<field>; nothing of the call is queued."""
    sender = RecordingSender()
    async with EventQueue(config(), sender=sender) as queue:
        with pytest.raises(InvalidEventError) as info:
            await queue.batch([FIRST, element])
        check_refusal(info, field)
        assert queue.statistics().enqueued == 0
    assert sender.requests == []


@pytest.mark.parametrize(("element", "field"), INVALID, ids=INVALID_IDS)
def test_sync_event_queue_batch_refuses_an_invalid_element_naming_its_field(
        element: dict[str, Any], field: str) -> None:
    """The same in the calling thread of a SyncEventQueue."""
    with SyncEventQueue(config(), sender=RecordingSender()) as queue:
        with pytest.raises(InvalidEventError) as info:
            queue.batch([FIRST, element])
        check_refusal(info, field)
        assert queue.statistics().enqueued == 0


@pytest.mark.anyio
async def test_an_element_over_32_kb_is_refused_naming_it_before_any_is_queued() -> None:
    """The size limit, too, is checked for every element before the first is queued."""
    sender = RecordingSender()
    big = person("event", name="big", attributes={"d": "x" * (32 * 1024)})
    async with EventQueue(config(), sender=sender) as queue:
        with pytest.raises(InvalidEventError, match=r"^operations\[1\]: is \d+ bytes") as info:
            await queue.batch([FIRST, big])
        assert info.value.field == "operations[1]"
        assert queue.statistics().enqueued == 0
    assert sender.requests == []


EVENT_ACTIONS = ("event", "page", "screen")
VALID: list[dict[str, Any]] = [
    person("identify", attributes={"plan": "pro", "_update": True,
                                   "cio_subscription_preferences": {"topics": {"topic_1": True}}},
           timestamp=1_700_000_000,
           cio_relationships=[{"identifiers": {"object_type_id": "1", "object_id": "acme"}}]),
    person("identify", identifiers={"email": "ada@example.com"}),
    person("identify", identifiers={"phone": "+15550100"}, attributes={"plan": None}),
    person("identify", identifiers={"cio_id": "a3000001"}, attributes={}),
    person("delete"),
    person("event", name="purchase", attributes={"price": 29.99, "recipient": "a@b.co"},
           timestamp=1_700_000_000, id="01HGW2N7EHJKZ6Q9TZ8S0A1B2C"),
    person("event", name="no_data"),
    person("page", name="https://example.com/pricing", attributes={"ref": "ad"}),
    person("screen", name="Home", timestamp=1_700_000_001),
    person("add_device", device={"token": "tok-1", "platform": "ios", "last_used": 1_713_484_800,
                                 "attributes": {"app_version": "1.2", "push_enabled": "true"}}),
    person("add_device", device={"token": "tok-2", "platform": "android"}),
    person("delete_device", device={"token": "tok-1"}),
    {"type": "person", "action": "merge", "primary": {"id": "42"},
     "secondary": {"email": "old@example.com"}},
    {"type": "person", "action": "merge", "primary": {"cio_id": "a3000001"},
     "secondary": {"id": "43"}},
    person("suppress"),
    person("unsuppress"),
    person("add_relationships", cio_relationships=[
        {"identifiers": {"object_type_id": "1", "object_id": "acme"},
         "relationship_attributes": {"role": "admin"}}]),
    person("delete_relationships", cio_relationships=[{"identifiers": {"cio_object_id": "o1"}}]),
    company("identify", attributes={"name": "Acme Corp", "seats": 50},
            cio_relationships=[{"identifiers": {"id": "42"},
                                "relationship_attributes": {"role": "admin"}}]),
    company("identify", identifiers={"cio_object_id": "obb7fd050101"}, attributes={"plan": None}),
    company("identify_anonymous", anonymous_id="anon-abc-123"),
    company("identify_anonymous", cio_relationships=[
        {"identifiers": {"anonymous_id": "anon-abc-123"}}]),
    company("delete"),
    company("add_relationships", cio_relationships=[{"identifiers": {"email": "a@b.co"}}]),
    company("delete_relationships", cio_relationships=[{"identifiers": {"id": "42"}}]),
    company("event", name="renewed", attributes={"term": "annual"}),  # one docs rendering
    delivery("event", name="opened", attributes={"device_token": "a83b219c"}),
    delivery("event", name="converted", timestamp=1_700_000_000),
    delivery("event", name="delivered", attributes={"device_token": "a83b219c"}),
]


def as_sent(element: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    """The element as the API should get it: with the event's dedupe id, else as given."""
    return {**element, "id": event_id} if element["action"] in EVENT_ACTIONS else element


def unordered(elements: list[Any]) -> list[str]:
    """Elements in a comparable order (one person's state changes wait for each other)."""
    return sorted(json.dumps(element, sort_keys=True) for element in elements)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["v1", "batch"])
async def test_every_documented_type_and_action_is_delivered_as_given(
        transport: Transport) -> None:
    """Each valid element is queued, accepted by the fake Track API, and sent unchanged."""
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url, transport, site_id=fake.site_id, api_key=fake.api_key)
        async with EventQueue(cfg) as queue:
            receipts = await queue.batch(VALID)
            with anyio.fail_after(WAIT):
                outcomes = [await receipt.wait() for receipt in receipts]
        assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * len(VALID)
        assert unordered([a.op for a in fake.operations]) == unordered([
            as_sent(element, receipt.event_id) for element, receipt in zip(VALID, receipts,
                                                                            strict=True)])


def test_a_sync_queue_delivers_every_documented_type_and_action_as_given(
        fake_track_api: FakeTrackAPI, cio_queue_config: QueueConfig) -> None:
    """SyncEventQueue.batch() takes the same elements, in the calling thread."""
    with SyncEventQueue(cio_queue_config) as queue:
        receipts = queue.batch(VALID)
        outcomes = [receipt.result(WAIT) for receipt in receipts]
    assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * len(VALID)
    assert unordered([a.op for a in fake_track_api.operations]) == unordered([
        as_sent(element, receipt.event_id) for element, receipt in zip(VALID, receipts,
                                                                        strict=True)])


@pytest.mark.anyio
async def test_batch_sends_what_it_checked_datetimes_as_unix_seconds() -> None:
    """A datetime timestamp is checked as the int it is sent as, not refused."""
    sender = RecordingSender()
    when = datetime(2024, 1, 1, tzinfo=UTC)
    async with EventQueue(config(), sender=sender) as queue:
        await queue.batch([person("identify", timestamp=when),
                           person("event", name="ev", timestamp=when)])
    (request,) = sender.requests
    assert b'"timestamp":1704067200' in request.body


def test_the_refusals_are_the_fake_track_apis() -> None:
    """What batch() refuses, the fake Track API refuses too, naming the same field."""
    for element, field in INVALID:
        with pytest.raises(ValidationError) as info:
            validate_v2_op(element)
        assert info.value.field == field, (element, field)
    for element in VALID:
        check_op(as_sent(element, "01HGW2N7EHJKZ6Q9TZ8S0A1B2C"))

