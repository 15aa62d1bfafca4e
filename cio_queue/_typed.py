"""Typed events and people: declare a workspace's events once, and let mypy and pyright check calls.

Stage: intake; a typed facade whose methods are EventQueue's own.

A workspace has a fixed set of event names, each with its own data, and a typo in a name
silently makes a new event that no campaign listens to. Declare them once, then use a
:class:`TypedEventQueue`::

    class Purchase(TypedDict):
        price: float
        sku: str

    class Acme(EventCatalog):
        purchase: Event[Purchase]
        order_completed: Event[Order] = Event("Order Completed")  # not an identifier

    cio = TypedEventQueue(config, events=Acme, person=Person)
    await cio.track("42", Acme.purchase, {"price": 9.5, "sku": "A-1"})
    await cio.identify("42", {"email": "ada@example.com", "plan": "pro"})

Typing costs nothing per call: ``Acme.purchase`` *is* the str ``"purchase"`` (an
:class:`Event` is a str), and a TypedEventQueue runs EventQueue's own ``track``; its
typed signatures exist for the checkers only. ``validate_events=True`` adds a run-time
check of names, data and attributes against the declarations (``_schema``).

Why this shape (checked with mypy 2.4 and pyright 1.1.414, neither with a plugin):

* Python has no type-level map from a ``Literal`` key to a TypedDict value, so
  ``EventQueue[Events]`` with ``track(name: K, data: Events[K])`` cannot be written. The
  event object carries its data type instead, and a typo is an attribute error.
* ``track(name: Event[T], data: T)`` is the obvious signature, and mypy cannot use it:
  it infers T from the data too, where a dict display has no TypedDict context yet, and
  reports "Cannot infer value of type parameter" for good data (with a covariant T it
  joins the two into ``object`` and lets bad data through). So an Event carries a whole
  signature, ``(data: T, id=None, timestamp=None)``, and ``track`` takes
  ``name: DeclaredEvent[P], /, *args: P.args, **kwargs: P.kwargs``: the ParamSpec P is
  bound by the name alone, then both checkers check the data against T with the
  TypedDict as context, and name the wrong key. ``id`` and ``timestamp`` keep their SDK
  places.
* Rejected: ``@overload``s per event on ``Literal`` names (Segment Typewriter's
  generated code), which keeps ``track("42", "purchase", ...)`` but needs a generated
  file kept in step with the declarations, and for bad data mypy says only "No overload
  variant matches", naming no key; a mypy plugin, which pyright would not run;
  ``**data: Unpack[...]``, since PEP 692 allows no TypeVar there (and a TypedDict per
  event would need overloads again).
* People: a TypedDict cannot become the keyword parameters of a generic method (no
  ``Unpack[TypeVar]``, and pyright types a TypedDict's constructor as two overloads, which
  no ParamSpec captures). The typed ``identify`` therefore takes the attributes as one
  mapping, ``identify(id, attributes)``, as ``track`` takes its data.

What the checkers cannot catch: an event name built at run time (it is refused: cast it,
or use EventQueue's untyped methods); an event declared in another catalog (the type
says the data, not the workspace; the run-time check refuses it); undeclared keys in a
value typed as a TypedDict subtype (they are caught in a dict display, and by the
run-time check); a bool where an int or float is declared (bool is an int to them);
limits on values (a 2 KB attribute, a timestamp in milliseconds), which the usual
validation refuses at the call site. ``backfill`` and ``pageview`` keep their untyped
``**data``: use ``track(..., timestamp=...)`` for a typed past event.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, Protocol, TypeVar, cast

from . import _operations as ops
from ._exceptions import InvalidEventError
from ._outcome import Receipt
from ._queue import EventQueue
from ._schema import Check, MismatchError, compile_check
from ._validation import check_event_name, describe

if TYPE_CHECKING:
    from typing import Self

    from typing_extensions import TypeVar as DefaultTypeVar  # PEP 696 defaults, for checkers

    from ._config import OnOutcome, QueueConfig
    from ._operations import Timestamp
    from ._sender import Sender

__all__ = ["DeclaredEvent", "Event", "EventCatalog", "TypedEventQueue"]

T = TypeVar("T")
P = ParamSpec("P")
CatalogT = TypeVar("CatalogT", bound="EventCatalog")
if TYPE_CHECKING:
    PersonT = DefaultTypeVar("PersonT", bound=Mapping[str, object], default=dict[str, Any])
else:
    PersonT = TypeVar("PersonT", bound=Mapping[str, object])


class Event(str, Generic[T]):
    """An event name declared with the type of its data: ``purchase: Event[Purchase]``.

    At run time it is the name itself, a str, so it goes to the API unchanged. In an
    :class:`EventCatalog` the attribute's name is the event name; give another with
    ``Event("Order Completed")``. Declare ``Event[None]`` for an event without data
    (then pass ``None``).
    """

    __slots__ = ()

    if TYPE_CHECKING:
        def _track_signature(self, data: T, id: str | None = None,
                             timestamp: Timestamp | None = None) -> None:
            """The arguments ``track`` takes after this name (for the checkers only)."""


class DeclaredEvent(Protocol[P]):
    """What ``TypedEventQueue.track`` takes as a name: an Event, whose data type binds P."""

    def _track_signature(self, *args: P.args, **kwargs: P.kwargs) -> None: ...


def _annotated_names(cls: type) -> list[str]:
    """Return the names annotated in ``cls``'s own body, without evaluating them."""
    if sys.version_info >= (3, 14):  # annotations are evaluated lazily (PEP 649)
        import annotationlib  # noqa: PLC0415 -- new in 3.14

        return list(annotationlib.get_annotations(cls,
                                                  format=annotationlib.Format.FORWARDREF))
    return list(inspect.get_annotations(cls))


