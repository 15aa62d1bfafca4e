"""Metrics through OpenTelemetry, read with the SDK's in-memory reader.

Each test runs real queues (against the fake Track API, or a held recording sender when
it must stop time) with a MeterProvider of its own, and reads what a collection reports.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import metrics
from opentelemetry.metrics import _internal as metrics_globals
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.util._once import Once

from cio_queue import (
    ConfigError,
    EventQueue,
    OperationView,
    OutcomeStatus,
    QueueConfig,
    RetryPolicy,
    SyncEventQueue,
)
from cio_queue.testing import FakeTrackAPI, Fault

from .recording import RecordingSender

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds: the bound on every wait in this file

Key = tuple[tuple[str, Any], ...]


def key(attributes: dict[str, Any]) -> Key:
    """A data point's attributes in a comparable form."""
    return tuple(sorted(attributes.items()))


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """Every metric a collection reports now, by name."""
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {metric.name: metric for resource in data.resource_metrics
            for scope in resource.scope_metrics for metric in scope.metrics}


def sums(metric: Metric) -> dict[Key, float]:
    """A counter's or up-down counter's value per attribute set."""
    assert isinstance(metric.data, Sum)
    points = metric.data.data_points
    assert all(isinstance(point, NumberDataPoint) for point in points)
    return {key(dict(point.attributes or {})): point.value for point in points}


def histogram(metric: Metric) -> dict[Key, HistogramDataPoint]:
    """A histogram's data point per attribute set."""
    assert isinstance(metric.data, Histogram)
    return {key(dict(point.attributes or {})): point for point in metric.data.data_points}


def meter_provider() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def held_config(provider: MeterProvider, **overrides: Any) -> QueueConfig:
    """A config for a RecordingSender: one operation per request, two in flight."""
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": "http://127.0.0.1:9",
        "transport": "v1", "batch_size": 1, "max_concurrency": 2, "rate_limit": None,
        "flush_interval": 0.01, "meter_provider": provider}
    values.update(overrides)
    return QueueConfig(**values)


async def test_outcomes_retries_429s_and_durations_are_recorded(
        fake_track_api: FakeTrackAPI, cio_queue_config: QueueConfig) -> None:
    """Every instrument reports its semantic-convention or cio_queue name, unit and values."""
    provider, reader = meter_provider()

    def no_test_users(view: OperationView) -> OperationView | None:
        return None if str(view.customer_id).startswith("test-") else view

    config = dataclasses.replace(
        cio_queue_config, transport="v1", max_concurrency=1, meter_provider=provider,
        rate_limited_pause=0.01, before_send=no_test_users,
        retry=RetryPolicy(attempts=3, wait_initial=0.01, wait_jitter=0.0))
    fake = fake_track_api
    async with EventQueue(config) as queue:
        with anyio.fail_after(WAIT):
            fake.script(500, 429)  # a retry after a 5xx, then a pause after a 429
            delivered = await (await queue.track("1", "signed_up")).wait()
            fake.script(400)
            rejected = await (await queue.identify("2", plan="pro")).wait()
            fake.script(401)
            failed = await (await queue.track("3", "purchase")).wait()
            fake.script(Fault.DROP_CONNECTION)  # no answer: retried, no status code
            await (await queue.track("4", "purchase")).wait()
            filtered = await (await queue.track("test-5", "purchase")).wait()
        stats = queue.statistics()
        found = collect(reader)
    assert [delivered.attempts, rejected.status, failed.reason, filtered.status] == [
        3, OutcomeStatus.REJECTED, "unauthorized", OutcomeStatus.FILTERED]

    name = {"cio_queue.name": "default"}
    assert {m: found[m].unit for m in found} == {
        "http.client.request.duration": "s", "cio_queue.operations": "{operation}",
        "cio_queue.retries": "{request}", "cio_queue.rate_limited": "{pause}",
        "cio_queue.queue.depth": "{operation}", "cio_queue.requests.in_flight": "{request}"}
    assert sums(found["cio_queue.operations"]) == {
        key({**name, "cio_queue.outcome": "delivered"}): 2,
        key({**name, "cio_queue.outcome": "rejected", "cio_queue.reason": "rejected"}): 1,
        key({**name, "cio_queue.outcome": "failed", "cio_queue.reason": "unauthorized"}): 1,
        key({**name, "cio_queue.outcome": "filtered", "cio_queue.reason": "before_send"}): 1}
    assert sums(found["cio_queue.retries"]) == {key(name): stats.retries} == {key(name): 3}
    assert sums(found["cio_queue.rate_limited"]) == {key(name): 1}
    assert sums(found["cio_queue.queue.depth"]) == {key(name): 0}
    assert sums(found["cio_queue.requests.in_flight"]) == {key(name): 0}

    server = {**name, "server.address": "127.0.0.1", "server.port": fake.port}
    post, put = ({**server, "http.request.method": m} for m in ("POST", "PUT"))
    durations = histogram(found["http.client.request.duration"])
    assert {k: point.count for k, point in durations.items()} == {
        key({**post, "http.response.status_code": 500, "error.type": "500"}): 1,
        key({**post, "http.response.status_code": 429, "error.type": "429"}): 1,
        key({**post, "http.response.status_code": 200}): 2,
        key({**put, "http.response.status_code": 400, "error.type": "400"}): 1,
        key({**post, "http.response.status_code": 401, "error.type": "401"}): 1,
        key({**post, "error.type": "TransportError"}): 1}
    ok = durations[key({**post, "http.response.status_code": 200})]
    assert 0 < ok.min <= ok.max < WAIT
    assert ok.explicit_bounds[:3] == (0.005, 0.01, 0.025)  # the semconv advice, in seconds


