"""A minimal PostHog capture endpoint (``POST /batch/``) for the PostHog AsyncClient peer.

It answers the one request PostHog's legacy (v0) capture protocol sends: a JSON object
with the project key in ``api_key`` and the events in ``batch``, each carrying a ``uuid``.
It waits the same simulated latency as the fake Track API, checks the key and the events'
shape, tallies every event's ``uuid`` with the Track API's ledger and answers 200. It
lives in ``benchmarks/`` on purpose: it is a benchmark target, not a test double that
cio-queue ships.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

BATCH_PATH: Final = "/batch/"
REQUIRED_EVENT_KEYS: Final = ("event", "distinct_id", "uuid", "properties")


def posthog_app(api_key: str, latency: Callable[[], float],
                record: Callable[[int, list[str]], None]) -> web.Application:
    """Build the app: ``latency()`` gives the current delay, ``record(status, ids)`` tallies."""

    async def batch(request: web.Request) -> web.Response:
        body = await request.read()
        delay = latency()
        if delay > 0:
            await asyncio.sleep(delay)
        status, ids = _check(body, api_key)
        record(status, ids)
        if status != 200:
            return web.json_response({"type": "validation_error"}, status=status)
        return web.json_response({"status": "Ok"})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post(BATCH_PATH, batch)
    return app


def _check(body: bytes, api_key: str) -> tuple[int, list[str]]:
    """Return the status to answer with and, when it is 200, the events' uuids."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return 400, []
    if not isinstance(payload, dict) or payload.get("api_key") != api_key:
        return 401, []
    events = payload.get("batch")
    if not isinstance(events, list) or not events:
        return 400, []
    ids: list[str] = []
    for event in events:
        if not isinstance(event, dict) or any(key not in event for key in REQUIRED_EVENT_KEYS):
            return 400, []
        ids.append(str(event["uuid"]))
    return 200, ids
