"""Starlette: one EventQueue per app, started and drained by the app's lifespan.

Stage: outside the pipeline; an integration.

Usage::

    app = Starlette(routes=..., lifespan=lifespan(QueueConfig.from_env()))

    async def signup(request: Request) -> Response:
        await request.state.cio.identify(...)

The queue lives in the lifespan state (Starlette's ``yield {...}`` from a lifespan), so
each request sees it as ``request.state.cio``. No Starlette import is needed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

from .._config import OnOutcome, QueueConfig
from .._queue import EventQueue
from .._sender import Sender

__all__ = ["STATE_KEY", "lifespan"]

STATE_KEY: Final = "cio"
"""The lifespan state key, and so the ``request.state`` attribute, of the queue."""


def lifespan(config: QueueConfig, *, on_outcome: OnOutcome | None = None,
             sender: Sender | None = None
             ) -> Callable[[Any], AbstractAsyncContextManager[dict[str, EventQueue]]]:
    """Return a lifespan that runs an EventQueue for the app's lifetime.

    At startup the queue starts on the server's event loop; at shutdown it stops intake,
    drains within ``config.shutdown_timeout`` and dead-letters the rest. Each worker
    process of a pre-forking server runs its own lifespan, and so its own queue.

    Args:
        config: the QueueConfig.
        on_outcome: passed to EventQueue.
        sender: passed to EventQueue.

    Returns:
        A lifespan for ``Starlette(lifespan=...)`` or ``FastAPI(lifespan=...)`` whose state
        holds the queue under :data:`STATE_KEY` (``request.state.cio``).
    """

    @asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[dict[str, EventQueue]]:
        async with EventQueue(config, on_outcome=on_outcome, sender=sender) as queue:
            yield {STATE_KEY: queue}

    return run
