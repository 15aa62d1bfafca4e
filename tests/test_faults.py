"""Integration tests over real HTTP: no accepted operation is ever lost, even under faults.

Every test talks to a FakeTrackAPI on 127.0.0.1 through the real aiohttp sender. Where a
test needs to know what the client saw, it wraps that sender in ObservedSender, which only
notes each attempt's answer and passes everything through.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.lowlevel
import pytest

import cio_queue
from cio_queue import (
    EventQueue,
    HttpSender,
    Outcome,
    OutcomeStatus,
    QueueConfig,
    Receipt,
    Request,
    Response,
    RetryPolicy,
    Statistics,
    TransportError,
)
from cio_queue.testing import FakeTrackAPI, Fault, FaultRates

pytestmark = pytest.mark.anyio

TRANSPORTS = ["v1", "batch"]
QUICK_RETRY = RetryPolicy(attempts=50, timeout=60, wait_initial=0.005, wait_max=0.1,
                          wait_jitter=0.005, retry_after_max=0.01)


def config(url: str, **overrides: Any) -> QueueConfig:
    """A config for the FakeTrackAPI at ``url`` (default credentials), tuned for speed."""
    values: dict[str, Any] = {
        "site_id": "fake-site", "api_key": "fake-key", "base_url": url,
        "rate_limit": None, "flush_interval": 0.01, "request_timeout": 5.0,
        "retry": QUICK_RETRY, "shutdown_timeout": 10.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped
            + stats.dead_lettered + stats.pending)


# --- telling operations apart in what the server and the client saw -------------------------

def customer_of(path: str) -> str:
    """The person a v1 path (``/api/v1/customers/{id}...``) is about, decoded."""
    parts = path.split("/")
    assert len(parts) > 4, path
    assert parts[3] == "customers", path
    return unquote(parts[4])


def element_key(element: dict[str, Any]) -> str:
    """The person a v2 batch element is about (every test uses plain ids)."""
    return str(next(iter(element["identifiers"].values())))


def request_keys(path: str, body: bytes) -> list[str]:
    """The people whose operations a request carries, in order."""
    if path.endswith("/api/v2/batch"):
        return [element_key(e) for e in json.loads(body)["batch"]]
    return [customer_of(path)]


def accepted_by_key(fake: FakeTrackAPI) -> dict[str, list[dict[str, Any]]]:
    """Every operation the server accepted (ambiguous ones too), grouped by person.

    Each copy is normalised to ``{"name": ..., "id": ...}`` (None where it has none).
    """
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for accepted in fake.operations:
        op = accepted.op
        if accepted.api == "v1":
            body = op["body"] if isinstance(op["body"], dict) else {}
            grouped[customer_of(op["path"])].append({"name": body.get("name"),
                                                     "id": body.get("id")})
        else:
            grouped[element_key(op)].append({"name": op.get("name"), "id": op.get("id")})
    return grouped


@dataclass
class Attempt:
    """One attempt as the client saw it: the request and its response (None: no answer)."""

    request: Request
    response: Response | None


class ObservedSender:
    """The real HttpSender, noting each attempt's answer; it changes nothing."""

    def __init__(self, cfg: QueueConfig) -> None:
        self._http = HttpSender(cfg)
        self.attempts: list[Attempt] = []
        self.sent_at: list[float] = []
        self._changed = anyio.Event()

    async def send(self, request: Request) -> Response:
        """Send through the real HttpSender and note what came back."""
        self.sent_at.append(time.monotonic())
        try:
            response = await self._http.send(request)
        except TransportError:
            self._note(Attempt(request, None))
            raise
        self._note(Attempt(request, response))
        return response

    async def aclose(self) -> None:
        """Close the real sender."""
        await self._http.aclose()

    def _note(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_attempts(self, count: int) -> None:
        """Wait until ``count`` attempts have finished (callers bound the wait)."""
        while len(self.attempts) < count:
            await self._changed.wait()

    def answers_by_key(self) -> dict[str, list[str]]:
        """Per person, what each attempt got: ok, rejected, retry or lost (no answer)."""
        answers: dict[str, list[str]] = defaultdict(list)
        for attempt in self.attempts:
            keys = request_keys(attempt.request.path, attempt.request.body)
            response = attempt.response
            if response is None:
                verdicts = ["lost"] * len(keys)
            elif response.status == 207:
                listed = {e["batch_index"] for e in json.loads(response.body)["errors"]}
                verdicts = ["rejected" if i in listed else "ok" for i in range(len(keys))]
            elif 200 <= response.status < 300:
                verdicts = ["ok"] * len(keys)
            elif response.status in (408, 429) or response.status >= 500:
                verdicts = ["retry"] * len(keys)
            else:
                verdicts = ["rejected"] * len(keys)
            for key, verdict in zip(keys, verdicts, strict=True):
                answers[key].append(verdict)
        return answers


def is_poison(name: object) -> bool:
    return isinstance(name, str) and name.startswith("poison")


def reject_poison(record: Any) -> str | None:
    """The fake's v1 ``reject`` hook: refuse events named ``poison...``."""
    body = record.json
    return "poisoned event" if isinstance(body, dict) and is_poison(body.get("name")) else None


def reject_poison_op(op: dict[str, Any]) -> str | None:
    """The fake's v2 ``reject_op`` hook: refuse events named ``poison...``."""
    return "poisoned event" if is_poison(op.get("name")) else None


def poison_fake(**kwargs: Any) -> FakeTrackAPI:
    return FakeTrackAPI(reject=reject_poison, reject_op=reject_poison_op, **kwargs)


async def wait_for_operations(fake: FakeTrackAPI, count: int) -> None:
    """Wait until the server has accepted ``count`` operations (callers bound the wait)."""
    await fake.wait_until(lambda: len(fake.operations) >= count)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def enqueue_mixed(queue: EventQueue, count: int, poison_every: int = 0,
                        ) -> dict[str, Receipt]:
    """Enqueue ``count`` operations, one person each, mostly tracks; keyed by person."""
    receipts: dict[str, Receipt] = {}
    for i in range(count):
        if poison_every and i % poison_every == poison_every // 2:
            key = f"p{i}"
            receipts[key] = await queue.track(key, f"poison-{i}", {"n": i})
        elif i % 10 == 3:
            key = f"u{i}"
            receipts[key] = await queue.identify(key, n=i, plan="pro")
        elif i % 10 == 6:
            key = f"v{i}"
            receipts[key] = await queue.pageview(key, f"/page/{i}", ref="x")
        else:
            key = f"c{i}"
            receipts[key] = await queue.track(key, f"ev-{i}", {"n": i})
    return receipts


# --- 1. chaos ---------------------------------------------------------------------------------

CHAOS_OPERATIONS = 20_000
CHAOS_V1_OPERATIONS = 5_000
"""v1 sends one request per operation: 5,000 of them are five times the batch run's
requests (20,000 operations in batches of 20 make about 1,000), in a fifth of the time
20,000 would take."""
CHAOS_TIMEOUT = 1.0
CHAOS_RATES = FaultRates(server_error=0.15, rate_limited=0.10, drop_connection=0.05,
                         ambiguous=0.03, slow=0.02, retry_after=0.05,
                         slow_seconds=CHAOS_TIMEOUT + 0.3)


@pytest.mark.parametrize(("transport", "batch_size", "operations"),
                         [("v1", 100, CHAOS_V1_OPERATIONS), ("batch", 20, CHAOS_OPERATIONS)])
async def test_chaos_every_accepted_operation_is_delivered_or_rejected(
        transport: str, batch_size: int, operations: int) -> None:
    """Thousands of operations under random faults and two restarts: each delivered or rejected.

    20,000 with the batch transport, 5,000 (so 5,000 requests and more) with v1.
    """
    fake = poison_fake(faults=CHAOS_RATES, seed=20240611)
    receipts: dict[str, Receipt] = {}
    restarts = 0
    async with fake:
        cfg = config(fake.url, transport=transport, request_timeout=CHAOS_TIMEOUT,
                     max_concurrency=50, batch_size=batch_size, flush_interval=0.01,
                     rate_limited_pause=0.01, retry=RetryPolicy(
                         attempts=50, timeout=120, wait_initial=0.005, wait_max=0.1,
                         wait_jitter=0.005, retry_after_max=0.01),
                     shutdown_timeout=120, max_queue_size=operations, overflow="block")
        sender = ObservedSender(cfg)
        queue = EventQueue(cfg, sender=sender)

        async def produce() -> None:
            for i in range(operations):
                if i % 100 == 7:
                    key = f"p{i}"
                    receipts[key] = await queue.track(key, f"poison-{i}", {"n": i})
                elif i % 10 == 3:
                    key = f"u{i}"
                    receipts[key] = await queue.identify(key, n=i)
                else:
                    key = f"c{i}"
                    receipts[key] = await queue.track(key, f"ev-{i}", {"n": i})
                if i % 200 == 0:
                    await anyio.lowlevel.checkpoint()  # let the flusher and senders run

        async def restart_twice() -> None:
            nonlocal restarts
            for fraction in (0.3, 0.6):
                await wait_for_operations(fake, int(operations * fraction))
                await fake.restart(downtime=0.3)
                restarts += 1

        with anyio.fail_after(150):
            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_twice)
                await produce()
            await queue.flush()
            stats = await queue.aclose()
    poison = {key for key in receipts if key.startswith("p")}

    assert restarts == 2
    assert len(receipts) == stats.enqueued == operations
    assert stats.enqueued == settled_sum(stats)
    assert (stats.pending, stats.failed, stats.dropped, stats.dead_lettered) == (0, 0, 0, 0)
    assert stats.rejected == len(poison) == operations // 100
    assert stats.delivered == operations - len(poison)
    expected = {key: OutcomeStatus.REJECTED if key in poison else OutcomeStatus.DELIVERED
                for key in receipts}
    assert {key: r.outcome.status if r.outcome else None
            for key, r in receipts.items()} == expected

    # The faults really happened.
    faults = Counter(record.fault for record in fake.log)
    assert {"server_error", "rate_limited", "drop_connection", "ambiguous", "slow"} <= set(faults)
    assert stats.rate_limited > 0

    accepted = accepted_by_key(fake)
    answers = sender.answers_by_key()
    ambiguous_at_server: Counter[str] = Counter()
    refused_at_server: Counter[str] = Counter()
    for record in fake.log:
        if record.fault == "ambiguous":
            ambiguous_at_server.update(request_keys(record.path, record.body))
        elif record.status in (400, 207):  # a 207 refuses exactly the poison it carries
            refused_at_server.update(k for k in request_keys(record.path, record.body)
                                     if k in poison)
    assert set(accepted) == set(receipts) - poison
    for key in poison:
        # Refused exactly once as far as the client knows, and never sent again after.
        assert answers[key].count("rejected") == 1, (key, answers[key])
        assert answers[key][-1] == "rejected", (key, answers[key])
        assert "ok" not in answers[key]
        # The server refused it once, or again only after a refusal the client never got.
        assert 1 <= refused_at_server[key] <= 1 + answers[key].count("lost"), key
    for key, copies in accepted.items():
        assert answers[key].count("ok") == 1, (key, answers[key])
        assert answers[key][-1] == "ok", (key, answers[key])
        # A second copy needs an earlier attempt whose answer never reached the client:
        # an ambiguous fault (aiohttp may re-send a PUT without telling), or no answer.
        extra = len(copies) - 1
        assert extra <= answers[key].count("lost") + ambiguous_at_server[key], (key, copies)
        if key.startswith("c"):
            assert {copy["id"] for copy in copies} == {receipts[key].event_id}, key


