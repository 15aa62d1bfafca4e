"""The fleet across processes: real EventQueues with ``redis_url``, each in a process of its own.

Against a real redis-server (the ``redis_server`` fixture: AOF, ``appendfsync always``)
and the fake Track API in a process of its own, so that its arrival times are its own and
not skewed by the queues' event loops. The members are processes of their own
(``tests/fleet_children.py``), as members on other hosts would be; each reports its
statistics every 50 ms and the fleet's Redis log lines as they happen. Every wait is
bounded, and every child is killed in ``finally``.

Times are compared across processes: ``time.monotonic()`` is the system-wide
CLOCK_MONOTONIC on Linux, so the fake's arrival times, the members' reports and the test's
own readings share one clock.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from typing import Any

import redis

from cio_queue import RetryPolicy
from cio_queue._fleet import dead_letter_key
from cio_queue._redis import connect, status
from cio_queue.testing import Fault
from tests.fleet_children import (
    FakeProcess,
    Member,
    Work,
    balanced,
    close_all,
    fake_process,
    members,
    wait_for,
)
from tests.redis_support import RedisServer

DELIVERY_TIMEOUT = 120.0
"""Seconds the fleet may take to deliver everything (a bound, not a timing)."""
GROUP = "senders"


def options(fake: FakeProcess, server: RedisServer, **overrides: Any) -> dict[str, Any]:
    """QueueConfig keywords of a fleet member aimed at the fake and the server."""
    values: dict[str, Any] = {
        "site_id": fake.site_id, "api_key": fake.api_key, "base_url": fake.url,
        "redis_url": server.url, "redis_lease": 3.0, "flush_interval": 0.05,
        "shutdown_timeout": 5.0,
        "retry": RetryPolicy(attempts=5, wait_initial=0.05, wait_max=0.2, wait_jitter=0,
                             timeout=30),
    }
    values.update(overrides)
    return values


def stream_of(fake: FakeProcess) -> str:
    """The fleet's stream: the default, named after the site id."""
    return f"cio-queue:{fake.site_id}"


