"""Replaying a dead-letter file: beside a live queue, after crashes, on a full disk, at scale.

Integration tests over real HTTP against FakeTrackAPI on 127.0.0.1. Where two processes
must share a dead-letter file, or a server must not share the measured process, the
other side runs in a process of its own ("spawn" context, every join bounded).
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest

import cio_queue
from cio_queue import (
    EventQueue,
    OutcomeStatus,
    QueueConfig,
    Receipt,
    RetryPolicy,
    Statistics,
)
from cio_queue._replay import SUBMIT_STEP
from cio_queue._replayfiles import CHUNK_LINES
from cio_queue.testing import FakeTrackAPI, refused_url

from .recording import RecordingSender

SPAWN: Final = multiprocessing.get_context("spawn")
QUICK_RETRY: Final = RetryPolicy(attempts=5, timeout=30, wait_initial=0.005, wait_max=0.05,
                                 wait_jitter=0.005)


def config(url: str, **overrides: Any) -> QueueConfig:
    """A config for a FakeTrackAPI at ``url`` (default credentials), tuned for speed."""
    values: dict[str, Any] = {
        "site_id": "fake-site", "api_key": "fake-key", "base_url": url,
        "rate_limit": None, "flush_interval": 0.01, "request_timeout": 10.0,
        "retry": QUICK_RETRY, "shutdown_timeout": 5.0,
    }
    values.update(overrides)
    return QueueConfig(**values)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def refuse_everything(_request: Any) -> str:
    return "refused by the test"


def refuse_poison(op: dict[str, Any]) -> str | None:
    """The fake's v2 hook: refuse events named ``poison...``."""
    name = op.get("name")
    return "poisoned event" if isinstance(name, str) and name.startswith("poison") else None


def refuse_poison_v1(request: Any) -> str | None:
    """The fake's v1 hook: refuse events named ``poison...``."""
    body = request.json
    return refuse_poison(body) if isinstance(body, dict) else None


def delivered_events(fake: FakeTrackAPI) -> dict[str, list[str]]:
    """The event ids the server accepted, per person."""
    copies: dict[str, list[str]] = defaultdict(list)
    for event in fake.accepted_events():
        copies[str(event["customer"])].append(event["id"])
    return copies


async def write_dead_letters(path: Path, count: int, *, poison_every: int = 0,
                             transport: str = "batch", prefix: str = "") -> dict[str, str]:
    """Fill ``path`` with ``count`` tracks that failed against a server that is down.

    Returns each person's event id; people ``p...`` have events named ``poison...``.
    """
    with refused_url() as url:
        cfg = config(url, transport=transport, dead_letter_path=path,
                     batch_size=min(100, count), retry=RetryPolicy(attempts=1),
                     max_queue_size=count, overflow="block", max_concurrency=50,
                     shutdown_timeout=60)
        events: dict[str, str] = {}
        async with EventQueue(cfg) as queue:
            for i in range(count):
                poison = poison_every and i % poison_every == 0
                key = f"{prefix}p{i}" if poison else f"{prefix}c{i}"
                receipt = await queue.track(key, f"poison-{i}" if poison else f"ev-{i}",
                                            {"n": i})
                assert receipt.event_id is not None
                events[key] = receipt.event_id
    stats = queue.statistics()
    assert stats.failed + stats.dead_lettered == count, stats  # each one is in the file
    return events


def modes_in(directory: Path) -> dict[str, int]:
    """The permission bits of each file in ``directory``, by name."""
    return {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}


# --- 13. replay beside a live queue, in two processes --------------------------------------

LIVE_OPERATIONS: Final = 3000


def run_live_queue(path: str, count: int, results: Any) -> None:
    """Process body: a live queue whose every operation is refused, so dead-lettered."""
    logging.getLogger("cio_queue").setLevel(logging.ERROR)
    try:
        results.put(("ok", anyio.run(live_queue, Path(path), count)))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


