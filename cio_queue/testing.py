"""Run a fake Customer.io Track API on loopback for tests, demos and benchmarks.

`FakeTrackAPI` is a real `aiohttp.web` server, so clients exercise their actual HTTP stack
(connection pooling, timeouts, disconnects) instead of a mock. It validates requests the way
the real Track API documents it (v1 and v2), records what it accepted, and injects faults
(server errors, 429s, dropped connections, ambiguous deliveries, slow answers) either from a
script or at random with a seeded, deterministic generator.

Typical use::

    async with FakeTrackAPI(faults=FaultRates(server_error=0.1), seed=7) as fake:
        client = MyClient(fake.url, site_id=fake.site_id, api_key=fake.api_key)
        ...
        await fake.wait_for_requests(10)
        assert [op.op for op in fake.operations] == [...]
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import enum
import hmac
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from aiohttp import web

__all__ = [
    "AcceptedOperation",
    "FakeTrackAPI",
    "Fault",
    "FaultRates",
    "RecordedRequest",
    "validate_request",
]

MAX_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_V2_OP_BYTES = 32 * 1024
MAX_V2_BATCH_BYTES = 500_000  # the whole batch body must be strictly below this

_SHUTDOWN_TIMEOUT = 0.2  # seconds in-flight handlers get on stop() before being cancelled
_CLIENT_MAX_SIZE = 16 * 1024 * 1024  # large enough that oversized batches reach our 413 logic
_SERVER_ERROR_STATUSES = (500, 502, 503, 504)
_URLSAFE = str.maketrans("-_", "+/")  # accept URL-safe base64 credentials too (Go SDK)
_EVENT_TYPES = frozenset({"event", "page", "screen"})
_PLATFORMS = frozenset({"ios", "android"})
_MERGE_ID_TYPES = frozenset({"id", "email", "cio_id"})
_PERSON_ID_TYPES = frozenset({"id", "email", "cio_id", "phone"})
# Reserved attributes whose values are structured by design: exempt from the 1000-byte value
# limit, bounded instead by the 100 KB object/relationship size limit.
_STRUCTURED_ATTRIBUTES = frozenset({"cio_relationships", "cio_subscription_preferences"})
_V2_ACTIONS = frozenset(
    {
        "identify", "delete", "event", "page", "screen", "add_device", "delete_device",
        "merge", "suppress", "unsuppress", "add_relationships", "delete_relationships",
    }
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Public records and fault configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """Describe one HTTP request the fake server saw and how it answered."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    received_at: float
    fault: str | None

    @property
    def json(self) -> Any:
        """Return the parsed JSON body, or None when the body is empty."""
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class AcceptedOperation:
    """Describe one delivered operation: a whole v1 request or one v2 op."""

    api: str
    op: Any


