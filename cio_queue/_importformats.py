"""Import formats: one record of a JSON-lines or CSV file made into an EventQueue call.

Stage: import, its pure half: no I/O, no awaits. ``_importfiles`` reads the records and
hands each here (on a worker thread); the result is a :class:`Call` of one of EventQueue's
public methods, run on the event loop by ``_import``, so a line is validated by exactly the
builders that validate an app's calls, or a dead-letter record's :class:`Operation`,
checked as replay checks it. What is wrong with a record's shape is a :class:`LineError`
naming the field.

JSON lines, one object per line, in one of two shapes:

- hand-written: ``"kind"`` names the method, and the other keys are its arguments by
  name; a method's ``**keywords`` (identify's attributes, the event data of pageview and
  backfill, the device fields of add_device) are given as one object, ``"attributes"`` or
  ``"data"``. A ``timestamp`` is unix seconds or an ISO 8601 text.
- a dead-letter record (``"format": "cio-queue/dead-letter/1"``), as a queue writes it.

CSV, with a header: each row is a person (``identify``: an id column, the other columns
attributes) or an event (``track``: a person column, the name from a column or one name for
all, an optional timestamp column, the other columns data). Cells are text; an empty cell
is left out.

A track or track_anonymous without an ``id`` gets one made from the import's start time and
the line number (:class:`EventIds`), the same in every run of one import, so the API
deduplicates an event that a resumed import sends again.
"""

from __future__ import annotations

import csv
import io
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

import orjson

from ._deadrecord import FORMAT, operation_from_record
from ._operations import Operation
from ._ulid import ulid_of

__all__ = ["DEFAULT_NAME_COLUMN", "DEFAULT_TIMESTAMP_COLUMN", "SHAPES", "Call", "CsvRows",
           "EventIds", "ImportFormat", "JsonLines", "LineError", "Parsed", "Shape"]

DEFAULT_NAME_COLUMN: Final = "name"
DEFAULT_TIMESTAMP_COLUMN: Final = "timestamp"
_DEFAULT_ID_COLUMNS: Final = {"people": "id", "events": "customer_id"}
_LINE_NUMBER_BITS: Final = 40
_SEED_BITS: Final = 80 - _LINE_NUMBER_BITS


class LineError(ValueError):
    """A record that is no valid line of its format; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class Call:
    """An EventQueue method to call, by name, with its keyword arguments."""

    kind: str
    arguments: dict[str, Any]


Parsed: TypeAlias = Call | Operation
"""A record made ready to enqueue: a method call, or a dead-letter record's operation."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The keys of a hand-written JSON line of one kind: its method's arguments."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    keywords: str | None = None
    """The key whose object holds the method's ``**keywords``, if it takes any."""

    def names(self) -> frozenset[str]:
        """Every key a line of this kind may have, ``kind`` included."""
        extra = (self.keywords,) if self.keywords else ()
        return frozenset(("kind", *self.required, *self.optional, *extra))


