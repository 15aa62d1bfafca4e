"""The fleet pacer: one rate budget and one 429 gate for every process, kept in Redis.

Stage: delivery (the courier asks it before every request, as it asks RequestPacer).
The contract is ``_pacing.RequestPacer``'s, for the fleet: with ``rate`` requests per
second and ``n = max(1, floor(rate))``, starts follow a schedule ``1 / rate`` seconds
apart, and no window of ``n / rate + guard`` seconds holds more than ``n`` actual starts,
across all processes and hosts; a 429 seen by any process closes the gate for all.

How: one Lua script, run atomically by Redis, reads the clock with ``TIME`` (so no host's
clock takes part, and skew between hosts cannot stretch or squeeze a window), the gate
key, the schedule key and a sorted-set log of the times of recent grants; it either
records a grant now or answers how long to wait. The script's grant is not yet a start:
the reply travels back, and the caller starts then. So the caller times its call, and a
grant that arrived more than ``max_lateness`` seconds after it was asked for is not used
(it stays in the log as a start that never happened, which can only slow the fleet) and
the caller asks again. Every used grant thus starts within ``max_lateness`` after its
Redis time, and the log's window is widened by that much, which keeps the guarantee
about actual starts.

Why a script of our own, and not ``limits`` (its async Redis storage, moving window):
``limits`` stamps each hit with the *client's* ``time.time()``, so two hosts whose
clocks differ by 50 ms can put 2n hits in one real window; it has no gate, no schedule
(a full window can be spent in one burst), and no "how long to wait" in the same atomic
step (``get_window_stats`` is a second, racing round trip). PyrateLimiter's Redis bucket
has the same client clock. A MULTI/EXEC or WATCH transaction cannot branch on what it
read, and would retry under contention; a script reads, decides and writes in one step.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from redis.exceptions import RedisError

from .._exceptions import ConfigError
from .._pacing import RATE_GUARD
from ._errors import RedisUnavailableError
from ._outage import Outage
from ._streams import check_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["MAX_LATENESS", "FleetPacer", "PacerStatistics", "Turn"]

MAX_LATENESS: Final = 0.01
"""Seconds a grant may take to reach the caller and still be used (see the module doc)."""
_MICRO: Final = 1_000_000

# Grant a start now, or say how long to wait. Times in µs of Redis' clock.
# KEYS: start log (zset), next slot on the schedule, 429 gate.
# ARGV: n (0: no rate limit), window, spacing, retention, a unique member for the log.
# Replies {1 granted | 0 wait, µs to wait, Redis time}.
_RESERVE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n, window, spacing = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = now
local gate = tonumber(redis.call('GET', KEYS[3]) or '0')
if gate > start then start = gate end
local slot = 0
if n > 0 then
  slot = tonumber(redis.call('GET', KEYS[2]) or '0')
  if slot > start then start = slot end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - tonumber(ARGV[4])))
  local inside = redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now - window), '+inf')
  if inside >= n then
    local total = redis.call('ZCARD', KEYS[1])
    local blocker = redis.call('ZRANGE', KEYS[1], total - n, total - n, 'WITHSCORES')
    local free = tonumber(blocker[2]) + window
    if free > start then start = free end
  end
end
if start > now then
  return {0, string.format('%.0f', start - now), string.format('%.0f', now)}
end
if n > 0 then
  if now - slot < spacing / 2 then slot = slot + spacing else slot = now + spacing end
  local ttl = math.ceil(tonumber(ARGV[4]) / 1000) + 1000
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SET', KEYS[2], string.format('%.0f', slot), 'PX', ttl)
end
return {1, '0', string.format('%.0f', now)}
"""

# Close the gate for ARGV[1] µs from now, never shortening it. KEYS: the gate.
# Replies {µs until it opens, Redis time}.
_CLOSE_GATE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local ends = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if ends > current then
  redis.call('SET', KEYS[1], string.format('%.0f', ends), 'PX',
             string.format('%.0f', math.ceil(tonumber(ARGV[1]) / 1000) + 1))
  current = ends
end
return {string.format('%.0f', current - now), string.format('%.0f', now)}
"""

# How long the gate stays closed (0: open). KEYS: the gate. Replies {µs, Redis time}.
_GATE_STATE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local ends = tonumber(redis.call('GET', KEYS[1]) or '0')
return {string.format('%.0f', math.max(0, ends - now)), string.format('%.0f', now)}
"""


@dataclass(frozen=True, slots=True)
class Turn:
    """The answer to one ``try_start``.

    Attributes:
        granted: whether the caller may start its request now (and must, at once).
        wait: when not granted, seconds until a start may be granted (0 after a late
            grant: ask again at once).
        server_time: Redis' clock when the script ran, in seconds since the epoch.
        late: a grant arrived too late to be used.
    """

    granted: bool
    wait: float
    server_time: float
    late: bool = False


@dataclass(frozen=True, slots=True)
class PacerStatistics:
    """A snapshot of a pacer's counters.

    Attributes:
        granted: grants used.
        waited: answers to wait.
        late: grants that arrived too late and were abandoned.
        gates_closed: ``close_gate`` calls by this process.
        connected: whether Redis answered the last call.
    """

    granted: int
    waited: int
    late: int
    gates_closed: int
    connected: bool