class Fault(enum.Enum):
    """Name the faults that `FakeTrackAPI.script` can queue."""

    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    RATE_LIMITED_NO_HEADER = "rate_limited_no_header"
    DROP_CONNECTION = "drop_connection"
    AMBIGUOUS = "ambiguous"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities (0..1) of each random fault per request; their sum must be <= 1.

    `retry_after` is the Retry-After value sent with `rate_limited` (rounded up to whole
    seconds, as the header only carries integers) and `slow_seconds` is how long a `slow`
    request stalls before being processed.
    """

    server_error: float = 0.0
    rate_limited: float = 0.0
    rate_limited_no_header: float = 0.0
    drop_connection: float = 0.0
    ambiguous: float = 0.0
    slow: float = 0.0
    retry_after: float = 1.0
    slow_seconds: float = 5.0

    def __post_init__(self) -> None:
        """Reject probabilities outside 0..1, a sum above 1 and negative durations."""
        rates = [p for _, p in self.weighted()]
        if any(not 0.0 <= p <= 1.0 for p in rates):
            raise ValueError("fault probabilities must be within 0..1")
        if math.fsum(rates) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to at most 1")
        if self.retry_after < 0 or self.slow_seconds < 0:
            raise ValueError("retry_after and slow_seconds must be >= 0")

    def weighted(self) -> list[tuple[Fault, float]]:
        """Return each fault with its probability, in a fixed order (keeps seeds stable)."""
        return [
            (Fault.SERVER_ERROR, self.server_error),
            (Fault.RATE_LIMITED, self.rate_limited),
            (Fault.RATE_LIMITED_NO_HEADER, self.rate_limited_no_header),
            (Fault.DROP_CONNECTION, self.drop_connection),
            (Fault.AMBIGUOUS, self.ambiguous),
            (Fault.SLOW, self.slow),
        ]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


class _ValidationError(Exception):
    """Carry one validation problem: the offending field, a reason code and a message."""

    def __init__(self, field: str, message: str, reason: str = "invalid", status: int = 400):
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason
        self.status = status

    def describe(self) -> str:
        """Render the problem as ``field: message`` (just the message without a field)."""
        return f"{self.field}: {self.message}" if self.field else self.message


def _json_size(value: Any) -> int:
    """Measure a value as compact JSON bytes, the way clients are expected to size payloads."""
    return len(json.dumps(value, separators=(",", ":")).encode())


def _utf8_len(text: str) -> int:
    """Count the UTF-8 bytes of a string (limits are in bytes, not characters)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _is_int(value: Any) -> bool:
    """Tell whether a JSON value is an integer (booleans excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_object(body: bytes, field: str = "body") -> dict[str, Any]:
    """Parse a body that must be a JSON object."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _ValidationError(field, f"{field} is not valid JSON", "invalid_json") from exc
    if not isinstance(value, dict):
        raise _ValidationError(field, f"{field} must be a JSON object", "invalid_json")
    return value


def _check_identifier(value: str, field: str) -> None:
    """Require a non-empty identifier of at most 150 UTF-8 bytes."""
    if not value:
        raise _ValidationError(field, f"{field} must not be empty", "required")
    if _utf8_len(value) > MAX_ID_BYTES:
        raise _ValidationError(field, f"{field} exceeds {MAX_ID_BYTES} bytes", "too_large")


def _check_attributes(attributes: Any, field: str) -> None:
    """Apply the person-attribute limits: count, name size and value size.

    Values are measured as UTF-8 for strings and as compact JSON otherwise; the reserved
    structured attributes (relationships, subscription preferences) may exceed 1000 bytes.
    """
    if not isinstance(attributes, dict):
        raise _ValidationError(field, f"{field} must be an object")
    if len(attributes) > MAX_ATTRIBUTES:
        raise _ValidationError(
            field, f"{field} has more than {MAX_ATTRIBUTES} attributes", "too_large"
        )
    for name, value in attributes.items():
        if _utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            raise _ValidationError(
                f"{field}.{name}",
                f"attribute name {name[:40]!r}... exceeds {MAX_ATTRIBUTE_NAME_BYTES} bytes",
                "too_large",
            )
        size = _utf8_len(value) if isinstance(value, str) else _json_size(value)
        if name in _STRUCTURED_ATTRIBUTES:
            if size > MAX_EVENT_DATA_BYTES:
                message = f"{name} exceeds {MAX_EVENT_DATA_BYTES} bytes"
                raise _ValidationError(f"{field}.{name}", message, "too_large")
        elif size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise _ValidationError(
                f"{field}.{name}",
                f"attribute {name!r} value exceeds {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
                "too_large",
            )