SHAPES: Final[Mapping[str, Shape]] = {
    "identify": Shape(("id",), keywords="attributes"),
    "track": Shape(("customer_id", "name"), ("data", "id", "timestamp")),
    "track_anonymous": Shape(("name",), ("anonymous_id", "data", "id", "timestamp")),
    "pageview": Shape(("customer_id", "page"), keywords="data"),
    "backfill": Shape(("customer_id", "name", "timestamp"), keywords="data"),
    "delete": Shape(("customer_id",)),
    "suppress": Shape(("customer_id",)),
    "unsuppress": Shape(("customer_id",)),
    "add_device": Shape(("customer_id", "device_id", "platform"), keywords="data"),
    "delete_device": Shape(("customer_id", "device_id")),
    "merge_customers": Shape(("primary_id_type", "primary_id", "secondary_id_type",
                              "secondary_id")),
}
"""Each hand-written kind: EventQueue's method of that name and its arguments."""
_IDENTIFIED: Final = frozenset({"track", "track_anonymous"})
"""The kinds whose method takes an event ``id``, which the import makes when a line has none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportFormat:
    """How to read a file to import.

    Attributes:
        format: ``"jsonl"`` or ``"csv"``; None decides by the file's extension (``.csv``
            is CSV, anything else JSON lines).
        rows: what a CSV row is: a person (``"people"``) or an event (``"events"``).
        id_column: the CSV column of the person's id; None means ``id`` for people,
            ``customer_id`` for events.
        event_name: the name of every event of a CSV of events; None takes each row's from
            ``name_column``.
        name_column: the CSV column of the event name, when ``event_name`` is None.
        timestamp_column: the CSV column of the event's time, used if the header has it.
    """

    format: Literal["jsonl", "csv"] | None = None
    rows: Literal["people", "events"] = "people"
    id_column: str | None = None
    event_name: str | None = None
    name_column: str = DEFAULT_NAME_COLUMN
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN

    def format_of(self, name: str) -> Literal["jsonl", "csv"]:
        """The format of a file called ``name``."""
        if self.format is not None:
            return self.format
        return "csv" if name.lower().endswith(".csv") else "jsonl"

    @property
    def person_column(self) -> str:
        """The CSV column of the person's id."""
        return self.id_column or _DEFAULT_ID_COLUMNS[self.rows]

    def described(self, name: str) -> dict[str, Any]:
        """The settings that decide what a line of file ``name`` means, as JSON values."""
        if self.format_of(name) == "jsonl":
            return {"format": "jsonl"}
        described: dict[str, Any] = {"format": "csv", "rows": self.rows,
                                     "id_column": self.person_column}
        if self.rows == "events":
            described.update(event_name=self.event_name, name_column=self.name_column,
                             timestamp_column=self.timestamp_column)
        return described


