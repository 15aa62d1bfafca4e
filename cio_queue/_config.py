"""Configuration: one frozen, keyword-only dataclass, validated on construction.

Stage: none; read by every stage, it holds no state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from ._endpoint import (
    Region,
    RegionName,
    check_base_url,
    check_redis_url,
    endpoint_from,
    region_of,
)
from ._exceptions import ConfigError
from ._otel import metrics_api_available
from ._retry import RetryPolicy

if TYPE_CHECKING:
    from ._before_send import OperationView
    from ._outcome import Outcome

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_METRICS_NAME",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_REDIS_GROUP",
    "DEFAULT_REDIS_LEASE",
    "DEFAULT_REDIS_PARTITIONS",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_SPOOL_COMMIT_INTERVAL",
    "OnOutcome",
    "Overflow",
    "QueueConfig",
    "RedisDurability",
    "Region",
    "SpoolDurability",
    "Transport",
]

DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_FLUSH_INTERVAL: Final = 5.0
DEFAULT_MAX_QUEUE_SIZE: Final = 10_000
DEFAULT_MAX_CONCURRENCY: Final = 10
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0
DEFAULT_RATE_LIMIT: Final = 100.0
"""Requests per second: the Track API's documented fair-use figure (see track-api.md §5)."""
DEFAULT_STALLED_AFTER: Final = 30.0
"""Seconds without any final answer from the API, while operations wait, before one
warning is logged."""
DEFAULT_RATE_LIMITED_PAUSE: Final = 2.0
"""Seconds every sender pauses after a 429 that carries no Retry-After."""
DEFAULT_SPOOL_COMMIT_INTERVAL: Final = 0.05
"""Seconds between the spool's group commits: what a killed process can lose at most."""
DEFAULT_METRICS_NAME: Final = "default"
"""The ``cio_queue.name`` attribute of a queue's metrics when ``metrics_name`` is not set."""
_MAX_METRICS_NAME: Final = 64
DEFAULT_REDIS_PARTITIONS: Final = 16
"""Partitions of the fleet's stream: the most consumers that share the work at once."""
DEFAULT_REDIS_GROUP: Final = "senders"
DEFAULT_REDIS_LEASE: Final = 10.0
"""Seconds before the partitions of a consumer that stopped renewing are taken over."""

