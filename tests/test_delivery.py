"""What the courier and the dispatcher decide: bounded 429s, bad credentials, per-person order.

Component tests with an in-memory sender, plus the fake Track API where the wire matters.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

import cio_queue
from cio_queue import (
    EventQueue,
    OutcomeStatus,
    QueueConfig,
    Request,
    Response,
    RetryPolicy,
)
from cio_queue.testing import FakeTrackAPI

from .recording import RecordingSender

pytestmark = pytest.mark.anyio


def config(**overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": "site", "api_key": "key", "base_url": "http://127.0.0.1:9",
        "transport": "batch", "flush_interval": 0.01, "rate_limit": None,
        "retry": RetryPolicy(attempts=5, wait_initial=0.01, wait_max=0.01, wait_jitter=0,
                             timeout=30),
        "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


# --- 429 and Retry-After --------------------------------------------------------------------

async def test_retry_after_zero_on_every_answer_is_bounded() -> None:
    """A server answering 429 with Retry-After: 0 for ever: few requests, then failed."""
    sender = RecordingSender(lambda r: Response(429, {"Retry-After": "0"}, b""))
    async with EventQueue(config(retry=RetryPolicy(attempts=3, timeout=5)),
                          sender=sender) as queue:
        receipt = await queue.track("42", "ev")
        with anyio.fail_after(20):
            outcome = await receipt.wait()
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.reason == "rate_limited"
    policy = RetryPolicy()
    assert len(sender.requests) == policy.throttled_attempts
    assert queue.statistics().rate_limited == policy.throttled_attempts


async def test_a_zero_retry_after_still_waits_a_little() -> None:
    """Retry-After: 0 is not a licence to hammer: the next request waits at least a floor."""
    sent: list[float] = []

    def answer(request: Request) -> Response:
        sent.append(anyio.current_time())
        status = 429 if len(sent) < 3 else 200
        return Response(status, {"Retry-After": "0"}, b"{}")

    sender = RecordingSender(answer)
    async with EventQueue(config(), sender=sender) as queue:
        receipt = await queue.track("42", "ev")
        with anyio.fail_after(10):
            assert (await receipt.wait()).status is OutcomeStatus.DELIVERED
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(gap >= cio_queue.RetryPolicy().retry_after_min * 0.99 for gap in gaps), gaps


@pytest.mark.parametrize("header", [
    "Wed, 21 Oct 99999999999 07:28:00 GMT",  # beyond any datetime
    "Fri, 31 Dec 9999 23:59:59 GMT",  # far in the future: clamped
    "soon", "-5", "1e400", "NaN",
])
async def test_a_strange_retry_after_is_retried_not_fatal(header: str) -> None:
    """A garbled, negative or far-future Retry-After never fails an operation at once."""
    sender = RecordingSender()
    sender.script.append(Response(503, {"Retry-After": header}, b""))
    policy = RetryPolicy(attempts=3, wait_initial=0.01, wait_jitter=0, retry_after_max=0.2)
    async with EventQueue(config(retry=policy), sender=sender) as queue:
        receipt = await queue.track("42", "ev")
        with anyio.fail_after(10):
            outcome = await receipt.wait()
    assert outcome.status is OutcomeStatus.DELIVERED
    assert outcome.attempts == 2


# --- credentials -----------------------------------------------------------------------------

async def test_bad_credentials_keep_the_operations_for_a_replay_and_say_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """401s end every operation failed as unauthorized, in the file, with one error log."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI() as fake:
        wrong = config(site_id=fake.site_id, api_key="not-the-key", base_url=fake.url,
                       dead_letter_path=path, batch_size=10)
        with caplog.at_level(logging.INFO, logger="cio_queue"), anyio.fail_after(20):
            async with EventQueue(wrong) as queue:
                receipts = [await queue.track(f"c{i}", "ev") for i in range(30)]
                await queue.flush()
        stats = queue.statistics()
        assert (stats.failed, stats.rejected, stats.delivered) == (30, 0, 0)
        assert stats.unauthorized >= 1
        assert {r.outcome.reason for r in receipts if r.outcome} == {"unauthorized"}
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "unauthorized" in errors[0]
        assert "api_key" in errors[0]
        assert "region" in errors[0]
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert {r["reason"] for r in records} == {"unauthorized"}
        assert "not-the-key" not in path.read_text()
        # With the key fixed, a replay delivers them all.
        with anyio.fail_after(20):
            replayed = await cio_queue.replay(path, config(
                site_id=fake.site_id, api_key=fake.api_key, base_url=fake.url))
    assert replayed.delivered == 30


# --- per-person order ------------------------------------------------------------------------

