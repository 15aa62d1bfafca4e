"""before_send: enrich, filter and redact every operation at enqueue, in the caller's stack."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import cio_queue
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
from cio_queue.testing import FakeTrackAPI

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
            + stats.dead_lettered + stats.spooled + stats.streamed + stats.pending
            - stats.taken)


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
                          (bad_data, r"data\.when: in before_send's result"),
                          (change_merge, "can pass or drop")):
        async with EventQueue(config(before_send=hook), sender=RecordingSender()) as queue:
            call = (queue.merge_customers("id", "1", "id", "2") if hook is change_merge
                    else queue.track("42", "ev", {"a": 1}))
            with pytest.raises(InvalidEventError, match=pattern):
                await call
        assert queue.statistics().enqueued == 0


async def test_a_timestamp_given_to_a_pageview_is_an_error_not_dropped() -> None:
    """A pageview has no timestamp: setting one in the view raises rather than vanishing."""
    def stamp(view: OperationView) -> OperationView:
        return dataclasses.replace(view, timestamp=1_700_000_000)

    sender = RecordingSender()
    async with EventQueue(config(before_send=stamp), sender=sender) as queue:
        with pytest.raises(InvalidEventError, match="timestamp: in before_send's result"):
            await queue.pageview("42", "/home")
        await queue.track("42", "ev")  # an event that has one takes it
    assert queue.statistics().enqueued == 1
    assert [element.get("timestamp") for element in elements(sender)] == [1_700_000_000]


async def test_replay_runs_the_hook_of_the_config_it_is_given(tmp_path: Path) -> None:
    """replay() enqueues each record again, so config.before_send sees it (README)."""
    path = tmp_path / "dead.jsonl"
    async with EventQueue(config(dead_letter_path=str(path)),
                          sender=RecordingSender(lambda request: 400)) as queue:
        with anyio.fail_after(10):
            await (await queue.track("42", "purchase", {"price": 9.5})).wait()
    seen: list[tuple[str, object]] = []

    def stamp(view: OperationView) -> OperationView:
        seen.append((view.kind, view.customer_id))
        return dataclasses.replace(view, attributes={**view.attributes, "replayed": True})

    async with FakeTrackAPI() as fake:
        with anyio.fail_after(30):
            stats = await cio_queue.replay(path, config(
                site_id=fake.site_id, api_key=fake.api_key, base_url=fake.url,
                before_send=stamp))
        sent = [operation.op["attributes"] for operation in fake.operations]
    assert (seen, stats.delivered, sent) == ([("track", "42")], 1,
                                             [{"price": 9.5, "replayed": True}])


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


# --- a hook that edits the view in place -------------------------------------------------
# Whatever the hook returns is validated like a fresh call, even the very view it was given
# (edited in place): a bad value is an InvalidEventError naming the hook and the field,
# raised at the call site, and nothing is queued or sent.

def set_in_place(key: str, value: object) -> Callable[[OperationView], OperationView]:
    def hook(view: OperationView) -> OperationView:
        view.attributes[key] = value
        return view
    return hook


# Each kind whose attributes the view shows, and the field its attributes are read as.
IN_PLACE_CALLS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "identify": (lambda q: q.identify("42", plan="pro"), "attributes"),
    "track": (lambda q: q.track("42", "purchase", {"price": 9.5}), "data"),
    "add_device": (lambda q: q.add_device("42", "tok", "ios", app_version="2"), "data"),
}
BAD_VALUES: dict[str, tuple[object, str]] = {
    "object": (object(), "not JSON-serialisable"),
    "surrogate": ("\ud800", "unpaired surrogate"),
    "infinity": (float("inf"), "infinite"),
    "int key": ({1: "a"}, "int key"),
}


@pytest.mark.parametrize("transport", ["batch", "v1"])
@pytest.mark.parametrize("kind", sorted(IN_PLACE_CALLS))
@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
async def test_an_invalid_value_set_in_place_raises_naming_the_hook_and_the_field(
        transport: str, kind: str, bad: str) -> None:
    call, field = IN_PLACE_CALLS[kind]
    value, reason = BAD_VALUES[bad]
    sender = RecordingSender()
    async with EventQueue(config(transport=transport, before_send=set_in_place("x", value)),
                          sender=sender) as queue:
        with pytest.raises(InvalidEventError, match=reason) as raised:
            await call(queue)
    assert raised.value.field == f"{field}.x"
    assert "before_send" in str(raised.value)
    assert queue.statistics().enqueued == 0
    assert sender.requests == []


def sent_attributes(sender: RecordingSender, transport: str, kind: str) -> dict[str, Any]:
    """The attributes (identify), data (events) or device fields that went on the wire."""
    (request,) = sender.requests
    body = json.loads(request.body)
    if transport == "batch":
        element = body["batch"][0]
        return dict(element["device"]["attributes"] if kind == "add_device"
                    else element["attributes"])
    if kind == "add_device":
        return {k: v for k, v in body["device"].items() if k not in ("id", "platform")}
    return dict(body["data"] if kind == "track" else body)


@pytest.mark.parametrize("transport", ["batch", "v1"])
@pytest.mark.parametrize("kind", sorted(IN_PLACE_CALLS))
async def test_values_set_in_place_are_sanitised_like_a_fresh_call(transport: str,
                                                                   kind: str) -> None:
    """NaN goes as null and a datetime as unix seconds, as when the caller passes them."""
    def hook(view: OperationView) -> OperationView:
        view.attributes["score"] = float("nan")
        view.attributes["seen_at"] = datetime(2024, 1, 2, tzinfo=UTC)
        return view

    sender = RecordingSender()
    async with EventQueue(config(transport=transport, before_send=hook),
                          sender=sender) as queue:
        receipt = await IN_PLACE_CALLS[kind][0](queue)
        with anyio.fail_after(5):
            await receipt.wait()
    sent = sent_attributes(sender, transport, kind)
    assert (sent["score"], sent["seen_at"]) == (None, 1_704_153_600)


async def test_a_nested_value_edited_in_place_is_validated_with_its_path() -> None:
    def hook(view: OperationView) -> OperationView:
        view.attributes["items"][1]["price"] = float("-inf")
        return view

    async with EventQueue(config(before_send=hook), sender=RecordingSender()) as queue:
        with pytest.raises(InvalidEventError, match="before_send") as raised:
            await queue.track("42", "purchase", {"items": [{"price": 1}, {"price": 2}]})
    assert raised.value.field == "data.items[1].price"


async def test_an_in_place_edit_that_keeps_the_value_equal_but_not_the_same_is_sent() -> None:
    """1, 1.0 and True are equal in Python but not in JSON: the hook's value is what goes."""
    def hook(view: OperationView) -> OperationView:
        view.attributes.update(count=1.0, flag=True, name=view.attributes["name"])
        return view

    sender = RecordingSender()
    async with EventQueue(config(before_send=hook), sender=sender) as queue:
        await queue.track("42", "ev", {"count": 1, "flag": 1, "name": "a"})
    assert b'"attributes":{"count":1.0,"flag":true,"name":"a"}' in sender.requests[0].body


