"""The Track API's rules: what the fake answers to a request that got past its faults.

Stage: outside the pipeline; the testing kit's fake Track API. :class:`TrackRules` routes
a request, checks its credentials, validates it with ``_validation`` and runs the fake's
``reject``/``reject_op``/``malformed_op`` hooks; it returns the response and what the
request delivered, which ``FakeTrackAPI`` records. It keeps no state of its own.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from ._records import Exchange, RecordedRequest
from ._responses import meta_error, meta_errors, v2_error
from ._routing import Route, match
from ._validation import ValidationError, check_op, parse_batch, parse_entity, validate_v1

__all__ = ["REGION_URLS", "Accepted", "Answer", "TrackRules"]

_URLSAFE: Final = str.maketrans("-_", "+/")  # accept URL-safe base64 credentials too (Go SDK)

REGION_URLS: Final = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a valid request delivered: its API, the status it is answered with, its ops."""

    api: str
    status: int
    ops: list[Any]


Answer = tuple[web.Response, Accepted | None]
"""A response, and what the request delivered (None: nothing, it was refused)."""


@dataclass(frozen=True, slots=True)
class TrackRules:
    """The fake's account and hooks, as they stand when a request is processed."""

    credentials: bytes
    region: str
    reject: Callable[[RecordedRequest], str | None] | None
    reject_op: Callable[[dict[str, Any]], str | None] | None
    malformed_op: Callable[[dict[str, Any]], bool] | None

    def answer(self, request: web.Request, exchange: Exchange) -> Answer:
        """Route, authorise and validate the request; say what it delivered, if valid."""
        route = match(exchange.method, exchange.path)
        if route is None:
            return meta_error(404, "Not Found"), None
        if isinstance(route, set):
            response = meta_error(405, "Method Not Allowed")
            response.headers["Allow"] = ", ".join(sorted(route))
            return response, None
        if not self._authorized(request):
            return meta_error(401, "Unauthorized request"), None
        if route.api == "v1":
            return self._process_v1(route, exchange)
        if route.kind == "entity":
            return self._process_entity(exchange)
        return self._process_batch(exchange)

    def _authorized(self, request: web.Request) -> bool:
        """Check HTTP Basic credentials (standard or URL-safe base64) in constant time."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip().translate(_URLSAFE), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, self.credentials)

    def _process_v1(self, route: Route, exchange: Exchange) -> Answer:
        """Validate a v1 request, run the `reject` hook and accept it (or say the region)."""
        if route.kind == "region":
            return web.json_response({"url": REGION_URLS[self.region], "region": self.region,
                                      "environment_id": 1}), None
        try:
            parsed = validate_v1(route.kind, route.ids, exchange.body)
        except ValidationError as problem:
            if route.kind == "merge":
                return meta_error(400, problem.message), None
            return meta_errors(400, problem.message), None
        if self.reject is not None:
            reason = self.reject(exchange.snapshot(0))
            if reason is not None:
                return meta_errors(400, reason), None
        op = {"method": exchange.method, "path": exchange.path, "body": parsed}
        return web.json_response({}, status=200), Accepted("v1", 200, [op])

    def _check_op(self, op: Any) -> None:
        """Validate one v2 op including its size, then ask the `reject_op` hook."""
        check_op(op)
        self._ask_reject_op(op)

    def _ask_reject_op(self, op: dict[str, Any]) -> None:
        """Turn a reason from the `reject_op` hook into a `ValidationError`."""
        reason = None if self.reject_op is None else self.reject_op(op)
        if reason is not None:
            raise ValidationError("", reason, "rejected")

    def _process_entity(self, exchange: Exchange) -> Answer:
        """Handle `/api/v2/entity`: one op, accepted whole or refused with a 400."""
        try:
            op = parse_entity(exchange.body)
            self._ask_reject_op(op)
        except ValidationError as problem:
            return v2_error(problem), None
        return web.json_response({}, status=200), Accepted("v2", 200, [op])

    def _process_batch(self, exchange: Exchange) -> Answer:
        """Handle `/api/v2/batch`: accept every valid op, report the others in a 207."""
        try:
            batch = parse_batch(exchange.body)
            self._ask_malformed_op(batch)
        except ValidationError as problem:
            return v2_error(problem), None
        valid: list[Any] = []
        errors: list[dict[str, Any]] = []
        for index, op in enumerate(batch):
            try:
                self._check_op(op)
            except ValidationError as problem:
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
        response = web.json_response({"errors": errors} if errors else {}, status=status)
        return response, Accepted("v2", status, valid)

    def _ask_malformed_op(self, batch: list[Any]) -> None:
        """Fail the whole batch if the `malformed_op` hook calls one of its ops unparseable."""
        if self.malformed_op is None:
            return
        if any(isinstance(op, dict) and self.malformed_op(op) for op in batch):
            raise ValidationError("batch", "malformed operation", "parse_error")