# --- 2. outage ---------------------------------------------------------------------------------

OUTAGE_SITE = "outage-site-5e1d"
OUTAGE_KEY = "sk-live-Zq8TOPSECRETkey-93f1"
OUTAGE_OPERATIONS = 3000


async def dead_letters_from_an_outage(path: Path, url: str, count: int) -> dict[str, Receipt]:
    """Fill ``path`` with ``count`` operations that failed against a stopped server.

    With one attempt each, they fail at once and are recorded as they fail, so the file is
    made by the ordinary path (no shutdown deadline involved).
    """
    cfg = config(url, dead_letter_path=path, max_concurrency=10, retry=RetryPolicy(attempts=1))
    async with EventQueue(cfg) as queue:
        receipts = await enqueue_mixed(queue, count)
    stats = queue.statistics()
    assert stats.failed == count
    return receipts


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("failure", ["down", "hanging"])
async def test_an_outage_dead_letters_everything_in_time_and_replay_delivers_it(
        tmp_path: Path, transport: str, failure: str) -> None:
    """API down or hanging: aclose keeps its deadline, spills all, and replay delivers all."""
    path = tmp_path / "dead.jsonl"
    shutdown_timeout = 1.0
    fake = FakeTrackAPI(site_id=OUTAGE_SITE, api_key=OUTAGE_KEY)
    await fake.start()
    try:
        if failure == "down":
            await fake.stop()
        else:
            fake.latency = 120.0
        cfg = config(fake.url, site_id=OUTAGE_SITE, api_key=OUTAGE_KEY, transport=transport,
                     dead_letter_path=path, shutdown_timeout=shutdown_timeout,
                     max_concurrency=10, request_timeout=60,
                     retry=RetryPolicy(attempts=50, timeout=60, wait_initial=0.05,
                                       wait_max=0.5, wait_jitter=0.01))
        sender = ObservedSender(cfg)
        queue = EventQueue(cfg, sender=sender)
        receipts = await enqueue_mixed(queue, OUTAGE_OPERATIONS)
        with anyio.fail_after(10):
            if failure == "down":
                await sender.wait_for_attempts(20)  # it is really trying
            else:
                await fake.wait_until(lambda: fake.in_flight >= 5)
        closing = time.monotonic()
        with anyio.fail_after(shutdown_timeout + 10):
            stats = await queue.aclose()
        took = time.monotonic() - closing
        assert took < shutdown_timeout + 3, f"aclose took {took:.2f}s"

        assert stats.enqueued == OUTAGE_OPERATIONS == settled_sum(stats)
        assert stats.pending == 0
        assert stats.delivered == stats.rejected == stats.dropped == 0
        assert stats.dead_lettered + stats.failed == OUTAGE_OPERATIONS
        assert all(r.done() for r in receipts.values())

        text = path.read_text()
        token = base64.b64encode(f"{OUTAGE_SITE}:{OUTAGE_KEY}".encode()).decode()
        assert OUTAGE_KEY not in text
        assert token not in text
        assert os.stat(path).st_mode & 0o077 == 0  # people's data: owner-only
        records = read_records(path)
        assert len(records) == OUTAGE_OPERATIONS
        assert Counter(r["customer_id"] for r in records) == Counter(receipts.keys())
        assert {r["customer_id"]: r["event_id"] for r in records} == {
            key: r.event_id for key, r in receipts.items()}

        # The API is back: replaying the file delivers each operation once and empties it.
        if failure == "down":
            await fake.start()  # the same port, the same credentials
        else:
            await fake.stop()
            fake.latency = 0.0
            await fake.start()
        fake.reset()
        with anyio.fail_after(30):
            replayed = await cio_queue.replay(path, cfg)
    finally:
        await fake.stop()
    assert replayed.delivered == OUTAGE_OPERATIONS
    assert replayed.pending == replayed.failed == replayed.rejected == 0
    accepted = accepted_by_key(fake)
    assert {key: len(copies) for key, copies in accepted.items()} == dict.fromkeys(receipts, 1)
    assert {key: copies[0]["id"] for key, copies in accepted.items()} == {
        key: r.event_id for key, r in receipts.items()}
    assert read_records(path) == []
    assert not path.with_name(path.name + ".progress").exists()


