"""Senders: the I/O layer behind a Protocol, and the aiohttp one used in production.

Stage: delivery, the courier's only way out. aiohttp's exceptions are translated here,
at one boundary, into TransportError; a response status is classified into an error type
by :func:`classify`, the one place that decides which statuses are retried.

The server is not always the Track API (a proxy, a gateway, a wrong ``base_url``), so
HttpSender trusts no response: it never follows a redirect, reads at most
:data:`MAX_RESPONSE_BYTES` of a body (inflated size, and it inflates gzip itself so that
a compression bomb costs no more), and blanks the credential wherever a response or an
exception text repeats it. Reasons built from a response keep a short, single-line
:func:`excerpt`.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._config import QueueConfig
from ._exceptions import (
    DeliveryError,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from ._retry import parse_retry_after
from ._version import __version__

__all__ = [
    "MAX_REASON_CHARS",
    "MAX_RESPONSE_BYTES",
    "REDACTED",
    "USER_AGENT",
    "HttpSender",
    "Request",
    "Response",
    "Sender",
    "classify",
    "excerpt",
]

USER_AGENT: Final = f"cio-queue/{__version__} (+aiohttp/{aiohttp.__version__})"
MAX_RESPONSE_BYTES: Final = 256 * 1024
"""The most of a response body HttpSender reads, counted after inflating; plenty for a 207."""
MAX_REASON_CHARS: Final = 200
"""The longest excerpt of a response body or exception text that goes into a reason."""
REDACTED: Final = "[REDACTED]"
"""What stands in for a credential; it needs no escaping inside a JSON string."""
_SCAN_CHARS: Final = 20 * MAX_REASON_CHARS  # redacted before cutting, so no token is cut
_AUTH_FIELD: Final = re.compile(r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*)[^\r\n]*")
# A token, unlike a word of prose, has a digit, "+", "/", "=" or a capital after its start.
_AUTH_TOKEN: Final = re.compile(
    r"\b((?i:basic|bearer))\s+(?=[\w.~-]*[0-9+/=]|[\w.~-]+[A-Z])[\w+/.~=\\-]+")
_USERINFO: Final = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:)?//[^/?#]*@")
_INFLATED_CODINGS: Final = ("gzip", "x-gzip", "deflate")
_ZLIB_OR_GZIP: Final = 32 + zlib.MAX_WBITS  # zlib picks either header from the first bytes


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request: method, path below the Track host (percent-encoded), JSON body."""

    method: str
    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """What came back: status, headers (case-insensitive lookups), body.

    ``truncated`` says the body is incomplete: longer than the cap, cut off by the peer
    or the request timeout, or undecodable. A truncated 207 must be treated as unreadable
    (see :func:`~cio_queue._packing.partial_errors`), never as a shorter error list.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False


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
    """Return None for a 2xx, else the DeliveryError that says whether to retry.

    ======================================  =====================================
    2xx                                     None (a 207 still needs its error list)
    429                                     RateLimitedError (retried)
    408, 5xx                                ServerError (retried)
    3xx                                     RejectedError: a redirect is never followed;
                                            the Track API does not redirect a correct
                                            ``base_url``, so retrying cannot help
    401, 403                                UnauthorizedError (not retried)
    other 4xx, 1xx, outside 100-599         RejectedError (not retried)
    ======================================  =====================================

    The reason holds a redacted, single-line :func:`excerpt` of the body, never all of it.
    """
    status = response.status
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return RejectedError(_redirect_reason(status, response.headers.get("Location")),
                             status=status)
    label = f"HTTP {status}" if 200 <= status < 600 else f"HTTP {status} (unexpected status)"
    detail = excerpt(response.body[:_SCAN_CHARS].decode("utf-8", "replace"))
    message = f"{label}: {detail}" if detail else label
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return RateLimitedError(message, status=status, retry_after=retry_after)
        return ServerError(message, status=status, retry_after=retry_after)
    if status in (401, 403):
        return UnauthorizedError(message, status=status)
    return RejectedError(message, status=status)


def excerpt(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Return a short, single-line, printable excerpt of ``text`` with auth values blanked.

    ``Authorization:``/``Proxy-Authorization:`` values and ``Basic``/``Bearer`` tokens are
    replaced by :data:`REDACTED` before the text is cut to ``limit`` characters, so a cut
    never leaves half a token behind.
    """
    text = _AUTH_FIELD.sub(lambda m: m.group(1) + REDACTED, text[:_SCAN_CHARS])
    text = _AUTH_TOKEN.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _redirect_reason(status: int, location: str | None) -> str:
    where = f" redirect to {_safe_location(location)}" if location else " redirection"
    return f"HTTP {status}{where}, not followed: wrong region or base_url?"


def _safe_location(location: str) -> str:
    """Return a Location without user info, query or fragment (they may hold secrets)."""
    return excerpt(_strip_userinfo(re.split(r"[?#]", location, maxsplit=1)[0]))


def _strip_userinfo(url: str) -> str:
    return _USERINFO.sub(lambda m: (m.group(1) or "") + "//", url)