def _check_event(body: Mapping[str, Any], data_key: str) -> None:
    """Validate the fields shared by v1 events and v2 event/page/screen ops."""
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise _ValidationError(
            "name", "name is required and must be a non-empty string", "required"
        )
    if _utf8_len(name) > MAX_EVENT_NAME_BYTES:
        raise _ValidationError("name", f"name exceeds {MAX_EVENT_NAME_BYTES} bytes", "too_large")
    data = body.get(data_key)
    if data is not None:
        if not isinstance(data, dict):
            raise _ValidationError(data_key, f"{data_key} must be an object")
        if _json_size(data) > MAX_EVENT_DATA_BYTES:
            message = f"{data_key} exceeds {MAX_EVENT_DATA_BYTES} bytes"
            raise _ValidationError(data_key, message, "too_large")
    if body.get("timestamp") is not None and not _is_int(body["timestamp"]):
        raise _ValidationError("timestamp", "timestamp must be an integer (unix seconds)")
    if body.get("id") is not None and not isinstance(body["id"], str):
        raise _ValidationError("id", "id must be a string")


def _check_single_key(
    value: Any, field: str, allowed: frozenset[str], *, allow_int: bool = False
) -> None:
    """Require an object with exactly one allowed key whose value is a non-empty string.

    With `allow_int`, an integer value is accepted too: the official SDKs send a v1 merge's
    ids as given, so `merge_customers("id", 42, ...)` puts a JSON number on the wire.
    """
    if not isinstance(value, dict) or len(value) != 1:
        raise _ValidationError(field, f"{field} must be an object with exactly one key", "required")
    ((key, ident),) = value.items()
    if key not in allowed:
        raise _ValidationError(f"{field}.{key}", f"{field} key must be one of {sorted(allowed)}")
    if allow_int and _is_int(ident):
        ident = str(ident)
    if not isinstance(ident, str) or not ident:
        raise _ValidationError(
            f"{field}.{key}", f"{field}.{key} must be a non-empty string", "required"
        )
    if key == "id":
        _check_identifier(ident, f"{field}.id")


def _validate_v1(kind: str, ids: tuple[str, ...], body: bytes) -> Any:
    """Validate a routed v1 request; return its parsed body or raise `_ValidationError`."""
    for index, ident in enumerate(ids):
        _check_identifier(ident, "customer id" if index == 0 else "device id")
    if kind in ("delete", "delete_device", "suppress", "unsuppress"):
        return _parse_object(body) if body.strip() else None
    parsed = _parse_object(body)
    if kind == "identify":
        _check_attributes(parsed, "attributes")
    elif kind in ("event", "anonymous_event"):
        _check_event(parsed, "data")
        if parsed.get("type") is not None and parsed["type"] not in _EVENT_TYPES:
            raise _ValidationError("type", f"type must be one of {sorted(_EVENT_TYPES)}")
        anon = parsed.get("anonymous_id")
        if kind == "anonymous_event" and anon is not None and not isinstance(anon, str):
            raise _ValidationError("anonymous_id", "anonymous_id must be a string")
    elif kind == "add_device":
        device = parsed.get("device")
        if not isinstance(device, dict):
            raise _ValidationError("device", "device is required and must be an object", "required")
        if not isinstance(device.get("id"), str) or not device["id"]:
            raise _ValidationError("device.id", "device.id must be a non-empty string", "required")
        if device.get("platform") not in _PLATFORMS:
            raise _ValidationError("device.platform", "device.platform must be 'ios' or 'android'")
    elif kind == "merge":
        _check_single_key(parsed.get("primary"), "primary", _MERGE_ID_TYPES, allow_int=True)
        _check_single_key(parsed.get("secondary"), "secondary", _MERGE_ID_TYPES, allow_int=True)
    return parsed


def _check_v2_device(device: Any, *, full: bool) -> None:
    """Validate a v2 `device`: always a token; platform and optional fields when `full`."""
    if not isinstance(device, dict):
        raise _ValidationError("device", "device is required and must be an object", "required")
    token = device.get("token")
    if not isinstance(token, str) or not token:
        message = "device.token must be a non-empty string"
        raise _ValidationError("device.token", message, "required")
    if not full:
        return
    if device.get("platform") not in _PLATFORMS:
        raise _ValidationError("device.platform", "device.platform must be 'ios' or 'android'")
    if device.get("last_used") is not None and not _is_int(device["last_used"]):
        raise _ValidationError("device.last_used", "device.last_used must be an integer")
    if device.get("attributes") is not None and not isinstance(device["attributes"], dict):
        raise _ValidationError("device.attributes", "device.attributes must be an object")


