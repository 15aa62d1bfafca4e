"""SyncEventQueue: the EventQueue for threads, against the fake Track API on loopback.

What it must add to the EventQueue it runs: calls from any thread without an event loop,
errors (invalid input, a full queue) raised in the calling thread, the overflow policies,
blocking receipts, statistics that add up while threads race, a clean exit of the process
with the queue drained, and a fresh thread in a forked child.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cio_queue import (
    AccountRegion,
    ConfigError,
    EventQueue,
    InvalidEventError,
    Outcome,
    OutcomeStatus,
    QueueClosedError,
    QueueConfig,
    QueueFullError,
    QueueUsageError,
    Receipt,
    Region,
    Statistics,
    SyncEventQueue,
    SyncReceipt,
)
from cio_queue._sync import CLOSE_MARGIN
from cio_queue.testing import FakeTrackAPI, serve_in_thread

from .recipes import loaded_recipe
from .threaded_fake import FAST_RETRY, WAIT, ThreadedFake, threaded_fake

THREADS = 8


@pytest.fixture
def fake() -> Any:
    with threaded_fake() as running:
        yield running


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped
            + stats.dead_lettered + stats.pending)


def run_threads(target: Any, count: int = THREADS) -> None:
    """Run ``target(index)`` on ``count`` threads; re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a caller thread did not finish"
    if errors:
        raise errors[0]


def wait_for_child(pid: int) -> int:
    """Wait (at most WAIT seconds) for a forked child to exit; return its wait status."""
    statuses: list[int] = []
    waiter = threading.Thread(target=lambda: statuses.append(os.waitpid(pid, 0)[1]))
    waiter.start()
    waiter.join(WAIT)
    assert statuses, "the forked child did not exit"
    return statuses[0]


def test_every_method_is_delivered_without_await(fake: ThreadedFake) -> None:
    """All eleven methods enqueue from plain sync code and their receipts block for delivery."""
    when = datetime(2024, 1, 2, tzinfo=UTC)
    with SyncEventQueue(fake.config()) as cio:
        receipts = [
            cio.identify("42", email="ada@example.com"),
            cio.track("42", "purchase", {"price": 9.5}, id="evt-1", timestamp=when),
            cio.track_anonymous("anon-1", "visit", {"path": "/"}),
            cio.pageview("42", "/pricing", referrer="/"),
            cio.backfill("42", "signup", when, plan="free"),
            cio.add_device("42", "device-1", "ios"),
            cio.delete_device("42", "device-1"),
            cio.suppress("43"),
            cio.unsuppress("43"),
            cio.merge_customers("id", "42", "email", "old@example.com"),
            cio.delete("44"),
        ]
        outcomes = [receipt.result(timeout=WAIT) for receipt in receipts]
    assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * len(receipts)
    assert [r.kind for r in receipts] == [
        "identify", "track", "track_anonymous", "pageview", "backfill", "add_device",
        "delete_device", "suppress", "unsuppress", "merge_customers", "delete"]
    assert receipts[1].event_id == "evt-1"
    assert all(r.done() and r.outcome is not None for r in receipts)
    events = fake.event_ids()
    assert {r.event_id for r in receipts if r.event_id is not None} == set(events)
    assert len(fake.operations()) == len(receipts)


