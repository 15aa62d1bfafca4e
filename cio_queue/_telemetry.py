"""Telemetry: what the pipeline tells an observer, for metrics (OpenTelemetry, ...).

Stage: beside the pipeline. The dispatcher reports each HTTP attempt (its duration,
status and error), each retry and each 429 pause; the pipeline reports each settled
operation; an observer may also read the queue's statistics and the requests in flight
whenever it likes (observable gauges). Without an observer, none of this costs anything
but a None check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ._outcome import OutcomeStatus, Statistics

__all__ = ["Probe", "Telemetry"]


class Probe(Protocol):
    """What an observer can read from a running queue at any moment."""

    def statistics(self) -> Statistics:
        """The queue's statistics now."""
        ...

    def requests_in_flight(self) -> int:
        """HTTP requests being sent now."""
        ...


class Telemetry(Protocol):
    """An observer of one queue."""

    def attach(self, probe: Probe) -> None:
        """The queue started: ``probe`` reads it until :meth:`detach`."""

    def detach(self) -> None:
        """The queue stopped."""

    def request(self, seconds: float, method: str, status: int | None,
                error: str | None) -> None:
        """One HTTP attempt ended: its duration, status (None: no answer), error type."""

    def retry(self) -> None:
        """An attempt was a retry (not an operation's first)."""

    def throttled(self, seconds: float) -> None:
        """A 429 paused every sender for ``seconds``."""

    def settled(self, status: OutcomeStatus, reason: str | None) -> None:
        """An operation ended (delivered, rejected, failed, dropped, filtered, ...)."""


TelemetryFactory = Callable[[], Telemetry | None]
