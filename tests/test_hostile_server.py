"""HttpSender and classify() against servers that are not the Track API.

Proxies, gateways and a wrong ``base_url`` answer in ways the real API never does:
redirects, endless or compressed bodies, error pages that echo the request headers,
malformed status lines, bodies that stall. Each misbehaviour is a small aiohttp server on
127.0.0.1; the client is the real HttpSender, tested at its boundary (``send`` then
``classify``). The 207 reader, :func:`partial_errors`, is fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cio_queue import (
    ConfigError,
    EventQueue,
    Outcome,
    OutcomeStatus,
    QueueConfig,
    RejectedError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from cio_queue._packing import partial_errors
from cio_queue._sender import (
    MAX_RESPONSE_BYTES,
    HttpSender,
    Request,
    Response,
    classify,
)

pytestmark = pytest.mark.anyio

SITE_ID: Final = "93f2c1"
API_KEY: Final = "guc0eyjivh?ye~9o~frxs~"
_PAIR: Final = f"{SITE_ID}:{API_KEY}".encode()
TOKEN: Final = base64.b64encode(_PAIR).decode()
URLSAFE_TOKEN: Final = base64.urlsafe_b64encode(_PAIR).decode()
# Every form in which the credential could come back; none may reach a reason or a body.
SECRETS: Final = (API_KEY, TOKEN, URLSAFE_TOKEN, TOKEN.rstrip("="), URLSAFE_TOKEN.rstrip("="),
                  TOKEN.replace("/", "\\/"))
assert "+" in TOKEN  # so the URL-safe form really differs
assert "/" in TOKEN
BATCH: Final = Request("POST", "/api/v2/batch", b'{"batch":[]}')
REASON_LIMIT: Final = 300  # what a reason may add around its bounded excerpt

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Run ``handler`` for every path on 127.0.0.1 (port 0) and yield the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def sender_for(url: str, **overrides: Any) -> HttpSender:
    values: dict[str, Any] = {"site_id": SITE_ID, "api_key": API_KEY, "base_url": url,
                              "request_timeout": 5.0, "rate_limit": None,
                              "retry": RetryPolicy(attempts=1)}
    values.update(overrides)
    return HttpSender(QueueConfig(**values))


async def exchange(url: str, *, within: float = 10.0, **overrides: Any) -> Response:
    """Send one batch request to ``url`` through a fresh HttpSender."""
    sender = sender_for(url, **overrides)
    try:
        with anyio.fail_after(within):
            return await sender.send(BATCH)
    finally:
        await sender.aclose()


def assert_no_secret(text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"credential form {secret!r} leaked"


async def write_raw(request: web.Request, raw: bytes) -> web.StreamResponse:
    """Write ``raw`` as the whole reply, bypassing aiohttp's response writer."""
    transport = request.transport
    assert transport is not None
    transport.write(raw)
    await asyncio.Event().wait()  # until the client hangs up (handler cancellation)
    raise AssertionError("unreachable")


# --- redirects ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_is_a_non_retryable_failure(status: int) -> None:
    """A 3xx on the batch POST is not followed; it is a RejectedError that hints at base_url."""
    followed: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/elsewhere":
            followed.append(request.method)
            return web.json_response({})
        return web.Response(status=status, headers={"Location": "/elsewhere"})

    async with serve(handler) as url:
        response = await exchange(url)
    assert followed == []
    assert response.status == status
    error = classify(response)
    assert isinstance(error, RejectedError)
    assert not error.retryable
    assert error.status == status
    assert f"HTTP {status} redirect to /elsewhere" in str(error)
    assert "base_url" in str(error)


async def test_a_redirect_reason_drops_credentials_and_query_from_the_location() -> None:
    """The Location in a redirect's reason loses its user info, query and any credential form."""
    location = (f"https://user:{API_KEY}@track-eu.customer.io/api/v2/batch/{TOKEN}"
                f"?auth={URLSAFE_TOKEN}#frag")

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": location})

    async with serve(handler) as url:
        response = await exchange(url)
    assert_no_secret(repr(response))
    error = classify(response)
    assert isinstance(error, RejectedError)
    assert "redirect to https://track-eu.customer.io/api/v2/batch/" in str(error)
    assert "user" not in str(error)
    assert "auth=" not in str(error)
    assert_no_secret(str(error))


