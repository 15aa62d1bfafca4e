"""Flask: one SyncEventQueue per app, kept in ``app.extensions``.

Stage: outside the pipeline; an integration.

Usage::

    app = Flask(__name__)
    cio = init_app(app, QueueConfig.from_env())

    @app.post("/signup")
    def signup():
        cio.identify(...)          # or get_queue().identify(...) in a blueprint

Flask has no shutdown hook; the queue needs none: it is drained when the process exits
(see SyncEventQueue), and each worker of a pre-forking server (gunicorn ``--preload``)
starts its own thread on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._config import OnOutcome, QueueConfig
from .._exceptions import QueueUsageError
from .._sender import Sender
from .._sync import SyncEventQueue

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["EXTENSION_KEY", "get_queue", "init_app"]

EXTENSION_KEY: Final = "cio_queue"
"""The key of the queue in ``app.extensions``."""


def init_app(app: Flask, config: QueueConfig, *, on_outcome: OnOutcome | None = None,
             sender: Sender | None = None) -> SyncEventQueue:
    """Create the app's SyncEventQueue and register it in ``app.extensions``.

    Nothing starts until the first enqueue, so this is safe at import time in the parent
    of a pre-forking server.

    Args:
        app: the Flask app.
        config: the QueueConfig.
        on_outcome: passed to SyncEventQueue.
        sender: passed to SyncEventQueue.

    Returns:
        The queue; :func:`get_queue` returns it too, inside a request or app context.
    """
    queue = SyncEventQueue(config, on_outcome=on_outcome, sender=sender)
    app.extensions[EXTENSION_KEY] = queue
    return queue


def get_queue() -> SyncEventQueue:
    """Return the current app's queue (in a request or an app context).

    Raises:
        QueueUsageError: the app was not set up with :func:`init_app`.
    """
    from flask import current_app  # noqa: PLC0415 - Flask is optional

    queue = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(queue, SyncEventQueue):
        raise QueueUsageError("this Flask app has no queue: call "
                              "cio_queue.integrations.flask.init_app(app, config)")
    return queue
