"""Credentials and region: check(), region="auto", region names, and the stall warning."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import customerio
import pytest

from cio_queue import (
    AccountRegion,
    ConfigError,
    EventQueue,
    OutcomeStatus,
    QueueConfig,
    Region,
    Request,
    Response,
    RetryPolicy,
)
from cio_queue.testing import FakeTrackAPI

from .recording import RecordingSender

pytestmark = pytest.mark.anyio


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "fake-site", "api_key": "fake-key", "base_url": "http://127.0.0.1:9",
        "flush_interval": 0.01, "rate_limit": None, "shutdown_timeout": 2.0,
        "retry": RetryPolicy(attempts=3, wait_initial=0.01, wait_jitter=0),
    }
    values.update(overrides)
    return QueueConfig(**values)


async def test_check_returns_the_workspace_region() -> None:
    """check() asks GET /api/v1/accounts/region and returns what the API says."""
    async with FakeTrackAPI(region="eu") as fake:
        queue = EventQueue(config(base_url=fake.url, region=Region.EU))
        try:
            assert await queue.check() == AccountRegion(Region.EU, Region.EU.value, 1)
        finally:
            await queue.aclose()
        assert [(r.method, r.path) for r in fake.log] == [("GET", "/api/v1/accounts/region")]


async def test_check_names_the_right_region_when_the_config_is_wrong() -> None:
    """A US config for an EU workspace: ConfigError that says to set Region.EU."""
    async with FakeTrackAPI(region="eu") as fake:
        queue = EventQueue(config(base_url=fake.url))
        try:
            with pytest.raises(ConfigError, match=r"EU region.*region=Region\.EU"):
                await queue.check()
        finally:
            await queue.aclose()


async def test_check_refuses_bad_credentials_without_showing_them() -> None:
    """Wrong key: ConfigError about the credentials, and the key is not in it."""
    async with FakeTrackAPI() as fake:
        queue = EventQueue(config(base_url=fake.url, api_key="sk-wrong-1234"))
        try:
            with pytest.raises(ConfigError, match="refused these credentials") as refused:
                await queue.check()
        finally:
            await queue.aclose()
    assert "sk-wrong-1234" not in str(refused.value)


async def test_region_auto_asks_once_and_routes_there_before_sending() -> None:
    """region='auto': one region request before the first send, then every send goes there."""
    routed: list[str] = []

    def answer(request: Request) -> Response:
        if request.path == "/api/v1/accounts/region":
            return Response(200, {}, b'{"url": "https://track-eu.customer.io", '
                                     b'"region": "eu", "environment_id": 7}')
        return Response(200, {}, b"{}")

    class RoutedSender(RecordingSender):
        def route_to(self, url: str) -> None:
            """Note where the queue routed its requests."""
            routed.append(url)

    sender = RoutedSender(answer)
    queue = EventQueue(config(base_url=None, region="auto", max_concurrency=4),
                       sender=sender)
    async with queue:
        receipts = [await queue.track(f"c{i}", "ev") for i in range(50)]
        with anyio.fail_after(10):
            outcomes = [await r.wait() for r in receipts]
    assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}
    paths = [r.path for r in sender.requests]
    assert paths[0] == "/api/v1/accounts/region"
    assert paths.count("/api/v1/accounts/region") == 1
    assert routed == [Region.EU.value]


@pytest.mark.parametrize(("given", "expected"), [
    ("us", Region.US), ("EU", Region.EU), (" auto ", "auto"),
    (customerio.Regions.EU, Region.EU), (customerio.Regions.US, Region.US),
])
def test_region_names_people_already_use_are_accepted(given: object, expected: object) -> None:
    """Strings, and the official SDK's Regions, are read as the region they name."""
    assert config(region=given).region == expected


def test_an_unknown_region_is_refused() -> None:
    """Anything else is a ConfigError that lists the choices."""
    with pytest.raises(ConfigError, match="'us', 'eu' or 'auto'"):
        config(region="mars")


async def test_a_hung_api_gets_one_stall_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing final from the API for stalled_after while work waits: one warning, once."""
    stalled = anyio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cio_queue.stalled" in record.getMessage():
                stalled.set()

    watch = Watch()
    logging.getLogger("cio_queue").addHandler(watch)
    sender = RecordingSender()
    sender.hold.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="cio_queue"):
            async with EventQueue(config(stalled_after=0.3, shutdown_timeout=0.2),
                                  sender=sender) as queue:
                await queue.track("42", "ev")
                with anyio.fail_after(10):
                    await stalled.wait()
                    await anyio.sleep(0.7)  # twice the threshold again: still one warning
                sender.hold.set()
    finally:
        logging.getLogger("cio_queue").removeHandler(watch)
    warnings = [r.getMessage() for r in caplog.records if "cio_queue.stalled" in r.getMessage()]
    assert len(warnings) == 1
    assert "pending=1" in warnings[0]
