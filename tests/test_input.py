"""Call-site input hardening: what the builders and EventQueue refuse before enqueueing.

Pure unit tests of the builders in ``_operations`` plus in-memory component tests through
``EventQueue`` with a recording sender: bad input must fail in the caller's stack with an
``InvalidEventError`` naming the field, and nothing else may escape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from cio_queue import EventQueue, InvalidEventError, QueueConfig, RetryPolicy, Transport
from cio_queue import _operations as ops

from .recording import RecordingSender

Build = Callable[..., ops.Operation]


def _config(transport: Transport = "batch") -> QueueConfig:
    return QueueConfig(site_id="fake-site", api_key="fake-key", base_url="http://127.0.0.1:9",
                       transport=transport, flush_interval=0.01, rate_limit=None,
                       retry=RetryPolicy(attempts=1), shutdown_timeout=5.0)


def _refused(build: Build, *args: Any) -> InvalidEventError:
    """Build and seal for each transport; both must raise the same InvalidEventError."""
    errors = []
    for batch in (False, True):
        with pytest.raises(InvalidEventError) as info:
            build(*args).seal(batch=batch)
        errors.append(info.value)
    assert str(errors[0]) == str(errors[1])
    return errors[0]


# --- dot segments (issue item 7) ------------------------------------------------------------

PATH_ID_CALLS: list[tuple[str, Build, Callable[[str], tuple[Any, ...]]]] = [
    ("id", ops.identify, lambda i: (i, {})),
    ("customer_id", ops.track, lambda i: (i, "ev", None, None, None)),
    ("customer_id", ops.pageview, lambda i: (i, "/", {})),
    ("customer_id", ops.backfill, lambda i: (i, "ev", 1_700_000_000, {})),
    ("customer_id", ops.delete, lambda i: (i,)),
    ("customer_id", ops.suppress, lambda i: (i,)),
    ("customer_id", ops.unsuppress, lambda i: (i,)),
    ("customer_id", ops.add_device, lambda i: (i, "tok", "ios", {})),
    ("customer_id", ops.delete_device, lambda i: (i, "tok")),
    ("device_id", ops.delete_device, lambda i: ("42", i)),
    ("device_id", ops.add_device, lambda i: ("42", i, "ios", {})),
]


@pytest.mark.parametrize("segment", [".", ".."])
@pytest.mark.parametrize(("field", "build", "args"), PATH_ID_CALLS,
                         ids=[f"{c[1].__name__}-{c[0]}" for c in PATH_ID_CALLS])
def test_dot_segment_ids_are_refused(segment: str, field: str, build: Build,
                                     args: Callable[[str], tuple[Any, ...]]) -> None:
    """An id that would be a '.' or '..' path segment is refused: a proxy would resolve it."""
    error = _refused(build, *args(segment))
    assert error.field == field
    assert "segment" in str(error)


@pytest.mark.parametrize("text", ["...", ".a", "a.", "a..b", " .. ", "%2E%2E", "cio_.."])
def test_ids_that_merely_contain_dots_are_accepted(text: str) -> None:
    """Only the exact dot segments are refused; other ids with dots travel percent-encoded."""
    op = ops.delete_device(text, text).seal(batch=False)
    assert op.path.count("/") == 4


def test_the_queue_refuses_a_dot_segment_device_id_before_enqueueing() -> None:
    """delete_device("42", "..") fails at the call site and sends nothing."""
    async def run() -> RecordingSender:
        sender = RecordingSender()
        async with EventQueue(_config("v1"), sender=sender) as queue:
            with pytest.raises(InvalidEventError, match="device_id"):
                await queue.delete_device("42", "..")
            assert queue.statistics().enqueued == 0
        return sender

    assert asyncio.run(run()).requests == []
