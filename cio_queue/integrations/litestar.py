"""Litestar: a plugin that runs one EventQueue per app and injects it as a dependency.

Stage: outside the pipeline; an integration.

Usage::

    @post("/signup")
    async def signup(email: str, cio: NamedDependency[EventQueue]) -> None:
        await cio.identify(email, email=email)

    app = Litestar([signup], plugins=[EventQueuePlugin(QueueConfig.from_env())])

The plugin follows Litestar's ``InitPluginProtocol`` without importing Litestar until the
app is built.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .._config import OnOutcome, QueueConfig
from .._exceptions import QueueUsageError
from .._queue import EventQueue
from .._sender import Sender

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.config.app import AppConfig

__all__ = ["EventQueuePlugin"]


class EventQueuePlugin:
    """Run an EventQueue for the app's lifetime and provide it to handlers.

    At startup the queue starts on the server's event loop; at shutdown it stops intake,
    drains within ``config.shutdown_timeout`` and dead-letters the rest. A handler
    receives it through a parameter named ``dependency_key`` (``cio`` by default); it is
    also in ``app.state``, under the same key. Use one plugin per app.
    """

    def __init__(self, config: QueueConfig, *, on_outcome: OnOutcome | None = None,
                 sender: Sender | None = None, dependency_key: str = "cio") -> None:
        self.config = config
        self.on_outcome = on_outcome
        self.sender = sender
        self.dependency_key = dependency_key
        self._queue: EventQueue | None = None  # while the app's lifespan runs

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the queue's lifespan and its dependency to the app (Litestar calls this)."""
        from litestar.di import Provide  # noqa: PLC0415 - Litestar is optional

        app_config.lifespan.append(self._lifespan)
        app_config.dependencies[self.dependency_key] = Provide(self._provide,
                                                               sync_to_thread=False)
        return app_config

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        async with EventQueue(self.config, on_outcome=self.on_outcome,
                              sender=self.sender) as queue:
            app.state[self.dependency_key] = queue
            self._queue = queue
            try:
                yield
            finally:
                self._queue = None

    def _provide(self) -> EventQueue:
        queue = self._queue
        if queue is None:
            raise QueueUsageError("the EventQueuePlugin's queue is not running: is the app "
                                  "served with its lifespan?")
        return queue
