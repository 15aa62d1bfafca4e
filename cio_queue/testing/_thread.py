"""Serve a `FakeTrackAPI` from a thread of its own, for tests whatever runs their code.

Stage: outside the pipeline; the testing kit.

A sync test (Flask, Django, FastAPI's `TestClient`) has no event loop to run the server on,
and an async test's loop belongs to its plugin (pytest-asyncio, anyio) and may end between
fixtures. A thread with an event loop of its own serves the fake for all of them; the
fake's recorded lists and its `wait_*` methods are safe to use from any thread and loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final

import anyio
from anyio.from_thread import start_blocking_portal

from ._server import FakeTrackAPI

__all__ = ["serve_in_thread"]

DEFAULT_THREAD_TIMEOUT: Final = 10.0
"""Seconds the fake may take to start, and to stop."""


@contextmanager
def serve_in_thread(fake: FakeTrackAPI | None = None, *,
                    timeout: float = DEFAULT_THREAD_TIMEOUT) -> Iterator[FakeTrackAPI]:
    """Run `fake` (a default `FakeTrackAPI` if None) on a background thread for the block.

    The thread runs an asyncio event loop of its own, so the server answers whatever the
    calling thread does: block, run a loop of its own, or start threads.

    Args:
        fake: the server to run; it must not be running yet.
        timeout: the most seconds starting, and then closing, the server may take.

    Yields:
        The running server; it is closed (its port released) when the block ends.

    Raises:
        TimeoutError: the server did not start or close within `timeout`.
    """
    server = FakeTrackAPI() if fake is None else fake

    async def bounded(step: Callable[[], Awaitable[None]]) -> None:
        with anyio.fail_after(timeout):
            await step()

    with start_blocking_portal() as portal:
        portal.call(bounded, server.start)
        try:
            yield server
        finally:
            portal.call(bounded, server.close)