@dataclass(frozen=True, slots=True)
class EventIds:
    """Event ids for an import's lines: the same ULID for a line in every run of the import.

    A ULID of the import's start (milliseconds) and 80 bits: a random seed drawn when the
    import starts, then the line number, so ids are unique per line and per import.
    """

    millis: int
    seed: int

    @classmethod
    def new(cls) -> EventIds:
        """Ids for a new import: now, and a fresh seed."""
        return cls(time.time_ns() // 1_000_000, secrets.randbits(_SEED_BITS))

    def for_line(self, number: int) -> str:
        """The event id of line ``number``."""
        return ulid_of(self.millis, self.seed << _LINE_NUMBER_BITS | number)


class JsonLines:
    """Make JSON lines into calls: hand-written lines and dead-letter records."""

    def __init__(self, ids: EventIds) -> None:
        self._ids = ids

    def parse(self, number: int, raw: bytes) -> Parsed:
        """Make line ``number`` into a call or an operation.

        Raises:
            LineError: not a JSON object, an unknown kind, a missing or unknown key.
        """
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LineError(f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise LineError("not a JSON object")
        if "format" in record:
            try:
                return operation_from_record(record)
            except ValueError as exc:
                raise LineError(str(exc)) from None
        return self._call(number, record)

    def _call(self, number: int, record: dict[str, Any]) -> Call:
        kind, shape = _shape_of(record)
        arguments = {name: record[name] for name in (*shape.required, *shape.optional)
                     if name in record}
        if shape.keywords is not None:
            _join_keywords(kind, shape, arguments, record.get(shape.keywords))
        if "timestamp" in arguments:
            arguments["timestamp"] = timestamp_of(arguments["timestamp"])
        if kind in _IDENTIFIED and arguments.get("id") is None:
            arguments["id"] = self._ids.for_line(number)
        return Call(kind, arguments)


def _shape_of(record: dict[str, Any]) -> tuple[str, Shape]:
    """The kind of a hand-written line and its shape, once its keys are found to fit."""
    kind = record.get("kind")
    shape = SHAPES.get(kind) if isinstance(kind, str) else None
    if shape is None or not isinstance(kind, str):
        raise LineError(f"kind must be one of {', '.join(SHAPES)} (or the line a {FORMAT} "
                        "record)")
    if unknown := record.keys() - shape.names():
        raise LineError(f"{kind} takes no {_listed(unknown)}; its keys are "
                        f"{_listed(shape.names() - {'kind'})}")
    if missing := [name for name in shape.required if name not in record]:
        raise LineError(f"{kind} needs {_listed(missing)}")
    return kind, shape


def _join_keywords(kind: str, shape: Shape, arguments: dict[str, Any], given: object) -> None:
    """Add the object under ``shape.keywords`` to the arguments, as ``**keywords``."""
    if given is None:
        return
    if not isinstance(given, dict):
        raise LineError(f"{shape.keywords} must be a JSON object")
    taken = given.keys() & {"self", *shape.required, *shape.optional}
    if taken:
        raise LineError(f"{shape.keywords} has {_listed(taken)}, the name of an argument of "
                        f"{kind}() itself")
    arguments.update(given)


def timestamp_of(value: object) -> object:
    """Read a timestamp given as text: digits are unix seconds, else ISO 8601 (naive: UTC).

    Anything else is left to the queue's own check.

    Raises:
        LineError: text that is neither.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise LineError(f"timestamp {value[:40]!r} is neither unix seconds nor an ISO 8601 "
                        "time") from None


class CsvRows:
    """Make CSV rows into identify or track calls, by the header and an ImportFormat.

    Raises:
        LineError: (on construction) a header without the columns ``fmt`` needs, or with
            a column twice.
    """

    def __init__(self, header: list[str], fmt: ImportFormat, ids: EventIds) -> None:
        if len(set(header)) != len(header):
            twice = sorted({name for name in header if header.count(name) > 1})
            raise LineError(f"the header has {_listed(twice)} more than once")
        self._header = header
        self._ids = ids
        self._events = fmt.rows == "events"
        self._person = self._column(fmt.person_column, "--id-column")
        self._event_name = fmt.event_name
        self._name = (self._column(fmt.name_column, "--name-column or --event-name")
                      if self._events and fmt.event_name is None else None)
        self._timestamp = (header.index(fmt.timestamp_column)
                           if self._events and fmt.timestamp_column in header else None)
        special = {self._person, self._name, self._timestamp}
        self._rest = [(i, name) for i, name in enumerate(header) if i not in special]

    def _column(self, name: str, option: str) -> int:
        try:
            return self._header.index(name)
        except ValueError:
            raise LineError(f"the header has no column {name!r} (it has "
                            f"{_listed(self._header)}); name the column with "
                            f"{option}") from None

    def parse(self, number: int, raw: bytes) -> Call:
        """Make the row that starts on line ``number`` into a call.

        Raises:
            LineError: not UTF-8, or not as many cells as the header has columns.
        """
        cells = row_of(raw)
        if len(cells) != len(self._header):
            raise LineError(f"has {len(cells)} cells; the header has {len(self._header)} "
                            "columns")
        rest = {name: cells[i] for i, name in self._rest if cells[i] != ""}
        person = cells[self._person]
        if not self._events:
            if "self" in rest:
                raise LineError("a column is named 'self', the name of an argument of "
                                "identify() itself")
            return Call("identify", {"id": person, **rest})
        name = self._event_name if self._name is None else cells[self._name]
        arguments: dict[str, Any] = {"customer_id": person, "name": name, "data": rest,
                                     "id": self._ids.for_line(number)}
        if self._timestamp is not None and cells[self._timestamp] != "":
            arguments["timestamp"] = timestamp_of(cells[self._timestamp])
        return Call("track", arguments)


def row_of(raw: bytes, *, encoding: str = "utf-8") -> list[str]:
    """The cells of one CSV record (which may span lines inside quotes).

    Raises:
        LineError: not text in ``encoding``, or more than one row.
    """
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise LineError(f"is not UTF-8 text (byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise LineError(f"is not a CSV row ({exc})") from None
    if len(rows) != 1:
        raise LineError("is not one CSV row")
    return rows[0]


def _listed(names: Iterable[str]) -> str:
    """Names for a message, quoted; a set in sorted order, a list in its own."""
    items = names if isinstance(names, list | tuple) else sorted(names)
    return ", ".join(repr(name) for name in items)