@pytest.mark.parametrize("status", [300, 304, 305])
async def test_a_redirection_status_without_location_still_hints_base_url(status: int) -> None:
    """A 3xx with no Location is a non-retryable failure whose reason points at base_url."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status)

    async with serve(handler) as url:
        error = classify(await exchange(url))
    assert isinstance(error, RejectedError)
    assert not error.retryable
    assert "base_url" in str(error)


async def test_a_101_switching_protocols_answer_is_rejected_without_reading_a_body() -> None:
    """A 101 (not a final answer for a POST) returns at once, rejected, though the peer stays."""
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        return await write_raw(request, raw)

    async with serve(handler) as url:
        response = await exchange(url, within=2.0, request_timeout=30.0)
    error = classify(response)
    assert isinstance(error, RejectedError)
    assert "HTTP 101" in str(error)


@pytest.mark.parametrize("status", [100, 600, 999])
def test_a_status_outside_the_http_classes_is_rejected_not_retried(status: int) -> None:
    """A status no HTTP server answers with is not delivered and not retried (not a 5xx)."""
    error = classify(Response(status, {}, b""))
    assert isinstance(error, RejectedError)
    assert "unexpected" in str(error)


# --- response size --------------------------------------------------------------------------

BIG_BODY: Final = 32 * 1024 * 1024  # far beyond the cap, small enough to run before the fix


def streaming(status: int, total: int, *, headers: dict[str, str] | None = None,
              chunk: bytes = b"x" * 65536) -> tuple[Handler, asyncio.Event]:
    """A handler that streams ``total`` bytes of ``chunk``; the event is set on a hang-up."""
    hung_up = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = total
        await response.prepare(request)
        sent = 0
        try:
            while sent < total:
                piece = chunk[: total - sent]
                await response.write(piece)
                sent += len(piece)
        except (ConnectionError, asyncio.CancelledError):
            hung_up.set()
            raise
        return response

    return handler, hung_up


async def test_a_huge_body_is_cut_at_the_cap_and_marked_truncated() -> None:
    """A 400 with a 32 MiB body gives back MAX_RESPONSE_BYTES, truncated, and a bounded reason."""
    handler, _ = streaming(400, BIG_BODY)
    async with serve(handler) as url:
        tracemalloc.start()
        try:
            response = await exchange(url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * MAX_RESPONSE_BYTES
    assert response.truncated
    assert len(response.body) == MAX_RESPONSE_BYTES
    error = classify(response)
    assert isinstance(error, RejectedError)
    assert len(str(error)) < REASON_LIMIT


async def test_a_cut_body_closes_its_connection_instead_of_pooling_it() -> None:
    """Past the cap the connection is closed, not pooled: the next request opens a new one."""
    peers: list[object] = []
    endless, hung_up = streaming(200, 1 << 40)

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if len(peers) == 1:
            return await endless(request)
        return web.json_response({})

    async with serve(handler) as url:
        sender = sender_for(url)
        try:
            with anyio.fail_after(10):
                first = await sender.send(BATCH)
                second = await sender.send(BATCH)
                await hung_up.wait()
        finally:
            await sender.aclose()
    assert first.truncated
    assert (second.status, second.truncated) == (200, False)
    assert peers[0] != peers[1]


def gzip_bomb(inflated: int) -> bytes:
    """Gzip ``inflated`` bytes of zeros (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(inflated >> 20)]
    return b"".join([*parts, packer.flush()])


BOMB_INFLATED: Final = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(BOMB_INFLATED)


