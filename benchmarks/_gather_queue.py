"""The baseline most apps write first: a list, and an ``asyncio.gather`` of one request per
event every five seconds.

``track`` appends the event to a list. A background task wakes every ``interval`` seconds,
swaps the list for an empty one and sends each event as its own v1
``POST /api/v1/customers/{id}/events`` (the official SDK's request), all at once through
``asyncio.gather`` on one aiohttp session with aiohttp's default connection limit (100).
A failed request is counted and dropped: no retry, no limit on the list. ``aclose()``
cancels the timer and sends what is left. Written here as a baseline; it is not code from
any library.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from ._harness import EVENT_DATA, EVENT_NAME, Outcome, Probe, customer_id, produce
from ._server import ServerHandle

INTERVAL: Final = 5.0
"""Seconds between two sends of the list."""


class GatherEveryInterval:
    """A list of events, sent one request per event by ``gather`` every ``interval`` s."""

    def __init__(self, base_url: str, site_id: str, api_key: str,
                 interval: float = INTERVAL) -> None:
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._base_url = base_url
        self._interval = interval
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._session: aiohttp.ClientSession | None = None
        self._timer: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.requests = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._timer = asyncio.create_task(self._every_interval())

    async def track(self, customer_id: str, name: str, data: dict[str, Any]) -> str:
        event_id = uuid.uuid4().hex
        path = f"/api/v1/customers/{quote(customer_id, safe='')}/events"
        self._events.append((path, {"name": name, "data": data, "id": event_id}))
        return event_id

    async def flush(self) -> None:
        events, self._events = self._events, []
        results = await asyncio.gather(*(self._post(path, body) for path, body in events),
                                       return_exceptions=True)
        for ok in results:
            if ok is True:
                self.delivered += 1
            else:
                self.failed += 1

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.flush()
        if self._session is not None:
            await self._session.close()

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def _post(self, path: str, body: dict[str, Any]) -> bool:
        assert self._session is not None
        self.requests += 1
        async with self._session.post(self._base_url + path, json=body,
                                      headers=self._headers) as response:
            await response.read()
            return response.status == 200


WARMUP_EVENTS: Final = 20


async def deliver_gather(server: ServerHandle, ops: int, probe: Probe,
                         latencies: list[int]) -> Outcome:
    """Enqueue ``ops`` events from the producers, then time until ``aclose()`` sent them."""
    queue = GatherEveryInterval(server.track_url, server.site_id, server.api_key)
    await queue.start()
    try:
        for i in range(WARMUP_EVENTS):
            await queue.track(f"warm-up-{i}", EVENT_NAME, EVENT_DATA)
        await queue.flush()
        warm_delivered, warm_requests = queue.delivered, queue.requests
        probe.start()

        async def enqueue(i: int) -> str:
            return await queue.track(customer_id(i), EVENT_NAME, EVENT_DATA)

        await produce(ops, enqueue, probe.ids, latencies)
    finally:
        await queue.aclose()
    probe.stop()
    return Outcome(delivered=queue.delivered - warm_delivered,
                   requests=queue.requests - warm_requests,
                   settled_undelivered=queue.failed)
