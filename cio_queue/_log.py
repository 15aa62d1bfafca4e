"""Logging: structured events through the standard library's ``cio_queue`` logger.

Stage: none; the logging every stage uses.

A library must not configure logging, so every event goes to ``logging.getLogger("cio_queue")``
and the application's logging settings decide what is shown. Each event keeps its fields
twice: rendered into the message (``cio_queue.closed delivered=10 failed=0``), so a plain
``logging.basicConfig()`` shows them, and as ``extra`` attributes of the record, so an app
that formats records with structlog (``ProcessorFormatter`` with ``ExtraAdder``) or a JSON
formatter gets them as fields. Levels: start and close at INFO, per-batch lines at DEBUG,
problems at WARNING and ERROR. Never the API key, never payloads.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

__all__ = ["LOGGER_NAME", "debug_enabled", "log"]

LOGGER_NAME: Final = "cio_queue"
# Attributes a LogRecord already has: a field with one of these names would clash.
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _to_record(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
               ) -> dict[str, Any]:
    """Render an event as ``logging`` keyword arguments: message, extra and exc_info."""
    event = str(event_dict.pop("event"))
    exc_info = event_dict.pop("exc_info", None)
    fields = " ".join(f"{key}={value}" for key, value in event_dict.items())
    extra = {f"cio_{key}" if key in _RESERVED else key: value
             for key, value in event_dict.items()}
    extra["cio_event"] = event
    return {"msg": f"{event} {fields}" if fields else event, "extra": extra,
            "exc_info": exc_info}


_STDLIB_LOGGER: Final = logging.getLogger(LOGGER_NAME)
log: Final = structlog.wrap_logger(
    _STDLIB_LOGGER,
    processors=[structlog.stdlib.filter_by_level, _to_record],
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)
"""The library's logger: ``log.info("cio_queue.event", key=value)``."""


def debug_enabled() -> bool:
    """Whether a DEBUG event would be logged now (the application's settings decide).

    For a line made per batch: with DEBUG off, ``log.debug()`` still costs about 4 µs
    (structlog runs its filter and drops the event), besides building its fields.
    """
    return _STDLIB_LOGGER.isEnabledFor(logging.DEBUG)