def busiest_window(times: list[float], width: float) -> int:
    """The most of ``times`` that fall in any half-open window ``[t, t + width)``."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, start + width) - i
                for i, start in enumerate(ordered)), default=0)


def fleet_status(server: RedisServer, stream: str) -> dict[str, Any]:
    """``cio_queue._redis.status()`` of the stream and its senders."""

    async def read() -> dict[str, Any]:
        client = connect(server.url)
        try:
            return await status(client, stream, GROUP)
        finally:
            await client.aclose()

    return asyncio.run(read())


def split_between(server: RedisServer, stream: str, names: set[str]) -> bool:
    """Whether the live members are ``names`` and each holds a share of the partitions."""
    fleet = fleet_status(server, stream)
    holders = Counter(p["holder"] for p in fleet["per_partition"])
    share = fleet["partitions"] // len(names)
    return set(fleet["members"]) == names and all(holders[name] == share for name in names)


def delivered(fake: FakeProcess, count: int) -> bool:
    """Whether the fake has ``count`` distinct event ids."""
    return fake.count()[1] >= count


def duplicates(ids: list[str]) -> int:
    return len(ids) - len(set(ids))


def diagnosis(consumers: list[Member], finals: list[dict[str, int]]) -> str:
    """What the consumers logged and retried: why an operation may have gone out twice."""
    return "; ".join(f"{member.name}: retries={stats['retries']}, logs={member.logs}"
                     for member, stats in zip(consumers, finals, strict=True))


# --- 4 processes, 100,000 operations ---------------------------------------------------------

FLEET_OPS = 100_000
FLEET_BATCH = 100
"""1,000 requests in all."""
FLEET_RATE = 100.0
"""Requests per second for the whole fleet: 1,000 requests take 10 s at least, about what
the CPU work of 100,000 operations takes on two idle cores, so the budget binds for much
of the run (each consumer alone, with its requests in flight, would send faster whenever
it has a backlog)."""
FLEET_CONCURRENCY = 4
"""Requests in flight per consumer: enough to outrun the budget; fewer than the default,
so that fewer workers ask the shared pacer for each of its 100 starts a second."""
JITTER = 0.2
"""Seconds of clock jitter allowed: the pacer's guarantee is about grants (windows of 1 s +
20 ms, by Redis' clock). A consumer notes a start just after its grant, and the fake notes
an arrival when its handler runs; on a loaded machine either process can wait for a CPU
first, which squeezes two notes closer than their grants were. So both views are checked
over windows of 1 s - JITTER: a fleet whose budget is not shared (each consumer pacing
itself, twice the rate) still shows about 160 in such a window, where the limit is 100."""


def test_four_processes_deliver_100_000_operations_once_within_the_fleets_rate(
        redis_server: RedisServer) -> None:
    """2 pure producers and 2 consumers on one stream: each op once, the rate fleet-wide.

    Each consumer alone could send more than 100 requests a second when it has a backlog
    (the fake answers at once, four requests in flight each): only the shared budget
    keeps the two of them at 100.
    """
    with fake_process() as fake:
        # The default lease (10 s): nobody is killed here, and a member starved of CPU for
        # longer than its lease is cut off by design (its entries go out again).
        config = options(fake, redis_server, rate_limit=FLEET_RATE, batch_size=FLEET_BATCH,
                         max_concurrency=FLEET_CONCURRENCY, redis_lease=10.0)
        works = [Work(f"p{k}", FLEET_OPS // 2, hold=True) for k in range(2)]
        producers = [Member(f"producer-{k}", {**config, "consume": False, "overflow": "block"},
                            work) for k, work in enumerate(works)]
        names = [f"consumer-{k}" for k in range(2)]
        consumers = [Member(name, {**config, "redis_consumer": name}) for name in names]
        with members(*producers, *consumers):
            wait_for(lambda: split_between(redis_server, stream_of(fake), set(names)), 30,
                     "the two consumers share the partitions")
            for producer in producers:
                producer.start_work()
            wait_for(lambda: delivered(fake, FLEET_OPS), DELIVERY_TIMEOUT,
                     f"{FLEET_OPS:,} operations delivered")
            finals = close_all(*producers, *consumers)
        ids = fake.ids()
        requests = fake.requests()
        fleet = fleet_status(redis_server, stream_of(fake))
    # Exactly once, by event id: no member was killed, and no lease ran out (that would
    # have been logged as cio_queue.redis_partition_lost).
    assert duplicates(ids) == 0, diagnosis(consumers, finals[2:])
    assert set(ids) == set().union(*(work.ids() for work in works))
    assert {code for _, code in requests} == {200}
    # The fleet's guarantee is about starts: every consumer notes when each request starts
    # (right after its grant), on the clock all processes share.
    starts = [at for consumer in consumers for at in consumer.events["starts"][1]]
    assert len(starts) == len(requests)
    assert busiest_window(starts, 1.0 - JITTER) <= FLEET_RATE
    # ...and the API's view: the fake's arrival times.
    assert busiest_window([at for at, _ in requests], 1.0 - JITTER) <= FLEET_RATE
    assert all(balanced(stats) for stats in finals)
    producer_stats, consumer_stats = finals[:2], finals[2:]
    assert [s["streamed"] for s in producer_stats] == [FLEET_OPS // 2] * 2
    assert all(s["taken"] == s["requests"] == 0 for s in producer_stats)
    assert sum(s["taken"] for s in consumer_stats) == FLEET_OPS
    assert sum(s["delivered"] for s in consumer_stats) == FLEET_OPS
    assert all(s["delivered"] > 0 for s in consumer_stats)  # both shared the work
    assert (fleet["length"], fleet["pending"]) == (0, 0)  # every entry acked and deleted


# --- SIGKILL a consumer mid-delivery -------------------------------------------------------

KILL_OPS = 10_000


def pending_of(server: RedisServer, stream: str, name: str) -> tuple[int, bool]:
    """Entries pending for member ``name``, and whether it was still a live member then.

    One MULTI: Redis' clock, the member's expiry in the members set, and every partition's
    pending summary. A member that is still live by Redis' clock still holds its leases
    (the same heartbeat renews both), so no other member can have claimed its entries:
    the count is exactly what it had read and not acknowledged.
    """
    client = redis.Redis.from_url(server.url)
    try:
        partitions = int(client.hget(f"{stream}:meta", "partitions") or 0)
        pipe = client.pipeline(transaction=True)
        pipe.time()
        pipe.zscore(f"{stream}:{GROUP}:members", name)
        for p in range(partitions):
            pipe.xpending(f"{stream}:{p}", GROUP)
        now, expires, *summaries = pipe.execute()
        dead_letters = int(client.xlen(dead_letter_key(stream)))
    finally:
        client.close()
    assert dead_letters == 0
    pending = sum(int(consumer["pending"]) for summary in summaries
                  for consumer in summary["consumers"] if consumer["name"] == name.encode())
    live = expires is not None and expires > now[0] * 1000 + now[1] // 1000
    return pending, live


def test_a_consumer_killed_mid_delivery_loses_nothing_and_its_entries_go_out_again(
        redis_server: RedisServer) -> None:
    """SIGKILL a consumer holding entries: after its lease the survivor sends them again.

    Duplicates are allowed only for what the killed one had in hand: entries it read and
    had not acknowledged (delivered or not), counted in Redis right after the kill.
    """
    with fake_process(latency=0.05) as fake:
        # A lease of 2 s: the survivor takes over sooner, and the victim, which renews it
        # every 2/3 s, is still live by Redis' clock for 1.3 s at least after the kill.
        config = options(fake, redis_server, rate_limit=100.0, batch_size=100,
                         redis_lease=2.0)
        stream = stream_of(fake)
        victim = Member("victim", {**config, "redis_consumer": "victim"})
        survivor = Member("survivor", {**config, "redis_consumer": "survivor"})
        work = Work("k", KILL_OPS, hold=True)
        producer = Member("producer", {**config, "consume": False, "overflow": "block"}, work)
        with members(victim, survivor, producer):
            wait_for(lambda: split_between(redis_server, stream, {"victim", "survivor"}), 30,
                     "the two consumers share the partitions")
            producer.start_work()

            def mid_delivery() -> bool:
                victim.poll()
                return victim.stats.get("delivered", 0) > 0 and victim.stats["pending"] > 0

            wait_for(mid_delivery, DELIVERY_TIMEOUT, "the victim delivers, and holds more")
            victim.kill()
            in_hand, live = pending_of(redis_server, stream, "victim")
            assert live, "the victim's lease ran out before its entries were counted"
            assert in_hand > 0
            wait_for(lambda: delivered(fake, KILL_OPS), DELIVERY_TIMEOUT,
                     f"{KILL_OPS:,} operations delivered")
            finals = close_all(survivor, producer)
        ids = fake.ids()
        fleet = fleet_status(redis_server, stream)
    assert set(ids) == work.ids()  # nothing lost
    assert duplicates(ids) <= in_hand  # sent again: only what the victim had in hand
    assert all(balanced(stats) for stats in finals)
    assert (fleet["length"], fleet["pending"]) == (0, 0)  # the victim's entries too: acked
    assert fleet["consumers"] == {}


# --- one 429 pauses every process --------------------------------------------------------

GATE_OPS = 40
RETRY_AFTER = 2.0


def test_a_429_seen_by_one_process_pauses_every_process_until_its_retry_after(
        redis_server: RedisServer) -> None:
    """The fake answers the first request 429 (Retry-After: 2): nothing reaches it for 2 s.

    Why this is not a timing race: the fleet's rate is one request a second, so after the
    throttled request's grant the next grant is at least 1.02 s away (one start per
    window of 1 s + guard + lateness). The member that got the 429 closes the fleet's
    gate a few milliseconds after that grant (one request to a fake without latency,
    then one Redis call), so no request can have been granted before the gate closed and
    arrive after the 429 without breaking the gate. And the rate alone would let the next
    request through after 1.02 s: a request between 1.02 s and 2 s after the 429 is the
    gate failing, not the rate.
    """
    with fake_process(retry_after=RETRY_AFTER) as fake:
        config = options(fake, redis_server, rate_limit=1.0, batch_size=100)
        stream = stream_of(fake)
        consumers = [Member(name, {**config, "redis_consumer": name})
                     for name in ("gate-a", "gate-b")]
        work = Work("g", GATE_OPS, persons=GATE_OPS, hold=True)
        producer = Member("producer", {**config, "consume": False}, work)
        with members(*consumers, producer):
            wait_for(lambda: split_between(redis_server, stream, {"gate-a", "gate-b"}), 30,
                     "the two consumers share the partitions")
            fake.script(Fault.RATE_LIMITED)
            producer.start_work()
            wait_for(lambda: delivered(fake, GATE_OPS), DELIVERY_TIMEOUT,
                     f"{GATE_OPS} operations delivered")
            finals = close_all(*consumers, producer)
        ids = fake.ids()
        requests = fake.requests()
    assert sorted(ids) == sorted(work.ids())
    (throttled, first_code), *rest = requests
    assert first_code == 429
    assert [code for _, code in rest] == [200] * len(rest)
    assert sum(stats["rate_limited"] for stats in finals) == 1
    # The Retry-After counts from when the member read the 429, after the fake stamped
    # its arrival; the fleet's gate ends by Redis' clock. 50 ms for reading two clocks.
    assert min(at - throttled for at, _ in rest) >= RETRY_AFTER - 0.05
    # Both consumers held operations they could not send while the gate was closed.
    for consumer in consumers:
        assert consumer.stats["delivered"] > 0
        assert any(stats["pending"] > 0 for at, stats in consumer.history
                   if throttled + 0.5 < at < throttled + RETRY_AFTER - 0.5), consumer.name


# --- Redis stops for 5 s under load ----------------------------------------------------------

OUTAGE = 5.0
"""Seconds redis-server stays down."""
RESTART_RATE = 500.0
"""Operations a second each producing member enqueues."""
RESTART_OPS = 3_000


def test_producers_and_consumers_ride_out_a_redis_restart_and_lose_nothing(
        redis_server: RedisServer) -> None:
    """SIGKILL redis-server (AOF, fsync always) under load for 5 s, restart it on its port.

    A pure producer, a member that produces and consumes, and a consumer. While Redis is
    away the producers go on accepting (held locally), nothing is sent (no request starts
    without a grant from the fleet's pacer), and every member logs one
    ``redis_unreachable``; after the restart each logs ``redis_reconnected`` and catches
    up. Every produced id arrives at least once (an entry in hand when its lease lapsed
    during the outage may go out twice, with its event id).

    tests/test_redis_restart.py restarts Redis under the Producer and the Consumer
    themselves, in one process; this is the same through whole EventQueues, one process
    each, as the issue's acceptance asks: the pacer, the ledger and the shutdown included.
    """
    with fake_process() as fake:
        config = options(fake, redis_server, rate_limit=100.0, batch_size=100)
        stream = stream_of(fake)
        works = [Work(f"r{k}", RESTART_OPS, per_second=RESTART_RATE) for k in range(2)]
        producer = Member("producer", {**config, "consume": False, "overflow": "block"},
                          works[0])
        mixed = Member("mixed", {**config, "overflow": "block"}, works[1])
        consumer = Member("consumer", config)
        everyone = (producer, mixed, consumer)
        with members(*everyone):

            def under_load() -> bool:
                producer.poll()
                mixed.poll()
                return (fake.count()[1] > 0
                        and producer.stats.get("enqueued", 0) >= RESTART_OPS // 5
                        and mixed.stats.get("enqueued", 0) >= RESTART_OPS // 5)

            wait_for(under_load, DELIVERY_TIMEOUT, "the fleet under load")
            redis_server.stop(kill=True)
            down_at = time.monotonic()
            wait_for(lambda: all(m.logged("cio_queue.redis_unreachable") for m in everyone),
                     30, "every member notices the outage")
            time.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))  # the outage itself
            up_at = time.monotonic()
            redis_server.start()
            for member in (producer, mixed):
                member.wait("produced", DELIVERY_TIMEOUT)
            produced = set().union(*(work.ids() for work in works))
            wait_for(lambda: delivered(fake, len(produced)), DELIVERY_TIMEOUT,
                     "every produced operation delivered")
            finals = close_all(*everyone)
        ids = fake.ids()
        requests = fake.requests()
        fleet = fleet_status(redis_server, stream)
    assert set(ids) == produced  # nothing lost
    for member in everyone:
        unreachable = member.logged("cio_queue.redis_unreachable")
        assert unreachable
        assert any(at > unreachable[0] for at in member.logged("cio_queue.redis_reconnected"))
    # Requests granted before the kill may still arrive just after it; then none at all.
    assert [at for at, _ in requests if down_at + 1.0 < at < up_at] == []
    # The producers accepted operations during the outage and held them.
    for member in (producer, mixed):
        assert any(stats["pending"] > 0 for at, stats in member.history
                   if down_at + 1.0 < at < up_at), member.name
    assert all(balanced(stats) for stats in finals)
    assert [finals[0]["enqueued"], finals[1]["enqueued"]] == [RESTART_OPS] * 2
    assert all(stats[name] == 0 for stats in finals
               for name in ("failed", "dropped", "dead_lettered", "rejected"))
    assert (fleet["length"], fleet["pending"]) == (0, 0)
