"""The peers, each in its best fair configuration, delivering the same event.

* The official ``customerio`` SDK (sync, one v1 request per call on a ``requests``
  session): sequentially, and from a thread pool with one client per thread. Its URLs
  are always ``https://``; the benchmark rewrites its ``base_url`` to ``http://`` and
  mounts the SDK's own retrying keep-alive adapter on ``http://`` as well, so it runs as
  shipped. Each event carries an ``id``, which the SDK supports.
* ``async-customerio`` (httpx, one v1 request per ``await client.track``) with its
  default connection limits, called by ``ASYNC_CUSTOMERIO_CONCURRENCY`` worker tasks; its
  URLs are rewritten to ``http://`` the same way. Its ``track`` cannot send an event id,
  so the id travels in ``data["bench_id"]``.
* PostHog's ``AsyncClient`` (``posthog[async]``, httpx, the legacy ``/batch/`` protocol)
  with its defaults (``flush_at=100``, ``flush_interval=5.0``) and 1 or 10 worker tasks,
  against the benchmark's PostHog endpoint; ``max_queue_size`` is raised to the run's
  size so nothing is dropped, and ``flush()`` is awaited with no timeout at the end.

``sniffio`` is installed beside the httpx-based peers, so anyio's backend detection does
not fail (and fall back) on every request.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final
from urllib.parse import urlsplit

from async_customerio import AsyncCustomerIO
from customerio import CustomerIO, CustomerIOException
from posthog.async_client import AsyncClient as PostHogAsyncClient

from cio_queue._ulid import new_ulid

from ._harness import EVENT_DATA, EVENT_NAME, Outcome, Probe, customer_id, produce
from ._server import BENCH_ID_FIELD, ServerHandle

SDK_TIMEOUT: Final = 10.0
"""Per-request timeout of the official SDK clients (their default)."""
WARMUP_PER_CLIENT: Final = 3
"""Untimed requests per client (per connection) before a timed run."""
PHASE_TIMEOUT: Final = 300.0


# --- the official SDK ------------------------------------------------------------------------


def _sdk_client(server: ServerHandle) -> Any:
    parts = urlsplit(server.track_url)
    client = CustomerIO(site_id=server.site_id, api_key=server.api_key, host=parts.hostname,
                        port=parts.port, timeout=SDK_TIMEOUT)
    client.base_url = "http://" + client.base_url.removeprefix("https://")
    # The SDK mounts its keep-alive, retrying adapter on https:// only: use it for http too.
    client.http.mount("http://", client.http.get_adapter("https://track.customer.io"))
    return client


def _sdk_track(client: Any, i: int, event_id: str) -> bool:
    try:
        response = client.track(customer_id(i), EVENT_NAME, data=EVENT_DATA, id=event_id)
    except CustomerIOException:
        return False
    return bool(response.status_code == 200)


def sdk_sequential(server: ServerHandle, ops: int, probe: Probe) -> Outcome:
    """Call the SDK ``ops`` times in a row on one client."""
    client = _sdk_client(server)
    try:
        for i in range(WARMUP_PER_CLIENT):
            _sdk_track(client, i, new_ulid())
        ids = [new_ulid() for _ in range(ops)]
        probe.start()
        delivered = 0
        for i, event_id in enumerate(ids):
            probe.ids.add(event_id)
            delivered += _sdk_track(client, i, event_id)
        probe.stop()
    finally:
        client.close()
    return Outcome(delivered=delivered, requests=ops, settled_undelivered=ops - delivered)


def sdk_threads(server: ServerHandle, ops: int, threads: int, probe: Probe) -> Outcome:
    """Call the SDK from ``threads`` threads, one client (and session) per thread."""
    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads, timeout=PHASE_TIMEOUT)

    def client() -> Any:
        existing = getattr(local, "client", None)
        if existing is None:
            existing = local.client = _sdk_client(server)
            with lock:
                clients.append(existing)
        return existing

    def warm_up(_: int) -> None:
        for i in range(WARMUP_PER_CLIENT):
            _sdk_track(client(), i, new_ulid())
        barrier.wait()  # each thread takes exactly one warm-up task, so each has a client

    ids = [new_ulid() for _ in range(ops)]
    pool = ThreadPoolExecutor(threads, thread_name_prefix="customerio-sdk")
    try:
        list(pool.map(warm_up, range(threads), timeout=PHASE_TIMEOUT))
        probe.start()
        for event_id in ids:
            probe.ids.add(event_id)
        delivered = sum(pool.map(lambda i: _sdk_track(client(), i, ids[i]), range(ops),
                                 timeout=PHASE_TIMEOUT))
        probe.stop()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for each in clients:
            each.close()
    return Outcome(delivered=delivered, requests=ops, settled_undelivered=ops - delivered)


# --- async-customerio -----------------------------------------------------------------------


async def async_customerio(server: ServerHandle, ops: int, concurrency: int,
                           probe: Probe) -> Outcome:
    """Await ``client.track`` from ``concurrency`` worker tasks sharing the events."""
    parts = urlsplit(server.track_url)
    client = AsyncCustomerIO(site_id=server.site_id, api_key=server.api_key,
                             host=parts.hostname, port=parts.port)
    # It builds https:// URLs from host and port on every call: loopback is plain http.
    client.setup_base_url = lambda host, port, prefix: f"http://{host}:{port}/{prefix.strip('/')}"
    failed = 0

    async def track(i: int, event_id: str) -> bool:
        nonlocal failed
        try:
            await client.track(customer_id(i), EVENT_NAME, **EVENT_DATA,
                               **{BENCH_ID_FIELD: event_id})
        except Exception:
            failed += 1
            return False
        return True

    async def worker(work: Any) -> int:
        return sum([await track(i, event_id) for i, event_id in work])

    try:
        warm = iter([(i, new_ulid()) for i in range(concurrency * WARMUP_PER_CLIENT)])
        await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
        ids = [new_ulid() for _ in range(ops)]
        probe.start()
        for event_id in ids:
            probe.ids.add(event_id)
        work = iter(enumerate(ids))  # shared: each worker takes the next event
        delivered = sum(await asyncio.gather(*(worker(work) for _ in range(concurrency))))
        probe.stop()
    finally:
        await client.close()
    return Outcome(delivered=delivered, requests=ops, settled_undelivered=failed)


# --- PostHog AsyncClient ---------------------------------------------------------------------


async def posthog(server: ServerHandle, ops: int, workers: int, probe: Probe,
                  latencies: list[int]) -> Outcome:
    """Capture ``ops`` events from the producers; time until ``flush()`` has sent them."""
    failures: list[int] = []

    def on_error(error: Exception, batch: list[dict[str, Any]]) -> None:
        failures.append(len(batch))

    client = PostHogAsyncClient(server.posthog_key, host=server.posthog_url, thread=workers,
                                max_queue_size=max(10_000, ops), on_error=on_error)
    try:
        for i in range(100 * workers):
            client.capture(EVENT_NAME, distinct_id=f"warm-up-{i}", properties=EVENT_DATA)
        await client.flush(timeout_seconds=None)
        failures.clear()
        probe.start()

        async def enqueue(i: int) -> str | None:
            return client.capture(EVENT_NAME, distinct_id=customer_id(i), properties=EVENT_DATA)

        await produce(ops, enqueue, probe.ids, latencies)
        await client.flush(timeout_seconds=None)
        probe.stop()
    finally:
        await client.shutdown()
    failed = sum(failures)
    return Outcome(delivered=ops - failed, settled_undelivered=failed)
