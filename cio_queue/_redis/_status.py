"""The fleet's state in one call, for ``cio-queue status --redis-url URL``.

Stage: observation; reads only. One pipeline, so the figures are of one moment (give or
take the pipeline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from .._exceptions import ConfigError
from ._errors import RedisUnavailableError
from ._streams import StreamLayout, check_client, text

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["status"]


async def status(redis: Redis, stream: str, group: str, *, partitions: int | None = None,
                 pacer: str | None = None) -> dict[str, Any]:
    """Return the state of a partitioned stream, its consumer group and its pacer.

    Args:
        redis: a ``redis.asyncio.Redis`` with bytes replies.
        stream: the stream's name.
        group: the consumer group.
        partitions: the partition count; by default the one the stream recorded.
        pacer: the FleetPacer's ``name``, to report its rate and gate.

    Returns:
        A JSON-ready dict: ``partitions`` (count), ``length`` (entries in all partitions),
        ``pending`` (handed out, not acknowledged), ``lag`` (not yet handed out: acked
        entries are deleted, so it is length minus pending), ``per_partition`` (each
        with ``length``, ``pending``, ``lag``, ``holder`` and ``lease_remaining``
        seconds), ``consumers`` (pending entries per member name), ``members`` (live
        members and seconds until they expire), ``server_time`` (Redis' clock), and
        ``pacer`` (``starts_last_second``: grants in the last second of Redis' clock,
        late ones that were not used included; ``gate_remaining`` seconds) or None.

    Raises:
        ConfigError: no partition count was given or recorded.
        RedisUnavailableError: Redis could not be reached.
    """
    check_client(redis)
    try:
        if partitions is None:
            partitions = await _recorded_partitions(redis, stream)
        layout = StreamLayout(stream, partitions)
        now, replies = await _read(redis, layout, group, pacer)
    except RedisError as exc:
        raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
    _check_replies(replies)
    consumers: dict[str, int] = {}
    per_partition = [_partition(layout, p, replies[4 * p: 4 * p + 4], consumers)
                     for p in range(partitions)]
    return {
        "stream": stream, "group": group, "partitions": partitions,
        "server_time": now / 1_000_000,
        **{total: sum(item[total] for item in per_partition)
           for total in ("length", "pending", "lag")},
        "per_partition": per_partition,
        "consumers": consumers,
        "members": _members(replies[4 * partitions], now),
        "pacer": None if pacer is None else _pacer(pacer, replies[4 * partitions + 1:], now),
    }


async def _read(redis: Redis, layout: StreamLayout, group: str, pacer: str | None
                ) -> tuple[int, list[Any]]:
    """Return Redis' time in µs and every reply status needs, from one pipeline."""
    now_s, now_us = await redis.time()
    now: int = now_s * 1_000_000 + now_us
    pipe = redis.pipeline(transaction=False)
    for p in range(layout.partitions):
        pipe.xlen(layout.partition(p))
        pipe.xpending(layout.partition(p), group)
        pipe.get(layout.lease(group, p))
        pipe.pttl(layout.lease(group, p))
    pipe.zrangebyscore(layout.members(group), now // 1000, "+inf", withscores=True)
    if pacer is not None:
        pipe.zcount(f"{pacer}:starts", f"({now - 1_000_000}", "+inf")
        pipe.get(f"{pacer}:gate")
    return now, await pipe.execute(raise_on_error=False)


async def _recorded_partitions(redis: Redis, stream: str) -> int:
    recorded = await redis.hget(f"{stream}:meta", "partitions")
    if recorded is None:
        raise ConfigError(f"stream {stream!r} has no partition count in Redis: pass partitions=")
    return int(recorded)


def _partition(layout: StreamLayout, index: int, replies: list[Any],
               consumers: dict[str, int]) -> dict[str, Any]:
    """Summarise one partition's XLEN, XPENDING, lease GET and PTTL; count per member."""
    length, pending, holder, ttl = replies
    summary = pending if isinstance(pending, dict) else {}  # no group yet: nothing pending
    waiting = int(summary.get("pending") or 0)
    for member in summary.get("consumers") or ():
        name = text(member["name"])
        consumers[name] = consumers.get(name, 0) + int(member["pending"])
    held = holder is not None and int(ttl) > 0
    return {
        "partition": index, "stream": layout.partition(index), "length": int(length),
        "pending": waiting, "lag": max(0, int(length) - waiting),
        "holder": text(holder) if holder is not None else None,
        "lease_remaining": int(ttl) / 1000 if held else None,
    }


def _check_replies(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception) and not _no_group(reply):  # no group yet: fine
            raise RedisUnavailableError(f"Redis refused a status read: {reply}")


def _members(members: list[tuple[bytes, float]], now: int) -> dict[str, float]:
    """Return each live member with the seconds until it expires."""
    return {text(name): round(score / 1000 - now / 1_000_000, 3) for name, score in members}


def _pacer(name: str, replies: list[Any], now: int) -> dict[str, Any]:
    starts, gate = replies
    return {"name": name, "starts_last_second": int(starts),
            "gate_remaining": max(0, int(gate or 0) - now) / 1_000_000}


def _no_group(reply: Exception) -> bool:
    return isinstance(reply, ResponseError) and "NOGROUP" in str(reply)