class _Redactor:
    """Blank every form in which the credential could come back from a server."""

    __slots__ = ("_byte_forms", "_forms")

    def __init__(self, api_key: str, basic_pair: bytes) -> None:
        tokens = {base64.b64encode(basic_pair).decode("ascii"),
                  base64.urlsafe_b64encode(basic_pair).decode("ascii")}
        tokens |= {token.rstrip("=") for token in tokens}  # also "...\u003d"-escaped padding
        forms = {api_key, *tokens}
        forms |= {form.replace("/", "\\/") for form in forms}  # JSON that escapes "/"
        forms |= set(_percent_encoded(forms))
        # Longest first, so a padded token goes whole before its unpadded prefix.
        self._forms = sorted((form for form in forms if form), key=len, reverse=True)
        self._byte_forms = [form.encode() for form in self._forms]

    def text(self, value: str) -> str:
        """Return ``value`` with every credential form replaced by REDACTED."""
        for form in self._forms:
            value = value.replace(form, REDACTED)
        return value

    def data(self, value: bytes, *, cut: bool = False) -> bytes:
        """Return ``value`` with every credential form replaced by REDACTED.

        With ``cut`` (the bytes were cut off), a start of a form at the very end goes too.
        """
        for form in self._byte_forms:
            value = value.replace(form, REDACTED.encode())
        if cut:
            for form in self._byte_forms:
                start = next((k for k in range(len(form) - 1, 0, -1)
                              if value.endswith(form[:k])), 0)
                value = value[: len(value) - start] + (REDACTED.encode() if start else b"")
        return value


def _percent_encoded(forms: Iterable[str]) -> Iterable[str]:
    for form in forms:
        encoded = quote(form, safe="")
        yield encoded
        yield re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)


class _CappedBody:
    """Collect a response body up to MAX_RESPONSE_BYTES, inflating gzip or deflate.

    Both the bytes received and the bytes inflated count against the cap, so neither a
    long body, nor a compression bomb, nor a stream of empty deflate blocks holds more
    than about the cap in memory. aiohttp's own decompression is off: before 3.13.3 it
    inflated each network chunk whole (CVE-2025-69223), and aiohttp>=3.9 is allowed.
    """

    __slots__ = ("_inflater", "_parts", "_received", "_size", "truncated")

    def __init__(self, content_encoding: str) -> None:
        coding = content_encoding.strip().lower()
        self._inflater = (zlib.decompressobj(_ZLIB_OR_GZIP) if coding in _INFLATED_CODINGS
                          else None)
        self._parts: list[bytes] = []
        self._received = 0
        self._size = 0
        self.truncated = False

    def feed(self, chunk: bytes) -> bool:
        """Add bytes as received; return True when nothing more should be read."""
        self._received += len(chunk)
        room = MAX_RESPONSE_BYTES - self._size
        if self._inflater is not None:
            try:
                chunk = self._inflater.decompress(chunk, room + 1)
            except zlib.error:
                self.truncated = True
                return True
            # Data after the end of the stream (a second gzip member) is not read.
            self.truncated = bool(self._inflater.unused_data)
        self._parts.append(chunk[:room])
        self._size += len(self._parts[-1])
        self.truncated |= len(chunk) > room or self._received > MAX_RESPONSE_BYTES
        return self.truncated

    def result(self) -> tuple[bytes, bool]:
        """Return the body and whether it is incomplete."""
        unfinished = (self._inflater is not None and self._received > 0
                      and not self._inflater.eof)
        return b"".join(self._parts), self.truncated or unfinished


class HttpSender:
    """Send requests over one pooled aiohttp ClientSession with a per-request timeout.

    The session is created on first use, inside the running event loop. Redirects are
    not followed (a 3xx comes back as it is), cookies are neither kept nor sent, and each
    response is read through the protections described in this module's docstring.
    """

    def __init__(self, config: QueueConfig) -> None:
        # A "user:password@" must be neither shown nor sent: our Basic header is the auth.
        self._base = _strip_userinfo(config.track_url)
        pair = f"{config.site_id}:{config.api_key}".encode()
        token = base64.b64encode(pair).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip, deflate",  # the codings _CappedBody inflates
        }
        self._redactor = _Redactor(config.api_key, pair)
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout)
        self._limit = config.max_concurrency
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<HttpSender {self._base}>"

    def route_to(self, url: str) -> None:
        """Send later requests to ``url`` (scheme and host), e.g. a discovered region."""
        self._base = _strip_userinfo(url).rstrip("/")

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit)
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=self._timeout, connector=connector,
            auto_decompress=False, raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def send(self, request: Request) -> Response:
        """Send one request; see :meth:`Sender.send`.

        Once a status line has arrived the result is a Response, even if the body then
        breaks off or the request timeout fires while it is read: the server has decided,
        and the Response says ``truncated``. ``ClientTimeout(total=...)`` covers the body.
        """
        session = self._session or self._open()
        # encoded=True: the path is already percent-encoded exactly as the official SDK
        # encodes it, and yarl must not re-quote it (it would turn %2F into /).
        url = URL(self._base + request.path, encoded=True)
        try:
            async with session.request(request.method, url, data=request.body,
                                       allow_redirects=False) as resp:
                return await self._read(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = excerpt(self._redactor.text(str(exc)))
            raise TransportError(f"{request.method} {request.path}: "
                                 f"{type(exc).__name__}: {detail}") from None

    async def _read(self, resp: aiohttp.ClientResponse) -> Response:
        """Turn an aiohttp response into a capped, redacted Response."""
        redact = self._redactor.text
        headers = CIMultiDictProxy(CIMultiDict(
            (redact(name), redact(value)) for name, value in resp.headers.items()))
        if resp.status < 200:  # no body follows a 1xx; a 101 hands the connection over
            resp.close()
            return Response(resp.status, headers)
        collected = _CappedBody(resp.headers.get("Content-Encoding", ""))
        try:
            async for chunk in resp.content.iter_any():
                if collected.feed(chunk):
                    break
        except (TimeoutError, aiohttp.ClientError, OSError):
            collected.truncated = True
        body, truncated = collected.result()
        if truncated:
            resp.close()  # unread bytes may follow: never hand this connection back
        return Response(resp.status, headers, self._redactor.data(body, cut=truncated),
                        truncated)

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