def _validate_v2_op(op: Any) -> None:
    """Validate one v2 op (person type only); raise `_ValidationError` on the first problem."""
    if not isinstance(op, dict):
        raise _ValidationError("", "operation must be a JSON object", "invalid_json")
    if op.get("type") != "person":
        raise _ValidationError(
            "type", f"unsupported type {op.get('type')!r}; only 'person' is supported"
        )
    action = op.get("action")
    if action not in _V2_ACTIONS:
        raise _ValidationError("action", f"unknown or missing action {action!r}", "required")
    if action == "merge":
        if "identifiers" in op:
            raise _ValidationError("identifiers", "merge takes primary/secondary, not identifiers")
        _check_single_key(op.get("primary"), "primary", _MERGE_ID_TYPES)
        _check_single_key(op.get("secondary"), "secondary", _MERGE_ID_TYPES)
        return
    _check_single_key(op.get("identifiers"), "identifiers", _PERSON_ID_TYPES)
    if action in ("event", "page", "screen"):
        _check_event(op, "attributes")
    elif action == "identify":
        if op.get("attributes") is not None:
            _check_attributes(op["attributes"], "attributes")
        if op.get("timestamp") is not None and not _is_int(op["timestamp"]):
            raise _ValidationError("timestamp", "timestamp must be an integer (unix seconds)")
    elif action in ("add_device", "delete_device"):
        _check_v2_device(op.get("device"), full=action == "add_device")
    elif action in ("add_relationships", "delete_relationships"):
        rels = op.get("cio_relationships")
        if not isinstance(rels, list) or not rels:
            raise _ValidationError(
                "cio_relationships", "cio_relationships must be a non-empty list"
            )


def validate_request(method: str, path: str, body: bytes) -> list[str]:
    """List what the fake Track API would refuse a request for; empty when it is valid.

    The same rules as `FakeTrackAPI` applies: routing, the body, and for a v2 batch every
    op, including its 32 KB size, and the whole body's 500,000-byte limit. Credentials,
    injected faults and the `reject` / `reject_op` / `malformed_op` hooks are not consulted.

    Args:
        method: The HTTP method, e.g. ``"POST"``.
        path: The raw request path, e.g. ``/api/v1/customers/42/events`` or
            ``/api/v2/batch``; percent-escapes are decoded per segment as the server does,
            and a query string is ignored.
        body: The request body exactly as sent.

    Returns:
        One readable line per problem (a batch lists each refused op as ``batch[i] ...``),
        or an empty list when the fake Track API would accept the request.
    """
    path = path.partition("?")[0]
    route = _match(method, path)
    if route is None:
        return [f"no route for {method} {path}"]
    if isinstance(route, set):
        return [f"{method} is not allowed on {path} (allowed: {', '.join(sorted(route))})"]
    try:
        if route.kind == "batch":
            return _batch_problems(_parse_batch(body))
        if route.kind == "entity":
            _parse_entity(body)
        else:
            _validate_v1(route.kind, route.ids, body)
    except _ValidationError as problem:
        return [problem.describe()]
    return []


def _batch_problems(batch: list[Any]) -> list[str]:
    """List the problems of each refused op of a parsed batch, by index."""
    problems: list[str] = []
    for index, op in enumerate(batch):
        try:
            _check_sized_op(op)
        except _ValidationError as problem:
            problems.append(f"batch[{index}] {problem.describe()}")
    return problems


def _parse_entity(body: bytes) -> dict[str, Any]:
    """Parse and check the body of ``/api/v2/entity``: one op of at most 32 KB."""
    if len(body) > MAX_V2_OP_BYTES:
        raise _ValidationError("", f"request exceeds {MAX_V2_OP_BYTES} bytes", "too_large")
    op = _parse_object(body)
    _check_sized_op(op)
    return op


