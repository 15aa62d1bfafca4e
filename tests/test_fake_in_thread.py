"""FakeTrackAPI on a thread of its own: waits from other threads and other event loops."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.request

import anyio
import pytest

from cio_queue import EventQueue, QueueConfig
from cio_queue.testing import FakeTrackAPI, serve_in_thread

WAIT = 10.0  # upper bound for every wait in this module


def post_event(fake: FakeTrackAPI, customer: str, name: str) -> int:
    """Send one v1 event with the stdlib, as code without an event loop would."""
    token = base64.b64encode(f"{fake.site_id}:{fake.api_key}".encode()).decode()
    request = urllib.request.Request(
        f"{fake.url}/api/v1/customers/{customer}/events", method="POST",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return int(response.status)


def config_for(fake: FakeTrackAPI) -> QueueConfig:
    return QueueConfig(site_id=fake.site_id, api_key=fake.api_key, base_url=fake.url,
                       rate_limit=None, flush_interval=0.01)


def test_serve_in_thread_answers_blocking_code_and_closes_at_the_end() -> None:
    """Sync code reaches the fake, waits for what it accepted, and the port closes after."""
    with serve_in_thread(FakeTrackAPI(site_id="s", api_key="k")) as fake:
        assert fake.running
        assert post_event(fake, "42", "purchase") == 200
        fake.wait_for_operations_blocking(1, timeout=WAIT)
        fake.wait_for_requests_blocking(1, timeout=WAIT)
        assert [event["name"] for event in fake.accepted_events()] == ["purchase"]
    assert not fake.running


def test_a_blocking_wait_wakes_when_another_thread_sends() -> None:
    """wait_for_operations_blocking returns once a request from another thread lands."""
    with serve_in_thread() as fake:
        sender = threading.Timer(0.05, post_event, args=(fake, "42", "later"))
        sender.start()
        try:
            fake.wait_for_operations_blocking(1, timeout=WAIT)
        finally:
            sender.join(WAIT)
        assert len(fake.operations) == 1


def test_a_blocking_wait_times_out_naming_the_counts() -> None:
    """Too few operations within the timeout: TimeoutError saying how many arrived."""
    with serve_in_thread() as fake:
        with pytest.raises(TimeoutError, match=r"accepted 0 operations within 0\.05 s, not 1"):
            fake.wait_for_operations_blocking(1, timeout=0.05)
        with pytest.raises(TimeoutError, match=r"condition not met within 0\.05 s"):
            fake.wait_until_blocking(lambda: False, timeout=0.05)


@pytest.mark.anyio
async def test_an_async_wait_works_from_another_event_loop() -> None:
    """A test's own loop awaits wait_for_operations on a fake served by another thread."""
    with serve_in_thread() as fake:
        async with EventQueue(config_for(fake)) as cio:
            await cio.track("42", "purchase")
            await cio.identify("42", plan="pro")
            with anyio.fail_after(WAIT):
                await fake.wait_for_operations(2)
        assert len(fake.operations) == 2


def test_a_waiter_whose_loop_ended_does_not_disturb_the_server() -> None:
    """A wait cut short by a timeout, on a loop since closed, leaves the fake serving."""
    async def give_up() -> None:
        with anyio.move_on_after(0.05):
            await fake.wait_for_operations(1)

    with serve_in_thread() as fake:
        asyncio.run(give_up())  # its loop is closed now, its cancelled waiter still listed
        assert post_event(fake, "42", "purchase") == 200
        fake.wait_for_operations_blocking(1, timeout=WAIT)


@pytest.mark.anyio
async def test_a_blocking_wait_on_the_fakes_own_loop_is_refused() -> None:
    """Blocking the loop that serves the fake would deadlock: RuntimeError instead."""
    async with FakeTrackAPI() as fake:
        with pytest.raises(RuntimeError, match="own event loop"):
            fake.wait_for_operations_blocking(1, timeout=WAIT)
