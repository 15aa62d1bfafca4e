"""Processes for the fleet's multi-process tests: the fake Track API, and fleet members.

Started with multiprocessing's forkserver method, so each child is a process of its own
that never ran the parent's event loop or held its sockets, with an event loop of its
own, as a fleet member on another host would be:

- :func:`fake_process` runs ``FakeTrackAPI`` in a process of its own, so that the queues
  under test never share its event loop (or, on two cores, most of its CPU time) and its
  arrival times are not skewed by them. It harvests what the fake recorded every few
  milliseconds into compact lists (every delivered event id, and each request's arrival
  time and status), so 100,000 operations do not pile up as parsed dicts.
- :class:`Member` runs one ``EventQueue`` with ``redis_url``: a pure producer
  (``consume=False``), a consumer, or both. It reports its statistics every
  ``REPORT_EVERY`` seconds, and the fleet's Redis log lines as they happen, until the
  parent tells it to close (or kills it).

Every wait here is bounded: a child whose parent vanished ends itself after
``CHILD_LIFETIME`` seconds, and the parent-side handles kill what is left in ``finally``.
A member imports only what a member needs (no pytest, no fake server): on a loaded
machine every fresh interpreter's imports cost seconds. For the same reason the fork
server preloads the heavy third-party packages (aiohttp, redis-py, structlog), so each
child forks with them already imported; ``cio_queue`` itself is not preloaded, since the
fork server does not get the parent's ``sys.path`` (Python 3.11), and an installed
``cio_queue`` of another checkout could be the one it finds. Each child imports it after
multiprocessing gave it the parent's ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any, Final

from cio_queue import EventQueue, QueueConfig, Statistics
from cio_queue._sender import HttpSender, Request, Response

if TYPE_CHECKING:
    from cio_queue.testing import FakeTrackAPI, Fault

__all__ = ["CHILD_LIFETIME", "FakeProcess", "Member", "Work", "balanced", "close_all",
           "fake_process", "members", "wait_for"]

CHILD_LIFETIME: Final = 300.0
"""Seconds after which a child ends itself, whatever the parent does."""
START_TIMEOUT: Final = 60.0
"""Seconds a child may take to import, start and say so (a loaded machine is slow)."""
REPLY_TIMEOUT: Final = 30.0
"""Seconds the fake's process may take to answer one command."""
CLOSE_TIMEOUT: Final = 30.0
"""Seconds a member may take to close its queue and report after being told to."""
JOIN_TIMEOUT: Final = 10.0
"""Seconds to wait for a process to exit after it was told to, or killed."""
HARVEST_EVERY: Final = 0.02
"""Seconds between two harvests of the fake's records."""
REPORT_EVERY: Final = 0.05
"""Seconds between two statistics reports of a member."""
FORWARDED: Final = ("cio_queue.redis_unreachable", "cio_queue.redis_reconnected",
                    "cio_queue.redis_partition_lost", "cio_queue.fleet_gate_not_shared")
"""Log events a member passes on to the parent, by the start of their message."""


PRELOADED: Final = ("aiohttp", "aiohttp.web", "redis.asyncio", "structlog")
"""Third-party packages the fork server imports once, for every child it forks."""


def _context() -> ForkServerContext:
    """The forkserver context, with PRELOADED (kept if the fork server already runs)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))
    return context


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


# --- the fake Track API in its own process ---------------------------------------------


class _Book:
    """What the fake accepted, harvested from its records: ids, arrivals, statuses."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.distinct: set[str] = set()
        self.requests: list[tuple[float, int]] = []

    def harvest(self, fake: FakeTrackAPI) -> None:
        """Move the fake's records here and let it forget them (nothing awaits in here).

        Not ``fake.reset()``, which would also forget the scripted faults.
        """
        self.requests.extend((record.received_at, record.status) for record in fake.log)
        for accepted in fake.operations:
            op = accepted.op
            if isinstance(op, dict) and "id" in op:
                self.ids.append(str(op["id"]))
                self.distinct.add(str(op["id"]))
        fake.log.clear()
        fake.requests.clear()
        fake.operations.clear()


