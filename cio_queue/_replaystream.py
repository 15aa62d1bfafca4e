"""Replay of a fleet's dead-letter stream, as ``replay`` does for a dead-letter file.

Stage: outside the pipeline, like ``_replay``: an ordinary (not fleet) EventQueue sends
the operations again, a page of entries at a time. An entry leaves the stream once its
operation was delivered; one that is rejected or fails again is put back at the end of
the stream with its new reason and its attempts added up (in one MULTI, so it is never
lost nor doubled); an entry that is no valid record stays as it is, reported in a
WARNING. Only the entries present when the replay starts are read, so what it puts back
is not sent twice in one run. Interrupted, it resumes by itself: what was delivered is
gone from the stream, and what was in flight is sent again (with its event id, which the
API deduplicates).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Final

from ._config import DEFAULT_REDIS_GROUP, DEFAULT_REDIS_LEASE, DEFAULT_REDIS_PARTITIONS, QueueConfig
from ._deadrecord import operation_from_record, record_again
from ._fleet import dead_letter_key
from ._log import log
from ._outcome import OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue
from ._redis import DeadLetter, DeadLetterStream, connect

__all__ = ["replay_stream"]

PAGE: Final = 1_000
"""Entries read, sent and settled together."""


async def replay_stream(redis_url: str, config: QueueConfig, *,
                        stream: str | None = None) -> Statistics:
    """Re-send the dead-letter stream of the fleet stream ``stream`` at ``redis_url``.

    Args:
        redis_url: the fleet's Redis.
        config: the credentials and delivery settings for the replay's queue; its fleet
            and dead-letter options are ignored (the stream is the dead-letter store).
        stream: the fleet's stream; by default ``config.stream_name``.

    Returns:
        The statistics of the replay's queue.

    Raises:
        RedisUnavailableError: Redis could not be reached.
    """
    key = dead_letter_key(stream or config.stream_name)
    redis = connect(redis_url)
    try:
        letters = DeadLetterStream(redis, key)
        last = await letters.last_id()
        if last is None:
            return Statistics()
        async with EventQueue(_plain(config)) as queue:
            after: str | None = None
            while page := await letters.page(after=after, until=last, count=PAGE):
                await _replay_page(queue, letters, page)
                after = page[-1].entry_id
        stats = queue.statistics()
    finally:
        await redis.aclose()
    log.info("cio_queue.replayed", stream=key, delivered=stats.delivered,
             rejected=stats.rejected, failed=stats.failed)
    return stats


def _plain(config: QueueConfig) -> QueueConfig:
    """``config`` for a queue of its own: no fleet, no dead-letter file, waiting for room."""
    return dataclasses.replace(
        config, dead_letter_path=None, overflow="block", enqueue_timeout=None, redis_url=None,
        redis_stream=None, redis_partitions=DEFAULT_REDIS_PARTITIONS,
        redis_durability="batched", redis_group=DEFAULT_REDIS_GROUP, redis_consumer=None,
        redis_lease=DEFAULT_REDIS_LEASE, consume=True)


async def _replay_page(queue: EventQueue, letters: DeadLetterStream,
                       page: list[DeadLetter]) -> None:
    """Send a page's operations, wait until they settle, then update the stream."""
    sent: list[tuple[DeadLetter, dict[str, Any], Receipt]] = []
    for letter in page:
        if letter.record is None:
            log.warning("cio_queue.replay_unreadable", stream=letters.key,
                        entry_id=letter.entry_id, error="not a JSON object")
            continue
        try:
            op = operation_from_record(letter.record)
        except ValueError as exc:
            log.warning("cio_queue.replay_unreadable", stream=letters.key,
                        entry_id=letter.entry_id, error=str(exc))
            continue
        sent.append((letter, letter.record, await queue._submit(op)))
    await queue.flush()
    now = time.time()
    delivered, again = [], []
    for letter, record, receipt in sent:
        outcome = receipt.outcome
        assert outcome is not None  # flush() settled every operation of the page
        if outcome.status is OutcomeStatus.DELIVERED:
            delivered.append(letter.entry_id)
        else:
            again.append((letter.entry_id, record_again(record, outcome, now)))
    await letters.remove(delivered)
    await letters.replace(again)