@pytest.mark.parametrize("status", [207, 400])
async def test_a_gzip_bomb_inflates_no_further_than_the_cap(bomb: bytes, status: int) -> None:
    """A 64 KiB gzip reply that inflates to 64 MiB costs the cap, not 64 MiB, and is truncated."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=bomb, headers={"Content-Encoding": "gzip"},
                            content_type="application/json")

    async with serve(handler) as url:
        tracemalloc.start()
        try:
            response = await exchange(url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * MAX_RESPONSE_BYTES
    assert response.truncated
    assert len(response.body) <= MAX_RESPONSE_BYTES
    assert partial_errors(response.body, 1, truncated=response.truncated) is None


async def test_a_small_gzip_207_is_inflated_and_read() -> None:
    """A well-formed gzip-encoded 207 still reads as its error list."""
    body = json.dumps({"errors": [{"batch_index": 0, "reason": "invalid"}]}).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=207, body=zlib.compress(body, wbits=31),
                            headers={"Content-Encoding": "gzip"},
                            content_type="application/json")

    async with serve(handler) as url:
        response = await exchange(url)
    assert (response.body, response.truncated) == (body, False)
    assert partial_errors(response.body, 2, truncated=response.truncated) == {0: "invalid"}


@pytest.mark.parametrize("body", [
    b"not gzip at all",
    zlib.compress(b'{"errors":[]}', wbits=31)[:-12],
    zlib.compress(b"{}", wbits=31) * 2,
])
async def test_a_broken_or_concatenated_gzip_207_is_a_cut_body(body: bytes) -> None:
    """Undecodable, unfinished or multi-member gzip keeps the 207 status, marked truncated."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=207, body=body, headers={"Content-Encoding": "gzip"})

    async with serve(handler) as url:
        response = await exchange(url)
    assert (response.status, response.truncated) == (207, True)
    assert partial_errors(response.body, 1, truncated=response.truncated) is None


async def test_an_absurd_content_length_that_breaks_off_keeps_the_status() -> None:
    """A 400 declaring 1 TiB that sends 1000 bytes and hangs up: a cut 400, no TransportError."""
    async def lying(request: web.Request) -> web.StreamResponse:
        head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 1099511627776\r\n\r\n"
        assert request.transport is not None
        request.transport.write(head + b"y" * 1000)
        request.transport.close()
        return web.Response()

    async with serve(lying) as url:
        response = await exchange(url)
    assert (response.status, response.body, response.truncated) == (400, b"y" * 1000, True)
    assert isinstance(classify(response), RejectedError)


# --- stalls ---------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 207])
async def test_a_body_that_stalls_after_the_headers_ends_at_the_request_timeout(
        status: int) -> None:
    """Headers then silence: the request timeout still fires and the status comes back cut."""
    head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n").encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await write_raw(request, head + b'{"errors":[{"batch_index":0,')

    async with serve(handler) as url:
        response = await exchange(url, within=5.0, request_timeout=0.5)
    assert (response.status, response.truncated) == (status, True)
    assert classify(response) is None
    assert partial_errors(response.body, 1, truncated=response.truncated) is None


async def test_a_server_that_never_answers_is_a_transport_error_at_the_timeout() -> None:
    """No status line at all within request_timeout: TransportError, retryable."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await write_raw(request, b"")

    async with serve(handler) as url:
        with pytest.raises(TransportError) as caught:
            await exchange(url, within=5.0, request_timeout=0.5)
    assert caught.value.retryable


# --- credentials ----------------------------------------------------------------------------

def echo_page(request: web.Request) -> str:
    """What a gateway's debug error page shows: every request header, in several shapes."""
    lines = [f"{name}: {value}" for name, value in request.headers.items()]
    as_json = json.dumps(dict(request.headers)).replace("/", "\\/")
    return "\n".join([*lines, f"url-safe: {URLSAFE_TOKEN}", f"key={API_KEY}", as_json,
                      "filler " * 2000])