# --- 3. resumable replay -----------------------------------------------------------------------

async def test_an_interrupted_replay_resumes_without_resending_what_was_delivered(
        tmp_path: Path) -> None:
    """Replay cut off midway, then run again: only ops in flight at the cut are sent twice."""
    path = tmp_path / "dead.jsonl"
    count = 3000
    fake = FakeTrackAPI()
    await fake.start()
    await fake.stop()
    receipts = await dead_letters_from_an_outage(path, fake.url, count)
    assert len(read_records(path)) == count

    max_concurrency = 10
    cfg = config(fake.url, transport="v1", max_concurrency=max_concurrency)
    async with FakeTrackAPI(port=fake.port, latency=0.002) as server:
        with anyio.fail_after(60):
            with anyio.CancelScope() as interrupted:
                async with anyio.create_task_group() as tg:
                    async def interrupt() -> None:
                        await server.wait_until(lambda: len(server.operations) >= count // 2)
                        interrupted.cancel()

                    tg.start_soon(interrupt)
                    await cio_queue.replay(path, cfg)
            assert interrupted.cancelled_caught
            first_run = accepted_by_key(server)
            cut = len(server.operations)
            assert 0 < cut < count
            await cio_queue.replay(path, cfg)
        both_runs = accepted_by_key(server)
    second_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, copies in both_runs.items():
        second_run[key] = copies[len(first_run.get(key, [])):]

    assert set(both_runs) == set(receipts)  # nothing lost
    resent = {key for key in first_run if second_run[key]}
    assert len(resent) <= max_concurrency, (
        f"{len(resent)} operations delivered in the first run were sent again")
    for key in resent:
        assert len({copy["id"] for copy in both_runs[key]}) == 1
    assert read_records(path) == []
    assert not path.with_name(path.name + ".progress").exists()


# --- 4. rejected operations are dead-lettered ----------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rejected_operations_are_dead_lettered_and_stay_there_on_replay(
        tmp_path: Path, transport: str) -> None:
    """A 4xx sends an operation to the file (reason rejected); replay keeps it there."""
    path = tmp_path / "dead.jsonl"
    async with poison_fake() as fake:
        cfg = config(fake.url, transport=transport, dead_letter_path=path)
        with anyio.fail_after(20):
            async with EventQueue(cfg) as queue:
                receipts = await enqueue_mixed(queue, 200, poison_every=20)
        poison = {key for key in receipts if key.startswith("p")}
        assert len(poison) == 10
        stats = queue.statistics()
        assert (stats.rejected, stats.delivered) == (10, 190)
        records = read_records(path)
        assert {r["customer_id"] for r in records} == poison
        assert len(records) == 10
        assert {r["reason"] for r in records} == {"rejected"}
        assert all(r["status"] in (400, 207) and r["attempts"] == 1 for r in records)
        assert {r["event_id"] for r in records} == {receipts[k].event_id for k in poison}

        fake.reset()
        with anyio.fail_after(20):
            replayed = await cio_queue.replay(path, cfg)
    assert (replayed.rejected, replayed.delivered, replayed.pending) == (10, 0, 0)
    again = read_records(path)
    assert {r["customer_id"] for r in again} == poison
    assert len(again) == 10
    assert {r["reason"] for r in again} == {"rejected"}
    assert all(r["attempts"] == 2 for r in again)
    assert accepted_by_key(fake) == {}


