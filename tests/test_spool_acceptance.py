"""Issue 12's acceptance, through the public API: SIGKILLs, outages and many processes.

The processes under test are children (``spool_queue_child.py``) that run an EventQueue
with a spool against a FakeTrackAPI in this process, and log each event id once its
``await queue.track(...)`` returned. Each child starts in a session of its own, and every
one still running at the end of a test is killed with its whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from cio_queue import EventQueue, QueueConfig, Receipt, Statistics
from cio_queue.testing import FakeTrackAPI

from .recipes import SERVER_WAIT, loaded_recipe, uvicorn_serving

pytestmark = pytest.mark.anyio

CHILD: Final = str(Path(__file__).with_name("spool_queue_child.py"))
SEED: Final = 20261201
START_WAIT: Final = 60.0
"""Seconds a child may take to import everything on this loaded machine."""
EXIT_WAIT: Final = 60.0
"""Seconds a child may take to drain and close once told to."""
KILL_WAIT: Final = 10.0
COMMIT_INTERVAL: Final = 0.05
"""The children's ``spool_commit_interval`` (the default)."""
MARGIN: Final = 0.5
"""Seconds beyond the commit interval that a loaded machine may take to commit a group."""


# --- children ----------------------------------------------------------------------------


@dataclass
class Child:
    """One child process, its stdout, and the log of the events it enqueued."""

    process: Process
    stdout: BufferedByteReceiveStream
    log: Path
    tag: str

    async def expect(self, word: str, within: float = START_WAIT) -> list[str]:
        """Read lines until one starts with ``word``; return its words."""
        with anyio.fail_after(within):
            while True:
                line = (await self.stdout.receive_until(b"\n", 1 << 20)).decode().split()
                if line and line[0] == word:
                    return line

    async def go(self) -> None:
        """Wait until the child has imported everything, then let it start its queue."""
        await self.expect("warm")
        assert self.process.stdin is not None
        await self.process.stdin.send(b"go\n")

    async def kill(self) -> None:
        """SIGKILL the child's process group and reap the child."""
        os.killpg(self.process.pid, signal.SIGKILL)
        with anyio.fail_after(KILL_WAIT):
            await self.process.wait()

    async def finish(self) -> dict[str, int]:
        """Close its stdin (stop enqueueing, drain, close); return its final statistics."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        closed = await self.expect("closed", within=EXIT_WAIT)
        with anyio.fail_after(KILL_WAIT):
            assert await self.process.wait() == 0
        stats: dict[str, int] = json.loads(" ".join(closed[1:]))
        return stats

    def returned(self) -> dict[str, tuple[int, float]]:
        """The events whose enqueue call returned: event id -> (N, when it returned)."""
        found: dict[str, tuple[int, float]] = {}
        text = self.log.read_text() if self.log.exists() else ""
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):  # a line cut by the kill was never finished
                event_id, number, when = line.split()
                found[event_id] = (int(number), float(when))
        return found


class Children:
    """Start children; at the end, kill every one still running, with its process group."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._children: list[Child] = []

    async def spawn(self, spool: Path, url: str, tag: str, *options: str) -> Child:
        """Start a child (it imports, prints ``warm`` and waits for :meth:`Child.go`)."""
        log = self._directory / f"{tag}.log"
        process = await anyio.open_process(
            [sys.executable, CHILD, str(spool), url, str(log), "--tag", tag,
             "--events-log", str(self._directory / f"{tag}.events"), *options],
            stderr=None, start_new_session=True)
        assert process.stdout is not None
        child = Child(process, BufferedByteReceiveStream(process.stdout), log, tag)
        self._children.append(child)
        return child

    async def __aenter__(self) -> Children:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            for child in self._children:
                if child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.process.pid, signal.SIGKILL)
                with anyio.fail_after(KILL_WAIT):
                    await child.process.aclose()


def deliveries(fake: FakeTrackAPI) -> dict[tuple[str, int], list[str]]:
    """The fake's accepted events by operation (tag, N): the event id of each delivery."""
    found: dict[tuple[str, int], list[str]] = defaultdict(list)
    for event in fake.accepted_events():
        found[event["data"]["tag"], event["data"]["n"]].append(event["id"])
    return found


def assert_duplicates_keep_their_id(delivered: dict[tuple[str, int], list[str]]) -> int:
    """Every operation delivered more than once carried one event id; return the extras."""
    changed = {op: ids for op, ids in delivered.items() if len(set(ids)) > 1}
    assert not changed, f"resent with a new event id: {list(changed.items())[:5]}"
    return sum(len(ids) - 1 for ids in delivered.values())


def assert_invariant(stats: dict[str, int]) -> None:
    """The Statistics invariant, on a child's final statistics."""
    settled = ("delivered", "rejected", "failed", "dropped", "dead_lettered", "spooled",
               "pending")
    assert stats["enqueued"] == sum(stats[name] for name in settled), stats