Overflow = Literal["block", "raise", "drop_newest", "drop_oldest"]
Transport = Literal["batch", "v1"]
RedisDurability = Literal["batched", "sync"]
_TRANSPORTS: Final = ("batch", "v1")
OnOutcome = Callable[["Outcome"], "Awaitable[Any] | Any"]
BeforeSend = Callable[["OperationView"], "OperationView | None"]
_OVERFLOWS: Final = ("block", "raise", "drop_newest", "drop_oldest")
SpoolDurability = Literal["batched", "sync"]
_SPOOL_DURABILITIES: Final = ("batched", "sync")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """Everything an EventQueue needs; times are float seconds.

    Attributes:
        site_id: the workspace's Site ID (the Basic-auth user name).
        api_key: the Track API key; never shown in a repr, log, exception or file.
        region: the data centre: ``Region.US`` or ``Region.EU`` (also ``"us"``, ``"eu"``,
            or the official SDK's ``customerio.Regions.US``/``EU``), or ``"auto"`` to ask
            the Track API before the first request (``GET /api/v1/accounts/region``).
            Used for the host when ``base_url`` is not set; ``EventQueue.check()``
            compares it with the workspace's real region.
        base_url: scheme, host and optional port of the Track API, e.g.
            ``"http://127.0.0.1:8080"``; overrides ``region``. The library appends
            ``/api/v1/...`` and ``/api/v2/batch``. Credentials (``user:pass@``) are
            refused, and plain ``http://`` is accepted only to a loopback host
            (127.0.0.0/8, ::1, localhost) unless ``allow_insecure_http`` is set.
        allow_insecure_http: allow a plain ``http://`` ``base_url`` to a host that is not
            loopback, e.g. a proxy on a trusted network. The Basic-auth header carries
            the API key, so without TLS anyone on the path can read it; off by default.
        transport: ``"v1"`` sends one request per operation, exactly as the official SDK
            does; ``"batch"`` packs each flushed batch into as few ``POST /api/v2/batch``
            requests as fit (anonymous events, which v2 cannot express, still go by v1).
        batch_size: operations the flusher sends together; a batch leaves as soon as
            this many are waiting.
        flush_interval: the longest an operation waits in the queue before its batch
            leaves, even if the batch is not full.
        max_queue_size: operations accepted but not yet settled (queued, in flight or
            waiting to retry); beyond it the ``overflow`` policy applies.
        overflow: what an enqueue call does when the queue is full: ``"raise"``
            QueueFullError at once, ``"block"`` until there is room (at most
            ``enqueue_timeout``), ``"drop_newest"`` the new operation or ``"drop_oldest"``
            the oldest queued one. A drop is counted, logged and reported, never silent.
        enqueue_timeout: with ``overflow="block"``, the longest a call waits for room
            before QueueFullError; None waits as long as it takes.
        max_concurrency: HTTP requests in flight at once, across all batches.
        request_timeout: the limit on one HTTP request, connect to last byte.
        shutdown_timeout: the deadline ``aclose()`` gives the drain; what is unsent by
            then goes to the dead-letter file.
        retry: the RetryPolicy for failed requests.
        rate_limit: requests per second across all senders of this queue (no one-second
            window sees more); None turns it off.
        rate_limited_pause: how long every sender pauses after a 429 without Retry-After.
        order_per_person: send one person's state changes (identify, delete, suppress,
            unsuppress, devices, merge) one at a time, in the order they were enqueued;
            each then waits for the previous one's answer, so an app that identifies the
            same person many times a second may turn it off.
        stalled_after: when the API has given no final answer (every request timing out,
            refused or retried) for this long while operations wait, one warning
            (``cio_queue.stalled``) is logged; None turns it off.
        dead_letter_path: a JSON-lines file that receives every operation that ends
            rejected, failed or unsent at shutdown; None keeps them only in the outcome.
        spool_path: a directory for the spool, a local store (SQLite) of every accepted,
            unsettled operation, so that a killed process or an outage loses nothing: the
            next process that starts with the same directory sends what is left. Every
            worker of a server may share it (each owns a file in it). None keeps
            operations in memory only.
        spool_durability: ``"batched"`` commits the spool every ``spool_commit_interval``
            (a killed process loses at most the operations of the last interval);
            ``"sync"`` makes each enqueue call wait until its operation is fsynced (one
            shared commit serves every waiting call).
        spool_commit_interval: with ``"batched"``, the longest an accepted operation waits
            before it is committed to the spool.
        max_spool_bytes: the most the spool may hold, counted as record bytes plus a small
            per-row overhead; beyond it the ``overflow`` policy applies. None: no limit.
        on_outcome: a sync or async callable run once per settled operation.
        before_send: a sync callable given an ``OperationView`` of every operation at
            enqueue, in the caller's stack, returning it (changed with
            ``dataclasses.replace``, or as it is) or None to drop it (counted as
            ``filtered``). An exception in it is an ``InvalidEventError`` naming the hook.
        metrics: record OpenTelemetry metrics (see the README's "Metrics" section):
            None records them when ``opentelemetry-api`` is installed (the ``otel``
            extra), True insists (ConfigError without it), False never records.
        metrics_name: the ``cio_queue.name`` attribute on every metric of this queue,
            e.g. ``"backfill"``; queues of one process that share a name are summed.
        meter_provider: the OpenTelemetry ``MeterProvider`` to record through; None uses
            the global one (``opentelemetry.metrics.get_meter_provider()``) as the
            queue starts.
        redis_url: run as a member of a fleet (see the README's "Running a fleet", needs
            the ``redis`` extra): every accepted operation is handed to a Redis Stream
            (its outcome is then ``streamed``), and, unless ``consume`` is False, this
            queue also delivers a share of the stream. ``rate_limit`` is then the whole
            fleet's budget, and a 429 pauses every member. E.g. ``"redis://host:6379/0"``;
            a password in it is never shown in a repr or a log.
        redis_stream: the stream's name, the same for every member; None derives it from
            the site id (``"cio-queue:{site_id}"``).
        redis_partitions: the stream's partition count, the same for every member: one
            person's operations share a partition, and each partition is delivered by
            one member at a time, so this is the most members that send at once.
        redis_durability: ``"batched"`` hands operations to Redis in group commits a few
            milliseconds apart (an enqueue call never waits for Redis); ``"sync"`` makes
            each enqueue call return once Redis acknowledged its operation.
        redis_group: the consumer group of the members that deliver.
        redis_consumer: this member's name in the group; None makes a unique one from
            the host name and the process id.
        redis_lease: seconds before another member takes over the partitions (and the
            unacknowledged operations) of a member that stopped, e.g. was killed.
        consume: with ``redis_url``, whether this queue delivers from the stream too;
            False makes a pure producer (e.g. a web worker, with ``cio-queue worker``
            processes sending).
    """

    site_id: str
    api_key: str = field(repr=False)
    region: Region | Literal["us", "eu", "auto"] | RegionName = Region.US
    base_url: str | None = None
    allow_insecure_http: bool = False
    transport: Transport = "batch"
    batch_size: int = DEFAULT_BATCH_SIZE
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    overflow: Overflow = "raise"
    enqueue_timeout: float | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: float | None = DEFAULT_RATE_LIMIT
    rate_limited_pause: float = DEFAULT_RATE_LIMITED_PAUSE
    stalled_after: float | None = DEFAULT_STALLED_AFTER
    order_per_person: bool = True
    dead_letter_path: str | os.PathLike[str] | None = None
    spool_path: str | os.PathLike[str] | None = None
    spool_durability: SpoolDurability = "batched"
    spool_commit_interval: float = DEFAULT_SPOOL_COMMIT_INTERVAL
    max_spool_bytes: int | None = None
    on_outcome: OnOutcome | None = field(default=None, repr=False, compare=False)
    before_send: BeforeSend | None = field(default=None, repr=False, compare=False)
    metrics: bool | None = None
    metrics_name: str = DEFAULT_METRICS_NAME
    meter_provider: object | None = field(default=None, repr=False, compare=False)
    redis_url: str | None = field(default=None, repr=False)
    redis_stream: str | None = None
    redis_partitions: int = DEFAULT_REDIS_PARTITIONS
    redis_durability: RedisDurability = "batched"
    redis_group: str = DEFAULT_REDIS_GROUP
    redis_consumer: str | None = None
    redis_lease: float = DEFAULT_REDIS_LEASE
    consume: bool = True

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    @property
    def track_url(self) -> str:
        """The scheme, host and port requests go to, without a trailing slash."""
        region = self.data_centre
        return (self.base_url or (Region.US if region == "auto" else region).value).rstrip("/")

    @property
    def data_centre(self) -> Region | Literal["auto"]:
        """``region`` as a Region, or ``"auto"`` (whatever form it was given in)."""
        return region_of(self.region)

    @property
    def dead_letter_file(self) -> Path | None:
        """``dead_letter_path`` as a Path, or None."""
        return None if self.dead_letter_path is None else Path(self.dead_letter_path)

    @property
    def spool_directory(self) -> Path | None:
        """``spool_path`` as a Path, or None."""
        return None if self.spool_path is None else Path(self.spool_path)

    @property
    def stream_name(self) -> str:
        """The fleet's stream: ``redis_stream``, or one named after the site id."""
        return self.redis_stream or f"cio-queue:{self.site_id}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> QueueConfig:
        """Build a config from the environment.

        Reads ``CUSTOMERIO_SITE_ID``, ``CUSTOMERIO_API_KEY``, ``CUSTOMERIO_REGION`` (``us``,
        ``eu`` or ``auto``, default ``us``), the optional ``CUSTOMERIO_BASE_URL``, which
        follows the rules of ``base_url``, and ``CUSTOMERIO_ALLOW_INSECURE_HTTP`` (``true``
        to allow plain http to a remote host, such as a fake server in another
        container); keyword arguments override or add fields.

        Args:
            environ: the variables to read; defaults to ``os.environ``.
            **overrides: QueueConfig fields that take precedence.

        Raises:
            ConfigError: a required variable is missing (the message names it) or a
                value is invalid.
        """
        env = os.environ if environ is None else environ
        values = _credentials_from(env, overrides)
        values.update(endpoint_from(env, overrides))
        values.update(overrides)
        return cls(**values)