def test_a_sync_queue_counts_what_its_before_send_drops() -> None:
    """SyncEventQueue drops in the caller's thread; the metric counts it as EventQueue does."""
    provider, reader = meter_provider()
    outcomes: list[OutcomeStatus] = []

    def no_test_users(view: OperationView) -> OperationView | None:
        return None if str(view.customer_id).startswith("test-") else view

    config = held_config(provider, before_send=no_test_users,
                         on_outcome=lambda outcome: outcomes.append(outcome.status))
    with SyncEventQueue(config, sender=RecordingSender()) as queue:
        filtered = queue.track("test-1", "purchase")
        delivered = queue.track("2", "purchase")
        assert delivered.result(timeout=WAIT).status is OutcomeStatus.DELIVERED
        assert filtered.result(timeout=WAIT).status is OutcomeStatus.FILTERED
        queue.flush(timeout=WAIT)
        found = collect(reader)
    name = {"cio_queue.name": "default"}
    assert sums(found["cio_queue.operations"]) == {
        key({**name, "cio_queue.outcome": "delivered"}): 1,
        key({**name, "cio_queue.outcome": "filtered", "cio_queue.reason": "before_send"}): 1}
    assert sorted(status.value for status in outcomes) == ["delivered", "filtered"]


async def test_gauges_read_depth_and_in_flight_and_report_nothing_once_stopped() -> None:
    """Depth and in-flight are read at collection; a drop counts; a closed queue leaves."""
    provider, reader = meter_provider()
    sender = RecordingSender()
    sender.hold.clear()
    config = held_config(provider, metrics_name="held", max_queue_size=3,
                         overflow="drop_newest")
    name = key({"cio_queue.name": "held"})
    async with EventQueue(config, sender=sender) as queue:
        receipts = [await queue.track(str(n), "purchase") for n in range(4)]
        with anyio.fail_after(WAIT):
            await sender.wait_for(2)
        held = collect(reader)
        sender.hold.set()
        with anyio.fail_after(WAIT):
            await queue.flush()
        drained = collect(reader)
    closed = collect(reader)

    assert receipts[3].outcome is not None
    assert receipts[3].outcome.status is OutcomeStatus.DROPPED
    assert sums(held["cio_queue.queue.depth"]) == {name: 3}
    assert sums(held["cio_queue.requests.in_flight"]) == {name: 2}
    assert sums(held["cio_queue.operations"]) == {
        key({"cio_queue.name": "held", "cio_queue.outcome": "dropped",
             "cio_queue.reason": "queue_full"}): 1}
    assert sums(drained["cio_queue.queue.depth"]) == {name: 0}
    assert sums(drained["cio_queue.requests.in_flight"]) == {name: 0}
    assert "cio_queue.queue.depth" not in closed
    assert "cio_queue.requests.in_flight" not in closed
    assert sums(closed["cio_queue.operations"])[
        key({"cio_queue.name": "held", "cio_queue.outcome": "delivered"})] == 3