async def live_queue(path: Path, count: int) -> tuple[dict[str, str], int]:
    """Refuse every operation: each lands in the file as soon as its request ends.

    Returns the event id of each person whose line was written, and how many ended failed.
    """
    async with FakeTrackAPI(reject=refuse_everything, reject_op=refuse_everything) as fake:
        cfg = config(fake.url, dead_letter_path=path, batch_size=10, max_queue_size=count)
        receipts: list[Receipt] = []
        async with EventQueue(cfg) as queue:
            for i in range(count):
                receipts.append(await queue.track(f"live-{i}", "ev", {"n": i}))
                if i % 10 == 9:
                    await anyio.sleep(0.002)  # a steady stream, not one burst
    recorded = {str(o.customer_id): str(o.event_id) for o in (r.outcome for r in receipts)
                if o is not None and o.status in (OutcomeStatus.REJECTED,
                                                  OutcomeStatus.DEAD_LETTERED)}
    return recorded, queue.statistics().failed


def run_replays(path: str, stop: ProcessEvent, results: Any) -> None:
    """Process body: replay ``path`` against an accepting server until ``stop`` is set."""
    logging.getLogger("cio_queue").setLevel(logging.ERROR)
    try:
        results.put(("ok", anyio.run(replay_until, Path(path), stop)))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


async def replay_until(path: Path, stop: ProcessEvent) -> tuple[dict[str, list[str]], int]:
    """Replay again and again; return the event ids delivered per person and the run count."""
    runs = 0
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url)
        while not stop.is_set():
            try:
                await cio_queue.replay(path, cfg)
            except FileNotFoundError:
                await anyio.sleep(0.005)  # nothing written yet
            else:
                runs += 1
        return dict(delivered_events(fake)), runs


def result_of(results: Any, timeout: float) -> Any:
    status, value = results.get(timeout=timeout)
    assert status == "ok", value
    return value


def stop_process(process: BaseProcess) -> None:
    process.join(30)
    if process.is_alive():
        process.kill()
        process.join(10)


def test_replay_beside_a_live_queue_in_another_process_loses_no_line(tmp_path: Path) -> None:
    """Replays racing a live queue's appends: each recorded operation is delivered or kept."""
    path = tmp_path / "dead.jsonl"
    live_results, replay_results = SPAWN.Queue(), SPAWN.Queue()
    stop = SPAWN.Event()
    live = SPAWN.Process(target=run_live_queue, args=(str(path), LIVE_OPERATIONS, live_results))
    replayer = SPAWN.Process(target=run_replays, args=(str(path), stop, replay_results))
    replayer.start()
    live.start()
    try:
        recorded, failed = result_of(live_results, 120)
        stop.set()
        delivered, runs = result_of(replay_results, 120)
    finally:
        stop.set()
        stop_process(live)
        stop_process(replayer)
    assert (live.exitcode, replayer.exitcode) == (0, 0)
    assert (len(recorded), failed) == (LIVE_OPERATIONS, 0)
    assert runs >= 5, f"only {runs} replays ran beside the live queue"
    kept = Counter(r["customer_id"] for r in read_records(path))
    lost = [key for key in recorded if not delivered.get(key) and not kept[key]]
    twice = [key for key in recorded if len(delivered.get(key, [])) + kept[key] > 1]
    assert lost == [], f"{len(lost)} of {len(recorded)} lines lost in {runs} replays"
    assert twice == []
    assert all(set(delivered.get(key, [])) <= {eid} for key, eid in recorded.items())
    assert sum(kept.values()) + sum(len(v) for v in delivered.values()) == LIVE_OPERATIONS


# --- 14. a full disk ---------------------------------------------------------------------------