def _credentials_from(env: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, var in (("site_id", "CUSTOMERIO_SITE_ID"), ("api_key", "CUSTOMERIO_API_KEY")):
        if name in overrides:
            continue
        value = env.get(var, "").strip()
        if not value:
            raise ConfigError(f"environment variable {var} is not set")
        values[name] = value
    return values


def _check_credentials(config: QueueConfig) -> None:
    for name in ("site_id", "api_key"):
        value = getattr(config, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string (see your workspace's "
                              "API credentials page)")


def _check_endpoint(config: QueueConfig) -> None:
    # Frozen: the normalised value is set the way dataclasses set fields.
    object.__setattr__(config, "region", region_of(config.region))
    if not isinstance(config.allow_insecure_http, bool):
        raise ConfigError("allow_insecure_http must be True or False")
    if config.base_url is not None:
        check_base_url(config.base_url, allow_insecure_http=config.allow_insecure_http)
    if config.transport not in _TRANSPORTS:
        raise ConfigError(f"transport must be 'batch' or 'v1', got {config.transport!r}")


def _check_sizes(config: QueueConfig) -> None:
    _positive_int("batch_size", config.batch_size)
    _positive_int("max_queue_size", config.max_queue_size)
    _positive_int("max_concurrency", config.max_concurrency)
    if config.batch_size > config.max_queue_size:
        raise ConfigError("batch_size must not exceed max_queue_size")


def _check_times(config: QueueConfig) -> None:
    for name in ("flush_interval", "request_timeout", "shutdown_timeout"):
        _positive_seconds(name, getattr(config, name), allow_zero=False)
    _positive_seconds("rate_limited_pause", config.rate_limited_pause, allow_zero=True)
    if config.stalled_after is not None:
        _positive_seconds("stalled_after", config.stalled_after, allow_zero=False)
    if config.enqueue_timeout is not None:
        _positive_seconds("enqueue_timeout", config.enqueue_timeout, allow_zero=True)
    if config.rate_limit is not None:
        _positive_seconds("rate_limit", config.rate_limit, allow_zero=False)


def _check_policies(config: QueueConfig) -> None:
    if not isinstance(config.order_per_person, bool):
        raise ConfigError("order_per_person must be True or False")
    if config.overflow not in _OVERFLOWS:
        raise ConfigError(f"overflow must be one of {', '.join(_OVERFLOWS)}; "
                          f"got {config.overflow!r}")
    if not isinstance(config.retry, RetryPolicy):
        raise ConfigError("retry must be a RetryPolicy")
    for name in ("on_outcome", "before_send"):
        if getattr(config, name) is not None and not callable(getattr(config, name)):
            raise ConfigError(f"{name} must be callable")
    if config.dead_letter_path is not None and not isinstance(config.dead_letter_path,
                                                               str | os.PathLike):
        raise ConfigError("dead_letter_path must be a path")


def _check_spool(config: QueueConfig) -> None:
    if config.spool_path is not None and not isinstance(config.spool_path, str | os.PathLike):
        raise ConfigError("spool_path must be a path to a directory")
    if config.spool_durability not in _SPOOL_DURABILITIES:
        raise ConfigError("spool_durability must be 'batched' or 'sync', "
                          f"got {config.spool_durability!r}")
    _positive_seconds("spool_commit_interval", config.spool_commit_interval, allow_zero=False)
    if config.max_spool_bytes is not None:
        _positive_int("max_spool_bytes", config.max_spool_bytes)
    # Without a spool these would silently promise a durability the queue does not have.
    if config.spool_path is None and (config.spool_durability == "sync"
                                      or config.max_spool_bytes is not None):
        raise ConfigError("spool_durability='sync' and max_spool_bytes need spool_path; "
                          "set spool_path to a directory for the spool")


def _check_metrics(config: QueueConfig) -> None:
    if config.metrics is not None and not isinstance(config.metrics, bool):
        raise ConfigError("metrics must be True, False or None (None: record when "
                          "opentelemetry-api is installed)")
    _check_metrics_name(config.metrics_name)
    if config.meter_provider is not None and not callable(
            getattr(config.meter_provider, "get_meter", None)):
        raise ConfigError("meter_provider must be an OpenTelemetry MeterProvider (an object "
                          "with get_meter()), or None for the global one")
    if config.metrics is True and not metrics_api_available():
        raise ConfigError("metrics=True needs the OpenTelemetry API: install the otel extra "
                          "(pip install 'cio-queue[otel]'), or leave metrics=None")


def _check_metrics_name(name: object) -> None:
    if not (isinstance(name, str) and name.strip() and name.isprintable()
            and len(name) <= _MAX_METRICS_NAME):
        raise ConfigError("metrics_name must be a short printable name such as 'default' or "
                          f"'backfill', at most {_MAX_METRICS_NAME} characters")


_FLEET_DEFAULTS: Final[dict[str, object]] = {
    "redis_stream": None, "redis_partitions": DEFAULT_REDIS_PARTITIONS,
    "redis_durability": "batched", "redis_group": DEFAULT_REDIS_GROUP, "redis_consumer": None,
    "redis_lease": DEFAULT_REDIS_LEASE, "consume": True,
}


def _check_fleet(config: QueueConfig) -> None:
    if config.redis_url is None:
        changed = [name for name, default in _FLEET_DEFAULTS.items()
                   if getattr(config, name) != default]
        if changed:
            raise ConfigError(f"{', '.join(changed)} need redis_url; set redis_url to the "
                              "fleet's Redis, e.g. 'redis://localhost:6379/0'")
        return
    check_redis_url(config.redis_url)
    _check_fleet_names(config)
    _check_fleet_values(config)
    from ._redis import require_redis  # noqa: PLC0415 - only fleets need redis-py

    require_redis()


def _check_fleet_values(config: QueueConfig) -> None:
    if config.redis_durability not in _SPOOL_DURABILITIES:
        raise ConfigError("redis_durability must be 'batched' or 'sync', "
                          f"got {config.redis_durability!r}")
    _positive_int("redis_partitions", config.redis_partitions)
    if not (isinstance(config.redis_lease, int | float) and 0.5 <= config.redis_lease <= 3600):
        raise ConfigError(f"redis_lease must be 0.5 to 3600 seconds, got {config.redis_lease!r}")
    if not isinstance(config.consume, bool):
        raise ConfigError("consume must be True or False")


def _check_fleet_names(config: QueueConfig) -> None:
    for name in ("redis_stream", "redis_consumer"):
        value = getattr(config, name)
        if value is not None and not (isinstance(value, str) and value.strip()
                                      and value.isprintable()):
            raise ConfigError(f"{name} must be a non-empty printable name, or None")
    if not (isinstance(config.redis_group, str) and config.redis_group.strip()):
        raise ConfigError("redis_group must be a non-empty name")


# Run in this order by QueueConfig.__post_init__; each raises ConfigError on the first
# bad field it finds.
_CHECKS: Final[tuple[Callable[[QueueConfig], None], ...]] = (
    _check_credentials, _check_endpoint, _check_sizes, _check_times, _check_policies,
    _check_spool, _check_metrics, _check_fleet)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _positive_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
