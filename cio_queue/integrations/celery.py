"""Celery: one SyncEventQueue per worker process, closed when that process stops.

Stage: outside the pipeline; an integration.

Usage::

    app = Celery("tasks", broker=...)
    cio = setup(app, QueueConfig.from_env())

    @app.task
    def signup(email: str) -> None:
        cio.identify(email, email=email)

A prefork pool's child leaves through ``os._exit``, so ``atexit`` handlers never run
there; without a hook, whatever such a child had queued would be lost. :func:`setup`
closes the queue on ``worker_process_shutdown`` (in each prefork child) and on
``worker_shutdown`` (in the worker itself, for the solo and threads pools). A child
starts its own queue thread on first use, as every forked process does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._config import OnOutcome, QueueConfig
from .._sender import Sender
from .._sync import SyncEventQueue

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["setup"]


def setup(app: Celery, config: QueueConfig, *, on_outcome: OnOutcome | None = None,
          sender: Sender | None = None) -> SyncEventQueue:
    """Create the worker's SyncEventQueue and close it wherever the worker stops.

    Nothing starts until the first enqueue, so a module that calls this at import time
    is safe in the prefork parent.

    Args:
        app: the Celery app; only its own worker's shutdown closes the queue.
        config: the QueueConfig.
        on_outcome: passed to SyncEventQueue.
        sender: passed to SyncEventQueue.

    Returns:
        The queue, for tasks to call.
    """
    from celery import signals  # noqa: PLC0415 - Celery is optional

    queue = SyncEventQueue(config, on_outcome=on_outcome, sender=sender)

    def close_in_child(**_: Any) -> None:
        queue.close()

    def close_in_worker(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            queue.close()

    # weak=False: the receivers are closures that nothing else keeps alive.
    signals.worker_process_shutdown.connect(close_in_child, weak=False)
    signals.worker_shutdown.connect(close_in_worker, weak=False)
    return queue
