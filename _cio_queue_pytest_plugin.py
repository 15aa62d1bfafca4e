"""cio-queue's pytest plugin: a fake Track API and a QueueConfig pointed at it, as fixtures.

pytest loads this module through the ``pytest11`` entry point named ``cio_queue`` (disable
it with ``-p no:cio_queue``). It lives outside the ``cio_queue`` package, as Hypothesis's
plugin does, so that loading it imports nothing but pytest: ``cio_queue`` (with aiohttp)
is imported, and a server started, only by a test that asks for one of the fixtures.
Loading cio_queue before a coverage plugin starts would also hide its lines from coverage.

Fixtures:

``fake_track_api``
    A running ``cio_queue.testing.FakeTrackAPI``, fresh for each test, served from a
    thread with an event loop of its own, so it answers whether the test is sync
    (FastAPI's ``TestClient``, Flask, Django), runs on pytest-asyncio's or anyio's loop,
    or calls ``asyncio.run()``. Read what it recorded from any thread; wait with
    ``await fake_track_api.wait_for_operations(n)`` from any event loop, or
    ``fake_track_api.wait_for_operations_blocking(n, timeout)`` without one.

``cio_queue_config``
    A ``cio_queue.QueueConfig`` for that server: its site id, API key and URL, no rate
    limit and a 0.05 s ``flush_interval``. ``dataclasses.replace()`` changes a field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

if TYPE_CHECKING:
    from cio_queue import QueueConfig
    from cio_queue.testing import FakeTrackAPI

__all__ = ["cio_queue_config", "fake_track_api"]

FLUSH_INTERVAL: Final = 0.05
"""Seconds: short, so a test sees its operations delivered without waiting for 5 s."""


@pytest.fixture
def fake_track_api() -> Iterator[FakeTrackAPI]:
    """Serve a fresh fake Track API on loopback from a background thread for one test."""
    from cio_queue.testing import FakeTrackAPI, serve_in_thread  # noqa: PLC0415 - only on use

    with serve_in_thread(FakeTrackAPI()) as fake:
        yield fake


@pytest.fixture
def cio_queue_config(fake_track_api: FakeTrackAPI) -> QueueConfig:
    """Return a QueueConfig that sends to ``fake_track_api``: no rate limit, quick flushes."""
    from cio_queue import QueueConfig  # noqa: PLC0415 - only on use

    return QueueConfig(site_id=fake_track_api.site_id, api_key=fake_track_api.api_key,
                       base_url=fake_track_api.url, rate_limit=None,
                       flush_interval=FLUSH_INTERVAL)