def people(request: Request) -> list[tuple[str, Any]]:
    """(person, what) for each operation a request carries."""
    if request.path == "/api/v2/batch":
        ops = json.loads(request.body)["batch"]
        return [(json.dumps(op.get("identifiers") or op.get("primary")),
                 op.get("attributes", {}).get("plan", op["action"])) for op in ops]
    return [(request.path.split("/")[4], json.loads(request.body).get("plan"))]


@pytest.mark.parametrize("transport", ["v1", "batch"])
async def test_a_retried_identify_is_never_overtaken_by_a_later_one(transport: str) -> None:
    """identify(plan=a) fails once; identify(plan=b) of the same person waits for it."""
    sender = RecordingSender()
    sender.script.append(503)  # the first request: plan "a"
    policy = RetryPolicy(attempts=3, wait_initial=0.3, wait_jitter=0, timeout=30)
    async with EventQueue(config(transport=transport, batch_size=1, retry=policy),
                          sender=sender) as queue:
        first = await queue.identify("42", plan="a")
        with anyio.fail_after(5):
            await sender.wait_for(1)
        second = await queue.identify("42", plan="b")
        with anyio.fail_after(10):
            await first.wait()
            await second.wait()
    sent = [what for request in sender.requests for _, what in people(request)]
    assert sent == ["a", "a", "b"]  # b was not sent while a waited to retry


async def test_other_people_are_not_held_up_by_one_persons_retry() -> None:
    """While one person's identify waits to retry, other people's operations go out."""
    sender = RecordingSender(lambda r: 503 if b'"plan":"stuck"' in r.body else 200)
    policy = RetryPolicy(attempts=3, wait_initial=30, wait_jitter=0, timeout=120)
    async with EventQueue(config(batch_size=1, retry=policy, shutdown_timeout=0.2),
                          sender=sender) as queue:
        await queue.identify("42", plan="stuck")
        held = await queue.identify("42", plan="later")
        others = [await queue.identify(f"p{i}", plan="x") for i in range(20)]
        with anyio.fail_after(10):
            for receipt in others:
                assert (await receipt.wait()).status is OutcomeStatus.DELIVERED
        assert not held.done()
    # At the deadline the held identify is stranded with the one it waited for.
    assert held.outcome is not None
    assert held.outcome.reason == "shutdown_deadline"
    assert not any(what == "later" for r in sender.requests for _, what in people(r))


async def test_a_merge_waits_for_both_people_and_they_wait_for_it() -> None:
    """merge(42 <- 7) waits for 42's retrying identify; 7's later identify waits for the merge."""
    sender = RecordingSender()
    sender.script.append(503)
    policy = RetryPolicy(attempts=3, wait_initial=0.3, wait_jitter=0, timeout=30)
    async with EventQueue(config(batch_size=1, retry=policy), sender=sender) as queue:
        receipts = [await queue.identify("42", plan="a")]
        with anyio.fail_after(5):
            await sender.wait_for(1)
        receipts.append(await queue.merge_customers("id", "42", "id", "7"))
        receipts.append(await queue.identify("7", plan="c"))
        with anyio.fail_after(10):
            for receipt in receipts:
                await receipt.wait()
    sent = [what for request in sender.requests for _, what in people(request)]
    assert sent == ["a", "a", "merge", "c"]


async def test_events_are_not_held_back_by_a_persons_retry() -> None:
    """Events carry their own time and are not ordered: they never wait for an identify."""
    sender = RecordingSender()
    sender.script.append(503)
    policy = RetryPolicy(attempts=3, wait_initial=0.5, wait_jitter=0, timeout=30)
    async with EventQueue(config(batch_size=1, retry=policy), sender=sender) as queue:
        identify = await queue.identify("42", plan="a")
        with anyio.fail_after(5):
            await sender.wait_for(1)
        event = await queue.track("42", "clicked")
        with anyio.fail_after(10):
            await event.wait()
            assert not identify.done()  # the event went out while the identify backed off
            await identify.wait()
    sent = [what for request in sender.requests for _, what in people(request)]
    assert sent.index("event") < sent.index("a", 1)  # the event went out during the backoff


async def test_without_per_person_order_a_later_identify_may_overtake() -> None:
    """order_per_person=False: the second identify goes out while the first backs off."""
    sender = RecordingSender()
    sender.script.append(503)
    policy = RetryPolicy(attempts=3, wait_initial=0.5, wait_jitter=0, timeout=30)
    async with EventQueue(config(batch_size=1, retry=policy, order_per_person=False),
                          sender=sender) as queue:
        first = await queue.identify("42", plan="a")
        with anyio.fail_after(5):
            await sender.wait_for(1)
        second = await queue.identify("42", plan="b")
        with anyio.fail_after(10):
            await second.wait()
            assert not first.done()
            await first.wait()
    sent = [what for request in sender.requests for _, what in people(request)]
    assert sent == ["a", "b", "a"]