async def test_queues_are_told_apart_by_name_and_summed_when_they_share_one() -> None:
    """Two names, two series; a shared name sums; a counter never goes back after a stop."""
    provider, reader = meter_provider()
    senders = [RecordingSender() for _ in range(3)]
    for sender in senders:
        sender.hold.clear()
    queues = [EventQueue(held_config(provider, metrics_name=name), sender=sender)
              for name, sender in zip(("a", "b", "a"), senders, strict=True)]
    for queue, count in zip(queues, (1, 2, 1), strict=True):
        for n in range(count):
            await queue.track(str(n), "purchase")
    with anyio.fail_after(WAIT):
        for sender, count in zip(senders, (1, 2, 1), strict=True):
            await sender.wait_for(count)
    held = collect(reader)
    for sender in senders:
        sender.hold.set()
    with anyio.fail_after(WAIT):
        for queue in queues:
            await queue.aclose()
    delivered = {name: key({"cio_queue.name": name, "cio_queue.outcome": "delivered"})
                 for name in ("a", "b")}
    after_close = sums(collect(reader)["cio_queue.operations"])
    async with EventQueue(held_config(provider, metrics_name="a"),
                          sender=RecordingSender()) as again:
        with anyio.fail_after(WAIT):
            await (await again.track("9", "purchase")).wait()
        restarted = sums(collect(reader)["cio_queue.operations"])

    assert sums(held["cio_queue.queue.depth"]) == {
        key({"cio_queue.name": "a"}): 2, key({"cio_queue.name": "b"}): 2}
    assert sums(held["cio_queue.requests.in_flight"]) == {
        key({"cio_queue.name": "a"}): 2, key({"cio_queue.name": "b"}): 2}
    assert after_close == {delivered["a"]: 2, delivered["b"]: 2}
    assert restarted == {delivered["a"]: 3, delivered["b"]: 2}