class Disk:
    """A directory whose disk the test can fill up and free again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def fill(self) -> None:
        """Leave (almost) no room: writes fail with ENOSPC, after a short one at most."""
        raise NotImplementedError

    def free(self) -> None:
        """Give the room back."""
        raise NotImplementedError


class Tmpfs(Disk):
    """A real 64 KiB tmpfs, mounted for the test (needs root)."""

    def fill(self) -> None:
        """Write a filler file until the tmpfs is full."""
        with (self.directory / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise

    def free(self) -> None:
        """Remove the filler file."""
        (self.directory / "filler").unlink()


class InjectedFullDisk(Disk):
    """``os.write`` to files in the directory writes a few bytes, then raises ENOSPC."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(directory)
        self.room: int | None = None  # bytes left; None: no limit
        real_write = os.write
        device = os.stat(directory).st_dev

        def write(fd: int, data: Any) -> int:
            if self.room is None or not self._in_directory(fd, device):
                return real_write(fd, data)
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = real_write(fd, bytes(data)[:self.room])
            self.room -= written
            return written

        monkeypatch.setattr(os, "write", write)

    def _in_directory(self, fd: int, device: int) -> bool:
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return os.fstat(fd).st_dev == device
        return target.parent == self.directory

    def fill(self) -> None:
        """Let 100 more bytes through, then fail every write."""
        self.room = 100

    def free(self) -> None:
        """Let every write through."""
        self.room = None


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    """A disk that can be filled: a real tmpfs when root may mount one, else ENOSPC injected."""
    directory = tmp_path / "disk"
    directory.mkdir()
    if request.param == "injected":
        yield InjectedFullDisk(directory, monkeypatch)
        return
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                              str(directory)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield Tmpfs(directory)
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def refuse_r(request: Any) -> int:
    """RecordingSender answer: refuse operations for people ``r...``, accept the others."""
    return 400 if "/customers/r" in request.path else 200


async def dead_letter_refused(path: Path, keys: list[str]) -> Statistics:
    """Run a queue whose operations for ``keys`` (people ``r...``) are refused."""
    cfg = config("http://127.0.0.1:9", transport="v1", dead_letter_path=path)
    with anyio.fail_after(30):
        async with EventQueue(cfg, sender=RecordingSender(refuse_r)) as queue:
            for key in keys:
                await queue.track(key, "ev", {"pad": "x" * 300})
    return queue.statistics()


@pytest.mark.anyio
async def test_a_full_disk_never_leaves_a_torn_line_and_what_was_not_written_ends_failed(
        full_disk: Disk, caplog: pytest.LogCaptureFixture) -> None:
    """ENOSPC mid-append: the file ends in a whole line, and no unwritten record is reported."""
    path = full_disk.directory / "dead.jsonl"
    assert (await dead_letter_refused(path, ["r0", "r1"])).rejected == 2
    full_disk.fill()

    sender = RecordingSender()
    sender.hold.clear()  # every request hangs: all 20 are unsent at the deadline
    cfg = config("http://127.0.0.1:9", transport="v1", dead_letter_path=path,
                 shutdown_timeout=0.2, batch_size=20)
    queue = EventQueue(cfg, sender=sender)
    receipts = [await queue.track(f"u{i}", "ev", {"pad": "x" * 300}) for i in range(20)]
    with caplog.at_level(logging.INFO, logger="cio_queue"), anyio.fail_after(30):
        await sender.wait_for(10)
        stats = await queue.aclose()
    assert (stats.failed, stats.dead_lettered, stats.pending) == (20, 0, 0)
    assert all(r.outcome and r.outcome.status is OutcomeStatus.FAILED for r in receipts)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("dead_letter_write_failed" in m and "count=20" in m for m in errors), errors
    said = [int(n) for r in caplog.records
            for n in re.findall(r"dead_lettered=(\d+)", r.getMessage())]
    assert said, "the closing line was not logged"
    assert not any(said), "a log line counted records that were never written"
    text = path.read_bytes()
    assert text.endswith(b"\n")
    assert [r["customer_id"] for r in read_records(path)] == ["r0", "r1"]

    full_disk.free()
    assert (await dead_letter_refused(path, ["r2"])).rejected == 1
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["customer_id"] for line in lines[:-1]] == ["r0", "r1", "r2"]


