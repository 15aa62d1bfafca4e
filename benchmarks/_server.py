"""The benchmark's servers, in a child process of their own, and the parent's handle on them.

The child runs ``cio_queue.testing.FakeTrackAPI`` (which validates every request the way
the Track API documents it) and the minimal PostHog endpoint of ``_posthog_endpoint`` on
one event loop (uvloop when it is importable), so the clients under test never share a
loop, or a core, with them. Both apply the same configurable latency.

The child keeps a *ledger* of what it accepted: requests by status, and every delivered
event by its id (the ``id`` of a v1 event body or a v2 operation, the ``uuid`` of a
PostHog event): their count, a checksum of them, and their hashes, to count distinct ids.
The fake records whole requests; the ledger harvests and forgets them every
``HARVEST_INTERVAL`` so a million operations do not pile up in memory.

The parent talks to the child over a pipe: ``configure`` sets the latency and the share of
requests answered with a 5xx, ``reset`` starts a new ledger, ``ledger`` returns a
snapshot (with the child's CPU time, so a report can show the server is not the
bottleneck), ``missing`` counts the given event ids it has not accepted, ``down`` and
``up`` stop and restart the Track API on its port (an outage: connections are refused
meanwhile), and ``stop`` (or the pipe closing) ends it.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import socket
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection
from typing import Any, Final

from aiohttp import web

from cio_queue.testing import AcceptedOperation, FakeTrackAPI, FaultRates

from ._posthog_endpoint import posthog_app

START_TIMEOUT: Final = 60.0
"""Seconds the child may take to import, bind and answer the handshake."""
REPLY_TIMEOUT: Final = 30.0
"""Seconds the child may take to answer one command (it may be busy serving)."""
STOP_TIMEOUT: Final = 5.0
YOUNG_THRESHOLD: Final = 20_000
"""The child's first collector threshold (CPython's default is 700); see `_serve`."""
HARVEST_INTERVAL: Final = 0.05
"""Seconds between two harvests of the fake's records into the ledger."""
SITE_ID: Final = "bench-site"
API_KEY: Final = "bench-key"
POSTHOG_KEY: Final = "phc_bench"
BENCH_ID_FIELD: Final = "bench_id"
"""Where a v1 event without a top-level ``id`` carries its id: ``data["bench_id"]``. Only
async-customerio needs it, as its ``track()`` cannot send an event id."""


def event_checksum(event_id: str) -> int:
    """Return the CRC-32 of an event id; the ledgers add these up on both sides."""
    return zlib.crc32(event_id.encode())


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the server side saw since the last reset.

    Attributes:
        requests: HTTP requests answered (any status; Track API and PostHog).
        accepted_requests: those answered 2xx.
        statuses: answered requests by status code.
        events: delivered operations that carried an event id (duplicates included).
        distinct_events: distinct event ids among them.
        checksum: the sum of ``event_checksum`` over the delivered events.
        without_id: delivered operations that carried no event id (none are expected).
        in_flight: Track API requests being handled right now (not part of the ledger).
        cpu_seconds: the child's CPU time (user + system) since it started.
    """

    requests: int = 0
    accepted_requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    events: int = 0
    distinct_events: int = 0
    checksum: int = 0
    without_id: int = 0
    in_flight: int = 0
    cpu_seconds: float = 0.0


class _LedgerBook:
    """The child's mutable ledger, fed by the fake's records and the PostHog endpoint."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        # Each delivered event id's hash, appended: a set of a million ids (about 100 MB
        # of str, a 32 MB table written at random) made the server, the bottleneck at
        # 0 ms, slower the longer a run, and crowded the cache it shares with the client
        # under test. Distinct ids are counted when asked: the hashes appended since the
        # last time move into a set. Two ids with one 64-bit hash (odds about 3e-8 in a
        # million) would count as one: a false duplicate, which fails a run, never a
        # hidden one (and, as likely, a lost id taken for a delivered one by missing()).
        self.digests = array("q")
        self._distinct: set[int] = set()
        self.events = 0
        self.checksum = 0
        self.without_id = 0

    def add_event(self, event_id: str | None) -> None:
        if event_id is None:
            self.without_id += 1
            return
        self.events += 1
        self.digests.append(hash(event_id))
        self.checksum += event_checksum(event_id)

    def snapshot(self, in_flight: int) -> Ledger:
        answered = sum(self.statuses.values())
        accepted = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        cpu_seconds = time.process_time()  # the run's, before the count below
        return Ledger(requests=answered, accepted_requests=accepted,
                      statuses=dict(self.statuses), events=self.events,
                      distinct_events=len(self._counted()), checksum=self.checksum,
                      without_id=self.without_id, in_flight=in_flight,
                      cpu_seconds=cpu_seconds)

    def missing(self, event_ids: list[str]) -> int:
        """How many of ``event_ids`` were not delivered (by hash, as above)."""
        delivered = self._counted()
        return sum(hash(event_id) not in delivered for event_id in set(event_ids))

    def _counted(self) -> set[int]:
        """The distinct hashes, brought up to date (a poll costs what arrived since)."""
        self._distinct.update(self.digests)
        del self.digests[:]
        return self._distinct


