# pyright: strict
"""Calls that must fail to type-check; ``# E:`` lists the mypy codes and pyright rules.

Type-checked by tests/test_typing.py, never run. Each marked line must report exactly
those errors, and no other line any.
"""

from __future__ import annotations

from workspace import Acme, Person

from cio_queue import QueueConfig, TypedEventQueue


async def wrong_events(config: QueueConfig) -> None:
    cio = TypedEventQueue(config, events=Acme, person=Person)
    # A typo in the event name.
    await cio.track("42", Acme.purchsae, {"price": 9.5, "sku": "A-1"})  # E: attr-defined reportAttributeAccessIssue reportUnknownMemberType reportUnknownArgumentType
    # A name given as a plain str: the catalog is the only source of names.
    await cio.track("42", "purchase", {"price": 9.5, "sku": "A-1"})  # E: arg-type reportArgumentType reportCallIssue
    # A value of the wrong type.
    await cio.track("42", Acme.purchase, {"price": "9.5", "sku": "A-1"})  # E: typeddict-item reportArgumentType
    # A required key left out.
    await cio.track("42", Acme.purchase, {"price": 9.5})  # E: typeddict-item reportArgumentType
    # A key the event does not declare.
    await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A", "coupon": "X"})  # E: typeddict-unknown-key reportArgumentType
    # A wrong value inside a nested TypedDict in a list.
    await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A", "items": [{"sku": "A", "quantity": "2"}]})  # E: typeddict-item reportArgumentType
    # A Literal the event does not allow.
    await cio.track("42", Acme.signed_up, {"plan": "enterprise"})  # E: typeddict-item reportArgumentType
    # The data of another event.
    await cio.track("42", Acme.signed_up, {"price": 9.5, "sku": "A-1"})  # E: typeddict-item typeddict-unknown-key reportArgumentType
    # No data for an event that has some.
    await cio.track("42", Acme.purchase)  # E: call-arg reportCallIssue
    # Data for an event declared without any.
    await cio.track("42", Acme.logged_in, {"at": "home"})  # E: arg-type reportArgumentType
    # Keyword properties (async-customerio's form) bypass the declaration, so they are refused.
    await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1"}, coupon="X")  # E: call-arg reportCallIssue
    # A str timestamp.
    await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1"}, timestamp="1700000000")  # E: arg-type reportArgumentType
    # An int event id.
    await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1"}, id=7)  # E: arg-type reportArgumentType
    # The same checks for anonymous events.
    await cio.track_anonymous("anon-1", Acme.signed_up, {"plan": "gold"})  # E: typeddict-item reportArgumentType
    await cio.track_anonymous("anon-1", "signed_up", {"plan": "pro"})  # E: arg-type reportArgumentType reportCallIssue
