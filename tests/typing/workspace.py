# pyright: strict
"""A workspace's declarations, shared by the typing tests (type-checked, never run)."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from cio_queue import Event, EventCatalog


class Item(TypedDict):
    """One line of a purchase."""

    sku: str
    quantity: int


class Purchase(TypedDict):
    """The data of a purchase event."""

    price: float
    sku: str
    items: NotRequired[list[Item]]


class SignedUp(TypedDict):
    """The data of a signed_up event."""

    plan: Literal["free", "pro"]


class Person(TypedDict, total=False):
    """A person's attributes, all optional."""

    email: str
    plan: Literal["free", "pro"]
    age: int


class Acme(EventCatalog):
    """The workspace's events."""

    purchase: Event[Purchase]
    signed_up: Event[SignedUp]
    order_completed: Event[Purchase] = Event("Order Completed")
    logged_in: Event[None]


class AcmeMobile(Acme):
    """Acme's events and the mobile app's."""

    app_opened: Event[SignedUp]