async def test_a_rejection_is_on_disk_before_it_is_reported_even_at_the_deadline(
        tmp_path: Path) -> None:
    """A rejected op's line is written before its outcome, even if its batch is cut off."""
    path = tmp_path / "dead.jsonl"
    # Two requests: whichever arrives first is refused, the other hangs past the deadline.
    fake = FakeTrackAPI(faults=FaultRates(slow_seconds=60))
    fake.script(400, Fault.SLOW)
    on_disk_when_reported: dict[str, bool] = {}

    def check(outcome: Outcome) -> None:
        lines = read_records(path)
        on_disk_when_reported[str(outcome.customer_id)] = any(
            r["customer_id"] == outcome.customer_id for r in lines)

    async with fake:
        cfg = config(fake.url, transport="v1", dead_letter_path=path, batch_size=2,
                     flush_interval=60, shutdown_timeout=0.5, request_timeout=60)
        queue = EventQueue(cfg, on_outcome=check)
        await queue.track("a", "ev")
        await queue.track("b", "ev")
        with anyio.fail_after(10):
            await fake.wait_until(lambda: len(fake.log) == 1 and fake.in_flight == 1)
            stats = await queue.aclose()
    assert (stats.rejected, stats.dead_lettered, stats.pending) == (1, 1, 0)
    records = read_records(path)
    assert sorted(r["reason"] for r in records) == ["rejected", "shutdown_deadline"]
    assert on_disk_when_reported == {"a": True, "b": True}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_rejection_is_reported_at_once_though_its_batch_mate_still_hangs(
        tmp_path: Path, transport: str) -> None:
    """With a dead-letter file, a 4xx settles (line on disk) without waiting for its batch."""
    path = tmp_path / "dead.jsonl"
    # Two requests: whichever arrives first is refused, the other hangs for 10 s. With the
    # batch transport, the anonymous event travels by v1, apart from the v2 request.
    fake = FakeTrackAPI(faults=FaultRates(slow_seconds=10))
    fake.script(400, Fault.SLOW)
    async with fake:
        cfg = config(fake.url, transport=transport, dead_letter_path=path, batch_size=2,
                     flush_interval=60, shutdown_timeout=0.5, request_timeout=60)
        queue = EventQueue(cfg)
        receipts = [await queue.track_anonymous("anon", "ev"), await queue.track("a", "ev")]
        try:
            with anyio.fail_after(10):
                await fake.wait_until(lambda: len(fake.log) == 1 and fake.in_flight == 1)
            (refused,) = fake.log
            assert refused.status == 400
            rejected = receipts[0] if refused.path == "/api/v1/events" else receipts[1]
            with anyio.fail_after(1):  # not the 10 s its batch-mate takes
                outcome = await rejected.wait()
            assert outcome.status is OutcomeStatus.REJECTED
            assert [r["reason"] for r in read_records(path)] == ["rejected"]
        finally:
            with anyio.fail_after(10):
                stats = await queue.aclose()
    assert (stats.rejected, stats.dead_lettered, stats.pending) == (1, 1, 0)