def test_the_readme_recipe_runs_from_threads(
        fake: ThreadedFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Sync apps block, run as written, delivers what its function queues."""
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    with loaded_recipe("sync", tmp_path) as recipe:
        run_threads(lambda n: recipe.on_signup(f"user-{n}@example.com"))
        stats = recipe.cio.close()
    assert (stats.enqueued, stats.delivered) == (2 * THREADS, 2 * THREADS)
    assert len(fake.event_ids()) == THREADS


def test_the_methods_take_exactly_event_queue_arguments() -> None:
    """Each of the eleven methods has EventQueue's parameters, and returns a SyncReceipt."""
    names = ["identify", "track", "track_anonymous", "pageview", "backfill", "delete",
             "add_device", "delete_device", "suppress", "unsuppress", "merge_customers"]
    for name in names:
        ours = inspect.signature(getattr(SyncEventQueue, name))
        theirs = inspect.signature(getattr(EventQueue, name))
        assert ours.parameters == theirs.parameters, name
        assert ours.return_annotation == "SyncReceipt", name


@pytest.mark.parametrize("option", [{"spool_durability": "sync"},
                                    {"redis_durability": "sync"}])
def test_a_durability_the_calls_cannot_wait_for_is_refused_at_construction(
        option: dict[str, Any], tmp_path: Path) -> None:
    """Sync durability needs the call to wait for the write: a ConfigError, not a surprise."""
    extra: dict[str, Any] = ({"spool_path": str(tmp_path)} if "spool_durability" in option
             else {"redis_url": "redis://127.0.0.1:6379/0"})
    config = QueueConfig(site_id="site", api_key="key", base_url="http://127.0.0.1:9",
                         **extra, **option)
    with pytest.raises(ConfigError, match=f"{next(iter(option))}='sync'.*EventQueue"):
        SyncEventQueue(config)
    batched = QueueConfig(site_id="site", api_key="key", base_url="http://127.0.0.1:9",
                          spool_path=str(tmp_path))
    SyncEventQueue(batched).close()


def test_async_code_can_await_a_sync_receipt(fake: ThreadedFake) -> None:
    """A SyncReceipt is a Receipt: `await receipt.wait()` works from an event loop."""
    with SyncEventQueue(fake.config()) as cio:
        receipt = cio.track("42", "purchase")
        assert isinstance(receipt, Receipt)
        outcome = asyncio.run(receipt.wait())
    assert outcome.status is OutcomeStatus.DELIVERED


def test_invalid_input_raises_in_the_calling_thread_and_enqueues_nothing(
        fake: ThreadedFake) -> None:
    """InvalidEventError is raised synchronously at the call site, before anything is queued."""
    with SyncEventQueue(fake.config()) as cio:
        with pytest.raises(InvalidEventError, match="customer_id"):
            cio.track("", "purchase")
        with pytest.raises(InvalidEventError, match="platform"):
            cio.add_device("42", "device-1", ["ios"])  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError, match="32768"):  # found by serialising
            cio.track("42", "big", {"blob": "x" * 40_000})
        assert cio.statistics().enqueued == 0
    assert fake.operations() == []


def test_eight_threads_deliver_every_operation_once_and_statistics_add_up(
        fake: ThreadedFake) -> None:
    """Calls from 8 threads are each delivered once, and every snapshot meanwhile adds up."""
    per_thread = 500
    snapshots: list[Statistics] = []
    producing = threading.Event()
    cio = SyncEventQueue(fake.config(batch_size=50))
    receipts: list[list[SyncReceipt]] = [[] for _ in range(THREADS)]

    def produce(index: int) -> None:
        for n in range(per_thread):
            receipts[index].append(cio.track(f"user-{index}", "tick", {"n": n}))

    def watch() -> None:
        while not producing.is_set():
            snapshots.append(cio.statistics())

    watcher = threading.Thread(target=watch)
    cio.start()
    watcher.start()
    run_threads(produce)
    producing.set()
    watcher.join(WAIT)
    final = cio.close()

    total = THREADS * per_thread
    assert final.enqueued == final.delivered == total
    assert final.pending == 0
    assert snapshots, "the watcher took no snapshot"
    assert all(s.enqueued == settled_sum(s) for s in snapshots)
    assert [s.enqueued for s in snapshots] == sorted(s.enqueued for s in snapshots)
    ids = fake.event_ids()
    assert len(ids) == total
    assert set(ids.values()) == {1}
    assert {r.event_id for rs in receipts for r in rs} == set(ids)