# --- 15. file modes ----------------------------------------------------------------------------

@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file created without a mode is world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.anyio
@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("mode", [0o600, 0o640], ids=["0600", "0640"])
async def test_replay_keeps_the_files_mode_and_makes_its_own_files_owner_only(
        tmp_path: Path, mode: int) -> None:
    """After interrupted and finished replays, the file keeps its mode; new files are 0600."""
    path = tmp_path / "dead.jsonl"
    await write_dead_letters(path, 400, poison_every=10, transport="v1")
    path.chmod(mode)
    async with FakeTrackAPI(reject=refuse_poison_v1, reject_op=refuse_poison,
                            latency=0.002) as fake:
        cfg = config(fake.url, transport="v1", max_concurrency=4)
        with anyio.fail_after(60):
            with anyio.CancelScope() as interrupted:
                async with anyio.create_task_group() as tg:
                    async def interrupt() -> None:
                        await fake.wait_until(lambda: len(fake.log) >= 100)
                        interrupted.cancel()

                    tg.start_soon(interrupt)
                    await cio_queue.replay(path, cfg)
            modes = modes_in(tmp_path)
            assert set(modes.values()) <= {mode, 0o600}, modes
            stats = await cio_queue.replay(path, cfg)
    assert stats.rejected == 40
    assert path.stat().st_mode & 0o777 == mode
    assert set(modes_in(tmp_path).values()) <= {mode, 0o600}
    assert len(read_records(path)) == 40


# --- 16. lines that are not operations ----------------------------------------------------------

async def mixed_dead_letters(path: Path) -> list[str]:
    """Dead-letter one operation of several kinds (for people 40..45); return the lines."""
    with refused_url() as url:
        cfg = config(url, transport="v1", dead_letter_path=path, retry=RetryPolicy(attempts=1))
        async with EventQueue(cfg) as queue:
            await queue.track("40", "ev", {"n": 40})
            await queue.add_device("41", "tok-41", "ios")
            await queue.delete_device("42", "tok-42")
            await queue.identify("43", plan="secret-plan")
            await queue.track("44", "ev", {"n": 44})
            await queue.delete("45")
    return [json.dumps(record) for record in read_records(path)]


def bad_lines(good: list[str]) -> list[tuple[str, str]]:
    """Lines a dead-letter file must never turn into requests, each with why."""
    by_kind = {json.loads(line)["kind"]: json.loads(line) for line in good}
    device = by_kind["add_device"]
    without_device = {**device, "body": {}}
    remove = by_kind["delete_device"]
    dots = {**remove, "path": "/customers/42/devices/.."}
    encoded_dots = {**remove, "path": "/customers/42/devices/%2E%2E"}
    climbing = {**by_kind["identify"], "path": "/customers/43/../44"}
    elsewhere = {**by_kind["identify"], "path": "/customers/99"}
    bad_method = {**by_kind["delete"], "method": "GET"}
    return [
        (json.dumps(without_device), "add_device without device"),
        ("{not json", "not JSON"),
        (json.dumps(dots), "a .. segment"),
        (json.dumps(encoded_dots), "an encoded .. segment"),
        (json.dumps(climbing), "a .. inside the path"),
        (json.dumps(elsewhere), "a path for another person"),
        (json.dumps(bad_method), "a method its kind never uses"),
        (json.dumps({**by_kind["track"], "body": ["n", 1]}), "a body that is not an object"),
        ('{"format": "cio-queue/dead-letter/1", "kind": "track", "body": NaN}', "NaN"),
        (json.dumps(["a", "list"]), "not an object"),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["v1", "batch"])
