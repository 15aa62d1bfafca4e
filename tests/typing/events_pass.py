# pyright: strict
"""Calls that must type-check cleanly under mypy --strict and pyright strict (never run)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ParamSpec, assert_type

from workspace import Acme, AcmeMobile, Person, Purchase

from cio_queue import (
    DeclaredEvent,
    Event,
    EventQueue,
    QueueConfig,
    Receipt,
    Timestamp,
    TypedEventQueue,
)

P = ParamSpec("P")


async def declared_events(config: QueueConfig) -> None:
    async with TypedEventQueue(config, events=Acme, person=Person) as cio:
        assert_type(cio, TypedEventQueue[Acme, Person])
        receipt = await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1"})
        assert_type(receipt, Receipt)
        await cio.track(42, Acme.purchase, {"price": 9, "sku": "A-1"})  # an int is a float
        await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1",
                                              "items": [{"sku": "A-1", "quantity": 2}]})
        await cio.track("42", Acme.purchase, data={"price": 1.0, "sku": "B"}, id="01J",
                        timestamp=datetime.now(UTC))
        await cio.track("42", Acme.purchase, {"price": 1.0, "sku": "B"}, "01J", 1_700_000_000)
        await cio.track("42", Acme.order_completed, {"price": 1.0, "sku": "B"}, timestamp=1.5)
        await cio.track("42", Acme.signed_up, {"plan": "pro"})
        await cio.track("42", Acme.logged_in, None)
        await cio.track("42", cio.events.signed_up, {"plan": "free"})
        await cio.track_anonymous("anon-1", Acme.signed_up, {"plan": "free"})
        await cio.track_anonymous(None, Acme.purchase, {"price": 2.0, "sku": "C"}, id="01K")
        await cio.identify("42", {"email": "ada@example.com", "plan": "pro"})
        await cio.identify(42, {})
        purchase: Purchase = {"price": 3.0, "sku": "D"}
        await cio.track("42", Acme.purchase, purchase)


async def inherited_catalog(config: QueueConfig) -> None:
    cio = TypedEventQueue(config, events=AcmeMobile, validate_events=True)
    assert_type(cio, TypedEventQueue[AcmeMobile, dict[str, Any]])
    await cio.track("42", AcmeMobile.app_opened, {"plan": "pro"})
    await cio.track("42", AcmeMobile.purchase, {"price": 9.5, "sku": "A-1"})
    await cio.identify("42", {"anything": ["goes", 1]})  # no Person declared


async def untyped_queue_is_unchanged(config: QueueConfig) -> None:
    async with EventQueue(config) as cio:
        assert_type(cio, EventQueue)
        await cio.track("42", "any name", {"any": "data"})
        await cio.track("42", "purchase", price=9.5)
        await cio.identify("42", email="ada@example.com", plan="pro")
        await cio.track_anonymous("anon-1", "visited", timestamp=datetime.now(UTC))
        await cio.backfill("42", "purchase", 1_700_000_000, price=9.5)
        await held_as_event_queue(TypedEventQueue(config, events=Acme))


async def held_as_event_queue(cio: EventQueue) -> None:
    """A TypedEventQueue is an EventQueue; held as one, it takes the untyped forms."""
    await cio.track("42", "not declared", {"untyped": True})
    await cio.identify("42", email="ada@example.com")


async def send_for(cio: TypedEventQueue[Acme, Person], customer_id: str,
                   event: DeclaredEvent[P], /, *args: P.args, **kwargs: P.kwargs) -> Receipt:
    """A helper of one's own takes a declared event and its arguments as track does."""
    return await cio.track(customer_id, event, *args, **kwargs)


async def helpers(cio: TypedEventQueue[Acme, Person], when: Timestamp) -> None:
    assert_type(Acme.purchase, Event[Purchase])
    assert_type(Acme.purchase.upper(), str)  # an Event is a str
    await send_for(cio, "42", Acme.purchase, {"price": 1.0, "sku": "x"}, timestamp=when)
