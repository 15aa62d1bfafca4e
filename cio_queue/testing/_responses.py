"""The answers the fake server sends: the v1 and v2 error shapes, outages and dropped calls.

Stage: outside the pipeline; the testing kit's fake Track API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ._validation import ValidationError


def meta_errors(status: int, *messages: str) -> web.Response:
    """Answer with the v1 validation error shape."""
    return web.json_response({"meta": {"errors": list(messages)}}, status=status)


def meta_error(status: int, message: str) -> web.Response:
    """Answer with the v1 single-error shape (merge, auth, routing)."""
    return web.json_response({"meta": {"error": message}}, status=status)


def v2_error(problem: ValidationError) -> web.Response:
    """Answer with the v2 whole-request error shape, with the problem's status."""
    error = {"reason": problem.reason, "field": problem.field, "message": problem.message}
    return web.json_response({"errors": [error]}, status=problem.status)


def server_error(status: int) -> web.Response:
    """Answer a 5xx the way it tends to arrive: JSON from the app, HTML from a proxy."""
    if status == 500:
        return meta_error(500, "Internal Server Error")
    reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
    html = f"<html><body><h1>{status} {reason}</h1></body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def drop(request: web.Request) -> web.Response:
    """Close the connection without answering.

    The returned response is never sent: aiohttp notices the closed transport and discards
    it quietly (no traceback in the logs).
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=499)