def spool_files(directory: Path, pattern: str = "*.sqlite3*") -> list[Path]:
    """The spool files in ``directory`` (with SQLite's side files, by default)."""
    return sorted(directory.glob("spool-" + pattern))


# --- SIGKILL at random moments ------------------------------------------------------------


KILLS: Final = 22
SPARES: Final = 3
"""Children importing ahead of their turn (an import takes over a second here)."""
OUTAGE_TOGGLES: Final = {5: "down", 9: "up", 14: "down", 17: "up"}
"""Cycles in which the fake stops or starts again, at a random moment before the kill."""


@dataclass(frozen=True)
class Killed:
    """One child's cycle: when it was killed, what had returned, and whether the API was up."""

    kill_time: float
    returned: dict[str, tuple[int, float]]
    api_down: bool


async def _cycle(child: Child, fake: FakeTrackAPI, rng: random.Random,
                 toggle: str | None) -> Killed:
    """Let the child run for a random while (toggling the fake on the way), then kill it."""
    await child.go()
    run_for = rng.uniform(0.1, 0.9)
    if toggle is not None:
        first = rng.uniform(0.0, run_for)
        await anyio.sleep(first)
        await (fake.stop() if toggle == "down" else fake.start())
        run_for -= first
    await anyio.sleep(run_for)  # the random moment of the kill
    kill_time = time.monotonic()
    await child.kill()
    return Killed(kill_time, child.returned(), not fake.running)


@pytest.mark.parametrize("durability", ["batched", "sync"])
async def test_sigkills_at_random_moments_lose_only_what_the_mode_allows(
        tmp_path: Path, durability: str) -> None:
    """Killed 22 times, outages included, children lose no operation their mode promised.

    With ``sync`` every operation whose enqueue call returned is delivered; with
    ``batched`` every one that returned more than the commit interval (plus MARGIN) before
    its child's kill. Each child adopts the spool files its killed predecessors left; the
    last one drains everything and exits cleanly. A resend keeps its event id.
    """
    rng = random.Random(f"{SEED}-{durability}")
    spool = tmp_path / "spool"
    options = ("--durability", durability, "--commit-interval", str(COMMIT_INTERVAL),
               "--rate", "200", "--max-queue-size", "100")
    cycles: list[Killed] = []
    async with FakeTrackAPI() as fake, Children(tmp_path) as children:
        spares = deque([await children.spawn(spool, fake.url, f"c{n}", *options)
                        for n in range(SPARES)])
        for number in range(KILLS):
            child = spares.popleft()
            spares.append(await children.spawn(spool, fake.url, f"c{number + SPARES}",
                                               *options))
            cycles.append(await _cycle(child, fake, rng, OUTAGE_TOGGLES.get(number)))
        assert fake.running
        last = spares.popleft()
        await last.go()
        await last.expect("started")
        await anyio.sleep(rng.uniform(0.2, 0.5))  # enqueue a while, then stop and drain
        stats = await last.finish()
        survivors = last.returned()
        delivered = deliveries(fake)

    ids = {event_id for ids in delivered.values() for event_id in ids}
    assert set(survivors) <= ids, "the last child exited cleanly: it delivered everything"
    allowed_loss, oldest_lost = 0, 0.0
    for cycle in cycles:
        cutoff = cycle.kill_time - COMMIT_INTERVAL - MARGIN
        promised = {event_id for event_id, (_, when) in cycle.returned.items()
                    if durability == "sync" or when < cutoff}
        lost = promised - ids
        assert not lost, f"lost {len(lost)} operations that returned before a kill"
        unsent = [cycle.kill_time - when for event_id, (_, when) in cycle.returned.items()
                  if event_id not in ids]
        allowed_loss += len(unsent)
        oldest_lost = max([oldest_lost, *unsent])
    duplicates = assert_duplicates_keep_their_id(delivered)
    returned = sum(len(cycle.returned) for cycle in cycles) + len(survivors)
    during_outages = sum(len(cycle.returned) for cycle in cycles if cycle.api_down)
    print(f"{durability}: {KILLS} kills, {returned} returned ({during_outages} while the API "
          f"was down), {len(ids)} delivered, {duplicates} duplicates, {allowed_loss} lost, "
          f"returned at most {oldest_lost * 1000:.0f} ms before their kill")
    assert during_outages > 0, "enqueue calls returned during the outages"
    assert (stats["failed"], stats["dead_lettered"], stats["spooled"]) == (0, 0, 0)
    assert_invariant(stats)
    assert spool_files(spool) == []  # every file was adopted, drained and removed
    if durability == "sync":
        assert allowed_loss == 0