def _event_id(accepted: AcceptedOperation) -> str | None:
    """Return the event id of an operation the fake accepted, if it has one."""
    op: Any = accepted.op
    if accepted.api == "v1":
        body = op.get("body")
        if not isinstance(body, dict):
            return None
        event_id = body.get("id")
        if event_id is None and isinstance(body.get("data"), dict):
            event_id = body["data"].get(BENCH_ID_FIELD)
    else:
        event_id = op.get("id") if isinstance(op, dict) else None
    return None if event_id is None else str(event_id)


class _ServerState:
    """Everything the child runs: the fake, the PostHog app, the ledger and the settings."""

    def __init__(self, fake: FakeTrackAPI) -> None:
        self.fake = fake
        self.book = _LedgerBook()
        self.latency = 0.0

    def harvest(self) -> None:
        """Move what the fake recorded into the ledger, then let the fake forget it.

        Nothing awaits in here, so no request is recorded halfway through a harvest.
        """
        fake = self.fake
        if not (fake.log or fake.operations):
            return
        for record in fake.log:
            self.book.statuses[record.status] += 1
        for accepted in fake.operations:
            self.book.add_event(_event_id(accepted))
        fake.reset()

    def record_posthog(self, status: int, ids: list[str]) -> None:
        self.book.statuses[status] += 1
        for event_id in ids:
            self.book.add_event(event_id)

    def configure(self, latency: float, server_error: float) -> None:
        self.latency = latency
        self.fake.latency = latency
        self.fake.faults = FaultRates(server_error=server_error) if server_error else None

    def reset(self) -> None:
        self.harvest()
        self.book = _LedgerBook()


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _serve_async(conn: Connection, loop_name: str) -> None:
    async with FakeTrackAPI(site_id=SITE_ID, api_key=API_KEY) as fake:
        state = _ServerState(fake)
        runner = web.AppRunner(posthog_app(POSTHOG_KEY, lambda: state.latency,
                                           state.record_posthog),
                               access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
        await runner.setup()
        sock = _listening_socket()
        posthog_port = int(sock.getsockname()[1])
        await web.SockSite(runner, sock).start()
        harvester = asyncio.create_task(_harvest_forever(state))
        try:
            conn.send((fake.url, f"http://127.0.0.1:{posthog_port}", loop_name))
            await _obey(conn, state)
        finally:
            harvester.cancel()
            with suppress(asyncio.CancelledError):
                await harvester
            await runner.cleanup()


async def _harvest_forever(state: _ServerState) -> None:
    while True:
        await asyncio.sleep(HARVEST_INTERVAL)
        state.harvest()


async def _obey(conn: Connection, state: _ServerState) -> None:
    """Answer the parent's commands until it says stop or goes away."""
    while True:
        try:
            message = await asyncio.to_thread(conn.recv)
        except EOFError:
            return
        command, *args = message
        if command == "configure":
            state.configure(float(args[0]), float(args[1]))
            conn.send("ok")
        elif command == "reset":
            state.reset()
            conn.send("ok")
        elif command == "ledger":
            state.harvest()
            conn.send(state.book.snapshot(state.fake.in_flight))
        elif command == "missing":
            state.harvest()
            conn.send(state.book.missing(args[0]))
        elif command == "down":
            await state.fake.stop()
            conn.send("ok")
        elif command == "up":
            await state.fake.start()
            conn.send("ok")
        else:
            return


def _serve(conn: Connection) -> None:
    """Child-process entry point: serve on uvloop if it is importable, else on asyncio.

    The child is the benchmark's own process, never an application's, so it may tune its
    collector: at 0 ms the server is the scarcer core, and with CPython's defaults a
    quarter of its CPU went to collections (each parsed batch allocates some 300 dicts,
    held until the next harvest, so they age into the older generations). Freezing what
    the imports left and collecting the young generation 30 times less often took the
    raw limit from about 125,000 to about 155,000 ops/s. Nothing here changes what a
    client under test measures about itself.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        import uvloop  # noqa: PLC0415 - optional, and only the child needs it
    except ImportError:
        asyncio.run(_serve_async(conn, "asyncio"))
    else:
        uvloop.run(_serve_async(conn, f"uvloop {version('uvloop')}"))


@dataclass(frozen=True, slots=True)
class ServerHandle:
    """The parent's handle on the child: addresses, credentials and the command pipe."""

    track_url: str
    posthog_url: str
    loop: str
    pid: int
    conn: Connection
    site_id: str = SITE_ID
    api_key: str = API_KEY
    posthog_key: str = POSTHOG_KEY

    def _ask(self, *message: object) -> object:
        self.conn.send(message)
        if not self.conn.poll(REPLY_TIMEOUT):
            raise RuntimeError(f"the benchmark server did not answer {message[0]!r} "
                               f"within {REPLY_TIMEOUT}s")
        return self.conn.recv()

    def configure(self, *, latency: float, server_error: float = 0.0) -> None:
        """Set the latency of every answer (s) and the share of requests answered 5xx."""
        self._ask("configure", latency, server_error)

    def reset(self) -> None:
        """Start a new ledger."""
        self._ask("reset")

    def ledger(self) -> Ledger:
        """Return the ledger since the last reset, with the child's CPU time."""
        reply = self._ask("ledger")
        assert isinstance(reply, Ledger)
        return reply

    def missing(self, event_ids: list[str]) -> int:
        """Return how many of ``event_ids`` the server has not accepted since the reset."""
        reply = self._ask("missing", event_ids)
        assert isinstance(reply, int)
        return reply

    def down(self) -> None:
        """Stop the Track API: connections to its port are refused until :meth:`up`."""
        self._ask("down")

    def up(self) -> None:
        """Serve the Track API again, on the same port."""
        self._ask("up")


@contextmanager
def server_process() -> Iterator[ServerHandle]:
    """Start the servers in a spawned process; always stop it, by force if need be."""
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child_conn,), name="bench-server", daemon=True)
    process.start()
    child_conn.close()
    try:
        if not conn.poll(START_TIMEOUT):
            raise RuntimeError(f"the benchmark server did not start within {START_TIMEOUT}s")
        try:
            track_url, posthog_url, loop = conn.recv()
        except EOFError:
            raise RuntimeError("the benchmark server died on start-up "
                               f"(exit code {process.exitcode})") from None
        assert process.pid is not None
        yield ServerHandle(track_url, posthog_url, loop, process.pid, conn)
    finally:
        with suppress(OSError):  # the child may already be gone
            conn.send(("stop",))
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(STOP_TIMEOUT)
        conn.close()