async def test_a_bad_line_is_kept_unchanged_and_reported_and_the_rest_is_replayed(
        tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture) -> None:
    """Lines that are no valid operation (dot segments too) stay as they are; others go."""
    path = tmp_path / "dead.jsonl"
    good = await mixed_dead_letters(path)
    bad = bad_lines(good)
    # Good and bad lines alternate; line numbers count from 1.
    lines: list[str] = []
    bad_at: dict[int, str] = {}
    for i in range(max(len(good), len(bad))):
        if i < len(bad):
            lines.append(bad[i][0])
            bad_at[len(lines)] = bad[i][1]
        if i < len(good):
            lines.append(good[i])
    path.write_text("".join(line + "\n" for line in lines))
    async with FakeTrackAPI() as fake:
        with caplog.at_level(logging.WARNING, logger="cio_queue"), anyio.fail_after(30):
            stats = await cio_queue.replay(path, config(fake.url, transport=transport))
        accepted = len(fake.operations)
    # Only the good lines became operations, and each was delivered.
    assert (stats.enqueued, stats.delivered, accepted) == (len(good), len(good), len(good))
    assert path.read_text().splitlines() == [line for n, line in enumerate(lines, 1)
                                             if n in bad_at]
    warned = {int(n) for r in caplog.records if r.levelno == logging.WARNING
              for n in re.findall(r"\bline=(\d+)", r.getMessage())}
    assert warned == set(bad_at), (warned, bad_at)
    assert not any("secret-plan" in r.getMessage() or "tok-4" in r.getMessage()
                   for r in caplog.records), "a log line repeated a payload"


# --- one replay of a file at a time -------------------------------------------------------------

@asynccontextmanager
async def replay_in_progress(path: Path) -> AsyncIterator[None]:
    """Run a replay of ``path`` that hangs on its first request until the block ends."""
    async with FakeTrackAPI(latency=60) as fake, anyio.create_task_group() as tg:
        cfg = config(fake.url, transport="v1", shutdown_timeout=0.2, max_concurrency=1)
        tg.start_soon(cio_queue.replay, path, cfg)
        with anyio.fail_after(30):
            await fake.wait_until(lambda: fake.in_flight >= 1)
        yield
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_second_replay_of_the_same_file_is_refused(tmp_path: Path) -> None:
    """While one replay runs, another of the same file raises ReplayInProgressError."""
    path = tmp_path / "dead.jsonl"
    await write_dead_letters(path, 5)
    async with replay_in_progress(path), FakeTrackAPI() as fake:
        with pytest.raises(cio_queue.ReplayInProgressError, match="already being replayed"):
            await cio_queue.replay(path, config(fake.url))
        assert fake.log == []
    async with FakeTrackAPI() as fake:
        with anyio.fail_after(30):
            stats = await cio_queue.replay(path, config(fake.url))
    assert stats.delivered == 5
    assert read_records(path) == []


# --- 17. a large file: the event loop stays free and memory stays flat ---------------------------

def serve_fake(conn: Any, stop: ProcessEvent) -> None:
    """Process body: serve a FakeTrackAPI until ``stop``; report the operations accepted."""
    logging.getLogger("cio_queue").setLevel(logging.ERROR)
    anyio.run(serve_until, conn, stop)


async def serve_until(conn: Any, stop: ProcessEvent) -> None:
    async with FakeTrackAPI() as fake:
        conn.send(fake.url)
        await anyio.to_thread.run_sync(stop.wait, 300)
        conn.send(len(fake.operations))


@asynccontextmanager
async def fake_in_another_process() -> AsyncIterator[tuple[str, list[int]]]:
    """A FakeTrackAPI in a process of its own; after the block, the count of accepted ops."""
    parent, child = SPAWN.Pipe()
    stop = SPAWN.Event()
    server = SPAWN.Process(target=serve_fake, args=(child, stop))
    server.start()
    accepted: list[int] = []
    try:
        assert await anyio.to_thread.run_sync(parent.poll, 60), "the fake did not start"
        yield parent.recv(), accepted
        stop.set()
        assert await anyio.to_thread.run_sync(parent.poll, 60), "the fake did not answer"
        accepted.append(parent.recv())
    finally:
        stop.set()
        await anyio.to_thread.run_sync(stop_process, server)


