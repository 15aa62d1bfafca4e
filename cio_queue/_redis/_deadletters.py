"""Dead letters for the fleet: the dead-letter file's records, in a Redis Stream.

Stage: the recorder, beside ``_deadletter.DeadLetterWriter``. Each entry has one field,
``record``: the record as one line of compact JSON, exactly as the file holds it
(``_deadrecord.dumps_record``, format ``cio-queue/dead-letter/1``), so replay reads a
stream and a file alike. The stream is never trimmed here: a dead letter leaves it only
through :meth:`DeadLetterStream.remove`, once replayed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import RedisError

from .._deadrecord import FORMAT, dumps_record
from ._errors import RedisUnavailableError
from ._streams import check_client, text

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["DeadLetter", "DeadLetterStream"]

RECORD_FIELD: Final = b"record"
READ_BATCH: Final = 500
"""Entries fetched per XRANGE while reading."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream: its id and its record (None if unreadable)."""

    entry_id: str
    record: dict[str, Any] | None
    line: str


class DeadLetterStream:
    """Append dead-letter records to a stream, read them back, remove replayed ones.

    Every call raises :class:`RedisUnavailableError` when Redis cannot be reached: the
    caller decides (the queue falls back to its dead-letter file).
    """

    def __init__(self, redis: Redis, key: str) -> None:
        check_client(redis)
        self._redis = redis
        self.key = key

    def __repr__(self) -> str:
        return f"<DeadLetterStream {self.key!r}>"

    async def add(self, record: Mapping[str, Any]) -> str:
        """Append one record and return its entry id once Redis acknowledged it.

        Raises:
            ValueError: the record is not a ``cio-queue/dead-letter/1`` record.
            RedisUnavailableError: Redis could not be reached.
        """
        return (await self.add_many([record]))[0]

    async def add_many(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Append records, in order, in one MULTI/EXEC; return their entry ids.

        Raises:
            ValueError: a record is not a ``cio-queue/dead-letter/1`` record (nothing
                was appended).
            RedisUnavailableError: Redis could not be reached.
        """
        lines = [_line(record) for record in records]
        if not lines:
            return []
        try:
            pipe = self._redis.pipeline(transaction=True)
            for line in lines:
                pipe.xadd(self.key, {RECORD_FIELD: line})
            return [text(entry_id) for entry_id in await pipe.execute()]
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc

    async def last_id(self) -> str | None:
        """Return the id of the newest entry, or None when the stream is empty.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        try:
            newest: Any = await self._redis.xrevrange(self.key, count=1)
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        return text(newest[0][0]) if newest else None

    async def page(self, *, after: str | None, until: str, count: int) -> list[DeadLetter]:
        """Return up to ``count`` entries after ``after`` and up to ``until``, in order.

        ``after`` None starts from the first entry; ``until`` is included.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        start = f"({after}" if after is not None else "-"
        try:
            entries: Any = await self._redis.xrange(self.key, min=start, max=until, count=count)
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        return [_dead_letter(text(entry_id), fields.get(RECORD_FIELD, b""))
                for entry_id, fields in entries]

    async def replace(self, pairs: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Put new records in place of old entries, in one MULTI.

        Each old entry is deleted and its new record appended (at the stream's end).

        Raises:
            ValueError: a record is not a ``cio-queue/dead-letter/1`` record.
            RedisUnavailableError: Redis could not be reached.
        """
        lines = [(entry_id, _line(record)) for entry_id, record in pairs]
        if not lines:
            return
        pipe = self._redis.pipeline(transaction=True)
        for entry_id, line in lines:
            pipe.xadd(self.key, {RECORD_FIELD: line})
            pipe.xdel(self.key, entry_id)
        try:
            await pipe.execute()
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc

    async def read(self, *, after: str | None = None) -> AsyncIterator[DeadLetter]:
        """Yield the records in the order they were added, from the first or after ``after``.

        Reads a page of entries at a time; entries added while reading are included.
        A record that is not valid JSON comes with ``record=None`` and its raw line.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        start = f"({after}" if after is not None else "-"
        while True:
            try:
                page: Any = await self._redis.xrange(self.key, min=start, max="+",
                                                     count=READ_BATCH)
            except RedisError as exc:
                raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
            for entry_id, fields in page:
                yield _dead_letter(text(entry_id), fields.get(RECORD_FIELD, b""))
            if len(page) < READ_BATCH:
                return
            start = f"({text(page[-1][0])}"

    async def remove(self, entry_ids: Iterable[str]) -> int:
        """Delete entries (replayed ones); return how many existed.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        ids = list(entry_ids)
        if not ids:
            return 0
        try:
            return int(await self._redis.xdel(self.key, *ids))
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc

    async def length(self) -> int:
        """Return how many dead letters the stream holds.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        try:
            return int(await self._redis.xlen(self.key))
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc


def _line(record: Mapping[str, Any]) -> bytes:
    """A record as the stream holds it: one line of compact JSON.

    Raises:
        ValueError: not a ``cio-queue/dead-letter/1`` record.
    """
    if record.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    return dumps_record(dict(record)).encode()


def _dead_letter(entry_id: str, raw: bytes) -> DeadLetter:
    line = raw.decode("utf-8", errors="replace")
    try:
        record = json.loads(line)
    except ValueError:
        return DeadLetter(entry_id, None, line)
    return DeadLetter(entry_id, record if isinstance(record, dict) else None, line)
