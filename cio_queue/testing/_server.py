"""`FakeTrackAPI`: the aiohttp server, its lifecycle, and what it records.

Stage: outside the pipeline; the testing kit's fake Track API.

Each request is handled in one pass: its fault is decided on arrival (a real outage does not
look at the request), then it is routed, authorised and validated (`_rules`, with
`_validation`) and, if valid, recorded as accepted.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from ._faults import Fault, FaultPlan, FaultRates, fault_response
from ._ports import bound_port, listening_socket, port_reservation
from ._records import AcceptedOperation, Exchange, RecordedRequest, arrival, event_summary
from ._responses import drop
from ._rules import REGION_URLS, TrackRules

_SHUTDOWN_TIMEOUT: Final = 0.2  # seconds in-flight handlers get on stop() before being cancelled
_CLIENT_MAX_SIZE: Final = 16 * 1024 * 1024  # large enough that oversized batches reach our 413
_TURNS_TO_REACH_AIOHTTP: Final = 2  # loop turns from an accepted socket to aiohttp's handler


class FakeTrackAPI:
    """Serve an imitation of the Customer.io Track API (v1 and v2) on a loopback port.

    Every request is recorded in `log`; the ones that were accepted (2xx) also go to
    `requests`, and every delivered operation goes to `operations`. Faults come first from
    `script()`, then at random from `faults`; they are decided on arrival, before auth and
    validation, because a real outage does not look at the request.

    The server may run on another thread than the test (`serve_in_thread`): reading what it
    recorded is safe from any thread, `await wait_until(...)` works from any event loop,
    and the ``*_blocking`` waits serve code that has no event loop at all.
    """

    def __init__(
        self,
        *,
        site_id: str = "fake-site",
        api_key: str = "fake-key",
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        faults: FaultRates | None = None,
        seed: int = 0,
        reject: Callable[[RecordedRequest], str | None] | None = None,
        reject_op: Callable[[dict[str, Any]], str | None] | None = None,
        malformed_op: Callable[[dict[str, Any]], bool] | None = None,
        region: str = "us",
    ) -> None:
        """Configure the server; nothing listens until `start()` (or `async with`).

        `region` ("us" or "eu") is what `GET /api/v1/accounts/region` says the
        workspace's data centre is.
        """
        if region not in REGION_URLS:
            raise ValueError("region must be 'us' or 'eu'")
        self.region = region
        self._site_id = site_id
        self._api_key = api_key
        self._credentials = f"{site_id}:{api_key}".encode()
        self._host = host
        self._port = port
        self.latency = latency
        self.faults = faults
        self.reject = reject
        self.reject_op = reject_op
        # Ops the server cannot even parse: they fail a whole v2 batch with a 400, not a 207.
        self.malformed_op = malformed_op
        self._plan = FaultPlan(seed)
        self._runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        # Closes the port reservation once: on close(), or when the fake is collected.
        self._release_port: weakref.finalize[[], FakeTrackAPI] | None = None
        # Waiters on any thread: blocking ones on the condition, async ones as a future of
        # their own loop, woken by _notify (thread-safely when the loop is another one's).
        self._changed = threading.Condition()
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests: list[RecordedRequest] = []
        self.log: list[RecordedRequest] = []
        self.operations: list[AcceptedOperation] = []
        self.in_flight = 0
        self.max_in_flight = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the port (the same one again after a stop) and start serving.

        The first start reserves the port (a free one if `port` was 0) until `close()`.
        """
        if self._runner is not None:
            raise RuntimeError("FakeTrackAPI is already running")
        self._loop = asyncio.get_running_loop()
        self._notify()  # wake waiters of a previous run; they re-wait on a fresh event
        self._reserve_port()
        listener = listening_socket(self._host, self._port)
        try:
            self._runner = await self._serve_on(listener)
        except BaseException:
            listener.close()
            raise
        self._port = bound_port(listener)
        self._listener = listener

    def _reserve_port(self) -> None:
        """Hold the port from the first start until `close()`, so stops never lose it."""
        if self._release_port is not None and self._release_port.alive:
            return
        reservation = port_reservation(self._host, self._port)
        if reservation is not None:
            self._port = bound_port(reservation)
            self._release_port = weakref.finalize(self, reservation.close)

    async def _serve_on(self, listener: socket.socket) -> web.AppRunner:
        """Start an aiohttp runner serving on the socket; asyncio closes it when it stops."""
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        # [\s\S], not ".": ids may hold a newline, which "." would not match.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            await web.SockSite(runner, listener).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def stop(self) -> None:
        """Stop listening and close every open connection, so clients see failures.

        The port stays reserved: until `start()`, connections to it are refused at once and
        nobody else can bind it.
        """
        runner, self._runner = self._runner, None
        listener, self._listener = self._listener, None
        if runner is None or listener is None:
            return
        # asyncio accepts a connection in one loop turn and attaches its transport to the
        # listening Server in a later one; closing the Server in between (runner.cleanup()
        # does it first) makes the attach fail silently and leaks the socket (CPython
        # gh-109564). So stop accepting, then let the accepted connections reach aiohttp:
        # callbacks run in order, so one turn builds their transports and the next runs
        # their connection_made. Only then can cleanup close every one of them.
        asyncio.get_running_loop().remove_reader(listener.fileno())
        for _ in range(_TURNS_TO_REACH_AIOHTTP):
            await asyncio.sleep(0)
        await runner.cleanup()

    async def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down for `downtime` seconds, then serve again on the same port."""
        await self.stop()
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start()

    async def close(self) -> None:
        """Stop the server and release its port; `start()` would reserve it again."""
        await self.stop()
        if self._release_port is not None:
            self._release_port()

    async def __aenter__(self) -> FakeTrackAPI:
        """Start the server for the duration of an `async with` block."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and release its port when the `async with` block ends."""
        await self.close()

    # -- introspection -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Return the bound TCP port (known once the server has started)."""
        if self._port == 0:
            raise RuntimeError("FakeTrackAPI has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8123`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    @property
    def site_id(self) -> str:
        """Return the site id clients must send as the Basic-auth user."""
        return self._site_id

    @property
    def api_key(self) -> str:
        """Return the API key clients must send as the Basic-auth password."""
        return self._api_key

    @property
    def auth_headers(self) -> dict[str, str]:
        """Return the ``Authorization`` header a client with the right credentials sends."""
        token = base64.b64encode(self._credentials).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    @property
    def running(self) -> bool:
        """Tell whether the server is currently listening."""
        return self._runner is not None

    def __repr__(self) -> str:
        """Describe the server without ever revealing the API key."""
        where = f"{self._host}:{self._port}" if self._port else "unbound"
        return (
            f"FakeTrackAPI(site_id={self._site_id!r}, address={where!r}, "
            f"running={self.running}, requests={len(self.requests)})"
        )

    def script(self, *faults: Fault | int) -> None:
        """Queue faults (or bare HTTP statuses) for the next requests, in arrival order."""
        self._plan.script(*faults)

    def reset(self) -> None:
        """Forget recorded requests, operations, the in-flight peak and scripted faults."""
        self.requests.clear()
        self.log.clear()
        self.operations.clear()
        self._plan.clear()
        self.max_in_flight = self.in_flight

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking whenever a request starts or finishes.

        Works from any event loop, also one on another thread than the server's. There is
        no timeout here on purpose: callers bound it (e.g. `anyio.fail_after`).
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._changed:  # checked under the lock, so no change slips in unseen
                if predicate():
                    return
                woken: asyncio.Future[None] = loop.create_future()
                self._waiters.append(woken)
            await woken

    async def wait_for_requests(self, n: int) -> None:
        """Wait until at least `n` requests have been accepted."""
        await self.wait_until(lambda: len(self.requests) >= n)

    async def wait_for_operations(self, n: int) -> None:
        """Wait until at least `n` operations (v1 requests or v2 ops) have been accepted."""
        await self.wait_until(lambda: len(self.operations) >= n)

    def wait_until_blocking(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Block the calling thread until `predicate()` holds, for code without an event loop.

        For a server on another thread (`serve_in_thread`), e.g. in a test of a sync app.

        Args:
            predicate: re-checked whenever a request starts or finishes.
            timeout: the most seconds to wait.

        Raises:
            TimeoutError: `predicate()` still fails after `timeout` seconds.
            RuntimeError: called on the server's own event loop, which it would block.
        """
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("wait_until_blocking() would block the FakeTrackAPI's own event "
                               "loop; use `await wait_until(...)` there")
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"FakeTrackAPI: condition not met within {timeout:g} s")

    def wait_for_requests_blocking(self, n: int, timeout: float) -> None:
        """Block until at least `n` requests have been accepted (TimeoutError after `timeout`)."""
        self._wait_for_count(self.requests, n, "requests", timeout)

    def wait_for_operations_blocking(self, n: int, timeout: float) -> None:
        """Block until at least `n` operations have been accepted (TimeoutError after `timeout`).

        Operations are v1 requests or v2 ops, as in `operations`.
        """
        self._wait_for_count(self.operations, n, "operations", timeout)

    def _wait_for_count(self, records: list[Any], n: int, what: str, timeout: float) -> None:
        try:
            self.wait_until_blocking(lambda: len(records) >= n, timeout)
        except TimeoutError:
            raise TimeoutError(f"FakeTrackAPI accepted {len(records)} {what} within "
                               f"{timeout:g} s, not {n}") from None

    def accepted_events(self) -> list[dict[str, Any]]:
        """List accepted events (v1 track/page/anonymous, v2 person event/page/screen) in order.

        Each item has the keys ``api``, ``customer`` (the person identifier value, None for
        anonymous events), ``type``, ``name``, ``data``, ``id`` and ``timestamp``.
        """
        summaries = (event_summary(accepted) for accepted in self.operations)
        return [summary for summary in summaries if summary is not None]

    # -- request handling ----------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every waiter, on any thread or loop, so it re-checks its condition."""
        with self._changed:
            waiters, self._waiters = self._waiters, []
            self._changed.notify_all()
        here = _running_loop()
        for woken in waiters:
            loop = woken.get_loop()
            if loop is here:
                _wake(woken)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_wake, woken)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Handle any request: apply latency and faults, then route, authorise and process."""
        received_at = time.monotonic()
        fault, error_status = self._plan.next(self.faults)  # synchronous: follows arrival order
        path, _, query = request.raw_path.partition("?")
        exchange = Exchange(request.method, path, query, dict(request.headers), received_at, fault)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._notify()
        try:
            exchange.body = await request.read()
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            return await self._serve(request, exchange, error_status)
        finally:
            self.in_flight -= 1
            record = exchange.freeze(exchange.status)
            bisect.insort(self.log, record, key=arrival)  # keep arrival order, not finish order
            self._notify()

    async def _serve(
        self, request: web.Request, exchange: Exchange, error_status: int
    ) -> web.StreamResponse:
        """Apply the fault decided for this request, or process it normally."""
        fault = exchange.fault
        rates = self.faults or FaultRates()
        refusal = fault_response(fault, error_status, rates)
        if refusal is not None:
            return self._answer(exchange, refusal)
        if fault is Fault.DROP_CONNECTION:
            return drop(request)
        if fault is Fault.SLOW:
            await asyncio.sleep(rates.slow_seconds)
            transport = request.transport
            if transport is None or transport.is_closing():
                return drop(request)  # the client gave up; nothing was processed
        ambiguous = fault is Fault.AMBIGUOUS
        response = self._process(request, exchange, answered=not ambiguous)
        if ambiguous:
            return drop(request)
        return self._answer(exchange, response)

    def _answer(self, exchange: Exchange, response: web.Response) -> web.Response:
        """Note the status we answer with and pass the response through."""
        exchange.status = response.status
        return response

    def _accept(
        self, exchange: Exchange, api: str, status: int, answered: bool, ops: list[Any]
    ) -> None:
        """Record an accepted request and its delivered operations, then wake waiters.

        An ambiguous request (`answered` false) is accepted but recorded with status 0,
        because the client never gets the answer.
        """
        self.requests.append(exchange.freeze(status if answered else 0))
        self.operations.extend(AcceptedOperation(api, op) for op in ops)
        self._notify()

    def _process(self, request: web.Request, exchange: Exchange, answered: bool) -> web.Response:
        """Answer as the Track API would (see `TrackRules`), and record what it accepted."""
        rules = TrackRules(self._credentials, self.region, self.reject, self.reject_op,
                           self.malformed_op)
        response, accepted = rules.answer(request, exchange)
        if accepted is not None:
            self._accept(exchange, accepted.api, accepted.status, answered, accepted.ops)
        return response


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """Return the event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _wake(woken: asyncio.Future[None]) -> None:
    """Complete a waiter's future unless it was cancelled meanwhile."""
    if not woken.done():
        woken.set_result(None)