async def test_an_operation_abandoned_in_backoff_is_dead_lettered_once(tmp_path: Path) -> None:
    """At the deadline, an op waiting to retry beside a hung one is spilled exactly once."""
    path = tmp_path / "dead.jsonl"
    # Whichever request arrives first gets a 503 and backs off for 30 s; the other hangs.
    fake = FakeTrackAPI(faults=FaultRates(slow_seconds=60))
    fake.script(503, Fault.SLOW)
    slow_retry = RetryPolicy(attempts=5, timeout=120, wait_initial=30, wait_jitter=0)
    async with fake:
        cfg = config(fake.url, transport="v1", dead_letter_path=path, batch_size=2,
                     flush_interval=60, shutdown_timeout=0.5, request_timeout=60,
                     retry=slow_retry)
        queue = EventQueue(cfg)
        receipts = [await queue.track("a", "ev"), await queue.track("b", "ev")]
        with anyio.fail_after(10):
            await fake.wait_until(lambda: len(fake.log) == 1 and fake.in_flight == 1)
            stats = await queue.aclose()
    assert stats.enqueued == settled_sum(stats) == 2
    assert (stats.dead_lettered, stats.pending) == (2, 0)
    assert all(r.outcome and r.outcome.reason == "shutdown_deadline" for r in receipts)
    assert sorted(r["customer_id"] for r in read_records(path)) == ["a", "b"]