def test_on_outcome_runs_once_per_operation_on_the_queue_thread(fake: ThreadedFake) -> None:
    """on_outcome sees every outcome on the queue's own thread, where blocking calls refuse."""
    seen: list[tuple[str, str]] = []
    refusals: list[str] = []
    cio: SyncEventQueue

    def on_outcome(outcome: Outcome) -> None:
        seen.append((outcome.kind, threading.current_thread().name))
        if len(seen) > 1:
            return
        fresh = cio.identify("42", plan="pro")  # enqueueing from here is fine...
        for blocking in (fresh.result, cio.flush, cio.close):  # ...waiting is not
            try:
                blocking()
            except QueueUsageError:
                refusals.append("refused")

    cio = SyncEventQueue(fake.config(), on_outcome=on_outcome)
    cio.track("42", "purchase").result(WAIT)
    cio.flush(WAIT)
    cio.track("42", "after").result(WAIT)  # the refused close() closed nothing
    stats = cio.close()
    assert stats.delivered == 3
    assert seen == [(kind, "cio_queue.sync") for kind in ("track", "identify", "track")]
    assert refusals == ["refused"] * 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_raising_on_outcome_is_logged_and_delivery_goes_on(
        fake: ThreadedFake, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """A sync or async callback that raises is logged once per outcome, as EventQueue does."""
    def bad_sync(outcome: Outcome) -> None:
        raise RuntimeError("callback bug")

    async def bad_async(outcome: Outcome) -> None:
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="cio_queue"):
        cio = SyncEventQueue(fake.config(),
                             on_outcome=bad_sync if kind == "sync" else bad_async)
        for n in range(3):
            cio.track(str(n), "purchase")
        stats = cio.close(WAIT)
    assert stats.delivered == 3
    failures = [r for r in caplog.records if "cio_queue.on_outcome_failed" in r.getMessage()]
    assert len(failures) == 3
    assert all("callback bug" in repr(r.exc_info) for r in failures)


def test_overflow_raise_refuses_in_the_calling_thread(fake: ThreadedFake) -> None:
    """With overflow='raise', a call that finds max_queue_size pending raises QueueFullError."""
    fake.stop()  # nothing settles: every place stays taken
    cio = SyncEventQueue(fake.config(max_queue_size=5, batch_size=5, retry=FAST_RETRY))
    receipts = [cio.track("42", "tick") for _ in range(5)]
    with pytest.raises(QueueFullError, match="overflow='raise'"):
        cio.track("42", "one too many")
    assert cio.statistics().enqueued == 5
    fake.start()
    stats = cio.flush(timeout=WAIT)
    assert stats.delivered == 5
    assert all(r.result(0).status is OutcomeStatus.DELIVERED for r in receipts)
    cio.track("42", "room again").result(WAIT)
    cio.close()


def test_overflow_block_waits_for_a_place_then_times_out(fake: ThreadedFake) -> None:
    """With overflow='block', the caller waits for a freed place, or enqueue_timeout raises."""
    fake.stop()
    cio = SyncEventQueue(fake.config(max_queue_size=2, batch_size=2, overflow="block",
                                     enqueue_timeout=0.1, retry=FAST_RETRY))
    cio.track("42", "a")
    cio.track("42", "b")
    started = time.monotonic()
    with pytest.raises(QueueFullError, match="enqueue_timeout"):
        cio.track("42", "c")
    assert time.monotonic() - started >= 0.1
    cio.close(timeout=0.1)

    fake.start()
    fake.stop()
    cio = SyncEventQueue(fake.config(max_queue_size=2, batch_size=2, overflow="block",
                                     enqueue_timeout=None, retry=FAST_RETRY))
    cio.track("42", "a")
    cio.track("42", "b")
    blocked: list[SyncReceipt] = []
    caller = threading.Thread(target=lambda: blocked.append(cio.track("42", "c")))
    caller.start()
    fake.start()  # the first two are delivered, and their places go to the waiting caller
    caller.join(WAIT)
    assert not caller.is_alive()
    assert blocked[0].result(WAIT).status is OutcomeStatus.DELIVERED
    assert cio.close().delivered == 3


