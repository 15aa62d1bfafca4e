"""Metrics through OpenTelemetry: a :class:`~cio_queue._telemetry.Telemetry` that records.

Stage: beside the pipeline, fed by its telemetry hooks. ``opentelemetry-api`` is optional
(the ``otel`` extra): it is imported when a queue with metrics starts, or when a
QueueConfig with ``metrics=True`` checks that it is there; ``import cio_queue`` never does.

The instruments (the README's "Metrics" table is the user-facing list):

- ``http.client.request.duration`` (histogram, s): one HTTP attempt, named and labelled
  by the stable HTTP semantic conventions; recorded per request, never per operation.
- ``cio_queue.operations`` (counter, ``{operation}``): settled operations, by outcome.
- ``cio_queue.retries`` (counter, ``{request}``): attempts after an operation's first.
- ``cio_queue.rate_limited`` (counter, ``{pause}``): 429s that paused every sender.
- ``cio_queue.queue.depth`` and ``cio_queue.requests.in_flight`` (observable
  up-down counters): pending operations and attempts under way, while the queue runs.

Cost on the hot path: an OpenTelemetry SDK ``Counter.add`` cleans and hashes its
attributes on every call (microseconds), about as much as an enqueue call itself. So the
per-operation hook only bumps a plain dict entry of this queue, and the counters are
*observable*: a callback reports the running totals whenever a reader collects. For the
exporter the result is the same monotonic sum a synchronous counter gives.

Several queues, one process: one set of instruments per meter provider (an instrument
name can be registered once per meter), shared by every queue recording through it.
Each callback sums the running queues by ``cio_queue.name``; a queue that stops hands
its totals to the set (so counters never go backwards) and leaves the gauges, which then
report nothing for it. Callbacks run on the reader's thread: the set's lock guards the
list of queues, and each queue's tallies are copied in one step before being read.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import urlsplit

from ._log import log
from ._outcome import OutcomeStatus
from ._telemetry import Probe
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

    from ._config import QueueConfig

__all__ = ["METER_NAME", "QueueMetrics", "metrics_api_available", "metrics_for"]

METER_NAME: Final = "cio_queue"
"""The instrumentation scope of every instrument (with the package version)."""

# Instrument names: the semantic conventions' where one exists, cio_queue.* otherwise.
REQUEST_DURATION: Final = "http.client.request.duration"
OPERATIONS: Final = "cio_queue.operations"
RETRIES: Final = "cio_queue.retries"
RATE_LIMITED: Final = "cio_queue.rate_limited"
QUEUE_DEPTH: Final = "cio_queue.queue.depth"
IN_FLIGHT: Final = "cio_queue.requests.in_flight"

# Attribute names. The queue's name is on every instrument; the HTTP ones are the stable
# semantic conventions' (opentelemetry.semconv.attributes), spelled out so that the
# semantic-conventions package is not needed.
QUEUE_NAME: Final = "cio_queue.name"
OUTCOME: Final = "cio_queue.outcome"
REASON: Final = "cio_queue.reason"
HTTP_METHOD: Final = "http.request.method"
HTTP_STATUS: Final = "http.response.status_code"
ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                           5.0, 7.5, 10.0)
"""Seconds: the bucket boundaries the semantic conventions advise for HTTP durations."""

_COUNTERS: Final = (OPERATIONS, RETRIES, RATE_LIMITED)

Attributes = Mapping[str, str | int]
# A hashable form of one data point's attributes: its (name, value) pairs, in order.
AttributeKey = tuple[tuple[str, str | int], ...]


def metrics_api_available() -> bool:
    """Tell whether ``opentelemetry-api`` can be imported (importing it, once)."""
    try:
        from opentelemetry import metrics  # noqa: F401, PLC0415 - optional, never at import
    except ImportError:
        return False
    return True


def metrics_for(config: QueueConfig) -> QueueMetrics | None:
    """Return the metrics of a queue that starts with ``config``, or None to record none.

    None when ``config.metrics`` is False, or is None and OpenTelemetry is not installed
    (``metrics=True`` without it is refused by QueueConfig). A meter provider that fails
    to make the instruments costs the metrics, never the queue: one error is logged.
    """
    if config.metrics is False:
        return None
    try:
        from opentelemetry import metrics  # noqa: PLC0415 - optional, never at import
    except ImportError:
        return None
    # QueueConfig checked that a given provider has get_meter().
    given = cast("MeterProvider | None", config.meter_provider)
    try:
        instruments = _instruments_for(metrics.get_meter_provider() if given is None else given)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop delivery
        log.error("cio_queue.metrics_unavailable", error=repr(exc),
                  hint="the meter provider could not make cio_queue's instruments "
                       "(opentelemetry-api >= 1.30 is needed); the queue runs without them")
        return None
    return QueueMetrics(instruments, config)


class QueueMetrics:
    """The metrics of one running queue (the Telemetry the pipeline calls)."""

    __slots__ = ("_duration", "_instruments", "_requests", "_server", "name", "operations",
                 "pauses", "probe", "retries")

    def __init__(self, instruments: _Instruments, config: QueueConfig) -> None:
        self.name = config.metrics_name
        self._instruments = instruments
        self._duration = instruments.duration.record
        parts = urlsplit(config.track_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self._server: dict[str, str | int] = {
            SERVER_ADDRESS: parts.hostname or "", SERVER_PORT: port, QUEUE_NAME: self.name}
        # Attributes per (method, status, error): built once, then looked up per request.
        self._requests: dict[tuple[str, int | None, str | None], Attributes] = {}
        # Settled operations per (status, reason), written only on the queue's loop.
        self.operations: dict[tuple[OutcomeStatus, str | None], int] = {}
        self.retries = self.pauses = 0
        self.probe: Probe | None = None

    # --- Telemetry ---------------------------------------------------------------------

    def attach(self, probe: Probe) -> None:
        """The queue started: report its gauges from ``probe``."""
        self.probe = probe
        self._instruments.attach(self)

    def detach(self) -> None:
        """The queue stopped: its gauges end, its counts stay in the totals."""
        self._instruments.detach(self)
        self.probe = None

    def request(self, seconds: float, method: str, status: int | None,
                error: str | None) -> None:
        """Record one HTTP attempt's duration."""
        key = method, status, error
        attributes = self._requests.get(key)
        if attributes is None:
            attributes = self._requests[key] = self._request_attributes(method, status, error)
        self._duration(seconds, attributes)

    def retry(self) -> None:
        """Count an attempt after an operation's first."""
        self.retries += 1

    def throttled(self, seconds: float) -> None:
        """Count a 429 pause."""
        self.pauses += 1

    def settled(self, status: OutcomeStatus, reason: str | None) -> None:
        """Count a settled operation: one dict update, on the queue's loop."""
        key = status, reason
        operations = self.operations
        operations[key] = operations.get(key, 0) + 1

    # --- read by the instruments' callbacks, on the reader's thread --------------------

    def counts(self, instrument: str) -> dict[AttributeKey, int]:
        """This queue's running total of a counter, per attribute set."""
        queue = (QUEUE_NAME, self.name)
        if instrument == RETRIES:
            return {(queue,): self.retries}
        if instrument == RATE_LIMITED:
            return {(queue,): self.pauses}
        counts: dict[AttributeKey, int] = {}
        for (status, reason), count in self.operations.copy().items():
            key = (queue, (OUTCOME, status.value))
            counts[key if reason is None else (*key, (REASON, reason))] = count
        return counts

    def level(self, instrument: str) -> int | None:
        """The queue's depth or requests in flight now; None once it has stopped."""
        probe = self.probe
        if probe is None:
            return None
        return probe.statistics().pending if instrument == QUEUE_DEPTH \
            else probe.requests_in_flight()

    def _request_attributes(self, method: str, status: int | None,
                            error: str | None) -> Attributes:
        """The semantic conventions' attributes of one attempt, plus the queue's name.

        ``error.type`` is the status code as a string for a 4xx or 5xx, as the HTTP
        conventions ask, else the class of the delivery error (``TransportError`` when no
        answer came, ``RejectedError`` for a redirect, ``DeliveryError`` for an unreadable
        207 or a failing sender); absent when the attempt succeeded.
        """
        attributes = {HTTP_METHOD: method, **self._server}
        if status is not None:
            attributes[HTTP_STATUS] = status
        if status is not None and status >= 400:
            attributes[ERROR_TYPE] = str(status)
        elif error is not None:
            attributes[ERROR_TYPE] = error
        return attributes