@pytest.mark.parametrize("kind", ["merge_customers", "batch"])
async def test_a_kind_that_cannot_change_cannot_be_changed_in_place_either(kind: str) -> None:
    async with EventQueue(config(before_send=set_in_place("x", 1)),
                          sender=RecordingSender()) as queue:
        call = (queue.merge_customers("id", "1", "id", "2") if kind == "merge_customers"
                else queue.batch([{"type": "person", "action": "identify",
                                   "identifiers": {"id": "1"}}]))
        with pytest.raises(InvalidEventError, match="can pass or drop"):
            await call
    assert queue.statistics().enqueued == 0


async def test_the_identifiers_are_read_only() -> None:
    """The person is changed through customer_id; editing identifiers raises, never ignored."""
    def hook(view: OperationView) -> OperationView:
        view.identifiers["id"] = "43"  # type: ignore[index]
        return view

    async with EventQueue(config(before_send=hook), sender=RecordingSender()) as queue:
        with pytest.raises(InvalidEventError, match="before_send: raised TypeError"):
            await queue.track("42", "ev")
    assert queue.statistics().enqueued == 0


def test_a_sync_queue_validates_in_place_edits_in_the_callers_thread() -> None:
    """SyncEventQueue: the same validation, in the thread that called, before it returns."""
    threads: list[int] = []
    values: dict[str, object] = {"1": object(), "2": "\ud800", "3": float("inf"),
                                 "4": float("nan")}

    def hook(view: OperationView) -> OperationView:
        threads.append(threading.get_ident())
        view.attributes["x"] = values[str(view.customer_id)]
        return view

    sender = RecordingSender()
    with SyncEventQueue(config(before_send=hook), sender=sender) as queue:
        with pytest.raises(InvalidEventError, match="before_send") as raised:
            queue.identify("1", plan="pro")
        assert raised.value.field == "attributes.x"
        for customer in ("2", "3"):
            with pytest.raises(InvalidEventError, match="before_send") as raised:
                queue.track(customer, "ev", {"a": 1})
            assert raised.value.field == "data.x"
        kept = queue.track("4", "ev", {"a": 1})
        assert kept.result(timeout=10).status is OutcomeStatus.DELIVERED
    assert threads == [threading.get_ident()] * 4
    assert queue.statistics().enqueued == 1
    assert elements(sender)[0]["attributes"] == {"a": 1, "x": None}


def test_the_cost_benchmark_runs() -> None:
    """`python -m benchmarks.before_send_cost` at its smallest: a smoke test, not a timing."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.before_send_cost", "--operations", "300",
         "--rounds", "1", "--calls", "300"], cwd=root, capture_output=True, text=True,
        timeout=120, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert "hook edits the view in place" in result.stdout
