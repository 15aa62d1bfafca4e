"""before_send: enrich, filter and redact every operation at enqueue, in the caller's stack."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import anyio
import pytest

from cio_queue import (
    EventQueue,
    InvalidEventError,
    OperationView,
    Outcome,
    OutcomeStatus,
    QueueConfig,
    RetryPolicy,
    Statistics,
    SyncEventQueue,
)

from .recording import RecordingSender

pytestmark = pytest.mark.anyio


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": "http://127.0.0.1:9",
        "flush_interval": 0.01, "rate_limit": None, "retry": RetryPolicy(attempts=1),
        "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped + stats.filtered
            + stats.dead_lettered + stats.spooled + stats.pending)


def enrich(view: OperationView) -> OperationView:
    """Add the app's version to every event and every identify."""
    if view.kind in ("track", "pageview", "identify"):
        return dataclasses.replace(view, attributes={**view.attributes, "app_version": "1.2"})
    return view


def elements(sender: RecordingSender) -> list[dict[str, Any]]:
    return [op for r in sender.requests for op in json.loads(r.body)["batch"]]


@pytest.mark.parametrize("transport", ["batch", "v1"])
async def test_before_send_can_add_an_attribute_to_everything(transport: str) -> None:
    """The hook's changes are what is sent, validated like the caller's own input."""
    sender = RecordingSender()
    async with EventQueue(config(transport=transport, before_send=enrich),
                          sender=sender) as queue:
        await queue.identify("42", plan="pro")
        await queue.track("42", "purchase", {"price": 9.5})
        await queue.delete("43")
    bodies = [json.loads(r.body) for r in sender.requests]
    if transport == "batch":
        attributes = [op.get("attributes") for op in bodies[0]["batch"]]
        assert attributes == [{"plan": "pro", "app_version": "1.2"},
                              {"price": 9.5, "app_version": "1.2"}, None]
    else:
        assert bodies[0] == {"plan": "pro", "app_version": "1.2"}
        assert bodies[1]["data"] == {"price": 9.5, "app_version": "1.2"}


async def test_before_send_can_drop_test_users_and_they_count_as_filtered() -> None:
    """None drops the operation: filtered in the receipt, on_outcome and the statistics."""
    outcomes: list[Outcome] = []
    sender = RecordingSender()

    def no_test_users(view: OperationView) -> OperationView | None:
        return None if str(view.customer_id).startswith("test-") else view

    async with EventQueue(config(before_send=no_test_users), sender=sender,
                          on_outcome=outcomes.append) as queue:
        dropped = await queue.track("test-1", "ev")
        kept = await queue.track("42", "ev")
        with anyio.fail_after(5):
            await kept.wait()
    stats = queue.statistics()
    assert dropped.outcome is not None
    assert (dropped.outcome.status, dropped.outcome.reason) == (OutcomeStatus.FILTERED,
                                                                "before_send")
    assert (stats.enqueued, stats.filtered, stats.delivered) == (2, 1, 1)
    assert stats.enqueued == settled_sum(stats)
    assert [o.status for o in outcomes].count(OutcomeStatus.FILTERED) == 1
    assert [e["identifiers"] for e in elements(sender)] == [{"id": "42"}]


async def test_before_send_can_redact_a_field() -> None:
    """A redacted attribute never leaves the process."""
    sender = RecordingSender()

    def redact(view: OperationView) -> OperationView:
        attributes = {k: v for k, v in view.attributes.items() if k != "ssn"}
        return dataclasses.replace(view, attributes=attributes)

    async with EventQueue(config(before_send=redact), sender=sender) as queue:
        await queue.identify("42", plan="pro", ssn="123-45-6789")
    assert elements(sender)[0]["attributes"] == {"plan": "pro"}
    assert b"123-45-6789" not in b"".join(r.body for r in sender.requests)


async def test_the_view_is_the_documented_shape() -> None:
    """Each kind shows its person, name, attributes, timestamp and id."""
    seen: list[OperationView] = []

    def watch(view: OperationView) -> OperationView:
        seen.append(view)
        return view

    async with EventQueue(config(before_send=watch), sender=RecordingSender()) as queue:
        await queue.track("ada@example.com", "purchase", {"price": 1}, id="E1",
                          timestamp=1_700_000_000)
        await queue.add_device("cio_abc", "tok", "ios", app_version="2")
        await queue.merge_customers("id", "1", "id", "2")
    assert seen[0] == OperationView("track", "ada@example.com", {"email": "ada@example.com"},
                                    "purchase", {"price": 1}, 1_700_000_000, "E1")
    assert seen[1] == OperationView("add_device", "cio_abc", {"cio_id": "abc"}, None,
                                    {"app_version": "2"}, None, None)
    assert (seen[2].kind, seen[2].identifiers) == ("merge_customers", {})


async def test_a_failing_hook_is_an_invalid_event_error_naming_it() -> None:
    """An exception in the hook, or a bad return, raises at the call site; nothing is queued."""
    def broken(view: OperationView) -> OperationView:
        raise KeyError("oops")

    def wrong(view: OperationView) -> Any:
        return {"kind": view.kind}

    def bad_data(view: OperationView) -> OperationView:
        return dataclasses.replace(view, attributes={"when": object()})

    def change_merge(view: OperationView) -> OperationView:
        return dataclasses.replace(view, customer_id="3")

    for hook, pattern in ((broken, "before_send: raised KeyError"),
                          (wrong, "before_send: must return"),
                          (bad_data, r"data\.when"),
                          (change_merge, "can pass or drop")):
        async with EventQueue(config(before_send=hook), sender=RecordingSender()) as queue:
            call = (queue.merge_customers("id", "1", "id", "2") if hook is change_merge
                    else queue.track("42", "ev", {"a": 1}))
            with pytest.raises(InvalidEventError, match=pattern):
                await call
        assert queue.statistics().enqueued == 0


def test_a_sync_queue_runs_the_hook_in_the_callers_thread() -> None:
    """SyncEventQueue: the hook's errors raise at the call, its drops count as filtered."""
    def hook(view: OperationView) -> OperationView | None:
        if view.customer_id == "boom":
            raise ValueError("no")
        return None if view.customer_id == "drop" else view

    with SyncEventQueue(config(before_send=hook), sender=RecordingSender()) as queue:
        with pytest.raises(InvalidEventError, match="before_send"):
            queue.track("boom", "ev")
        dropped = queue.track("drop", "ev")
        kept = queue.track("42", "ev")
        assert kept.result(timeout=10).status is OutcomeStatus.DELIVERED
    assert dropped.result(timeout=10).status is OutcomeStatus.FILTERED
    stats = queue.statistics()
    assert (stats.enqueued, stats.filtered, stats.delivered) == (2, 1, 1)