@pytest.mark.parametrize("status", [400, 401, 403, 502])
async def test_an_error_page_that_echoes_the_request_headers_leaks_no_credential(
        status: int) -> None:
    """A gateway echoing the Authorization header: neither the reason nor the body keeps it."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=echo_page(request))

    async with serve(handler) as url:
        response = await exchange(url)
    assert_no_secret(response.body)
    error = classify(response)
    assert error is not None
    assert_no_secret(str(error))
    assert len(str(error)) < REASON_LIMIT
    assert "\n" not in str(error)


async def test_a_reason_redacts_authorization_lines_it_was_not_told_about() -> None:
    """classify() alone (any Sender) blanks Authorization lines and Basic tokens it sees."""
    body = (b"Host: x\r\nAuthorization: Basic Zm9vOmJhcg==\r\n"
            b"Proxy-Authorization: Bearer abc.def\r\nseen Basic cXV4OnF1dXg=")
    error = classify(Response(400, {}, body))
    assert error is not None
    for leaked in ("Zm9vOmJhcg", "abc.def", "cXV4OnF1dXg"):
        assert leaked not in str(error)
    assert "Host: x" in str(error)


def test_a_reason_keeps_prose_that_merely_mentions_basic_auth() -> None:
    """Words after "Basic"/"Bearer" that are not token-like stay readable in the reason."""
    error = classify(Response(401, {}, b"Basic authentication failed; Bearer token expired"))
    assert str(error) == "HTTP 401: Basic authentication failed; Bearer token expired"


async def test_a_body_cut_inside_the_credential_keeps_no_part_of_it() -> None:
    """When the cap falls inside an echoed token, the token's first half is blanked too."""
    half = len(TOKEN) // 2
    body = b"x" * (MAX_RESPONSE_BYTES - half) + f"Basic {TOKEN}".encode()[6:] + b"y" * 1000

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, body=body)

    async with serve(handler) as url:
        response = await exchange(url)
    assert response.truncated
    assert TOKEN[:half].encode() not in response.body
    assert TOKEN[:4].encode() not in response.body[-len(TOKEN):]


async def test_a_207_that_echoes_the_credential_is_redacted_and_still_readable() -> None:
    """Credential forms inside a 207's messages are blanked and the list still parses."""
    async def handler(request: web.Request) -> web.StreamResponse:
        errors = [{"batch_index": 1, "reason": "invalid", "field": "auth",
                   "message": f"{request.headers['Authorization']} / {URLSAFE_TOKEN}"
                              f" / {API_KEY}"}]
        text = json.dumps({"errors": errors}).replace("/", "\\/")
        return web.Response(status=207, text=text, content_type="application/json")

    async with serve(handler) as url:
        response = await exchange(url)
    assert_no_secret(response.body)
    errors = partial_errors(response.body, 2, truncated=response.truncated)
    assert errors is not None
    assert list(errors) == [1]
    assert errors[1].startswith("invalid: auth: ")
    assert_no_secret(errors[1])


