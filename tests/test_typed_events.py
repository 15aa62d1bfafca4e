"""Typed events at run time: catalogs, TypedEventQueue, and the opt-in ``validate_events``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import pytest

from cio_queue import (
    Event,
    EventCatalog,
    EventQueue,
    InvalidEventError,
    QueueClosedError,
    QueueConfig,
    RetryPolicy,
    TypedEventQueue,
)

from .recipes import recipe_source
from .recording import RecordingSender

pytestmark = pytest.mark.anyio

EXAMPLE_TIMEOUT = 60.0


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
    """A person's attributes."""

    email: str
    plan: Literal["free", "pro"]


class Acme(EventCatalog):
    """The workspace's events."""

    purchase: Event[Purchase]
    signed_up: Event[SignedUp]
    order_completed: Event[Purchase] = Event("Order Completed")
    logged_in: Event[None]
    _helper: int = 3


class AcmeMobile(Acme):
    """Acme's events and one more."""

    app_opened: Event[None]


class Other(EventCatalog):
    """Another workspace, with an event of the same data."""

    refund: Event[Purchase]


class Unresolvable(EventCatalog):
    """An event whose data type is not defined anywhere."""

    lost: Event[Missing]  # type: ignore[name-defined]  # noqa: F821


class Hooked(TypedDict):
    """A person type with a field no run-time check can test."""

    on_change: Callable[[], None]


class NotAnEvent(EventCatalog):
    """An attribute annotated with something other than Event."""

    count: int


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": "http://127.0.0.1:9",
        "transport": "v1", "flush_interval": 0.01, "rate_limit": None,
        "retry": RetryPolicy(attempts=1), "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


Calls = Callable[[Any], Awaitable[object]]


async def sent(queue_type: type[EventQueue], calls: Calls,
               **options: Any) -> list[tuple[str, Any]]:
    """Run ``calls(queue)`` on a new queue; return (path, JSON body) of each request sent."""
    sender = RecordingSender()
    if queue_type is TypedEventQueue:
        options = {"events": Acme, "person": Person, **options}
    async with queue_type(config(), sender=sender, **options) as queue:
        await calls(queue)
    return [(r.path, json.loads(r.body)) for r in sender.requests]


# --- catalogs ----------------------------------------------------------------------------

def test_each_annotated_attribute_becomes_an_event_named_after_it() -> None:
    """An Event is the name itself, a str; Event("...") gives a name that is no identifier."""
    assert Acme.purchase == "purchase"
    assert isinstance(Acme.purchase, Event)
    assert isinstance(Acme.purchase, str)
    assert Acme.order_completed == "Order Completed"
    assert Acme._cio_events_ == {"purchase": "purchase", "signed_up": "signed_up",
                                 "order_completed": "Order Completed",
                                 "logged_in": "logged_in"}
    assert Acme._helper == 3  # names starting with an underscore are left alone


def test_a_subclass_inherits_its_catalogs_events() -> None:
    """A catalog that extends another has both sets of events."""
    assert AcmeMobile.purchase == "purchase"
    assert set(AcmeMobile._cio_events_) == {*Acme._cio_events_, "app_opened"}


def test_a_catalog_refuses_a_value_that_is_not_an_event_name() -> None:
    """An annotated attribute with a value other than a name is a mistake in the catalog."""
    with pytest.raises(TypeError, match=r"Bad\.purchase must be an event name"):
        class Bad(EventCatalog):
            purchase: Event[Purchase] = 3  # type: ignore[assignment]


def test_a_catalog_refuses_the_same_event_twice() -> None:
    """Two attributes for one event name would make one of them a silent alias."""
    with pytest.raises(TypeError, match="declares the event 'purchase' twice"):
        class Twice(EventCatalog):
            purchase: Event[Purchase]
            bought: Event[Purchase] = Event("purchase")


@pytest.mark.parametrize(("name", "message"), [
    (" ", "Bad.event: must not be blank"),
    ("x" * 101, "Bad.event: is 101 bytes; the limit is 100"),
])
def test_a_catalog_refuses_a_name_the_api_would_refuse(name: str, message: str) -> None:
    """A blank or overlong event name fails when the catalog is defined, not at a call."""
    with pytest.raises(InvalidEventError, match=message):
        class Bad(EventCatalog):
            event: Event[None] = Event(name)


# --- TypedEventQueue, unchecked ----------------------------------------------------------

