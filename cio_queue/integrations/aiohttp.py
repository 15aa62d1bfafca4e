"""aiohttp: one EventQueue per application, run by a cleanup context under an ``AppKey``.

Stage: outside the pipeline; an integration.

Usage::

    app = web.Application()
    setup(app, QueueConfig.from_env())

    async def signup(request: web.Request) -> web.Response:
        await request.app[QUEUE_KEY].identify(...)

aiohttp is already a dependency of cio-queue, so it is imported here directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from .._config import OnOutcome, QueueConfig
from .._queue import EventQueue
from .._sender import Sender

__all__ = ["QUEUE_KEY", "setup"]

QUEUE_KEY: Final = web.AppKey("cio_queue", EventQueue)
"""Where :func:`setup` keeps the queue: ``request.app[QUEUE_KEY]``."""


def setup(app: web.Application, config: QueueConfig, *, on_outcome: OnOutcome | None = None,
          sender: Sender | None = None,
          key: web.AppKey[EventQueue] = QUEUE_KEY) -> web.AppKey[EventQueue]:
    """Run an EventQueue for the application's lifetime, stored under ``key``.

    The queue starts with the application (in ``cleanup_ctx``, on the server's event
    loop) and, when the application shuts down, stops intake, drains within
    ``config.shutdown_timeout`` and dead-letters the rest.

    Args:
        app: the application, before it starts.
        config: the QueueConfig.
        on_outcome: passed to EventQueue.
        sender: passed to EventQueue.
        key: the AppKey to store the queue under; pass your own to run more than one.

    Returns:
        ``key``, for ``request.app[key]``.
    """

    async def queue_context(app: web.Application) -> AsyncIterator[None]:
        async with EventQueue(config, on_outcome=on_outcome, sender=sender) as queue:
            app[key] = queue
            yield

    app.cleanup_ctx.append(queue_context)
    return key