# --- 5-7. limits, as the server sees them -------------------------------------------------------

def busiest_window(times: list[float], width: float) -> int:
    """The most of ``times`` that fall in any half-open window ``[t, t + width)``."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, start + width) - i for i, start in enumerate(ordered))


async def test_the_rate_limit_holds_in_every_one_second_window_at_the_server() -> None:
    """rate_limit=50: no one-second window of sends or server arrivals holds more than 50."""
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url, transport="v1", rate_limit=50, max_concurrency=20,
                     batch_size=50)
        sender = ObservedSender(cfg)
        started = time.monotonic()
        with anyio.fail_after(20):
            async with EventQueue(cfg, sender=sender) as queue:
                for i in range(150):
                    await queue.track(f"c{i}", "ev")
                await queue.flush()
        took = time.monotonic() - started
        arrivals = [record.received_at for record in fake.log]
    assert queue.statistics().delivered == 150
    assert len(arrivals) == len(sender.sent_at) == 150
    # The pacer logs when requests really start, so the client's own starts hold exactly.
    assert busiest_window(sender.sent_at, 1.0) <= 50
    # The server stamps each arrival on this same loop, some varying moment after the
    # request started: on a loaded machine that varies by tens of milliseconds, so its
    # view is checked with 100 ms of slack.
    assert busiest_window(arrivals, 1.0 - 0.1) <= 50
    assert busiest_window(arrivals, 1.0) >= 40  # the limit is used, not just respected
    assert max(arrivals) - min(arrivals) >= 2.0
    assert took >= 2.0


async def test_a_429_without_retry_after_pauses_every_sender_for_rate_limited_pause() -> None:
    """A bare 429 closes the gate for rate_limited_pause: a gap in the server's arrivals."""
    pause, latency = 1.5, 0.05
    async with FakeTrackAPI(latency=latency) as fake:
        fake.script(Fault.RATE_LIMITED_NO_HEADER)
        cfg = config(fake.url, transport="v1", max_concurrency=4, batch_size=40,
                     rate_limited_pause=pause)
        with anyio.fail_after(20):
            async with EventQueue(cfg) as queue:
                receipts = [await queue.track(f"c{i}", "ev") for i in range(40)]
                await queue.flush()
        log = sorted(fake.log, key=lambda r: r.received_at)
    assert all(r.outcome and r.outcome.status is OutcomeStatus.DELIVERED for r in receipts)
    assert queue.statistics().rate_limited == 1
    (limited,) = [r for r in log if r.status == 429]
    assert limited.fault == "rate_limited_no_header"
    answered = limited.received_at + latency
    # Requests already on their way when the 429 came back may still arrive; after that,
    # nothing arrives until the pause is over.
    in_gap = [r.received_at - answered for r in log
              if answered + 0.2 < r.received_at < answered + pause - 0.01]
    assert in_gap == []
    retried = [r for r in log if r.path == limited.path and r.received_at > limited.received_at]
    assert len(retried) == 1
    assert retried[0].received_at >= answered + pause - 0.01
    assert sum(r.received_at > answered + pause - 0.01 for r in log) >= 20