async def test_response_headers_that_echo_the_credential_are_redacted() -> None:
    """A header carrying the token (an echo, a Location) comes back blanked."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={
            "X-Echo-Authorization": request.headers["Authorization"],
            "Retry-After": "1"})

    async with serve(handler) as url:
        response = await exchange(url)
    assert_no_secret(repr(response))
    error = classify(response)
    assert isinstance(error, ServerError)
    assert error.retry_after == 1.0


@pytest.mark.parametrize("transport", ["batch", "v1"])
@pytest.mark.parametrize("status", [400, 401, 500])
async def test_an_echoed_credential_reaches_no_log_outcome_or_dead_letter(
        status: int, transport: Literal["batch", "v1"], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """End to end, through an EventQueue, a credential echoed back is blanked everywhere.

    The server repeats it in its error body and headers; once delivery has failed,
    neither the DEBUG logs, nor the outcome, its error and the statistics, nor the
    dead-letter file hold any form of it.
    """
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=echo_page(request), headers={
            "X-Echo-Authorization": request.headers["Authorization"],
            "X-Echo-Key": API_KEY, "Retry-After": "0"})

    caplog.set_level(logging.DEBUG)
    dead_letters = tmp_path / "dead.jsonl"
    outcomes: list[Outcome] = []
    async with serve(handler) as url:
        config = QueueConfig(site_id=SITE_ID, api_key=API_KEY, base_url=url,
                             transport=transport, flush_interval=0.01, rate_limit=None,
                             retry=RetryPolicy(attempts=2, wait_initial=0.01, wait_jitter=0),
                             dead_letter_path=str(dead_letters), shutdown_timeout=5.0)
        async with EventQueue(config, on_outcome=outcomes.append) as queue:
            receipts = [await queue.identify("42", plan="pro"),
                        await queue.track("42", "purchase", {"price": 9.5})]
            with anyio.fail_after(10):
                settled = [await receipt.wait() for receipt in receipts]
    expected = {400: (OutcomeStatus.REJECTED, "rejected"),
                401: (OutcomeStatus.FAILED, "unauthorized"),
                500: (OutcomeStatus.FAILED, "retries_exhausted")}[status]
    assert [(outcome.status, outcome.reason) for outcome in settled] == [expected] * 2
    assert outcomes == settled
    for outcome in settled:  # the echo did come back: blanked, not missing
        assert outcome.error is not None
        assert outcome.error.status == status
        assert "Authorization: [REDACTED]" in str(outcome.error)
        assert_no_secret(f"{outcome!r} {outcome} {outcome.reason} {outcome.error!s} "
                         f"{outcome.error!r}")
    assert_no_secret(repr(queue.statistics()))
    records = dead_letters.read_bytes()
    assert records.count(b"\n") == 2
    assert_no_secret(records)
    assert len(caplog.records) > 0
    for record in caplog.records:
        assert_no_secret(f"{record.getMessage()} {record.__dict__!r}")


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 20 Basic %(token)s\r\nContent-Length: 0\r\n\r\n",
    b"%(token)s %(key)s\r\n\r\n",
    b"HTTP/1.1 400 Bad\r\nX-Echo: Basic %(token)s" + b"A" * 9000 + b"\r\n\r\n",
])
async def test_a_transport_error_from_a_malformed_reply_leaks_no_credential(raw: bytes) -> None:
    """aiohttp quotes the offending reply bytes; the TransportError must not repeat the token."""
    reply = raw % {b"token": TOKEN.encode(), b"key": API_KEY.encode()}

    async def handler(request: web.Request) -> web.StreamResponse:
        return await write_raw(request, reply)

    async with serve(handler) as url:
        with pytest.raises(TransportError) as caught:
            await exchange(url)
    assert_no_secret(str(caught.value))
    assert len(str(caught.value)) < REASON_LIMIT
    assert "\n" not in str(caught.value)


def test_a_password_in_base_url_is_refused_without_being_shown() -> None:
    """A ``http://:pw@host`` base_url never reaches a sender: the config refuses it quietly."""
    with pytest.raises(ConfigError) as refused:
        sender_for("http://:hunter2@127.0.0.1:9")
    assert "hunter2" not in str(refused.value)
    assert "hunter2" not in repr(refused.value)


async def test_cookies_a_server_sets_are_never_sent_back() -> None:
    """A Set-Cookie (a gateway's session, or thousands of them) is neither kept nor sent."""
    cookies: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        cookies.append(request.headers.get("Cookie"))
        response = web.json_response({})
        for i in range(50):
            response.set_cookie(f"c{i}", "x" * 100)
        return response

    async with serve(handler) as url:
        sender = sender_for(url.replace("127.0.0.1", "localhost"))
        try:
            with anyio.fail_after(10):
                for _ in range(2):
                    await sender.send(BATCH)
        finally:
            await sender.aclose()
    assert cookies == [None, None]


def test_the_sender_repr_shows_no_credential() -> None:
    """repr(HttpSender) names the host only."""
    sender = sender_for("http://127.0.0.1:9")
    assert_no_secret(repr(sender))
    assert_no_secret(str(sender))


# --- Retry-After ----------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from([408, 429, 500, 503]),
       value=st.one_of(st.text(), st.from_regex(
           r"(Mon, )?\d{1,2} (Jan|Dec) \d{1,6} \d{1,2}:\d{1,2}(:\d{1,2})? ([+-]\d{4}|GMT)",
           fullmatch=True), st.sampled_from(["1e400", "9" * 5000, "-1", "nan", "inf"])))
def test_a_garbled_or_huge_retry_after_never_raises(status: int, value: str) -> None:
    """Any Retry-After text gives a retryable error with a finite, non-negative delay or None."""
    error = classify(Response(status, {"Retry-After": value}, b""))
    assert error is not None
    assert error.retryable
    assert error.retry_after is None or 0 <= error.retry_after < float("inf")