async def test_a_typed_queue_sends_what_an_event_queue_sends() -> None:
    """Typed calls and their untyped equivalents make the same requests, byte for byte."""
    async def typed(cio: TypedEventQueue[Acme, Person]) -> None:
        await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1"}, id="E1",
                        timestamp=1_700_000_000)
        await cio.track_anonymous("anon", Acme.order_completed, {"price": 1, "sku": "B"},
                                  id="E2")
        await cio.track("42", Acme.logged_in, None, id="E3")
        await cio.identify("43", {"email": "ada@example.com", "plan": "pro"})

    async def untyped(cio: EventQueue) -> None:
        await cio.track("42", "purchase", {"price": 9.5, "sku": "A-1"}, id="E1",
                        timestamp=1_700_000_000)
        await cio.track_anonymous("anon", "Order Completed", {"price": 1, "sku": "B"}, id="E2")
        await cio.track("42", "logged_in", None, id="E3")
        await cio.identify("43", email="ada@example.com", plan="pro")

    assert await sent(TypedEventQueue, typed) == await sent(EventQueue, untyped)


async def test_an_unchecked_typed_queue_runs_event_queues_own_track() -> None:
    """Without validate_events there is no extra call: track is EventQueue.track itself."""
    cio = TypedEventQueue(config(), events=Acme, sender=RecordingSender())
    assert "track" not in vars(TypedEventQueue)  # no override at run time,
    assert "track" not in vars(cio)  # nor on an unchecked instance
    assert cio.events is Acme
    assert cio.person is None
    checked = TypedEventQueue(config(), events=Acme, validate_events=True,
                              sender=RecordingSender())
    assert "track" in vars(checked)
    await cio.aclose()
    await checked.aclose()


async def test_identify_still_takes_event_queues_keyword_form() -> None:
    """Held as an EventQueue, a typed queue's identify takes id= and identifier= as before."""
    async def calls(cio: Any) -> None:
        await cio.identify("1", plan="pro")
        await cio.identify(id="2", plan="pro")
        await cio.identify(identifier="3", plan="pro")
        await cio.identify("4", {"id": "kept", "plan": "pro"})  # an attribute named id

    assert await sent(TypedEventQueue, calls) == [
        ("/api/v1/customers/1", {"plan": "pro"}),
        ("/api/v1/customers/2", {"plan": "pro"}),
        ("/api/v1/customers/3", {"plan": "pro"}),
        ("/api/v1/customers/4", {"id": "kept", "plan": "pro"}),
    ]


async def test_identify_refuses_a_mix_of_its_two_forms() -> None:
    """Attributes come as one mapping or as keywords; mixing them is refused, not merged."""
    cio: Any = TypedEventQueue(config(), events=Acme, sender=RecordingSender())
    with pytest.raises(InvalidEventError, match="attributes: give them as one mapping"):
        await cio.identify("42", {"plan": "pro"}, email="a@b.c")
    with pytest.raises(TypeError, match="multiple values for argument 'id'"):
        await cio.identify("42", id="43")
    with pytest.raises(TypeError, match="not 3 positional arguments"):
        await cio.identify("42", {}, {})
    assert cio.statistics().enqueued == 0
    await cio.aclose()


def test_events_must_be_a_catalog() -> None:
    """A TypedDict or an instance passed as events is a mistake caught at construction."""
    with pytest.raises(TypeError, match="events must be a subclass of EventCatalog"):
        TypedEventQueue(config(), events=Purchase)  # type: ignore[type-var]


# --- validate_events=True ----------------------------------------------------------------

GOOD_PURCHASE: Purchase = {"price": 9.5, "sku": "A-1"}


@pytest.mark.parametrize(("call", "field", "message"), [
    (lambda cio: cio.track("42", "purchsae", GOOD_PURCHASE),
     "name", "'purchsae' is not an event declared in Acme"),
    (lambda cio: cio.track("42", Other.refund, GOOD_PURCHASE),
     "name", "'refund' is not an event declared in Acme"),
    (lambda cio: cio.track("42", 7, GOOD_PURCHASE),
     "name", "7 is not an event declared in Acme"),
    (lambda cio: cio.track("42", Acme.purchase, {"price": "9.5", "sku": "A-1"}),
     "data.price", "must be a float, not '9.5'"),
    (lambda cio: cio.track("42", Acme.purchase, {"price": 9.5}),
     "data.sku", "is required by Purchase"),
    (lambda cio: cio.track("42", Acme.purchase, None),
     "data.price", "is required by Purchase"),
    (lambda cio: cio.track("42", Acme.purchase, {**GOOD_PURCHASE, "cupon": "X"}),
     "data.cupon", "is not declared in Purchase"),
    (lambda cio: cio.track("42", Acme.purchase, GOOD_PURCHASE, coupon="X"),
     "data.coupon", "is not declared in Purchase"),
    (lambda cio: cio.track("42", Acme.purchase, {**GOOD_PURCHASE, "items": [
        {"sku": "A", "quantity": 1}, {"sku": "B", "quantity": True}]}),
     "data.items[1].quantity", "must be an int, not True"),
    (lambda cio: cio.track("42", Acme.signed_up, {"plan": "gold"}),
     "data.plan", "must be one of 'free', 'pro', not 'gold'"),
    (lambda cio: cio.track("42", Acme.logged_in, {"at": "home"}),
     "data", "must be None, not dict"),
    (lambda cio: cio.track("42", Acme.purchase, ["price"]),
     "data", "must be a dict (Purchase), not list"),
    (lambda cio: cio.track_anonymous("anon", Acme.signed_up, {"plan": "gold"}),
     "data.plan", "must be one of 'free', 'pro', not 'gold'"),
    (lambda cio: cio.track_anonymous("anon", "Order completed", GOOD_PURCHASE),
     "name", "'Order completed' is not an event declared in Acme"),
    (lambda cio: cio.identify("42", {"plan": "gold"}),
     "attributes.plan", "must be one of 'free', 'pro', not 'gold'"),
    (lambda cio: cio.identify("42", plan="gold"),
     "attributes.plan", "must be one of 'free', 'pro', not 'gold'"),
    (lambda cio: cio.identify("42", {"emial": "a@b.c"}),
     "attributes.emial", "is not declared in Person"),
])
async def test_validate_events_refuses_what_the_declarations_do_not_allow(
        call: Calls, field: str, message: str) -> None:
    """Each refusal names the field, and nothing reaches the queue."""
    cio = TypedEventQueue(config(), events=Acme, person=Person, validate_events=True,
                          sender=RecordingSender())
    with pytest.raises(InvalidEventError) as caught:
        await call(cio)
    assert (caught.value.field, str(caught.value)) == (field, f"{field}: {message}")
    assert cio.statistics().enqueued == 0
    await cio.aclose()