def _parse_batch(body: bytes) -> list[Any]:
    """Parse the body of ``/api/v2/batch`` (under 500,000 bytes) into its non-empty op list.

    The ops themselves are not checked: a batch is accepted op by op.
    """
    if len(body) >= MAX_V2_BATCH_BYTES:
        message = f"batch must be under {MAX_V2_BATCH_BYTES} bytes"
        raise _ValidationError("batch", message, "too_large", status=413)
    batch = _parse_object(body).get("batch")
    if not isinstance(batch, list) or not batch:
        raise _ValidationError("batch", "batch must be a non-empty list", "required")
    return batch


def _check_sized_op(op: Any) -> None:
    """Check one v2 op: at most 32 KB as compact JSON, then its fields."""
    if _json_size(op) > MAX_V2_OP_BYTES:
        raise _ValidationError("", f"operation exceeds {MAX_V2_OP_BYTES} bytes", "too_large")
    _validate_v2_op(op)


# --------------------------------------------------------------------------------------------
# Routing on the raw path, so an encoded slash (%2F) stays inside one segment
# --------------------------------------------------------------------------------------------

_ROUTES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("v1", "PUT", ("customers", "*"), "identify"),
    ("v1", "DELETE", ("customers", "*"), "delete"),
    ("v1", "POST", ("customers", "*", "events"), "event"),
    ("v1", "POST", ("events",), "anonymous_event"),
    ("v1", "PUT", ("customers", "*", "devices"), "add_device"),
    ("v1", "DELETE", ("customers", "*", "devices", "*"), "delete_device"),
    ("v1", "POST", ("customers", "*", "suppress"), "suppress"),
    ("v1", "POST", ("customers", "*", "unsuppress"), "unsuppress"),
    ("v1", "POST", ("merge_customers",), "merge"),
    ("v2", "POST", ("entity",), "entity"),
    ("v2", "POST", ("batch",), "batch"),
)


@dataclass(frozen=True, slots=True)
class _Route:
    """A matched endpoint: API version, operation kind and decoded path parameters."""

    api: str
    kind: str
    ids: tuple[str, ...]


def _match(method: str, raw_path: str) -> _Route | set[str] | None:
    """Route a raw path: a `_Route`, the allowed methods (wrong method) or None (unknown)."""
    parts = raw_path.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != "api" or parts[2] not in ("v1", "v2"):
        return None
    api, rest = parts[2], parts[3:]
    allowed: set[str] = set()
    for route_api, route_method, pattern, kind in _ROUTES:
        if route_api != api or len(pattern) != len(rest):
            continue
        if all(p in ("*", seg) for p, seg in zip(pattern, rest, strict=True)):
            if route_method != method:
                allowed.add(route_method)
                continue
            ids = tuple(unquote(seg) for p, seg in zip(pattern, rest, strict=True) if p == "*")
            return _Route(api, kind, ids)
    return allowed or None


def _meta_errors(status: int, *messages: str) -> web.Response:
    """Answer with the v1 validation error shape."""
    return web.json_response({"meta": {"errors": list(messages)}}, status=status)


def _meta_error(status: int, message: str) -> web.Response:
    """Answer with the v1 single-error shape (merge, auth, routing)."""
    return web.json_response({"meta": {"error": message}}, status=status)


