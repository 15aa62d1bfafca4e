"""EventQueue in a fleet (``redis_url``): hand-off, taking, acks, dead letters, the shared gate.

In-process tests: real redis-server (the ``redis_server`` fixture), the real fake Track API,
one or more EventQueues on one event loop. The multi-process acceptance tests (4 processes,
SIGKILL, a Redis restart) are in ``test_fleet_processes.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from cio_queue import ConfigError, EventQueue, OutcomeStatus, QueueConfig, RetryPolicy, Statistics
from cio_queue._redis import DeadLetterStream, connect, status
from cio_queue.testing import FakeTrackAPI, Fault, FaultRates
from tests.redis_support import RedisServer, find_redis_server, wait_until

pytestmark = pytest.mark.anyio

WAIT = 30.0
"""Seconds any wait for the fleet may take before the test fails (a bound, not a timing)."""


def fleet_config(fake: FakeTrackAPI, redis: RedisServer, **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "site_id": fake.site_id, "api_key": fake.api_key, "base_url": fake.url,
        "flush_interval": 0.02, "rate_limit": None, "redis_url": redis.url,
        "redis_partitions": 4, "redis_lease": 2.0, "shutdown_timeout": 5.0,
        "retry": RetryPolicy(attempts=3, wait_initial=0.01, wait_max=0.02, wait_jitter=0,
                             timeout=10),
    }
    values.update(overrides)
    return QueueConfig(**values)


def balanced(stats: Statistics) -> bool:
    """The statistics invariant, with the fleet's two counters."""
    return stats.enqueued + stats.taken == (
        stats.delivered + stats.rejected + stats.failed + stats.dropped + stats.filtered
        + stats.dead_lettered + stats.spooled + stats.streamed + stats.pending)


async def bounded(waiting: Any) -> None:
    """Await a wait of the fake's, failing the test after WAIT seconds."""
    with anyio.fail_after(WAIT):
        await waiting


def event_ids(fake: FakeTrackAPI) -> list[str]:
    return [op.op["id"] for op in fake.operations if isinstance(op.op, dict) and "id" in op.op]