def _serve_fake(conn: Connection, latency: float, retry_after: float | None) -> None:
    """Child: serve the fake until the parent says stop, goes away, or time runs out."""
    asyncio.run(_serve_fake_async(conn, latency, retry_after))


async def _serve_fake_async(conn: Connection, latency: float, retry_after: float | None
                            ) -> None:
    from cio_queue.testing import FakeTrackAPI, FaultRates  # noqa: PLC0415 - members need neither

    faults = None if retry_after is None else FaultRates(retry_after=retry_after)
    async with FakeTrackAPI(latency=latency, faults=faults) as fake:
        book = _Book()

        async def harvest_forever() -> None:
            while True:
                await asyncio.sleep(HARVEST_EVERY)
                book.harvest(fake)

        harvester = asyncio.create_task(harvest_forever())
        conn.send((fake.url, fake.site_id, fake.api_key))
        try:
            async with asyncio.timeout(CHILD_LIFETIME):
                while await _obey(conn, fake, book):
                    pass
        except TimeoutError:
            pass
        finally:
            harvester.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await harvester


async def _obey(conn: Connection, fake: FakeTrackAPI, book: _Book) -> bool:
    """Answer one command of the parent's; False once it says stop or goes away."""
    try:
        command, *args = await asyncio.to_thread(conn.recv)
    except EOFError:
        return False
    from cio_queue.testing import Fault  # noqa: PLC0415

    book.harvest(fake)
    if command == "script":
        fake.script(*(Fault(name) for name in args))
        conn.send("ok")
    elif command == "count":
        conn.send((len(book.ids), len(book.distinct)))
    elif command == "ids":
        conn.send(book.ids)
    elif command == "requests":
        conn.send(sorted(book.requests))
    else:
        return False
    return True


@dataclass(frozen=True, slots=True)
class FakeProcess:
    """The parent's handle on the fake's process."""

    url: str
    site_id: str
    api_key: str
    conn: Connection

    def _ask(self, *message: object) -> Any:
        self.conn.send(message)
        if not self.conn.poll(REPLY_TIMEOUT):
            raise AssertionError(f"the fake's process did not answer {message[0]!r} "
                                 f"within {REPLY_TIMEOUT} s")
        return self.conn.recv()

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next requests, in arrival order (``FakeTrackAPI.script``)."""
        self._ask("script", *(fault.value for fault in faults))

    def count(self) -> tuple[int, int]:
        """Return (delivered operations with an event id, distinct ids among them)."""
        events, distinct = self._ask("count")
        return int(events), int(distinct)

    def ids(self) -> list[str]:
        """Return the event id of every delivered operation, duplicates included."""
        ids: list[str] = self._ask("ids")
        return ids

    def requests(self) -> list[tuple[float, int]]:
        """Return every request's arrival (``time.monotonic()``, system-wide) and status."""
        requests: list[tuple[float, int]] = self._ask("requests")
        return requests


@contextlib.contextmanager
def fake_process(*, latency: float = 0.0, retry_after: float | None = None
                 ) -> Iterator[FakeProcess]:
    """Run the fake Track API in a process of its own; always stop it, by force if need be."""
    context = _context()
    conn, child_conn = context.Pipe()
    process = context.Process(target=_serve_fake, args=(child_conn, latency, retry_after),
                              name="fake-track-api", daemon=True)
    process.start()
    child_conn.close()
    try:
        if not conn.poll(START_TIMEOUT):
            raise AssertionError(f"the fake's process did not start within {START_TIMEOUT} s")
        url, site_id, api_key = conn.recv()
        yield FakeProcess(url, site_id, api_key, conn)
    finally:
        with contextlib.suppress(OSError):
            conn.send(("stop",))
        _end(process)
        conn.close()


