"""Each operation's request equals what the official customerio 3.2 SDK sends, byte for byte.

The SDK's requests are captured at its transport adapter (it cannot reach the network
here); ours are sent over real HTTP to the fake Track API and read back as the server
received them.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
import requests
from customerio import CustomerIO
from requests.adapters import BaseAdapter

from cio_queue import EventQueue, QueueConfig, __version__
from cio_queue.testing import FakeTrackAPI, RecordedRequest

pytestmark = pytest.mark.anyio

EVENT_ID = "01HZY8J5Q6V3W4X5Y6Z7A8B9C0"
WHEN = datetime(2024, 5, 6, 7, 8, 9)
AWARE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=-5)))
ATTRIBUTES: dict[str, Any] = {
    "email": "ada@example.com", "plan": "pro", "created_at": WHEN, "score": math.nan,
    "nested": {"seen": [AWARE, {"at": WHEN}], "flag": True, "none": None},
    "name": "Zoë 漢字", "count": 3, "ratio": 0.25,
}
IDS = ["42", 42, 0, "ada@example.com", "cio_a3000001", "a/b c+d?e#f", "ünï©ødé 漢字",
       "%2F already", "x" * 150]

# (method name, positional args, keyword args, does the SDK accept an event id?)
Call = tuple[str, tuple[Any, ...], dict[str, Any]]
CALLS: list[Call] = [
    *[("identify", (i,), ATTRIBUTES) for i in IDS],
    ("identify", ("42",), {}),
    *[("track", (i, "purchase", {"price": 9.5, "at": WHEN}),
       {"id": EVENT_ID, "timestamp": 1_700_000_000}) for i in IDS],
    ("track", ("42", "signed up"), {"id": EVENT_ID}),
    ("track", ("42", "renewed", ATTRIBUTES), {"id": EVENT_ID, "timestamp": AWARE}),
    ("track_anonymous", ("anon-1", "viewed", {"page": "/"}), {"id": EVENT_ID}),
    ("track_anonymous", ("", "invite", {"recipient": "a@b.co"}),
     {"id": EVENT_ID, "timestamp": WHEN}),
    ("track_anonymous", (None, "invite", {"recipient": "a@b.co"}), {"id": EVENT_ID}),
    ("pageview", ("a/b c", "https://example.com/pricing?x=1"), {"referrer": "ad", "at": WHEN}),
    ("backfill", ("42", "imported", 1_600_000_000), {"source": "csv", "nan": math.nan}),
    ("backfill", ("42", "imported", WHEN), {}),
    *[("delete", (i,), {}) for i in IDS],
    ("add_device", ("42", "tok/1 +x", "ios"), {"last_used": WHEN, "app_version": "1.2"}),
    ("add_device", ("ada@example.com", "tok", "android"), {}),
    ("add_device", ("42", "tok", "ios"),
     {"attributes": {"app_version": "1.2", "push_enabled": "true"}, "device_model": "X",
      "last_used": WHEN}),
    ("delete_device", ("42", "tok/1 +x"), {}),
    ("delete_device", (7, "ünï"), {}),
    *[(m, (i,), {}) for m in ("suppress", "unsuppress") for i in IDS[:6]],
    ("merge_customers", ("email", "a@b.co", "id", "42"), {}),
    ("merge_customers", ("cio_id", "a3000001", "id", 42), {}),
]


class CaptureAdapter(BaseAdapter):
    """Capture the SDK's prepared requests instead of sending them."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        """Record the request and answer 200 without touching the network."""
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.request = request
        return response

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeTrackAPI]:
    async with FakeTrackAPI() as server:
        yield server


def sdk_request(call: Call, fake: FakeTrackAPI) -> requests.PreparedRequest:
    client = CustomerIO(site_id=fake.site_id, api_key=fake.api_key, host="127.0.0.1",
                        port=fake.port)
    adapter = CaptureAdapter()
    client.http.mount("https://", adapter)
    name, args, kwargs = call
    method: Callable[..., Any] = getattr(client, name)
    method(*args, **kwargs)
    (request,) = adapter.sent
    return request


async def our_request(call: Call, fake: FakeTrackAPI) -> RecordedRequest:
    config = QueueConfig(site_id=fake.site_id, api_key=fake.api_key, base_url=fake.url,
                         transport="v1", rate_limit=None, flush_interval=0.01)
    name, args, kwargs = call
    before = len(fake.requests)
    async with EventQueue(config) as queue:
        await getattr(queue, name)(*args, **kwargs)
    with anyio.fail_after(5):
        await fake.wait_for_requests(before + 1)
    return fake.requests[before]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c[0]}-{c[1][:1]!r}"[:60])
async def test_request_matches_the_official_sdk(call: Call, fake: FakeTrackAPI) -> None:
    """Method, percent-encoded path and body bytes equal the official SDK's request."""
    expected = sdk_request(call, fake)
    ours = await our_request(call, fake)
    assert ours.method == expected.method
    assert ours.path == expected.path_url
    assert ours.status == 200
    expected_body = expected.body if isinstance(expected.body, bytes) else b""
    if call[0] in ("pageview", "backfill"):
        # The SDK has no event id parameter here; we add one, and nothing else differs.
        body = json.loads(ours.body)
        assert len(body.pop("id")) == 26
        assert json.dumps(body).encode() == expected_body
    else:
        assert ours.body == expected_body


async def test_events_without_an_id_differ_only_by_the_added_ulid(fake: FakeTrackAPI) -> None:
    """Without a caller id, the body is the SDK's body plus a ULID ``id``."""
    call: Call = ("track", ("42", "purchase", {"price": 1}), {"timestamp": 1_700_000_000})
    sent = sdk_request(call, fake).body
    assert isinstance(sent, bytes)
    expected = json.loads(sent)
    body = json.loads((await our_request(call, fake)).body)
    assert len(body.pop("id")) == 26
    assert body == expected


async def test_auth_and_user_agent_headers(fake: FakeTrackAPI) -> None:
    """Basic auth is site_id:api_key, Content-Type is JSON and the User-Agent names us."""
    ours = await our_request(("identify", ("42",), {}), fake)
    token = base64.b64encode(f"{fake.site_id}:{fake.api_key}".encode()).decode()
    assert ours.headers["Authorization"] == f"Basic {token}"
    assert ours.headers["Content-Type"] == "application/json"
    assert ours.headers["User-Agent"].startswith(f"cio-queue/{__version__} ")


async def test_wrong_credentials_end_failed_as_unauthorized(fake: FakeTrackAPI) -> None:
    """A 401 fails the operation as unauthorized at once, and the key is shown nowhere."""
    secret = "wrong-secret-key-123"
    config = QueueConfig(site_id=fake.site_id, api_key=secret, base_url=fake.url,
                         transport="v1", rate_limit=None, flush_interval=0.01)
    async with EventQueue(config) as queue:
        receipt = await queue.identify("42")
        with anyio.fail_after(5):
            outcome = await receipt.wait()
    assert outcome.status.value == "failed"
    assert outcome.reason == "unauthorized"
    assert outcome.attempts == 1
    assert outcome.error is not None
    assert outcome.error.status == 401
    assert secret not in repr(outcome)
    assert secret not in str(outcome.error)
    assert secret not in repr(queue)