class _Instruments:
    """One meter provider's instruments, shared by every queue that records through it."""

    def __init__(self, provider: MeterProvider) -> None:
        from opentelemetry.metrics import Observation  # noqa: PLC0415 - optional

        self._observation: type[Observation] = Observation
        self._lock = threading.Lock()
        self._live: list[QueueMetrics] = []
        # Totals of the queues that have stopped, so the counters never go backwards.
        self._retired: dict[str, Counter[AttributeKey]] = {name: Counter() for name in _COUNTERS}
        meter: Meter = provider.get_meter(METER_NAME, __version__)
        self.duration = meter.create_histogram(
            REQUEST_DURATION, unit="s", description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        for name, unit, description in (
                (OPERATIONS, "{operation}", "Operations settled, by outcome."),
                (RETRIES, "{request}", "HTTP attempts after an operation's first."),
                (RATE_LIMITED, "{pause}", "429 answers that paused every sender.")):
            meter.create_observable_counter(name, [self._counter(name)], unit, description)
        for name, unit, description in (
                (QUEUE_DEPTH, "{operation}",
                 "Operations accepted and not yet settled (queued, in flight, retrying)."),
                (IN_FLIGHT, "{request}", "HTTP attempts under way, pacing included.")):
            meter.create_observable_up_down_counter(name, [self._level(name)], unit,
                                                    description)

    def attach(self, queue: QueueMetrics) -> None:
        """Add a running queue to the gauges and the counters' totals."""
        with self._lock:
            self._live.append(queue)

    def detach(self, queue: QueueMetrics) -> None:
        """Take a stopped queue out of the gauges, keeping its counts in the totals."""
        with self._lock:
            if queue in self._live:
                self._live.remove(queue)
                for name, retired in self._retired.items():
                    retired.update(queue.counts(name))

    def _counter(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                totals = Counter(self._retired[name])
                for queue in self._live:
                    totals.update(queue.counts(name))
            return [self._observation(count, dict(key)) for key, count in totals.items()]
        return observe

    def _level(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                live = list(self._live)
            totals: Counter[str] = Counter()
            for queue in live:
                level = queue.level(name)
                if level is not None:
                    totals[queue.name] += level
            return [self._observation(value, {QUEUE_NAME: queue_name})
                    for queue_name, value in totals.items()]
        return observe


# Instruments per meter provider, made on first use and forgotten with the provider; a
# provider that cannot be weakly referenced is kept (with its instruments) for good.
_by_provider: weakref.WeakKeyDictionary[object, _Instruments] = weakref.WeakKeyDictionary()
_kept: dict[int, tuple[object, _Instruments]] = {}
_by_provider_lock: Final = threading.Lock()


def _instruments_for(provider: MeterProvider) -> _Instruments:
    """The provider's instruments, made once however many queues use them."""
    with _by_provider_lock:
        try:
            found = _by_provider.get(provider)
        except TypeError:
            kept = _kept.get(id(provider))
            if kept is None:
                kept = _kept[id(provider)] = (provider, _Instruments(provider))
            return kept[1]
        if found is None:
            found = _by_provider[provider] = _Instruments(provider)
        return found