@pytest.fixture
def global_meter_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    """Set OpenTelemetry's global MeterProvider for one test and restore it afterwards.

    OpenTelemetry lets a process set it once; this swaps its module globals, as its own
    test utilities (``reset_metrics_globals``) do.
    """
    monkeypatch.setattr(metrics_globals, "_METER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(metrics_globals, "_METER_PROVIDER", None)
    monkeypatch.setattr(metrics_globals, "_PROXY_METER_PROVIDER",
                        metrics_globals._ProxyMeterProvider())
    provider, reader = meter_provider()
    metrics.set_meter_provider(provider)
    yield reader
    provider.shutdown()


async def test_the_global_meter_provider_is_the_default(
        global_meter_provider: InMemoryMetricReader, cio_queue_config: QueueConfig) -> None:
    """Without meter_provider, a queue records through the global provider."""
    async with EventQueue(cio_queue_config) as queue:
        with anyio.fail_after(WAIT):
            await (await queue.track("1", "purchase")).wait()
    assert sums(collect(global_meter_provider)["cio_queue.operations"]) == {
        key({"cio_queue.name": "default", "cio_queue.outcome": "delivered"}): 1}


async def test_metrics_false_records_nothing(cio_queue_config: QueueConfig) -> None:
    """metrics=False ignores a given provider: it never even gets a meter."""
    provider, reader = meter_provider()
    config = dataclasses.replace(cio_queue_config, metrics=False, meter_provider=provider)
    async with EventQueue(config) as queue:
        with anyio.fail_after(WAIT):
            await (await queue.track("1", "purchase")).wait()
        assert collect(reader) == {}


async def test_a_provider_that_fails_costs_the_metrics_never_the_queue(
        cio_queue_config: QueueConfig, caplog: pytest.LogCaptureFixture) -> None:
    """A provider whose get_meter raises: one error is logged and delivery goes on."""

    class Broken:
        def get_meter(self, *args: object) -> None:
            raise RuntimeError("no meters today")

    config = dataclasses.replace(cio_queue_config, meter_provider=Broken())
    with caplog.at_level(logging.ERROR, logger="cio_queue"):
        async with EventQueue(config) as queue:
            with anyio.fail_after(WAIT):
                outcome = await (await queue.track("1", "purchase")).wait()
    assert outcome.status is OutcomeStatus.DELIVERED
    assert [r.getMessage().split()[0] for r in caplog.records] == [
        "cio_queue.metrics_unavailable"]


async def test_a_provider_without_weak_references_gets_one_set_of_instruments(
        cio_queue_config: QueueConfig) -> None:
    """Two queues on a provider that cannot be weakly referenced still share instruments."""
    provider, reader = meter_provider()

    class Slotted:
        __slots__ = ()

        def get_meter(self, *args: Any, **kwargs: Any) -> Any:
            return provider.get_meter(*args, **kwargs)

    config = dataclasses.replace(cio_queue_config, meter_provider=Slotted())
    for _ in range(2):
        async with EventQueue(config) as queue:
            with anyio.fail_after(WAIT):
                await (await queue.track("1", "purchase")).wait()
    assert sums(collect(reader)["cio_queue.operations"]) == {
        key({"cio_queue.name": "default", "cio_queue.outcome": "delivered"}): 2}


@pytest.fixture
def without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import opentelemetry`` fail, as on a machine without the otel extra."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)


@pytest.mark.usefixtures("without_opentelemetry")
def test_metrics_true_without_opentelemetry_is_a_config_error() -> None:
    """Asking for metrics without the API says which extra to install."""
    with pytest.raises(ConfigError, match=r"cio-queue\[otel\]"):
        QueueConfig(site_id="site", api_key="key", metrics=True)


@pytest.mark.usefixtures("without_opentelemetry")
async def test_without_opentelemetry_the_default_records_nothing_and_delivers(
        cio_queue_config: QueueConfig) -> None:
    """metrics=None means: record if the API is there; without it the queue just runs."""
    async with EventQueue(cio_queue_config) as queue:
        with anyio.fail_after(WAIT):
            outcome = await (await queue.track("1", "purchase")).wait()
    assert outcome.status is OutcomeStatus.DELIVERED


def test_importing_cio_queue_does_not_import_opentelemetry() -> None:
    """The API is imported when a queue with metrics starts, never by the package."""
    code = ("import sys, cio_queue, cio_queue.testing; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("metrics", "yes", "metrics must be True, False or None"),
    ("metrics_name", "", "metrics_name must be a short printable name"),
    ("metrics_name", "x" * 65, "at most 64 characters"),
    ("metrics_name", "tab\there", "metrics_name must be a short printable name"),
    ("meter_provider", object(), "meter_provider must be an OpenTelemetry MeterProvider"),
])
def test_metrics_fields_are_validated(field: str, value: Any, message: str) -> None:
    """Each metrics field refuses a wrong value with a message that says what to give."""
    with pytest.raises(ConfigError, match=message):
        QueueConfig(site_id="site", api_key="key", **{field: value})


def test_the_meter_provider_is_kept_out_of_repr_and_equality() -> None:
    """Like on_outcome, the provider is an object to use, not a setting to compare."""
    provider, _ = meter_provider()
    config = QueueConfig(site_id="site", api_key="key", meter_provider=provider)
    assert "meter_provider" not in repr(config)
    assert config == QueueConfig(site_id="site", api_key="key")
    assert "metrics_name='default'" in repr(config)
    assert QueueConfig(site_id="site", api_key="key", metrics=True).metrics is True


def test_the_cost_benchmark_runs() -> None:
    """`python -m benchmarks.otel_cost` at its smallest: a smoke test, not a timing test."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.otel_cost", "--operations", "500", "--rounds", "1",
         "--calls", "1000"], cwd=root, capture_output=True, text=True, timeout=120,
        check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert "SDK MeterProvider, in-memory reader" in result.stdout