@pytest.mark.parametrize(("transport", "count", "batch_size"),
                         [("v1", 200, 100), ("batch", 2000, 50)])
async def test_the_concurrency_limit_is_reached_and_never_exceeded_at_the_server(
        transport: str, count: int, batch_size: int) -> None:
    """Under load with latency, the server sees exactly max_concurrency requests at once."""
    async with FakeTrackAPI(latency=0.05) as fake:
        cfg = config(fake.url, transport=transport, max_concurrency=8, batch_size=batch_size)
        with anyio.fail_after(20):
            async with EventQueue(cfg) as queue:
                for i in range(count):
                    await queue.track(f"c{i}", "ev")
        assert fake.max_in_flight == 8
    assert queue.statistics().delivered == count


# --- 8. exactly once --------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_on_a_healthy_server_every_operation_is_delivered_exactly_once(
        transport: str) -> None:
    """After aclose, the server holds each accepted operation once, with its event id."""
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url, transport=transport, max_concurrency=16, batch_size=100)
        with anyio.fail_after(30):
            async with EventQueue(cfg) as queue:
                receipts = await enqueue_mixed(queue, 3000)
        accepted = accepted_by_key(fake)
        events = Counter(event["id"] for event in fake.accepted_events())
    stats = queue.statistics()
    assert (stats.delivered, stats.pending, stats.enqueued) == (3000, 0, 3000)
    assert {key: len(copies) for key, copies in accepted.items()} == dict.fromkeys(receipts, 1)
    assert events == Counter(r.event_id for r in receipts.values() if r.event_id is not None)
    assert sum(events.values()) == sum(1 for key in receipts if key[0] in "cv")


# --- 9. the log agrees with the statistics ---------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_batch_log_lines_add_up_to_the_statistics(
        transport: str, caplog: pytest.LogCaptureFixture) -> None:
    """Summed over the per-batch lines, each count is statistics()'s, under faults."""
    rates = FaultRates(server_error=0.2, rate_limited=0.1, retry_after=0.0)
    async with poison_fake(faults=rates, seed=9) as fake:
        cfg = config(fake.url, transport=transport, batch_size=25, max_concurrency=4,
                     rate_limited_pause=0.01,
                     retry=RetryPolicy(attempts=2, timeout=60, wait_initial=0.005,
                                       wait_max=0.01, wait_jitter=0.0, retry_after_max=0.01))
        with caplog.at_level(logging.DEBUG, logger="cio_queue"), anyio.fail_after(60):
            async with EventQueue(cfg) as queue:
                for i in range(400):
                    name = f"poison-{i}" if i % 50 == 7 else f"ev-{i}"
                    await queue.track(f"c{i}", name, {"n": i})
                await queue.flush()
            stats = queue.statistics()
    lines = [r for r in caplog.records
             if getattr(r, "cio_event", None) in ("cio_queue.batch_sent",
                                                  "cio_queue.batch_failed")]
    summed = Counter[str]()
    for record in lines:
        for name in ("operations", "requests", "delivered", "rejected", "failed", "held"):
            summed[name] += getattr(record, name)
    # The faults happened. (Whether a batch fails twice in a row, and so ends failed,
    # depends on which request draws which fault, which concurrency reorders.)
    assert min(stats.rejected, stats.retries) > 0
    assert (summed["delivered"], summed["rejected"], summed["failed"]) == (
        stats.delivered, stats.rejected, stats.failed)
    assert summed["requests"] == stats.requests == len(fake.log)
    assert summed["operations"] - summed["held"] == stats.enqueued == 400
    assert len(lines) == stats.batches