# --- partial_errors -------------------------------------------------------------------------

def test_a_deeply_nested_207_is_unreadable_not_a_crash() -> None:
    """Nesting past the recursion limit is an unreadable body (None), not a RecursionError."""
    for body in (b"[" * 100_000, b'{"errors":' + b"[" * 100_000,
                 b'{"errors":[{"batch_index":0,"reason":' + b"[" * 100_000 + b"]" * 100_000
                 + b"}]}"):
        assert partial_errors(body, 1) is None


@pytest.mark.parametrize("body", [
    b'{"errors": {"batch_index": 0}}',
    b'{"errors": "0"}',
    b'{"errors": [0]}',
    b'{"errors": [[0]]}',
    b'{"errors": [null]}',
    b'{"errors": []}',
    b'{"errors": [{"reason": "no index"}]}',
    b'{"errors": [{"batch_index": true}]}',
    b'{"errors": [{"batch_index": 0.0}]}',
    b'{"errors": [{"batch_index": "0"}]}',
    b'{"errors": [{"batch_index": -1}]}',
    b'{"errors": [{"batch_index": 2}]}',
    b'{"errors": [{"batch_index": 1e400}]}',
    b'{"errors": [{"batch_index": ' + b"9" * 5000 + b"}]}",
    b'{"errors": [{"batch_index": 0}]} trailing',
    b'\xff\xfe{"errors": [{"batch_index": 0}]}\x00\xd8',
    b"[]",
    b"",
])
def test_a_malformed_207_is_unreadable(body: bytes) -> None:
    """Wrong types, bad or out-of-range indexes, no errors at all: None, never a guess."""
    assert partial_errors(body, 2) is None


def test_a_truncated_207_is_unreadable_even_when_it_parses() -> None:
    """A body cut at the cap is not read, though its prefix happens to be valid JSON."""
    body = b'{"errors": [{"batch_index": 0, "reason": "invalid"}]}'
    assert partial_errors(body, 1) == {0: "invalid"}
    assert partial_errors(body, 1, truncated=True) is None


def test_several_errors_for_one_operation_are_joined_not_overwritten() -> None:
    """Two entries for one batch_index (two bad fields) both reach its description."""
    body = json.dumps({"errors": [
        {"batch_index": 0, "reason": "invalid", "field": "a"},
        {"batch_index": 0, "reason": "invalid", "field": "b"},
    ]}).encode()
    assert partial_errors(body, 1) == {0: "invalid: a; invalid: b"}


def test_a_description_is_bounded_and_on_one_line() -> None:
    """A huge or multi-line message is cut to a bounded, single-line description."""
    body = json.dumps({"errors": [
        {"batch_index": 0, "reason": "invalid", "message": "line\r\nbreak " * 100_000},
        *({"batch_index": 1, "reason": "again"} for _ in range(10_000)),
    ]}).encode()
    errors = partial_errors(body, 2)
    assert errors is not None
    assert errors[0].startswith("invalid: line break line break")
    assert errors[1].startswith("again; again; again")
    for description in errors.values():
        assert len(description) < REASON_LIMIT
        assert "\n" not in description
        assert "\r" not in description


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30)
error_entries = st.fixed_dictionaries(
    {}, optional={"batch_index": st.one_of(st.integers(-2, 5), json_values),
                  "reason": json_values, "field": json_values, "message": json_values})
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.one_of(error_entries, json_values), max_size=8).map(
        lambda e: json.dumps({"errors": e}).encode()),
)


def check_partial_errors(body: bytes, count: int) -> None:
    result = partial_errors(body, count)
    assert result is None or isinstance(result, dict)
    if result:
        assert all(0 <= index < count for index in result)
        assert all(isinstance(text, str) and len(text) < REASON_LIMIT
                   for text in result.values())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, count=st.integers(0, 6))
def test_partial_errors_returns_a_dict_or_none_for_any_body(body: bytes, count: int) -> None:
    """Any bytes or any JSON: partial_errors answers a bounded dict or None and never raises."""
    check_partial_errors(body, count)