def test_close_wakes_blocked_callers_with_queue_closed(fake: ThreadedFake) -> None:
    """A caller blocked on a full queue gets QueueClosedError when the queue closes."""
    fake.stop()
    cio = SyncEventQueue(fake.config(max_queue_size=1, batch_size=1, overflow="block",
                                     retry=FAST_RETRY))
    cio.track("42", "a")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            cio.track("42", "b")
        except QueueClosedError as error:
            errors.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    stats = cio.close(timeout=0.1)
    caller.join(WAIT)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert (stats.enqueued, stats.failed) == (1, 1)  # unsent at the deadline, no file


def test_drop_policies_are_applied_by_the_queue_and_reported(fake: ThreadedFake) -> None:
    """On a full queue drop_newest drops the new operation, drop_oldest an older one; both count."""
    fake.stop()  # nothing settles: every place stays taken
    options: dict[str, Any] = {"max_queue_size": 5, "batch_size": 4, "flush_interval": 60,
                               "retry": FAST_RETRY}
    newest = SyncEventQueue(fake.config(overflow="drop_newest", **options))
    kept = [newest.track("42", "kept") for _ in range(5)]
    dropped = newest.track("42", "dropped")
    assert dropped.result(WAIT).status is OutcomeStatus.DROPPED
    assert dropped.result(0).reason == "queue_full"

    oldest = SyncEventQueue(fake.config(overflow="drop_oldest", **options))
    first = [oldest.track("42", "first") for _ in range(5)]
    last = oldest.track("42", "last")  # which older one goes depends on what is still queued

    fake.start()
    for queue in (newest, oldest):
        stats = queue.close()
        assert (stats.enqueued, stats.delivered, stats.dropped) == (6, 5, 1)
    assert all(r.result(0).status is OutcomeStatus.DELIVERED for r in kept)
    assert last.result(0).status is OutcomeStatus.DELIVERED
    assert [r.result(0).status for r in first].count(OutcomeStatus.DROPPED) == 1


def test_flush_waits_for_delivery_and_times_out_when_it_cannot(fake: ThreadedFake) -> None:
    """flush() returns once everything settled, or raises TimeoutError at its timeout."""
    cio = SyncEventQueue(fake.config(flush_interval=60, retry=FAST_RETRY))
    cio.track("42", "a")
    stats = cio.flush(timeout=WAIT)
    assert (stats.delivered, stats.pending) == (1, 0)
    fake.stop()
    receipt = cio.track("42", "b")
    with pytest.raises(TimeoutError):
        cio.flush(timeout=0.1)
    with pytest.raises(TimeoutError):
        receipt.result(timeout=0.05)
    fake.start()
    assert cio.flush(timeout=WAIT).delivered == 2
    cio.close()


def test_close_stops_intake_and_dead_letters_what_it_cannot_send(
        fake: ThreadedFake, tmp_path: Path) -> None:
    """close() refuses later calls, and what is unsent at its deadline goes to the file."""
    path = tmp_path / "dead.jsonl"
    fake.stop()
    cio = SyncEventQueue(fake.config(dead_letter_path=path, retry=FAST_RETRY))
    receipts = [cio.track("42", "tick") for _ in range(3)]
    started = time.monotonic()
    stats = cio.close(timeout=0.2)
    assert time.monotonic() - started < 0.2 + 3 * 3.0
    assert (stats.enqueued, stats.dead_lettered, stats.pending) == (3, 3, 0)
    assert [r.result(0).status for r in receipts] == [OutcomeStatus.DEAD_LETTERED] * 3
    assert len(path.read_text().splitlines()) == 3
    with pytest.raises(QueueClosedError):
        cio.track("42", "late")
    assert cio.close() == stats
    assert cio.statistics() == stats