class FleetPacer:
    """Say when the next request of the fleet may start, under one rate and one 429 gate.

    Guarantee (as RequestPacer's, for the whole fleet, by Redis' clock): with ``rate``
    requests per second and ``n = max(1, floor(rate))``, no window of ``n / rate +
    guard`` seconds holds more than ``n`` actual starts of requests granted by pacers of
    the same ``name``, and no two grants are closer than half of ``1 / rate``; a request
    that starts late does not push the schedule back. No request is granted while the
    gate is closed; ``close_gate`` never shortens it. With ``rate=None`` only the gate
    applies.

    Args:
        redis: a ``redis.asyncio.Redis`` with bytes replies (see ``connect``).
        name: the budget's key prefix, the same for every process sharing it, e.g.
            ``f"cio-queue:{site_id}"``; keys are ``name + ":starts" | ":slot" | ":gate"``.
        rate: requests per second for the whole fleet, or None.
        guard: seconds added to the window for network jitter (RequestPacer's).
        max_lateness: seconds within which a grant must reach the caller to be used.

    Raises:
        ConfigError: an argument is out of range, or the client decodes replies.
    """

    def __init__(self, redis: Redis, name: str, rate: float | None, *,
                 guard: float = RATE_GUARD, max_lateness: float = MAX_LATENESS) -> None:
        check_client(redis)
        if not name:
            raise ConfigError("name must be a non-empty key prefix")
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"rate must be a positive number of requests per second or "
                              f"None, got {rate!r}")
        if not 0 <= guard <= 1 or not 0 < max_lateness <= 1:
            raise ConfigError("guard must be 0 to 1 and max_lateness above 0 and up to 1 "
                              "second")
        self._redis = redis
        self.name = name
        self.rate = rate
        self._keys = [f"{name}:starts", f"{name}:slot", f"{name}:gate"]
        size = max(1, math.floor(rate)) if rate is not None else 0
        window = size / rate + guard + max_lateness if rate is not None else 0.0
        spacing = 1 / rate if rate is not None else 0.0
        self._args = [size, _micro(window), _micro(spacing), _micro(max(window, 1.0) + 0.1)]
        self._max_lateness = max_lateness
        self._reserve = redis.register_script(_RESERVE)
        self._close_gate = redis.register_script(_CLOSE_GATE)
        self._gate_state = redis.register_script(_GATE_STATE)
        self._loaded = False
        self._token = os.urandom(6).hex()
        self._counter = 0
        self._outage = Outage("pacer", name=name)
        self._granted = self._waited = self._late = self._gates = 0

    def __repr__(self) -> str:
        return f"<FleetPacer {self.name!r} rate={self.rate}>"

    async def try_start(self) -> Turn:
        """Ask once: a start granted now, or how long until one may be.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        self._counter += 1
        try:
            if not self._loaded:
                # Load the script (and connect) outside the timed call, so that the
                # first grant is not late for want of a round trip.
                await self._redis.script_load(_RESERVE)
                self._loaded = True
            asked = time.monotonic()
            reply = await self._reserve(keys=self._keys,
                                        args=[*self._args, f"{self._token}:{self._counter}"])
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        server_time = int(reply[2]) / _MICRO
        if int(reply[0]) != 1:
            self._waited += 1
            return Turn(granted=False, wait=int(reply[1]) / _MICRO, server_time=server_time)
        if time.monotonic() - asked > self._max_lateness:
            self._late += 1
            return Turn(granted=False, wait=0.0, server_time=server_time, late=True)
        self._granted += 1
        return Turn(granted=True, wait=0.0, server_time=server_time)

    async def next_turn(self) -> tuple[bool, float]:
        """Ask once: ``(True, 0.0)``, a start granted now, or ``(False, seconds to wait)``.

        While Redis is unreachable the wait is the outage's backoff (one error logged per
        outage) and nothing is granted: no request starts outside the fleet's budget.
        """
        try:
            turn = await self.try_start()
        except RedisUnavailableError as exc:
            return False, self._outage.failed(exc)
        self._outage.recovered()
        return turn.granted, turn.wait

    async def wait_turn(self, deadline: float = math.inf) -> bool:
        """Wait until a start is granted; False if that would come after ``deadline``.

        ``deadline`` is in ``time.monotonic()`` seconds. While Redis is unreachable this
        retries with backoff, logging one error per outage, and grants nothing: no
        request starts outside the fleet's budget.
        """
        while True:
            try:
                turn = await self.try_start()
            except RedisUnavailableError as exc:
                delay = self._outage.failed(exc)
                if time.monotonic() + delay > deadline:
                    return False
                await asyncio.sleep(delay)
                continue
            self._outage.recovered()
            if turn.granted:
                return True
            if time.monotonic() + turn.wait > deadline:
                return False
            await asyncio.sleep(turn.wait)

    async def close_gate(self, seconds: float) -> float:
        """Keep every process from starting a request for ``seconds`` (never shortens).

        Returns:
            Seconds until the gate opens, which is later if another process had closed
            it for longer.

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        try:
            reply = await self._close_gate(keys=self._keys[2:],
                                           args=[_micro(max(0.0, seconds))])
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        self._gates += 1
        return int(reply[0]) / _MICRO

    async def gate_remaining(self) -> float:
        """Return the seconds until the gate opens (0 when it is open).

        Raises:
            RedisUnavailableError: Redis could not be reached.
        """
        try:
            reply = await self._gate_state(keys=self._keys[2:])
        except RedisError as exc:
            raise RedisUnavailableError(f"Redis is unreachable: {exc}") from exc
        return int(reply[0]) / _MICRO

    def statistics(self) -> PacerStatistics:
        """Return a snapshot of the counters."""
        return PacerStatistics(granted=self._granted, waited=self._waited, late=self._late,
                               gates_closed=self._gates, connected=not self._outage.down)


def _micro(seconds: float) -> int:
    return round(seconds * _MICRO)