# --- an outage under uvicorn -------------------------------------------------------------


RATE: Final = 200.0
"""Requests per second, sent on schedule whatever the answers take (an open loop)."""
BEFORE, OUTAGE, AFTER = 200, 800, 200
"""Requests before the outage, during its 4 seconds, and after it."""
MAX_QUEUE_SIZE: Final = 100
"""Small enough that memory fills in the outage's first half second."""
ENQUEUE_BOUND: Final = 0.05
"""Seconds one enqueue call may take at most: it never waits, but this machine is loaded."""
ANSWER_BOUND: Final = 0.25
"""Seconds within which 99% of the answers during the outage arrive (about 1 ms unloaded)."""
DELIVERY_WAIT: Final = 40.0
"""Seconds to deliver everything after the outage: backoffs up to 10 s, flushes every 5 s."""


@dataclass
class Watch:
    """What the queue looked like at every enqueue call of the app's handler."""

    queue: EventQueue | None = None
    calls: list[float] = field(default_factory=list)
    peak_pending: int = 0
    peak_spooled: int = 0

    def look(self, queue: EventQueue, seconds: float) -> None:
        """Record one call and check the queue's statistics right after it."""
        self.queue = queue
        self.calls.append(seconds)
        stats = queue.statistics()
        assert stats.pending <= MAX_QUEUE_SIZE, stats  # memory stays bounded
        assert stats.enqueued == settled_sum(stats), stats
        self.peak_pending = max(self.peak_pending, stats.pending)
        self.peak_spooled = max(self.peak_spooled, stats.spooled)


def settled_sum(stats: Statistics) -> int:
    return (stats.delivered + stats.rejected + stats.failed + stats.dropped
            + stats.dead_lettered + stats.spooled + stats.pending)


@pytest.fixture
def watched_recipe_queue(monkeypatch: pytest.MonkeyPatch) -> Watch:
    """Time every EventQueue.track call and check the queue's statistics at each one.

    Also lowers the recipe's max_queue_size to MAX_QUEUE_SIZE, through QueueConfig.from_env.
    """
    watch = Watch()
    track = EventQueue.track
    from_env = QueueConfig.from_env

    async def timed_track(self: EventQueue, *args: Any, **kwargs: Any) -> Receipt:
        started = time.perf_counter()
        receipt = await track(self, *args, **kwargs)
        watch.look(self, time.perf_counter() - started)
        return receipt

    def small_from_env(cls: type[QueueConfig], /, environ: Mapping[str, str] | None = None,
                       **overrides: Any) -> QueueConfig:
        return from_env(environ, **{"max_queue_size": MAX_QUEUE_SIZE, **overrides})

    monkeypatch.setattr(EventQueue, "track", timed_track)
    monkeypatch.setattr(QueueConfig, "from_env", classmethod(small_from_env))
    return watch


async def test_the_fastapi_recipe_answers_every_request_through_an_outage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watched_recipe_queue: Watch) -> None:
    """Through a 4 s outage at 200 requests/s, the README's FastAPI app answers every one 200.

    The recipe runs as written under uvicorn (with max_queue_size lowered to 100, so
    memory fills): no enqueue call waits, memory holds at most max_queue_size operations
    while the spool takes the rest, and every event is delivered once the API is back.
    """
    watch = watched_recipe_queue
    monkeypatch.chdir(tmp_path)  # the recipe's spool_path is relative
    statuses: list[int] = []
    latencies: dict[int, float] = {}
    event_ids: list[str] = []
    async with FakeTrackAPI() as fake:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", fake.site_id)
        monkeypatch.setenv("CUSTOMERIO_API_KEY", fake.api_key)
        monkeypatch.setenv("CUSTOMERIO_BASE_URL", fake.url)
        with loaded_recipe("fastapi", tmp_path) as recipe:
            async with uvicorn_serving(recipe.app) as url, aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=SERVER_WAIT)) as session:

                async def sign_up(number: int) -> None:
                    started = time.perf_counter()
                    async with session.post(f"{url}/signup",
                                            params={"email": f"u{number}@example.com"}) as answer:
                        statuses.append(answer.status)
                        event_ids.append((await answer.json())["event_id"])
                    latencies[number] = time.perf_counter() - started

                loop_started = anyio.current_time()
                async with anyio.create_task_group() as requests:
                    for number in range(BEFORE + OUTAGE + AFTER):
                        if number == BEFORE:
                            await fake.stop()
                        elif number == BEFORE + OUTAGE:
                            spooled_at_recovery = watch.peak_spooled
                            await fake.start()
                            recovered = anyio.current_time()
                        await sleep_until(loop_started + number / RATE)
                        requests.start_soon(sign_up, number)
                wanted = set(event_ids)
                with anyio.fail_after(DELIVERY_WAIT):
                    await fake.wait_until(lambda: len(fake.operations) >= len(wanted) and (
                        wanted <= {event["id"] for event in fake.accepted_events()}))
                delivered_after = anyio.current_time() - recovered
        assert watch.queue is not None
        stats = watch.queue.statistics()  # final: the lifespan closed the queue
    calls = sorted(watch.calls)
    phases = {"before": range(BEFORE), "during": range(BEFORE, BEFORE + OUTAGE),
              "after": range(BEFORE + OUTAGE, BEFORE + OUTAGE + AFTER)}
    answers = {name: sorted(latencies[n] for n in numbers) for name, numbers in phases.items()}
    print(f"{len(statuses)} requests at {RATE:g}/s, a {OUTAGE / RATE:g} s outage: enqueue "
          f"p50 {calls[len(calls) // 2] * 1e6:.0f} µs, max {calls[-1] * 1000:.1f} ms; answer "
          "p50/p99 " + ", ".join(
              f"{name} {times[len(times) // 2] * 1000:.1f}/"
              f"{times[int(len(times) * 0.99)] * 1000:.1f} ms" for name, times in answers.items())
          + f"; peak pending {watch.peak_pending}, spooled {spooled_at_recovery} at recovery, "
          f"all delivered {delivered_after:.1f} s after it")
    assert statuses == [200] * (BEFORE + OUTAGE + AFTER)
    assert len(wanted) == len(statuses)
    assert calls[-1] < ENQUEUE_BOUND
    assert answers["during"][int(OUTAGE * 0.99)] < ANSWER_BOUND
    assert watch.peak_pending == MAX_QUEUE_SIZE  # memory filled, and held no more
    assert spooled_at_recovery >= OUTAGE - 2 * MAX_QUEUE_SIZE  # the spool took the rest
    assert (stats.delivered, stats.failed, stats.dead_lettered, stats.spooled) == (
        len(wanted), 0, 0, 0)
    assert spool_files(tmp_path / "cio-spool") == []


