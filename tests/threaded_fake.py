"""The fake Track API on a thread of its own, for tests whose code under test is synchronous.

``FakeTrackAPI`` is an asyncio server; a WSGI app, a Celery worker or a SyncEventQueue test
has no loop to run it on, so it runs in an anyio blocking portal and every look at what it
recorded goes through that portal (on the fake's own loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from cio_queue import QueueConfig, RetryPolicy
from cio_queue.testing import FakeTrackAPI

WAIT: float = 20.0
"""Seconds any wait on the fake may take before the test fails."""

FAST_RETRY = RetryPolicy(attempts=200, wait_initial=0.02, wait_max=0.05, wait_jitter=0,
                         timeout=30)
"""Retries quickly and for long: a stopped fake keeps operations pending, not failed."""


class ThreadedFake:
    """A running FakeTrackAPI and the portal to reach it."""

    def __init__(self, portal: BlockingPortal, fake: FakeTrackAPI) -> None:
        self.portal = portal
        self.fake = fake

    @property
    def url(self) -> str:
        """The fake's base URL."""
        return self.fake.url

    def config(self, **overrides: Any) -> QueueConfig:
        """A QueueConfig for this fake: quick flushes, no rate limit."""
        values: dict[str, Any] = {
            "site_id": self.fake.site_id, "api_key": self.fake.api_key,
            "base_url": self.fake.url, "flush_interval": 0.02, "rate_limit": None,
            "shutdown_timeout": 5.0,
        }
        values.update(overrides)
        return QueueConfig(**values)

    def env(self) -> dict[str, str]:
        """The variables QueueConfig.from_env() reads, pointing at this fake."""
        return {"CUSTOMERIO_SITE_ID": self.fake.site_id, "CUSTOMERIO_API_KEY": self.fake.api_key,
                "CUSTOMERIO_BASE_URL": self.fake.url}

    def event_ids(self) -> Counter[str]:
        """How often each event id was accepted."""
        def collect() -> Counter[str]:
            return Counter(event["id"] for event in self.fake.accepted_events())
        return self.portal.call(collect)

    def operations(self) -> list[Any]:
        """Every accepted operation (v1 requests and v2 ops), in order."""
        return self.portal.call(lambda: [accepted.op for accepted in self.fake.operations])

    def wait_for_operations(self, count: int) -> None:
        """Wait (at most WAIT seconds) until ``count`` operations were accepted."""
        async def wait() -> None:
            with anyio.fail_after(WAIT):
                await self.fake.wait_for_operations(count)
        self.portal.call(wait)

    def stop(self) -> None:
        """Stop serving: connections are refused until start()."""
        self.portal.call(self.fake.stop)

    def start(self) -> None:
        """Serve again on the same port."""
        self.portal.call(self.fake.start)


@contextmanager
def threaded_fake(**options: Any) -> Iterator[ThreadedFake]:
    """Run a FakeTrackAPI (with ``options``) on its own thread for the block."""
    with start_blocking_portal() as portal:
        fake = portal.call(lambda: FakeTrackAPI(**options))
        with portal.wrap_async_context_manager(fake):
            yield ThreadedFake(portal, fake)