MEMORY_SMALL: Final = 4_000
MEMORY_LARGE: Final = 20_000
LARGE_FILE: Final = MEMORY_LARGE
STALL_FILE: Final = 10 * CHUNK_LINES


@pytest.fixture(scope="module")
def large_dead_letter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dead-letter file of LARGE_FILE tracks, made once for the module by a real queue."""
    path = tmp_path_factory.mktemp("large") / "dead.jsonl"
    anyio.run(write_dead_letters, path, LARGE_FILE)
    gc.collect()  # the garbage of making the file is no part of what the tests measure
    return path


def copy_lines(source: Path, target: Path, count: int) -> None:
    with source.open("rb") as lines, target.open("wb") as out:
        for _, line in zip(range(count), lines, strict=False):
            out.write(line)
    target.chmod(0o600)


@pytest.mark.anyio
async def test_a_replay_lets_the_event_loop_run_every_few_operations(
        large_dead_letter_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two turns of another task, a replay enqueues at most SUBMIT_STEP operations.

    Counted, not timed: the lines are read and parsed on a worker thread, so what the
    replay does on the event loop is enqueueing, and a task that yields at every turn of
    the loop sees how many operations went in while it waited. A file read on the loop, or
    a chunk enqueued without a yield, shows up as a jump of thousands, on any machine.
    (``python -m benchmarks.replay_stall`` times the loop's worst lateness instead.)
    """
    path = tmp_path / "dead.jsonl"
    await anyio.to_thread.run_sync(copy_lines, large_dead_letter_file, path, STALL_FILE)
    submitted = [0]
    real_submit = EventQueue._submit

    async def counted_submit(queue: EventQueue, op: Any) -> Receipt:
        submitted[0] += 1
        return await real_submit(queue, op)

    monkeypatch.setattr(EventQueue, "_submit", counted_submit)
    largest, seen_in_all = [0], [0]

    async def watch_the_loop(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        seen = submitted[0]
        while True:
            await anyio.lowlevel.checkpoint()
            jump, seen = submitted[0] - seen, submitted[0]
            largest[0], seen_in_all[0] = max(largest[0], jump), seen_in_all[0] + jump

    async with fake_in_another_process() as (url, accepted):
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                await tg.start(watch_the_loop)
                stats = await cio_queue.replay(path, config(url))
                tg.cancel_scope.cancel()
    assert stats.delivered == submitted[0] == STALL_FILE
    assert accepted == [STALL_FILE]
    assert seen_in_all[0] == STALL_FILE  # the watcher saw every operation go in
    assert largest[0] <= SUBMIT_STEP, f"{largest[0]} operations enqueued without a yield"
    assert read_records(path) == []


def test_the_stall_benchmark_runs() -> None:
    """`python -m benchmarks.replay_stall` at its smallest: a smoke test, not a timing."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.replay_stall", "--records", "300"], cwd=root,
        capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert "300 delivered" in result.stdout
    assert "during the replay" in result.stdout
    assert "idle, the same" in result.stdout


async def peak_memory_of_a_replay(path: Path, url: str) -> int:
    """The most memory (bytes, tracemalloc) allocated at once during a replay of ``path``."""
    tracemalloc.start()
    try:
        with anyio.fail_after(600):
            stats = await cio_queue.replay(path, config(url))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.delivered > 0
    return peak


@pytest.mark.anyio
async def test_the_memory_a_replay_needs_does_not_grow_with_the_file(
        large_dead_letter_file: Path, tmp_path: Path) -> None:
    """Replaying 20,000 lines needs no more memory at its peak than replaying 4,000.

    Both are many chunks (CHUNK_LINES each), so a footprint that grew with the file would
    be five times larger; under tracemalloc a line costs several times its normal time,
    so the files are no larger than that proof needs.
    """
    warm_up, small, large = (tmp_path / f"{name}.jsonl" for name in ("warm", "small", "large"))
    for path, count in ((warm_up, CHUNK_LINES), (small, MEMORY_SMALL), (large, MEMORY_LARGE)):
        await anyio.to_thread.run_sync(copy_lines, large_dead_letter_file, path, count)
    async with fake_in_another_process() as (url, accepted):
        await peak_memory_of_a_replay(warm_up, url)  # imports, caches, first allocations
        small_peak = await peak_memory_of_a_replay(small, url)
        large_peak = await peak_memory_of_a_replay(large, url)
    print(f"peak traced memory: {MEMORY_SMALL} lines {small_peak / 1e6:.2f} MB, "
          f"{MEMORY_LARGE} lines {large_peak / 1e6:.2f} MB")
    assert accepted == [CHUNK_LINES + MEMORY_SMALL + MEMORY_LARGE]
    # Five times the lines: a footprint proportional to the file would be five times larger.
    assert large_peak < small_peak * 1.25, (small_peak, large_peak)


# --- resuming after a crash ----------------------------------------------------------------------

CRASH_FILE: Final = 3000
POISON_EVERY: Final = 50


def run_one_replay(path: str, url: str) -> None:
    """Process body: replay ``path`` to the fake at ``url`` (the test kills it midway)."""
    logging.getLogger("cio_queue").setLevel(logging.ERROR)
    anyio.run(cio_queue.replay, Path(path), config(url, transport="v1"))


def poisoned_fake(**kwargs: Any) -> FakeTrackAPI:
    return FakeTrackAPI(reject=refuse_poison_v1, reject_op=refuse_poison, **kwargs)


def assert_kept_once(path: Path, poison: set[str], *, attempts: int) -> None:
    """The file holds each poisoned operation exactly once, with its attempts, and no more."""
    kept = read_records(path)
    assert Counter(r["customer_id"] for r in kept) == Counter(poison)
    assert {r["reason"] for r in kept} == {"rejected"}
    assert {r["attempts"] for r in kept} == {attempts}


def companions(path: Path) -> set[str]:
    """The files beside ``path`` that outlast a replay."""
    return {p.name for p in path.parent.iterdir()} - {path.name}


@pytest.mark.anyio
async def test_a_replay_killed_midway_resumes_without_losing_or_duplicating_a_line(
        tmp_path: Path) -> None:
    """SIGKILL during a replay: resuming delivers the rest, sends one chunk again at most."""
    path = tmp_path / "dead.jsonl"
    events = await write_dead_letters(path, CRASH_FILE, poison_every=POISON_EVERY,
                                      transport="v1")
    poison = {key for key in events if key.startswith("p")}
    async with poisoned_fake(latency=0.002) as fake:
        replayer = SPAWN.Process(target=run_one_replay, args=(str(path), fake.url))
        replayer.start()
        try:
            with anyio.fail_after(120):
                await fake.wait_until(lambda: len(fake.log) >= CRASH_FILE // 2)
        finally:
            replayer.kill()
            await anyio.to_thread.run_sync(stop_process, replayer)
        assert replayer.exitcode == -signal.SIGKILL
        first_run = Counter(key for key, ids in delivered_events(fake).items() for _ in ids)
        with anyio.fail_after(120):
            resumed = await cio_queue.replay(path, config(fake.url, transport="v1"))
        both_runs = delivered_events(fake)
    assert set(both_runs) == set(events) - poison  # nothing lost
    assert all(set(ids) == {events[key]} for key, ids in both_runs.items())
    again = sum(len(ids) - 1 for ids in both_runs.values())
    assert again <= CHUNK_LINES, f"{again} operations were delivered twice"
    assert resumed.delivered == len(events) - len(poison) - sum(first_run.values()) + again
    assert_kept_once(path, poison, attempts=2)
    assert companions(path) == {"dead.jsonl.lock", "dead.jsonl.replay.lock"}


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_replay_that_dies_putting_the_file_back_resumes_exactly_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A crash just before or after the put-back commits: no line lost, none written twice."""
    path = tmp_path / "dead.jsonl"
    events = await write_dead_letters(path, 300, poison_every=POISON_EVERY, transport="v1")
    poison = {key for key in events if key.startswith("p")}
    real_rename = os.rename

    def dying_rename(source: Any, target: Any) -> None:
        if str(source).endswith(".remaining"):
            if when == "after":
                real_rename(source, target)
            raise OSError(errno.EIO, "the process dies here")
        real_rename(source, target)

    async with poisoned_fake() as fake:
        cfg = config(fake.url, transport="v1")
        monkeypatch.setattr(os, "rename", dying_rename)
        with pytest.raises(OSError, match="dies here"), anyio.fail_after(60):
            await cio_queue.replay(path, cfg)
        monkeypatch.setattr(os, "rename", real_rename)
        # A live queue appends meanwhile.
        live = await write_dead_letters(path, 1, transport="v1", prefix="live-")
        with anyio.fail_after(60):
            resumed = await cio_queue.replay(path, cfg)
        delivered = delivered_events(fake)
    assert resumed.enqueued == 0  # everything was settled before the crash
    assert delivered == {key: [eid] for key, eid in events.items() if key not in poison}
    records = read_records(path)
    assert [r["customer_id"] for r in records if r["attempts"] == 1] == list(live)
    assert Counter(r["customer_id"] for r in records if r["attempts"] == 2) == Counter(poison)
    assert len(records) == len(poison) + 1
    assert companions(path) == {"dead.jsonl.lock", "dead.jsonl.replay.lock"}


@pytest.mark.anyio
async def test_a_torn_last_line_never_swallows_the_next_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A line cut short by a crash stays a line of its own, kept by replay; the rest goes."""
    path = tmp_path / "dead.jsonl"
    events = await write_dead_letters(path, 3)
    torn = path.read_bytes().splitlines(keepends=True)[-1][:40]
    await anyio.to_thread.run_sync(append_bytes, path, torn)  # a writer died mid-line
    events |= await write_dead_letters(path, 2, prefix="later-")
    async with FakeTrackAPI() as fake:
        with caplog.at_level(logging.WARNING, logger="cio_queue"), anyio.fail_after(30):
            stats = await cio_queue.replay(path, config(fake.url))
        delivered = delivered_events(fake)
    assert stats.delivered == 5
    assert delivered == {key: [eid] for key, eid in events.items()}
    assert path.read_bytes() == torn + b"\n"
    assert any("line=4" in r.getMessage() for r in caplog.records)


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


@pytest.mark.anyio
async def test_operations_given_in_their_v2_form_replay_from_the_dead_letter_file(
        tmp_path: Path) -> None:
    """An operation known only by its v2 element is recorded so that replay can send it.

    Such are ``batch()``'s operations, and those back from a spool or a fleet's stream.
    """
    path = tmp_path / "dead.jsonl"
    refused = True

    def reject(op: dict[str, Any]) -> str | None:
        return "not now" if refused else None

    async with FakeTrackAPI(reject_op=reject) as fake:
        async with EventQueue(config(fake.url, dead_letter_path=path)) as cio:
            receipts = await cio.batch([
                {"type": "person", "identifiers": {"id": "42"}, "action": "event",
                 "name": "opened", "attributes": {"n": 1}},
                {"type": "person", "identifiers": {"email": "a@b.c"}, "action": "identify",
                 "attributes": {"plan": "pro"}},
            ])
            await cio.flush()
        assert [r.outcome.status for r in receipts if r.outcome] == [OutcomeStatus.REJECTED] * 2
        refused = False
        fake.reset()
        with anyio.fail_after(30):
            stats = await cio_queue.replay(path, config(fake.url))
        assert stats.delivered == 2
        assert [op.op for op in fake.operations] == [
            {"type": "person", "identifiers": {"id": "42"}, "action": "event", "name": "opened",
             "attributes": {"n": 1}, "id": receipts[0].event_id},
            {"type": "person", "identifiers": {"email": "a@b.c"}, "action": "identify",
             "attributes": {"plan": "pro"}},
        ]
    assert path.read_text() == ""
