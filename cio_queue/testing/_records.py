"""What the fake server records: each request it saw and each operation it accepted.

Stage: outside the pipeline; the testing kit's fake Track API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._faults import Fault
from ._routing import Route, match
from ._validation import EVENT_TYPES


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


def arrival(record: RecordedRequest) -> float:
    """Sort key for the server's log: when the request arrived."""
    return record.received_at


@dataclass(slots=True)
class Exchange:
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


def event_summary(accepted: AcceptedOperation) -> dict[str, Any] | None:
    """Normalise an accepted v1 or v2 event for `FakeTrackAPI.accepted_events`, else None."""
    op = accepted.op
    if accepted.api == "v1":
        route = match(op["method"], op["path"])
        if not isinstance(route, Route) or route.kind not in ("event", "anonymous_event"):
            return None
        body, data_key = op["body"], "data"
        customer: str | None = route.ids[0] if route.ids else None
        kind = body.get("type") or "event"
    elif op.get("type") == "person" and op.get("action") in EVENT_TYPES:
        body, data_key = op, "attributes"
        customer = next(iter(op["identifiers"].values()))
        kind = op["action"]
    else:
        return None
    return {
        "api": accepted.api,
        "customer": customer,
        "type": kind,
        "name": body["name"],
        "data": body.get(data_key),
        "id": body.get("id"),
        "timestamp": body.get("timestamp"),
    }
