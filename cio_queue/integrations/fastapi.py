"""FastAPI: the Starlette lifespan, and ``EventQueueDep`` to receive the queue in a handler.

Stage: outside the pipeline; an integration.

Usage::

    app = FastAPI(lifespan=lifespan(QueueConfig.from_env()))

    @app.post("/signup")
    async def signup(email: str, cio: EventQueueDep) -> dict[str, bool]:
        await cio.identify(email, email=email)

``EventQueueDep`` is ``Annotated[EventQueue, Depends(get_queue)]``, FastAPI's way to name
a dependency; it is built on first import, so FastAPI is imported only then.
"""

# No `from __future__ import annotations`: FastAPI reads get_queue's annotations at run
# time to see that it wants the Request.

from functools import cache
from typing import TYPE_CHECKING, Any

from .._exceptions import QueueUsageError
from .._queue import EventQueue
from .starlette import STATE_KEY, lifespan

__all__ = ["EventQueueDep", "get_queue", "lifespan"]

if TYPE_CHECKING:
    from typing import TypeAlias

    from starlette.requests import HTTPConnection

    EventQueueDep: TypeAlias = EventQueue
    """A handler parameter annotated with it receives the app's EventQueue."""


def get_queue(connection: "HTTPConnection") -> EventQueue:
    """Return the EventQueue that :func:`lifespan` put in the request's state.

    Raises:
        QueueUsageError: the app was not created with ``lifespan=lifespan(config)``.
    """
    queue = getattr(connection.state, STATE_KEY, None)
    if not isinstance(queue, EventQueue):
        raise QueueUsageError("no EventQueue in the request state: create the app with "
                              "FastAPI(lifespan=cio_queue.integrations.fastapi.lifespan(config))")
    return queue


@cache
def _dependency() -> Any:
    from typing import Annotated  # noqa: PLC0415 - together with FastAPI's, on first use

    from fastapi import Depends, Request  # noqa: PLC0415 - FastAPI is optional

    def queue_of(request: Request) -> EventQueue:
        return get_queue(request)

    return Annotated[EventQueue, Depends(queue_of)]


def __getattr__(name: str) -> Any:
    if name == "EventQueueDep":
        return _dependency()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