def test_the_process_exit_drains_the_queue(fake: ThreadedFake) -> None:
    """A script that never closes its queue delivers everything at exit, DNS lookup included."""
    # The URL names a host, so the drain needs a lookup in a thread pool, which a plain
    # atexit handler could no longer get: concurrent.futures refuses work by then.
    script = textwrap.dedent("""
        from cio_queue import QueueConfig, SyncEventQueue

        cio = SyncEventQueue(QueueConfig.from_env(flush_interval=60, rate_limit=None))
        for n in range(500):
            cio.track("42", "tick", id=f"exit-{n}")
    """)
    by_name = fake.url.replace("127.0.0.1", "localhost")
    env = {**os.environ, **fake.env(), "CUSTOMERIO_BASE_URL": by_name}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=WAIT)
    assert fake.event_ids() == {f"exit-{n}": 1 for n in range(500)}


def test_the_process_exit_is_bounded_when_the_api_is_down(
        fake: ThreadedFake, tmp_path: Path) -> None:
    """With the API down, exit waits shutdown_timeout, then dead-letters what is unsent."""
    path = tmp_path / "dead.jsonl"
    script = textwrap.dedent(f"""
        from cio_queue import QueueConfig, RetryPolicy, SyncEventQueue

        cio = SyncEventQueue(QueueConfig.from_env(
            shutdown_timeout=0.5, dead_letter_path={str(path)!r},
            retry=RetryPolicy(attempts=1000, wait_initial=0.05, wait_max=0.05)))
        for n in range(10):
            cio.track("42", "tick", id=f"down-{{n}}")
    """)
    fake.stop()
    env = {**os.environ, **fake.env()}
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], env=env, check=True,
                   timeout=3 * (0.5 + CLOSE_MARGIN + 2.0))  # drain, margin, interpreter start
    assert time.monotonic() - started >= 0.5
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(record["event_id"] for record in records) == sorted(
        f"down-{n}" for n in range(10))
    assert {record["reason"] for record in records} == {"shutdown_deadline"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # Python 3.12+: threads
def test_a_forked_child_starts_its_own_thread(fake: ThreadedFake) -> None:
    """In a forked child the queue delivers through a thread of its own; the parent's is intact."""
    cio = SyncEventQueue(fake.config())
    parent_receipt = cio.track("42", "before-fork", id="parent-1")
    parent_receipt.result(WAIT)
    pending = cio.track("42", "pending-at-fork", id="parent-2")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            try:
                pending.result(WAIT)  # settled before the fork, or refused at once
                inherited = "done"
            except QueueUsageError:
                inherited = "usage-error"
            outcome = cio.track("42", "in-child", id="child-1").result(WAIT)
            stats = cio.close()
            os.write(write_end, f"{inherited} {outcome.status.value} {stats.enqueued}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    status = wait_for_child(pid)
    message = os.read(read_end, 200).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    inherited, child_status, child_enqueued = message.split()
    assert inherited in ("usage-error", "done")  # never a hang on the parent's thread
    assert (child_status, child_enqueued) == ("delivered", "1")
    assert cio.track("42", "after-fork", id="parent-3").result(WAIT).status \
        is OutcomeStatus.DELIVERED
    assert cio.close().enqueued == 3
    assert set(fake.event_ids()) == {"parent-1", "parent-2", "child-1", "parent-3"}


def test_a_sync_queue_sends_raw_v2_operations_and_checks_the_region() -> None:
    """SyncEventQueue.batch() and check() work as EventQueue's, without await."""
    with serve_in_thread(FakeTrackAPI(region="eu")) as fake:
        config = QueueConfig(site_id=fake.site_id, api_key=fake.api_key, base_url=fake.url,
                             region="eu", rate_limit=None, flush_interval=0.01)
        with SyncEventQueue(config) as queue:
            assert queue.check(timeout=10) == AccountRegion(Region.EU, Region.EU.value, 1)
            (receipt,) = queue.batch([{"type": "person", "identifiers": {"id": "42"},
                                       "action": "identify", "attributes": {"plan": "pro"}}])
            assert receipt.result(timeout=10).status is OutcomeStatus.DELIVERED