def _end(process: ForkServerProcess) -> None:
    """Wait for a process told to stop; kill it if it does not."""
    process.join(JOIN_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(JOIN_TIMEOUT)


# --- fleet members --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    """What a member enqueues: ``track`` events with ids ``f"{prefix}-{n}"``.

    One person per ``n % persons`` (so every partition gets some), ``per_second`` calls a
    second at most (None: as fast as the queue takes them). With ``hold``, the member
    starts its queue and waits for ``Member.start_work()`` before enqueuing.
    """

    prefix: str
    count: int
    persons: int = 1000
    per_second: float | None = None
    hold: bool = False

    def ids(self) -> set[str]:
        """The event ids this work enqueues."""
        return {f"{self.prefix}-{n}" for n in range(self.count)}


class _Forward(logging.Handler):
    """Pass the fleet's Redis log lines on to the parent."""

    def __init__(self, name: str, reports: Queue[Any]) -> None:
        super().__init__(logging.WARNING)
        self._name = name
        self._reports = reports

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(FORWARDED):
            self._reports.put(("log", self._name, time.monotonic(), message))


def _run_member(name: str, options: dict[str, Any], work: Work | None, reports: Queue[Any],
                go: Event, stop: Event) -> None:
    """Child: run one EventQueue until the parent sets ``stop``; report as it goes."""
    logger = logging.getLogger("cio_queue")
    logger.setLevel(logging.WARNING)
    logger.addHandler(_Forward(name, reports))
    logger.propagate = False  # the parent gets what matters; the rest is noise here
    asyncio.run(_member(name, options, work, reports, go, stop))


class _TimedSender:
    """The real HttpSender, noting when each request starts (``time.monotonic()``)."""

    def __init__(self, config: QueueConfig) -> None:
        self._http = HttpSender(config)
        self.started: list[float] = []

    async def send(self, request: Request) -> Response:
        self.started.append(time.monotonic())
        return await self._http.send(request)

    async def aclose(self) -> None:
        await self._http.aclose()


async def _member(name: str, options: dict[str, Any], work: Work | None,
                  reports: Queue[Any], go: Event, stop: Event) -> None:
    config = QueueConfig(**options)
    sender = _TimedSender(config)
    cio = EventQueue(config, sender=sender)
    async with asyncio.timeout(CHILD_LIFETIME), cio:
        reports.put(("started", name, time.monotonic(), os.getpid()))
        reporter = asyncio.create_task(_report(cio, name, reports))
        if work is not None:
            if work.hold:
                await asyncio.to_thread(go.wait, CHILD_LIFETIME)
            await _produce(cio, work)
            reports.put(("produced", name, time.monotonic(), work.count))
            if not options.get("consume", True):
                await cio.flush()  # a pure producer: until Redis has every operation
                reports.put(("flushed", name, time.monotonic(), asdict(cio.statistics())))
        await asyncio.to_thread(stop.wait, CHILD_LIFETIME)
        reporter.cancel()
    reports.put(("starts", name, time.monotonic(), sender.started))
    reports.put(("closed", name, time.monotonic(), asdict(cio.statistics())))


async def _produce(cio: EventQueue, work: Work) -> None:
    """Enqueue the work, letting the loop run between calls as a web app's handlers do."""
    started = time.monotonic()
    for n in range(work.count):
        if work.per_second is not None:
            due = started + n / work.per_second
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
        elif n % 100 == 99:
            await asyncio.sleep(0)
        await cio.track(f"person-{n % work.persons}", "fleet_test", {"n": n},
                        id=f"{work.prefix}-{n}")


async def _report(cio: EventQueue, name: str, reports: Queue[Any]) -> None:
    while True:
        reports.put(("stats", name, time.monotonic(), asdict(cio.statistics())))
        await asyncio.sleep(REPORT_EVERY)


class Member:
    """The parent's handle on one fleet member's process.

    Reports arrive on a queue of the member's own; :meth:`poll` drains it into
    ``stats`` (the latest statistics), ``history`` (every statistics report with its
    time), ``logs`` (the forwarded log lines) and ``events`` (the rest, by kind).
    """

    def __init__(self, name: str, options: dict[str, Any], work: Work | None = None) -> None:
        context = _context()
        self.name = name
        self.work = work
        self.reports: Queue[Any] = context.Queue()
        self.go = context.Event()
        self.stop = context.Event()
        self.process = context.Process(
            target=_run_member, args=(name, options, work, self.reports, self.go, self.stop),
            name=f"fleet-{name}", daemon=True)
        self.stats: dict[str, int] = {}
        self.history: list[tuple[float, dict[str, int]]] = []
        self.logs: list[tuple[float, str]] = []
        self.events: dict[str, tuple[float, Any]] = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"<Member {self.name} pid={self.process.pid}>"

    @property
    def pid(self) -> int:
        """The member's process id."""
        assert self.process.pid is not None
        return self.process.pid

    def poll(self) -> None:
        """Take in every report that arrived (none once ``members`` closed the queue)."""
        while not self.closed:
            try:
                kind, _, at, payload = self.reports.get_nowait()
            except queue.Empty:
                return
            if kind == "stats":
                self.stats = payload
                self.history.append((at, payload))
            elif kind == "log":
                self.logs.append((at, payload))
            else:
                self.events[kind] = (at, payload)
                if kind == "closed":
                    self.stats = payload

    def has(self, kind: str) -> bool:
        """Whether the member reported ``kind`` (``started``, ``produced``, ...)."""
        self.poll()
        return kind in self.events

    def wait(self, kind: str, seconds: float = START_TIMEOUT) -> Any:
        """Wait (bounded) until the member reports ``kind``; return the report's payload."""

        def arrived() -> bool:
            if not self.has(kind) and not self.process.is_alive():
                self.poll()
                if kind not in self.events:
                    raise AssertionError(f"{self.name} exited ({self.process.exitcode}) "
                                         f"before reporting {kind!r}")
            return kind in self.events

        wait_for(arrived, seconds, f"{self.name} reports {kind!r}")
        return self.events[kind][1]

    def start_work(self) -> None:
        """Let a member whose work is on hold start enqueuing."""
        self.go.set()

    def close(self, seconds: float = CLOSE_TIMEOUT) -> dict[str, int]:
        """Tell the member to close its queue; return its final statistics."""
        self.stop.set()
        stats: dict[str, int] = self.wait("closed", seconds)
        _end(self.process)
        return stats

    def kill(self) -> None:
        """SIGKILL the member and wait until it is gone."""
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.process.join(JOIN_TIMEOUT)

    def logged(self, event: str) -> list[float]:
        """When the member logged ``event`` (a log line forwarded as it happened)."""
        self.poll()
        return [at for at, message in self.logs if message.startswith(event + " ")]


def close_all(*closing: Member, seconds: float = CLOSE_TIMEOUT) -> list[dict[str, int]]:
    """Tell every member to close at once; return their final statistics, in order."""
    for member in closing:
        member.stop.set()
    return [member.close(seconds) for member in closing]


@contextlib.contextmanager
def members(*started: Member) -> Iterator[tuple[Member, ...]]:
    """Start the members and wait until each runs its queue; kill what is left at the end."""
    try:
        for member in started:
            member.process.start()
        for member in started:
            member.wait("started")
        yield started
    finally:
        for member in started:
            if member.process.pid is not None and member.process.is_alive():
                member.kill()
            member.poll()  # the last reports, for the assertions after
            member.closed = True
            member.reports.close()
            member.reports.cancel_join_thread()


def balanced(stats: dict[str, int]) -> bool:
    """The statistics invariant, with the fleet's two counters (as ``Statistics``)."""
    assert set(stats) >= set(Statistics.__dataclass_fields__)
    return stats["enqueued"] + stats["taken"] == sum(
        stats[name] for name in ("delivered", "rejected", "failed", "dropped", "filtered",
                                 "dead_lettered", "spooled", "streamed", "pending"))
