# pyright: strict
"""identify calls that must fail to type-check; ``# E:`` as in events_fail.py."""

from __future__ import annotations

from workspace import Acme, Person

from cio_queue import QueueConfig, TypedEventQueue


async def wrong_people(config: QueueConfig) -> None:
    cio = TypedEventQueue(config, events=Acme, person=Person)
    # A typo in an attribute name.
    await cio.identify("42", {"emial": "ada@example.com"})  # E: typeddict-unknown-key reportArgumentType
    # A value of the wrong type.
    await cio.identify("42", {"age": "36"})  # E: typeddict-item reportArgumentType
    await cio.identify("42", {"plan": "gold"})  # E: typeddict-item reportArgumentType
    # Attributes as keywords are EventQueue's untyped form, refused on a typed queue.
    await cio.identify("42", email="ada@example.com")  # E: call-arg reportCallIssue
    # No id.
    await cio.identify({"email": "ada@example.com"})  # E: call-arg arg-type reportCallIssue