async def test_validate_events_passes_declared_calls_through_unchanged() -> None:
    """Checked calls send exactly what unchecked ones send."""
    async def calls(cio: Any) -> None:
        await cio.track("42", Acme.purchase, {**GOOD_PURCHASE, "items": [
            {"sku": "A", "quantity": 2}]}, id="E1")
        await cio.track("42", "purchase", {"price": 3, "sku": "B"}, id="E2")  # a plain str
        await cio.track("42", Acme.purchase, {"price": 3.0}, sku="C", id="E3")
        await cio.track("42", Acme.logged_in, None, id="E4")
        await cio.track("42", Acme.logged_in, id="E5")
        await cio.track_anonymous("anon", Acme.order_completed, GOOD_PURCHASE, "E6", 1.5)
        await cio.identify("42", {"plan": "pro"})
        await cio.identify(identifier="43", email="b@c.d")

    checked = await sent(TypedEventQueue, calls, validate_events=True)
    assert checked == await sent(TypedEventQueue, calls)
    assert [body.get("id") for _, body in checked] == [
        "E1", "E2", "E3", "E4", "E5", "E6", None, None]


async def test_a_closed_checked_queue_says_so_before_judging_the_data() -> None:
    """As with EventQueue, QueueClosedError comes first, whatever the arguments."""
    cio: Any = TypedEventQueue(config(), events=Acme, person=Person, validate_events=True,
                               sender=RecordingSender())
    await cio.aclose()
    for call in (cio.track("42", "purchsae", None), cio.track_anonymous("a", 1, None),
                 cio.identify("42", {"plan": 1})):
        with pytest.raises(QueueClosedError):
            await call


async def test_validate_events_without_a_person_type_takes_any_attributes() -> None:
    """No Person declared: identify's attributes get the usual validation only."""
    async def calls(cio: Any) -> None:
        await cio.identify("42", {"anything": ["goes", 1]})

    assert await sent(TypedEventQueue, calls, person=None, validate_events=True) == [
        ("/api/v1/customers/42", {"anything": ["goes", 1]})]


@pytest.mark.parametrize(("events", "person", "message"), [
    (Unresolvable, None, "the annotations of Unresolvable cannot be resolved"),
    (NotAnEvent, None, "NotAnEvent.count is annotated <class 'int'>; declare it as Event"),
    (Acme, Hooked, "Hooked.on_change: .*Callable.* cannot be checked at run time"),
])
def test_validate_events_refuses_declarations_it_cannot_check(
        events: type[EventCatalog], person: Any, message: str) -> None:
    """A declaration the check cannot follow fails at construction, never as a silent pass."""
    with pytest.raises(TypeError, match=message):
        TypedEventQueue(config(), events=events, person=person, validate_events=True,
                        sender=RecordingSender())


# --- the README ----------------------------------------------------------------------------

def readme_example() -> str:
    """Return the README's "Typed events" example."""
    return recipe_source("typed-events")


def test_the_readme_example_runs(tmp_path: Path) -> None:
    """The README's example, run as it stands, delivers its four operations."""
    script = tmp_path / "typed_events_example.py"
    script.write_text(readme_example())
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=EXAMPLE_TIMEOUT, check=False)
    assert (result.returncode, result.stdout) == (0, "4 operations delivered\n"), result.stderr
