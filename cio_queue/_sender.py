"""Senders: the I/O layer behind a Protocol, and the aiohttp one used in production.

aiohttp's exceptions are translated here, at one boundary, into TransportError; a
response status is classified into an error type by :func:`classify`, the one place that
decides which statuses are retried.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp
from yarl import URL

from ._config import QueueConfig
from ._exceptions import (
    DeliveryError,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
)
from ._retry import parse_retry_after
from ._version import __version__

__all__ = ["USER_AGENT", "HttpSender", "Request", "Response", "Sender", "classify"]

USER_AGENT: Final = f"cio-queue/{__version__} (+aiohttp/{aiohttp.__version__})"
_MAX_ERROR_BODY: Final = 500


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request: method, path below the Track host (percent-encoded), JSON body."""

    method: str
    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """What came back: status, headers (case-insensitive lookups), body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class Sender(Protocol):
    """Sends requests to the Track API; swap it to test the pipeline without HTTP."""

    async def send(self, request: Request) -> Response:
        """Send one request and return its response.

        Raises:
            TransportError: no response arrived (connection failure, timeout).
        """
        ...

    async def aclose(self) -> None:
        """Release connections; called once by the queue at shutdown."""
        ...


def classify(response: Response) -> DeliveryError | None:
    """Return None for a 2xx, else the DeliveryError that says whether to retry."""
    status = response.status
    if 200 <= status < 300:
        return None
    detail = response.body[:_MAX_ERROR_BODY].decode("utf-8", "replace")
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return RateLimitedError(message, status=status, retry_after=retry_after)
    if status == 408 or status >= 500:
        return ServerError(message, status=status, retry_after=retry_after)
    return RejectedError(message, status=status)


class HttpSender:
    """Send requests over one pooled aiohttp ClientSession with a per-request timeout.

    The session is created on first use, inside the running event loop.
    """

    def __init__(self, config: QueueConfig) -> None:
        self._base = config.track_url
        token = base64.b64encode(f"{config.site_id}:{config.api_key}".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout)
        self._limit = config.max_concurrency
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<HttpSender {self._base}>"

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit)
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=self._timeout, connector=connector,
            auto_decompress=True, raise_for_status=False,
        )
        return self._session

    async def send(self, request: Request) -> Response:
        """Send one request; see :meth:`Sender.send`."""
        session = self._session or self._open()
        # encoded=True: the path is already percent-encoded exactly as the official SDK
        # encodes it, and yarl must not re-quote it (it would turn %2F into /).
        url = URL(self._base + request.path, encoded=True)
        try:
            async with session.request(request.method, url, data=request.body) as resp:
                body = await resp.read()
                return Response(resp.status, resp.headers, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{request.method} {request.path}: "
                                 f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
