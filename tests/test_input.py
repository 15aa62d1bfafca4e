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


# --- lone surrogates (issue item 8) ---------------------------------------------------------

class Text(str):
    """A str subclass: cleaned like str, so checked like str."""

    __slots__ = ()


SURROGATE_CALLS: list[tuple[str, Build, tuple[Any, ...]]] = [
    ("data.items[2].name", ops.track,
     ("42", "ev", {"items": [{}, {"name": "ok"}, {"name": "bad \ud800"}]}, None, None)),
    ("data", ops.track, ("42", "ev", {"\udc00": 1}, None, None)),
    ("data.a[0]", ops.track, ("42", "ev", {"a": [{"k\udfff": 1}]}, None, None)),
    ("data.t[1]", ops.track, ("42", "ev", {"t": ("fine", Text("\ud83d"))}, None, None)),
    ("data.x", ops.track_anonymous, ("anon", "ev", {"x": "\ud800"}, None, None)),
    ("attributes.nested.x", ops.identify, ("42", {"nested": {"x": "\udfff"}})),
    ("attributes.plain", ops.identify, ("42", {"plain": "\ud800"})),
    ("attributes", ops.identify, ("42", {"name\ud800": 1})),
    ("data.referrer", ops.pageview, ("42", "/", {"referrer": ["\ud800"][0]})),
    ("data.deep", ops.backfill, ("42", "ev", 1_700_000_000, {"deep": {"\ud800": 1}})),
    ("data.meta.v", ops.add_device, ("42", "tok", "ios", {"meta": {"v": "\ud800"}})),
    ("data", ops.add_device, ("42", "tok", "ios", {"\ud800": "key"})),
]


@pytest.mark.parametrize(("field", "build", "args"), SURROGATE_CALLS,
                         ids=[c[0] for c in SURROGATE_CALLS])
def test_lone_surrogates_are_refused_at_any_depth(field: str, build: Build,
                                                  args: tuple[Any, ...]) -> None:
    """A lone surrogate in a value or key at any depth is refused, naming its path."""
    error = _refused(build, *args)
    assert error.field == field
    assert "surrogate" in str(error)
    # The error itself is valid text: a log handler can write it.
    str(error).encode("utf-8")


@pytest.mark.parametrize("transport", ["v1", "batch"])
def test_the_queue_never_sends_a_lone_surrogate(transport: Transport) -> None:
    """Through EventQueue a nested surrogate fails at the call site, on either transport."""
    async def run() -> RecordingSender:
        sender = RecordingSender()
        async with EventQueue(_config(transport), sender=sender) as queue:
            with pytest.raises(InvalidEventError, match="surrogate"):
                await queue.track("42", "ev", {"items": [{"name": "\ud800"}]})
            with pytest.raises(InvalidEventError, match="surrogate"):
                await queue.identify("42", **{"name\udc00": True})
        return sender

    assert asyncio.run(run()).requests == []


def test_paired_surrogates_and_other_unicode_are_accepted() -> None:
    """Real astral characters (a valid pair once encoded) and other non-ASCII text pass."""
    op = ops.track("42", "ev", {"emoji": "\U0001F600", "漢字": ["ünï©ødé"]}, None, None)
    assert b"\\ud83d\\ude00" in op.seal(batch=False).body