async def test_a_fleet_member_hands_off_and_delivers_each_operation_once(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        async with EventQueue(fleet_config(fake, redis_server)) as cio:
            receipts = [await cio.track(f"u{i % 7}", "purchase", {"n": i}) for i in range(500)]
            await bounded(fake.wait_for_operations(500))
            outcomes = [await r.wait() for r in receipts]
        stats = cio.statistics()
    assert {o.status for o in outcomes} == {OutcomeStatus.STREAMED}
    assert {o.reason for o in outcomes} == {"handed_off"}
    assert sorted(event_ids(fake)) == sorted(str(r.event_id) for r in receipts)
    assert (stats.enqueued, stats.streamed, stats.taken, stats.delivered) == (500, 500, 500, 500)
    assert stats.pending == 0
    assert balanced(stats)


async def test_a_pure_producer_sends_nothing_and_a_consumer_delivers_its_operations(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        producer = EventQueue(fleet_config(fake, redis_server, consume=False))
        async with producer:
            for i in range(200):
                await producer.identify(f"p{i}", plan="pro")
            await producer.flush()
        assert fake.requests == []
        assert producer.statistics().streamed == 200
        async with EventQueue(fleet_config(fake, redis_server)) as consumer:
            await bounded(fake.wait_for_operations(200))
            await wait_until(lambda: consumer.statistics().delivered == 200, WAIT, "delivered")
        stats = consumer.statistics()
    assert (stats.enqueued, stats.taken, stats.delivered) == (0, 200, 200)
    assert balanced(stats)
    client = connect(redis_server.url)
    try:
        fleet = await status(client, f"cio-queue:{fake.site_id}", "senders")
    finally:
        await client.aclose()
    assert (fleet["length"], fleet["pending"]) == (0, 0)  # every entry acked and deleted


async def test_one_persons_operations_reach_the_api_in_order_across_two_consumers(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI(latency=0.005) as fake:
        async with EventQueue(fleet_config(fake, redis_server, consume=False)) as producer:
            for i in range(60):
                for person in ("ann", "bob", "cy"):
                    await producer.identify(person, step=i)
        async with EventQueue(fleet_config(fake, redis_server)) as one, \
                EventQueue(fleet_config(fake, redis_server)) as two:
            await bounded(fake.wait_for_operations(180))
        assert one.statistics().taken + two.statistics().taken == 180
    steps: dict[str, list[int]] = {}
    for op in fake.operations:
        steps.setdefault(op.op["identifiers"]["id"], []).append(op.op["attributes"]["step"])
    assert steps == {person: list(range(60)) for person in ("ann", "bob", "cy")}


async def test_rejected_operations_go_to_the_dead_letter_stream_with_their_ack(
        redis_server: RedisServer) -> None:
    def reject(op: dict[str, Any]) -> str | None:
        return "bad" if op.get("name") == "bad" else None

    async with FakeTrackAPI(reject_op=reject) as fake:
        async with EventQueue(fleet_config(fake, redis_server)) as cio:
            good = [await cio.track("u1", "good") for _ in range(5)]
            bad = await cio.track("u2", "bad", {"secret_key": "x"})
            await wait_until(lambda: cio.statistics().rejected == 1, WAIT, "the rejection")
            await cio.flush()
        stats = cio.statistics()
    assert stats.delivered == 5
    assert stats.rejected == 1
    assert balanced(stats)
    client = connect(redis_server.url)
    try:
        letters = [letter async for letter in DeadLetterStream(
            client, f"cio-queue:{fake.site_id}:dead-letters").read()]
        fleet = await status(client, f"cio-queue:{fake.site_id}", "senders")
    finally:
        await client.aclose()
    assert [letter.record["event_id"] for letter in letters if letter.record] == [bad.event_id]
    assert letters[0].record is not None
    assert letters[0].record["reason"] == "rejected"
    assert fake.api_key not in letters[0].line
    assert (fleet["length"], fleet["pending"]) == (0, 0)
    assert {r.event_id for r in good} <= set(event_ids(fake))


async def test_operations_in_hand_at_shutdown_stay_in_the_stream_for_the_next_member(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        fake.script(*[503] * 10_000)  # every answer fails: nothing can be delivered
        config = fleet_config(fake, redis_server, shutdown_timeout=0.5,
                              retry=RetryPolicy(attempts=1000, wait_initial=0.05,
                                                wait_max=0.05, wait_jitter=0, timeout=60))
        async with EventQueue(config) as first:
            receipts = [await first.track("u", "e", {"i": i}) for i in range(50)]
            await wait_until(lambda: first.statistics().taken == 50, WAIT, "all taken")
        stats = first.statistics()
        assert stats.streamed == 100  # 50 handed off, 50 taken and returned
        assert stats.dead_lettered == stats.failed == 0
        assert balanced(stats)
        fake.script()  # healthy again
        fake.reset()
        async with EventQueue(fleet_config(fake, redis_server)) as second:
            await bounded(fake.wait_for_operations(50))
        assert second.statistics().delivered == 50
    assert sorted(event_ids(fake)) == sorted(str(r.event_id) for r in receipts)


async def test_a_429_seen_by_one_member_pauses_every_member(redis_server: RedisServer) -> None:
    # Two requests a second for the fleet: the next grant after the throttled request is
    # half a second away, far more than the member that got the 429 needs to close the
    # fleet's gate, so a request that started before the gate closed cannot be confused
    # with one that broke it.
    async with FakeTrackAPI(faults=FaultRates(retry_after=2.0)) as fake:
        async with EventQueue(fleet_config(fake, redis_server, consume=False)) as producer:
            for i in range(6):
                await producer.track(f"u{i}", "e")
        fake.script(Fault.RATE_LIMITED)
        config = fleet_config(fake, redis_server, batch_size=1, rate_limit=2.0)
        async with EventQueue(config) as one, EventQueue(config) as two:
            await bounded(fake.wait_for_operations(6))
        assert one.statistics().rate_limited + two.statistics().rate_limited == 1
    throttled = next(r for r in fake.log if r.status == 429)
    after = [r.received_at - throttled.received_at for r in fake.log
             if r.received_at > throttled.received_at]
    assert after
    assert min(after) >= 2.0 - 0.05  # the Retry-After, give or take the clock's reading


async def test_a_stream_with_another_partition_count_is_refused_at_start(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        async with EventQueue(fleet_config(fake, redis_server)):
            pass
        queue = EventQueue(fleet_config(fake, redis_server, redis_partitions=8))
        with pytest.raises(ConfigError, match="partition"):
            await queue.start()
        await queue.aclose()


async def test_sync_durability_returns_once_redis_has_the_operation(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        config = fleet_config(fake, redis_server, consume=False, redis_durability="sync")
        async with EventQueue(config) as cio:
            receipt = await cio.track("u", "e")
            assert receipt.done()
            outcome = receipt.outcome
        assert outcome is not None
        assert outcome.status is OutcomeStatus.STREAMED


def test_fleet_options_need_redis_url() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        QueueConfig(site_id="s", api_key="k", consume=False)
    with pytest.raises(ConfigError, match="redis_url"):
        QueueConfig(site_id="s", api_key="k", redis_url="http://x")


@pytest.mark.parametrize(("url", "message"), [
    ("redis://:hunter2@host:port", "invalid host or port"),
    ("redis://:hunter2@:6379", "names no host"),
    ("redis://:hunter2@host/zero", "database number"),
    ("redis://:hunter2@ho st", "spaces"),
])
def test_a_bad_redis_url_is_a_config_error_that_never_repeats_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        QueueConfig(site_id="s", api_key="k", redis_url=url)
    assert "hunter2" not in str(caught.value)


def test_the_redis_password_never_shows_in_a_repr() -> None:
    config = QueueConfig(site_id="s", api_key="k", redis_url="redis://:hunter2@localhost:6379/0")
    assert "hunter2" not in repr(config)
    assert "hunter2" not in json.dumps(repr(EventQueue(config)))


async def test_a_redis_outage_at_start_is_caught_up_later(tmp_path: Path) -> None:
    server = RedisServer(find_redis_server(), tmp_path)  # not started yet
    try:
        async with FakeTrackAPI() as fake, EventQueue(fleet_config(fake, server)) as cio:
            receipts = [await cio.track("u", "e", {"i": i}) for i in range(20)]
            assert cio.statistics().pending == 20
            await anyio.to_thread.run_sync(server.start)
            await bounded(fake.wait_for_operations(20))
    finally:
        server.stop(kill=True)
    assert {r.outcome.status for r in receipts if r.outcome} == {OutcomeStatus.STREAMED}


def test_importing_cio_queue_does_not_import_redis() -> None:
    """redis-py (and what it imports) loads when a fleet queue starts, never with the package."""
    code = ("import sys, cio_queue, cio_queue.testing; "
            "print(sorted(m for m in sys.modules if m.startswith('redis')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


# --- the fleet's commands ----------------------------------------------------------------

def cli_env(fake: FakeTrackAPI, redis: RedisServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")}
    env.update(CUSTOMERIO_SITE_ID=fake.site_id, CUSTOMERIO_API_KEY=fake.api_key,
               CUSTOMERIO_BASE_URL=fake.url, CIO_QUEUE_REDIS_URL=redis.url)
    return env


async def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "cio_queue", *args], env=env, capture_output=True, text=True,
        timeout=WAIT, check=False))


async def test_cio_queue_worker_delivers_the_stream_until_sigterm(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        async with EventQueue(fleet_config(fake, redis_server, consume=False)) as producer:
            receipts = [await producer.track(f"u{i}", "signup") for i in range(100)]
        worker = await anyio.open_process(
            [sys.executable, "-m", "cio_queue", "worker", "--partitions", "4",
             "--name", "worker-1"], env=cli_env(fake, redis_server))
        try:
            await bounded(fake.wait_for_operations(100))
        finally:
            worker.send_signal(signal.SIGTERM)
            with anyio.fail_after(WAIT):
                code = await worker.wait()
            assert worker.stderr is not None
            stderr = (await worker.stderr.receive(65536)).decode()
    assert code == 0, stderr
    assert "delivered 100," in stderr
    assert sorted(event_ids(fake)) == sorted(str(r.event_id) for r in receipts)
    assert fake.api_key not in stderr


async def test_cio_queue_status_reports_the_stream(redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        async with EventQueue(fleet_config(fake, redis_server, consume=False)) as producer:
            for i in range(30):
                await producer.track(f"u{i}", "signup")
        env = cli_env(fake, redis_server)
        as_json = await run_cli(env, "status", "--json")
        as_text = await run_cli(env, "status")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert (report["stream"], report["length"], report["lag"], report["pending"]) == (
        f"cio-queue:{fake.site_id}", 30, 30, 0)
    assert report["pacer"]["gate_remaining"] == 0
    assert as_text.returncode == 0, as_text.stderr
    assert "30 in the stream" in as_text.stdout
    assert "429 gate   open" in as_text.stdout


async def test_status_without_a_redis_url_exits_2_with_one_line(
        redis_server: RedisServer) -> None:
    async with FakeTrackAPI() as fake:
        env = cli_env(fake, redis_server)
        del env["CIO_QUEUE_REDIS_URL"]
        result = await run_cli(env, "status")
    assert result.returncode == 2
    assert "CIO_QUEUE_REDIS_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_the_dead_letter_stream_replays_and_keeps_what_fails_again(
        redis_server: RedisServer) -> None:
    refused = {"bad", "worse"}

    def reject(op: dict[str, Any]) -> str | None:
        return "refused" if op.get("name") in refused else None

    async with FakeTrackAPI(reject_op=reject) as fake:
        async with EventQueue(fleet_config(fake, redis_server)) as cio:
            bad = [await cio.track("u", "bad", {"i": i}) for i in range(3)]
            worse = await cio.track("u", "worse")
            await wait_until(lambda: cio.statistics().rejected == 4, WAIT, "the rejections")
        refused.discard("bad")  # the cause of three of them is fixed
        fake.reset()
        result = await run_cli(cli_env(fake, redis_server), "replay", redis_server.url)
        assert result.returncode == 1, result.stderr  # one was rejected again
        assert "delivered 3" in result.stdout
        client = connect(redis_server.url)
        try:
            letters = [letter async for letter in DeadLetterStream(
                client, f"cio-queue:{fake.site_id}:dead-letters").read()]
        finally:
            await client.aclose()
    assert sorted(event_ids(fake)) == sorted(str(r.event_id) for r in bad)
    assert len(letters) == 1
    record = letters[0].record
    assert record is not None
    assert (record["event_id"], record["attempts"]) == (worse.event_id, 2)