async def sleep_until(deadline: float) -> None:
    """Sleep until ``deadline`` on anyio's clock (at once if it has passed)."""
    await anyio.sleep(max(0.0, deadline - anyio.current_time()))


# --- many processes on one spool_path ----------------------------------------------------


WORKERS: Final = 4
PER_WORKER: Final = 150
"""Events each worker enqueues: more than its max_queue_size, so some wait on disk only."""


async def test_a_new_process_adopts_the_files_of_killed_workers_only(tmp_path: Path) -> None:
    """Four workers share a spool_path while the API is down; two are SIGKILLed.

    A new process adopts exactly the killed workers' files (the live ones keep theirs) and,
    with the API back, delivers their operations; the survivors deliver their own and exit
    cleanly. Every event whose enqueue call returned is delivered, a resend keeps its id,
    and no spool file is left.
    """
    spool = tmp_path / "spool"
    options = ("--durability", "sync", "--count", str(PER_WORKER), "--drain")
    async with FakeTrackAPI() as fake, Children(tmp_path) as children:
        await fake.stop()
        workers = [await children.spawn(spool, fake.url, f"w{n}", *options)
                   for n in range(WORKERS)]
        adopter = await children.spawn(spool, fake.url, "adopter", "--count", "0", "--drain")
        for worker in workers:
            await worker.go()
        for worker in workers:
            await worker.expect("produced")  # every call returned: committed, not sent
        killed, survivors = workers[:2], workers[2:]
        for worker in killed:
            await worker.kill()
        assert len(spool_files(spool, "*.sqlite3")) == WORKERS
        assert fake.operations == []  # down all along: every operation is in the spool
        await fake.start()
        await adopter.go()
        await adopter.expect("started")
        adopted = await adopter.finish()
        left = {path.name.split("-")[1] for path in spool_files(spool, "*.sqlite3")}
        assert left == {str(worker.process.pid) for worker in survivors}
        finals = [await worker.finish() for worker in survivors]
        delivered = deliveries(fake)

    assert adopted["enqueued"] == len(killed) * PER_WORKER  # exactly the killed ones' rows
    assert adopted["delivered"] == adopted["enqueued"]
    for stats in [adopted, *finals]:
        assert_invariant(stats)
        assert (stats["failed"], stats["dead_lettered"], stats["spooled"]) == (0, 0, 0)
    ids = {event_id for ids in delivered.values() for event_id in ids}
    for worker in workers:
        returned = worker.returned()
        assert len(returned) == PER_WORKER
        assert set(returned) <= ids, f"{worker.tag} lost {len(set(returned) - ids)}"
    assert set(delivered) == {(f"w{n}", i) for n in range(WORKERS) for i in range(PER_WORKER)}
    assert_duplicates_keep_their_id(delivered)
    assert spool_files(spool) == []