def _v2_error(status: int, problem: _ValidationError) -> web.Response:
    """Answer with the v2 whole-request error shape."""
    error = {"reason": problem.reason, "field": problem.field, "message": problem.message}
    return web.json_response({"errors": [error]}, status=status)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Exchange:
    """Mutable bookkeeping for one request while it is being handled."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    received_at: float
    fault: Fault | int | None
    body: bytes = b""
    status: int = 0
    record: RecordedRequest | None = None

    @property
    def fault_name(self) -> str | None:
        """Name the injected fault for the record."""
        if self.fault is None:
            return None
        return self.fault.value if isinstance(self.fault, Fault) else f"status_{self.fault}"

    def freeze(self, status: int) -> RecordedRequest:
        """Build (once) the immutable record with the final status."""
        if self.record is None:
            self.status = status
            self.record = self.snapshot(status)
        return self.record

    def snapshot(self, status: int) -> RecordedRequest:
        """Build an immutable record of the request as it stands, with `status`."""
        return RecordedRequest(
            method=self.method,
            path=self.path,
            query=self.query,
            headers=self.headers,
            body=self.body,
            status=status,
            received_at=self.received_at,
            fault=self.fault_name,
        )


class FakeTrackAPI:
    """Serve an imitation of the Customer.io Track API (v1 and v2) on a loopback port.

    Every request is recorded in `log`; the ones that were accepted (2xx) also go to
    `requests`, and every delivered operation goes to `operations`. Faults come first from
    `script()`, then at random from `faults`; they are decided on arrival, before auth and
    validation, because a real outage does not look at the request.
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
    ) -> None:
        """Configure the server; nothing listens until `start()` (or `async with`)."""
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
        # Reproducible fault injection, not cryptography (S311 is only enabled in some configs).
        self._rng = random.Random(seed)  # noqa: S311, RUF100
        self._script: deque[Fault | int] = deque()
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.requests: list[RecordedRequest] = []
        self.log: list[RecordedRequest] = []
        self.operations: list[AcceptedOperation] = []
        self.in_flight = 0
        self.max_in_flight = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the port (the same one again after a stop) and start serving."""
        if self._runner is not None:
            raise RuntimeError("FakeTrackAPI is already running")
        self._notify()  # wake waiters of a previous run; they re-wait on a fresh event
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        # [\s\S], not ".": ids may hold a newline, which "." would not match.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close every open connection, so clients see failures."""
        runner, self._runner = self._runner, None
        if runner is not None:
            server = runner.server
            await runner.cleanup()
            # A connection accepted while the runner shut down joins the server after its
            # connections were closed; nothing else would ever close it.
            if server is not None:
                for late in server.connections:
                    late.force_close()

    async def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down for `downtime` seconds, then serve again on the same port."""
        await self.stop()
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start()

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
        """Stop the server when the `async with` block ends."""
        await self.stop()

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
        for item in faults:
            if not isinstance(item, Fault) and not 100 <= item <= 599:
                raise ValueError(f"not an HTTP status: {item!r}")
        self._script.extend(faults)

    def reset(self) -> None:
        """Forget recorded requests, operations, the in-flight peak and scripted faults."""
        self.requests.clear()
        self.log.clear()
        self.operations.clear()
        self._script.clear()
        self.max_in_flight = self.in_flight

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking whenever a request starts or finishes.

        There is no timeout here on purpose: callers bound it (e.g. `anyio.fail_after`).
        """
        while not predicate():
            await self._changed.wait()

    async def wait_for_requests(self, n: int) -> None:
        """Wait until at least `n` requests have been accepted."""
        await self.wait_until(lambda: len(self.requests) >= n)

    async def wait_for_operations(self, n: int) -> None:
        """Wait until at least `n` operations (v1 requests or v2 ops) have been accepted."""
        await self.wait_until(lambda: len(self.operations) >= n)

    def accepted_events(self) -> list[dict[str, Any]]:
        """List the accepted events (v1 track/page/anonymous, v2 event/page/screen), in order.

        Each item has the keys ``api``, ``customer`` (the person identifier value, None for
        anonymous events), ``type``, ``name``, ``data``, ``id`` and ``timestamp``.
        """
        events: list[dict[str, Any]] = []
        for accepted in self.operations:
            op = accepted.op
            if accepted.api == "v1":
                route = _match(op["method"], op["path"])
                if not isinstance(route, _Route) or route.kind not in (
                    "event",
                    "anonymous_event",
                ):
                    continue
                body, data_key = op["body"], "data"
                customer: str | None = route.ids[0] if route.ids else None
                kind = body.get("type") or "event"
            elif op.get("action") in _EVENT_TYPES:
                body, data_key = op, "attributes"
                customer = next(iter(op["identifiers"].values()))
                kind = op["action"]
            else:
                continue
            events.append(
                {
                    "api": accepted.api,
                    "customer": customer,
                    "type": kind,
                    "name": body["name"],
                    "data": body.get(data_key),
                    "id": body.get("id"),
                    "timestamp": body.get("timestamp"),
                }
            )
        return events

    # -- request handling ----------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every `wait_until` caller so it re-checks its condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _decide_fault(self) -> tuple[Fault | int | None, int]:
        """Pick this request's fault (script first, then random) and, if needed, its status."""
        fault: Fault | int | None = None
        if self._script:
            fault = self._script.popleft()
        elif self.faults is not None:
            draw = self._rng.random()
            for candidate, probability in self.faults.weighted():
                if draw < probability:
                    fault = candidate
                    break
                draw -= probability
        if fault is Fault.SERVER_ERROR:
            return fault, self._rng.choice(_SERVER_ERROR_STATUSES)
        return fault, 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Handle any request: apply latency and faults, then route, authorise and process."""
        received_at = time.monotonic()
        fault, error_status = self._decide_fault()  # synchronous, so draws follow arrival order
        path, _, query = request.raw_path.partition("?")
        exchange = _Exchange(request.method, path, query, dict(request.headers), received_at, fault)
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
            bisect.insort(self.log, record, key=_arrival)  # keep arrival order, not finish order
            self._notify()

    async def _serve(
        self, request: web.Request, exchange: _Exchange, error_status: int
    ) -> web.StreamResponse:
        """Apply the fault decided for this request, or process it normally."""
        fault = exchange.fault
        rates = self.faults or FaultRates()
        refusal = _fault_response(fault, error_status, rates)
        if refusal is not None:
            return self._answer(exchange, refusal)
        if fault is Fault.DROP_CONNECTION:
            return _drop(request)
        if fault is Fault.SLOW:
            await asyncio.sleep(rates.slow_seconds)
            transport = request.transport
            if transport is None or transport.is_closing():
                return _drop(request)  # the client gave up; nothing was processed
        ambiguous = fault is Fault.AMBIGUOUS
        response = self._process(request, exchange, answered=not ambiguous)
        if ambiguous:
            return _drop(request)
        return self._answer(exchange, response)

    def _answer(self, exchange: _Exchange, response: web.Response) -> web.Response:
        """Note the status we answer with and pass the response through."""
        exchange.status = response.status
        return response

    def _authorized(self, request: web.Request) -> bool:
        """Check HTTP Basic credentials (standard or URL-safe base64) in constant time."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip().translate(_URLSAFE), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, self._credentials)

    def _accept(
        self, exchange: _Exchange, api: str, status: int, answered: bool, ops: list[Any]
    ) -> None:
        """Record an accepted request and its delivered operations, then wake waiters.

        An ambiguous request (`answered` false) is accepted but recorded with status 0,
        because the client never gets the answer.
        """
        self.requests.append(exchange.freeze(status if answered else 0))
        self.operations.extend(AcceptedOperation(api, op) for op in ops)
        self._notify()

    def _process(self, request: web.Request, exchange: _Exchange, answered: bool) -> web.Response:
        """Route, authorise, validate and (if valid) accept the request."""
        route = _match(exchange.method, exchange.path)
        if route is None:
            return _meta_error(404, "Not Found")
        if isinstance(route, set):
            response = _meta_error(405, "Method Not Allowed")
            response.headers["Allow"] = ", ".join(sorted(route))
            return response
        if not self._authorized(request):
            return _meta_error(401, "Unauthorized request")
        if route.api == "v1":
            return self._process_v1(route, exchange, answered)
        if route.kind == "entity":
            return self._process_entity(exchange, answered)
        return self._process_batch(exchange, answered)

    def _process_v1(self, route: _Route, exchange: _Exchange, answered: bool) -> web.Response:
        """Validate a v1 request, run the `reject` hook and accept it."""
        try:
            parsed = _validate_v1(route.kind, route.ids, exchange.body)
        except _ValidationError as problem:
            if route.kind == "merge":
                return _meta_error(400, problem.message)
            return _meta_errors(400, problem.message)
        if self.reject is not None:
            reason = self.reject(exchange.snapshot(0))
            if reason is not None:
                return _meta_errors(400, reason)
        op = {"method": exchange.method, "path": exchange.path, "body": parsed}
        self._accept(exchange, "v1", 200, answered, [op])
        return web.json_response({}, status=200)

    def _check_op(self, op: Any) -> None:
        """Validate one v2 op including its size, then ask the `reject_op` hook."""
        _check_sized_op(op)
        self._ask_reject_op(op)

    def _ask_reject_op(self, op: dict[str, Any]) -> None:
        """Turn a reason from the `reject_op` hook into a `_ValidationError`."""
        reason = None if self.reject_op is None else self.reject_op(op)
        if reason is not None:
            raise _ValidationError("", reason, "rejected")

    def _process_entity(self, exchange: _Exchange, answered: bool) -> web.Response:
        """Handle `/api/v2/entity`: one op, accepted whole or refused with a 400."""
        try:
            op = _parse_entity(exchange.body)
            self._ask_reject_op(op)
        except _ValidationError as problem:
            return _v2_error(400, problem)
        self._accept(exchange, "v2", 200, answered, [op])
        return web.json_response({}, status=200)

    def _process_batch(self, exchange: _Exchange, answered: bool) -> web.Response:
        """Handle `/api/v2/batch`: accept every valid op, report the others in a 207."""
        try:
            batch = _parse_batch(exchange.body)
        except _ValidationError as problem:
            return _v2_error(problem.status, problem)
        if self.malformed_op is not None:
            for op in batch:
                if isinstance(op, dict) and self.malformed_op(op):
                    malformed = _ValidationError("batch", "malformed operation", "parse_error")
                    return _v2_error(400, malformed)
        valid: list[Any] = []
        errors: list[dict[str, Any]] = []
        for index, op in enumerate(batch):
            try:
                self._check_op(op)
            except _ValidationError as problem:
                errors.append(
                    {
                        "batch_index": index,
                        "reason": problem.reason,
                        "field": problem.field,
                        "message": problem.message,
                    }
                )
            else:
                valid.append(op)
        status = 207 if errors else 200
        self._accept(exchange, "v2", status, answered, valid)
        return web.json_response({"errors": errors} if errors else {}, status=status)


def _arrival(record: RecordedRequest) -> float:
    """Sort key for `log`: when the request arrived."""
    return record.received_at


def _fault_response(
    fault: Fault | int | None, error_status: int, rates: FaultRates
) -> web.Response | None:
    """Build the answer for faults that refuse the request outright, else return None."""
    if isinstance(fault, int):
        return web.json_response({}, status=fault)
    if fault is Fault.SERVER_ERROR:
        return _server_error(error_status)
    if fault in (Fault.RATE_LIMITED, Fault.RATE_LIMITED_NO_HEADER):
        response = _meta_error(429, "Too Many Requests")
        if fault is Fault.RATE_LIMITED:
            response.headers["Retry-After"] = str(math.ceil(rates.retry_after))
        return response
    return None


def _server_error(status: int) -> web.Response:
    """Answer a 5xx the way it tends to arrive: JSON from the app, HTML from a proxy."""
    if status == 500:
        return _meta_error(500, "Internal Server Error")
    reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
    html = f"<html><body><h1>{status} {reason}</h1></body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering.

    The returned response is never sent: aiohttp notices the closed transport and discards
    it quietly (no traceback in the logs).
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=499)
