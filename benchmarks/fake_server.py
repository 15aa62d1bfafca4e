"""The fake Track API in a child process, shared by the benchmarks.

The server gets a process (and so a core) of its own, so the client under test does not
share an event loop with it. The parent talks to it over a pipe: ``count`` asks how many
requests it accepted, anything else (or the pipe closing) stops it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Final

from cio_queue.testing import FakeTrackAPI, FaultRates

SERVER_START_TIMEOUT: Final = 30.0
SERVER_REPLY_TIMEOUT: Final = 10.0
SERVER_STOP_TIMEOUT: Final = 5.0


def _serve(conn: Connection, latency: float, faults: FaultRates | None, seed: int) -> None:
    """Child-process entry point: run FakeTrackAPI until told to stop or orphaned."""
    asyncio.run(_serve_async(conn, latency, faults, seed))


async def _serve_async(conn: Connection, latency: float, faults: FaultRates | None,
                       seed: int) -> None:
    async with FakeTrackAPI(latency=latency, faults=faults, seed=seed) as fake:
        conn.send((fake.url, fake.site_id, fake.api_key))
        while True:
            try:
                message = await asyncio.to_thread(conn.recv)
            except EOFError:  # the parent went away
                return
            if message != "count":
                return
            # Accepted (2xx) requests so far: an independent check on the client counts.
            conn.send(len(fake.requests))


@dataclass(frozen=True, slots=True)
class Server:
    """A handle on the fake Track API running in the child process."""

    url: str
    site_id: str
    api_key: str
    conn: Connection

    def accepted(self) -> int:
        """Return how many requests the server has accepted so far."""
        self.conn.send("count")
        if not self.conn.poll(SERVER_REPLY_TIMEOUT):
            raise RuntimeError("the fake server did not answer a count request")
        count = self.conn.recv()
        assert isinstance(count, int)
        return count


@contextmanager
def server_process(latency: float, faults: FaultRates | None = None,
                   seed: int = 0) -> Iterator[Server]:
    """Start FakeTrackAPI in a spawned process; always stop it, by force if need be."""
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child_conn, latency, faults, seed),
                          name="fake-track-api", daemon=True)
    process.start()
    child_conn.close()
    try:
        if not conn.poll(SERVER_START_TIMEOUT):
            raise RuntimeError(f"the fake server did not start within {SERVER_START_TIMEOUT}s")
        try:
            url, site_id, api_key = conn.recv()
        except EOFError:
            raise RuntimeError("the fake server process died on start-up "
                               f"(exit code {process.exitcode})") from None
        yield Server(url, site_id, api_key, conn)
    finally:
        with suppress(OSError):  # the child may already be gone
            conn.send("stop")
        process.join(SERVER_STOP_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(SERVER_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(SERVER_STOP_TIMEOUT)
        conn.close()