class EventCatalog:
    """A workspace's events: subclass it with one ``name: Event[Data]`` attribute per event.

    Each annotated attribute becomes an :class:`Event` whose value is the attribute's
    name, unless it is given one (``Event("Order Completed")``). Names starting with an
    underscore are left alone. Subclasses of a catalog inherit its events.
    """

    _cio_events_: ClassVar[Mapping[str, str]] = {}
    """Attribute name to event name, for every event of this catalog."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        events = dict(cls._cio_events_)
        for attribute in _annotated_names(cls):
            if attribute.startswith("_"):
                continue
            value = cls.__dict__.get(attribute, attribute)
            if not isinstance(value, str):
                raise TypeError(f"{cls.__name__}.{attribute} must be an event name: declare "
                                f"it as `{attribute}: Event[Data]` or give Event('name')")
            name: Event[Any] = Event(check_event_name(value, f"{cls.__name__}.{attribute}"))
            setattr(cls, attribute, name)
            events[attribute] = name
        names = list(events.values())
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise TypeError(f"{cls.__name__} declares the event {twice[0]!r} twice")
        cls._cio_events_ = events


class _Checks:
    """The run-time check of one queue: event data by event name, and a person's attributes.

    Compiled once from the declarations; see ``_schema`` for the forms it checks.
    """

    __slots__ = ("catalog", "events", "person")

    def __init__(self, catalog: type[EventCatalog], person: object | None) -> None:
        self.catalog = catalog.__name__
        try:
            hints = typing.get_type_hints(catalog, include_extras=True)
        except NameError as exc:
            raise TypeError(f"the annotations of {catalog.__name__} cannot be resolved "
                            f"({exc}); define the types they name at module level") from exc
        self.events: dict[str, Check] = {}
        for attribute, name in catalog._cio_events_.items():
            annotation = hints[attribute]
            if typing.get_origin(annotation) is not Event:
                raise TypeError(f"{catalog.__name__}.{attribute} is annotated "
                                f"{annotation!r}; declare it as Event[Data]")
            (data,) = typing.get_args(annotation)
            self.events[name] = compile_check(data, f"{catalog.__name__}.{attribute}")
        self.person = (compile_check(person, getattr(person, "__name__", "person"))
                       if person is not None else None)

    def event(self, name: object, data: object) -> None:
        """Refuse a name not declared in the catalog, or data that does not fit it."""
        check = self.events.get(name) if isinstance(name, str) else None
        if check is None:
            raise InvalidEventError("name", f"{describe(name)} is not an event declared in "
                                            f"{self.catalog}")
        try:
            check(data)
        except MismatchError as exc:
            if data is None:  # no data: sent as {}, so it must fit as {}
                _run(check, {}, "data")
                return
            raise InvalidEventError("data" + exc.path, exc.message) from None

    def attributes(self, attributes: object) -> None:
        """Refuse attributes that do not fit the Person type (if one was given)."""
        if self.person is not None:
            _run(self.person, attributes, "attributes")


def _run(check: Check, value: object, field: str) -> None:
    try:
        check(value)
    except MismatchError as exc:
        raise InvalidEventError(field + exc.path, exc.message) from None


class TypedEventQueue(EventQueue, Generic[CatalogT, PersonT]):
    """An EventQueue whose ``track`` and ``identify`` take declared events and people.

    ``TypedEventQueue(config, events=Acme, person=Person)`` is a
    ``TypedEventQueue[Acme, Person]``, and mypy and pyright check at each call that the
    event comes from a catalog, that its data has the declared keys and value types, that
    ``id`` is a str and ``timestamp`` a time, and that a person's attributes fit
    ``Person``. The typed signatures exist for the checkers only: ``track`` and
    ``track_anonymous`` are EventQueue's own, and ``identify`` does the work EventQueue's
    does, so typing costs nothing per call. Held as an EventQueue, it still takes the
    untyped forms.

    With ``validate_events=True`` every ``track``, ``track_anonymous`` and ``identify``
    call is also checked at run time against the declarations, in whichever form it is
    made: an undeclared name, a missing required key, an undeclared key, or a value of
    the wrong type raises :class:`InvalidEventError` naming the field
    (``data.items[2].price``), and nothing is queued.

    Attributes:
        events: the catalog, so that ``cio.events.purchase`` needs no import.
        person: the Person TypedDict, or None.
    """

    events: type[CatalogT]
    person: type[PersonT] | None

    def __init__(self, config: QueueConfig, *, events: type[CatalogT],
                 person: type[PersonT] | None = None, validate_events: bool = False,
                 on_outcome: OnOutcome | None = None, sender: Sender | None = None) -> None:
        """Create a typed queue; nothing runs until :meth:`start` or the first enqueue.

        Args:
            config: the QueueConfig.
            events: the EventCatalog subclass that declares the workspace's events.
            person: the TypedDict of a person's attributes, for ``identify``; without it,
                any dict is taken.
            validate_events: also check every call at run time (see the class docs).
            on_outcome: as for EventQueue.
            sender: as for EventQueue.

        Raises:
            TypeError: ``events`` is not an EventCatalog subclass; with
                ``validate_events``, a declaration that cannot be checked at run time (a
                name that does not resolve, or a type form it does not know).
        """
        if not (isinstance(events, type) and issubclass(events, EventCatalog)):
            raise TypeError(f"events must be a subclass of EventCatalog, not {events!r}")
        checks = _Checks(events, person) if validate_events else None  # before any I/O set-up
        super().__init__(config, on_outcome=on_outcome, sender=sender)
        self.events = events
        self.person = person
        self._checks = checks
        if checks is not None:
            # Only a checking queue takes a detour: shadow the methods on this instance,
            # so that an unchecked one runs EventQueue's own, with no extra call.
            vars(self).update(track=self._checked_track,
                              track_anonymous=self._checked_track_anonymous)

    if TYPE_CHECKING:
        async def __aenter__(self) -> Self: ...

        async def track(  # type: ignore[override]  # narrower than EventQueue's, on purpose
                self, customer_id: str | int, name: DeclaredEvent[P], /,
                *args: P.args, **kwargs: P.kwargs) -> Receipt:
            """Track a declared event: ``track("42", Acme.purchase, data, id=, timestamp=)``.

            ``data`` must fit the event's declared type; ``id`` is a dedupe id (a ULID when
            None) and ``timestamp`` unix seconds or a datetime, as in EventQueue.track.
            """

        async def track_anonymous(  # type: ignore[override]  # as track
                self, anonymous_id: str | int | None, name: DeclaredEvent[P], /,
                *args: P.args, **kwargs: P.kwargs) -> Receipt:
            """Track a declared event for an anonymous visitor; arguments as in track."""

        async def identify(  # type: ignore[override]  # as track
                self, id: str | int, attributes: PersonT, /) -> Receipt:
            """Create or update a person whose attributes fit the declared Person type."""

    async def _identify(self, *args: Any, **attributes: Any) -> Receipt:
        """Create or update a person: ``identify(id, attributes)``, or as EventQueue takes it.

        The typed form passes the attributes as one mapping; the keyword form
        (``identify(id, email=...)``) still works for code that holds an EventQueue.
        """
        self._ready()
        id, attributes = _person(args, attributes)
        if self._checks is not None:
            self._checks.attributes(attributes)
        return await self._submit(ops.identify(id, attributes))

    if not TYPE_CHECKING:
        identify = _identify

    async def _checked_track(self, customer_id: str | int, name: str,
                             data: dict[str, Any] | None = None, id: str | None = None,
                             timestamp: Timestamp | None = None, **properties: Any) -> Receipt:
        assert self._checks is not None
        self._ready()  # a closed queue says so before the data is judged, as EventQueue does
        joined = ops.with_properties(data, properties)
        self._checks.event(name, joined)
        return await EventQueue.track(self, customer_id, name, cast("dict[str, Any]", joined),
                                      id, timestamp)

    async def _checked_track_anonymous(
            self, anonymous_id: str | int | None, name: str,
            data: dict[str, Any] | None = None, id: str | None = None,
            timestamp: Timestamp | None = None, **properties: Any) -> Receipt:
        assert self._checks is not None
        self._ready()
        joined = ops.with_properties(data, properties)
        self._checks.event(name, joined)
        return await EventQueue.track_anonymous(self, anonymous_id, name,
                                                cast("dict[str, Any]", joined), id, timestamp)


def _person(args: tuple[Any, ...], keywords: dict[str, Any]) -> tuple[Any, Any]:
    """Return (id, attributes) from either form of identify's arguments."""
    if len(args) == 2:  # the typed form, identify(id, attributes)
        if keywords:
            raise InvalidEventError("attributes", "give them as one mapping or as keywords, "
                                                  "not both")
        return args[0], args[1]
    if len(args) > 2:
        raise TypeError(f"identify() takes an id and an attributes mapping, not {len(args)} "
                        "positional arguments")
    # EventQueue's form: identify(id=None, **attributes), identifier= standing in for id.
    if args and "id" in keywords:
        raise TypeError("identify() got multiple values for argument 'id'")
    id = args[0] if args else keywords.pop("id", None)
    if id is None and "identifier" in keywords:
        id = keywords.pop("identifier")
    return id, keywords
