"""The raw limit: what the same work costs with nothing but aiohttp and a JSON encoder.

Two baselines live here, both without validation, retries, rate limit or bookkeeping:

* :class:`RawLoop` is the cheapest honest enqueue: build the v2 batch element of
  ``track(uid, "purchase", data)`` with a ULID, serialise it with orjson, append the
  bytes to a list. Its ``track`` is an ``async def``, awaited like cio-queue's, so both
  pay the same coroutine call.
* :func:`send_raw` is the cheapest honest delivery: the same v2 operations, built before
  the clock starts, sent 100 per ``POST /api/v2/batch`` over one aiohttp session by
  ``CONCURRENCY`` workers, the body serialised per request with the stdlib ``json`` or
  with ``orjson``. A non-2xx answer is an error, not a retry.

A third, :func:`pipe_raw`, joins the two: the same producers as cio-queue's runs call
``RawLoop.track``, and workers send each 100 serialised ops as they come, so it does the
work a client must do in the timed part (build while sending). It is not what the goals
compare with; it shows how much of a gap to the raw limit that work alone explains.

Event ids are ULIDs from cio-queue's own generator, so the comparison is about the
pipeline, not about how ids are made.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

import aiohttp
import orjson

from cio_queue._ulid import new_ulid

from ._harness import (
    CONCURRENCY,
    EVENT_DATA,
    EVENT_NAME,
    OPS_PER_REQUEST,
    Outcome,
    Probe,
    customer_id,
    produce,
)
from ._server import ServerHandle

Encoder = Literal["json", "orjson"]
WARMUP_REQUESTS: Final = 2 * CONCURRENCY
"""Untimed requests before the clock starts: enough to open every pooled connection."""
_COMPACT: Final = (",", ":")


def v2_event(uid: str, event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Return the v2 batch element cio-queue builds for ``track(uid, "purchase", data)``."""
    return {"type": "person", "identifiers": {"id": uid}, "action": "event",
            "name": EVENT_NAME, "id": event_id, "attributes": data}


class RawLoop:
    """The raw loop's intake: build the v2 op with a ULID, orjson it, append to a list."""

    def __init__(self) -> None:
        self.ops: list[bytes] = []

    async def track(self, uid: str, name: str, data: dict[str, Any]) -> str:
        event_id = new_ulid()
        self.ops.append(orjson.dumps({"type": "person", "identifiers": {"id": uid},
                                      "action": "event", "name": name, "id": event_id,
                                      "attributes": data}))
        return event_id


class RawPipeline(RawLoop):
    """RawLoop's intake, and what its senders need: ``full`` wakes them (see pipe_raw)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = asyncio.Event()
        self.closing = False

    def close(self) -> None:
        """No more ops: the senders take what is left, then stop."""
        self.closing = True
        self.full.set()

    def take(self) -> tuple[bytes, int] | None:
        """The next request's body and op count: ``OPS_PER_REQUEST``, fewer only at the end."""
        ops = self.ops
        if len(ops) < OPS_PER_REQUEST and not (self.closing and ops):
            return None
        chunk = ops[:OPS_PER_REQUEST]
        del ops[:OPS_PER_REQUEST]
        return b'{"batch":[%b]}' % b",".join(chunk), len(chunk)


def _encoder(kind: Encoder) -> Callable[[list[dict[str, Any]]], bytes]:
    if kind == "orjson":
        return lambda ops: orjson.dumps({"batch": ops})
    return lambda ops: json.dumps({"batch": ops}, separators=_COMPACT).encode()


def _auth_header(server: ServerHandle) -> str:
    token = base64.b64encode(f"{server.site_id}:{server.api_key}".encode()).decode()
    return f"Basic {token}"


def _batch_request(server: ServerHandle) -> tuple[str, dict[str, str]]:
    """The URL and headers of a raw client's ``POST /api/v2/batch``."""
    return (f"{server.track_url}/api/v2/batch",
            {"Authorization": _auth_header(server), "Content-Type": "application/json"})


async def _post(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                body: bytes, client: str) -> None:
    """Send one batch body; anything but a 200 is an error (raw clients never retry)."""
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{client}: HTTP {response.status}")


async def send_raw(server: ServerHandle, ops: list[dict[str, Any]], encoder: Encoder,
                   probe: Probe, concurrency: int = CONCURRENCY) -> Outcome:
    """Deliver pre-built v2 ops, ``OPS_PER_REQUEST`` per request, ``concurrency`` at a time."""
    encode = _encoder(encoder)
    url, headers = _batch_request(server)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(chunks: Iterator[list[dict[str, Any]]]) -> int:
            sent = 0
            for chunk in chunks:  # workers share one iterator: each takes the next chunk
                await _post(session, url, headers, encode(chunk), "raw sender")
                sent += len(chunk)
            return sent

        warmup = [[v2_event("warm-up", new_ulid(), EVENT_DATA)] for _ in range(WARMUP_REQUESTS)]
        await _run_workers(worker, iter(warmup), concurrency)
        chunks = [ops[i:i + OPS_PER_REQUEST] for i in range(0, len(ops), OPS_PER_REQUEST)]
        probe.start()
        for op in ops:
            probe.ids.add(op["id"])
        delivered = await _run_workers(worker, iter(chunks), concurrency)
        probe.stop()
    return Outcome(delivered=delivered, requests=len(chunks))


async def pipe_raw(server: ServerHandle, ops: int, probe: Probe,
                   concurrency: int = CONCURRENCY) -> Outcome:
    """Deliver ``ops`` track events as built: the producers' calls, then 100 per request."""
    url, headers = _batch_request(server)
    pipeline = RawPipeline()
    requests = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> int:
            nonlocal requests
            sent = 0
            while True:
                taken = pipeline.take()
                if taken is None:
                    if pipeline.closing:
                        return sent
                    pipeline.full.clear()
                    await pipeline.full.wait()
                    continue
                await _post(session, url, headers, taken[0], "raw pipeline")
                sent += taken[1]
                requests += 1

        async def enqueue(i: int) -> str:  # cio-queue's runs await track() in one too
            event_id = await pipeline.track(customer_id(i), EVENT_NAME, EVENT_DATA)
            if len(pipeline.ops) >= OPS_PER_REQUEST:
                pipeline.full.set()
            return event_id

        warm_up = _encoder("orjson")
        await asyncio.gather(*(_post(session, url, headers,
                                     warm_up([v2_event("warm-up", new_ulid(), EVENT_DATA)]),
                                     "raw pipeline")
                               for _ in range(WARMUP_REQUESTS)))
        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        probe.start()
        await produce(ops, enqueue, probe.ids)
        pipeline.close()
        delivered = sum(await asyncio.gather(*workers))
        probe.stop()
    return Outcome(delivered=delivered, requests=requests)


async def _run_workers(worker: Callable[[Iterator[list[dict[str, Any]]]], Any],
                       chunks: Iterator[list[dict[str, Any]]], concurrency: int) -> int:
    results = await asyncio.gather(*(worker(chunks) for _ in range(concurrency)))
    return int(sum(results))
