"""Django: one SyncEventQueue per process, configured by ``settings.CIO_QUEUE``.

Stage: outside the pipeline; an integration.

Usage::

    # settings.py: overrides for QueueConfig.from_env(), or a QueueConfig
    CIO_QUEUE = {"dead_letter_path": "cio-dead-letters.jsonl"}

    # views.py (sync views under WSGI or ASGI, and async views alike)
    get_queue().identify(email, email=email)

Works the same under WSGI and ASGI: Django's ASGI handler has no lifespan to start or stop
an EventQueue, so the queue runs on a thread of its own and is drained when the process
exits (see SyncEventQueue); a call costs microseconds and never waits for the network, so
async views may make it too (with the default ``overflow="raise"``). Changing
``CIO_QUEUE`` (``override_settings`` in tests) closes the old queue and builds a new one.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from .._config import QueueConfig
from .._exceptions import ConfigError
from .._sync import SyncEventQueue

__all__ = ["SETTING", "get_queue"]

SETTING: Final = "CIO_QUEUE"
"""The Django setting: a dict of QueueConfig.from_env() overrides, or a QueueConfig."""

_lock = threading.Lock()
_queue: SyncEventQueue | None = None
_listening = False


def get_queue() -> SyncEventQueue:
    """Return this process's queue, built from ``settings.CIO_QUEUE`` on first use.

    Without the setting, the queue is configured from the environment alone
    (``CUSTOMERIO_SITE_ID``, ``CUSTOMERIO_API_KEY``, ...).

    Raises:
        ConfigError: the setting, or the environment, does not make a valid QueueConfig.
    """
    global _queue, _listening  # noqa: PLW0603 - one queue per process, as Django's caches
    queue = _queue
    if queue is not None:
        return queue
    from django.conf import settings  # noqa: PLC0415 - Django is optional
    from django.core.signals import setting_changed  # noqa: PLC0415

    with _lock:
        if _queue is None:
            _queue = SyncEventQueue(_config(getattr(settings, SETTING, None)))
        if not _listening:
            setting_changed.connect(_setting_changed, weak=False)
            _listening = True
        return _queue


def _config(value: Any) -> QueueConfig:
    if value is None:
        return QueueConfig.from_env()
    if isinstance(value, QueueConfig):
        return value
    if isinstance(value, dict):
        return QueueConfig.from_env(**value)
    raise ConfigError(f"settings.{SETTING} must be a dict of QueueConfig fields or a "
                      f"QueueConfig, not {type(value).__name__}")


def _setting_changed(setting: str = "", **_: Any) -> None:
    """Close the queue when its setting changes; the next get_queue() builds a new one."""
    global _queue
    if setting != SETTING:
        return
    with _lock:
        queue, _queue = _queue, None
    if queue is not None:
        queue.close()
