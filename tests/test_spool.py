"""Component tests of the spool store, on a real SQLite file in tmp_path.

The crash tests run writers in child processes (``spool_child.py``) and SIGKILL them at
random moments; the next ``SpoolStore.open()`` on the directory must find what the store
promised: with ``"batched"`` every row older than the commit interval (plus a margin for a
loaded machine), with ``"sync"`` every row whose future resolved.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from cio_queue import SpoolError
from cio_queue._spool import ROW_OVERHEAD, SpoolStore
from cio_queue._spoolfile import SpoolFile

pytestmark = pytest.mark.anyio

CHILD: Final = str(Path(__file__).with_name("spool_child.py"))
INTERVAL: Final = 0.05
MARGIN: Final = 0.5
"""Seconds beyond the commit interval that a loaded machine may take to commit."""
KILLS: Final = 5
SEED: Final = 20261130


async def wait_until(condition: Any, within: float = 5.0) -> None:
    """Poll ``condition()`` until it is true, at most ``within`` seconds.

    For counters the store's thread updates, which no event announces.
    """
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the counter
            await anyio.sleep(0.005)


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.sqlite3"))


def moved_aside(path: Path) -> list[Path]:
    """The files a corrupt spool file was renamed to."""
    return list(path.parent.glob(path.name + ".corrupt-*"))


def exists(*paths: Path | str) -> list[bool]:
    return [Path(path).exists() for path in paths]


# --- commits, keys, reads ----------------------------------------------------------------


async def test_sync_adds_from_many_tasks_share_a_few_group_commits(tmp_path: Path) -> None:
    """100 tasks each adding and awaiting 5 rows in turn share commits: far fewer than rows."""
    store = await SpoolStore.open(tmp_path, durability="sync")
    keys: list[int] = []

    async def add_in_turn(number: int) -> None:
        for turn in range(5):
            key, durable = store.add(b"row %d.%d" % (number, turn))
            assert durable is not None
            await durable
            keys.append(key)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for number in range(100):
                tg.start_soon(add_in_turn, number)
    commits = store.statistics().commits
    print(f"500 sync adds from 100 tasks: {commits} commits")
    assert 5 <= commits <= 50  # each turn waits for the one before it
    assert sorted(keys) == list(range(1, 501))
    assert await store.close() == 500


async def test_batched_adds_are_committed_together_within_the_interval(tmp_path: Path) -> None:
    """A burst of batched adds is one commit, made no sooner than commit_interval later.

    Only the lower bound is timed (a loaded machine can only make it later); that the
    commit comes at all, and as one, is what bounds it from above.
    """
    store = await SpoolStore.open(tmp_path, commit_interval=INTERVAL)
    started = time.monotonic()
    keys = [store.add(b"row %d" % number)[0] for number in range(100)]
    assert keys == list(range(1, 101))
    await wait_until(lambda: store.statistics().commits == 1)
    elapsed = time.monotonic() - started
    assert elapsed >= INTERVAL
    assert elapsed < INTERVAL + 2.0  # a loaded machine makes it later, never 40 times
    assert store.statistics().unwritten == 0
    assert store.statistics().commits == 1
    assert await store.close() == 100


async def test_load_returns_live_rows_after_a_key_in_order_before_and_after_commit(
        tmp_path: Path) -> None:
    """load(after, limit) gives the oldest live rows past ``after``, committed or not."""
    store = await SpoolStore.open(tmp_path, commit_interval=INTERVAL)
    for number in range(1, 21):
        store.add(b"row %d" % number)
    store.remove(5)
    store.remove(6)
    expected = [(key, b"row %d" % key) for key in (4, 7, 8, 9, 10)]
    assert await store.load(3, 5) == expected  # not committed yet
    await wait_until(lambda: store.statistics().unwritten == 0)
    store.remove(8)  # committed; its delete waits
    assert await store.load(3, 4) == [(4, b"row 4"), (7, b"row 7"), (9, b"row 9"),
                                      (10, b"row 10")]
    assert await store.load(19, 10) == [(20, b"row 20")]
    assert await store.load(20, 10) == []
    assert await store.load(0, 0) == []
    assert store.rows == 17
    assert await store.close() == 17


async def test_rows_left_at_close_are_the_backlog_of_the_next_open(tmp_path: Path) -> None:
    """Closing keeps a file with rows; the next open finds them first, in order."""
    first = await SpoolStore.open(tmp_path)
    assert first.backlog_start is None
    assert first.backlog == range(1, 1)
    keys = [first.add(b"row %d" % number)[0] for number in range(10)]
    for key in keys[::2]:
        first.remove(key)
    assert await first.close() == 5
    assert spool_files(tmp_path) == [first.path]

    second = await SpoolStore.open(tmp_path)
    assert second.backlog_start == 1
    assert second.backlog == range(1, 6)
    assert second.statistics().adopted_files == 1
    assert await second.load(0, 100) == [(n + 1, b"row %d" % (2 * n + 1)) for n in range(5)]
    key, _ = second.add(b"new")
    assert key == 6
    assert second.rows == 6
    assert exists(first.path) == [False]
    for key in range(1, 7):
        second.remove(key)
    assert await second.close() == 0
    assert spool_files(tmp_path) == []
    assert os.listdir(tmp_path) == []


async def test_removed_rows_are_deleted_from_the_file(tmp_path: Path) -> None:
    """A row removed after its commit is gone from the file after the next commit."""
    store = await SpoolStore.open(tmp_path, durability="sync")
    added = [store.add(b"row %d" % number) for number in range(4)]
    for _, durable in added:
        assert durable is not None
        await durable
    store.remove(added[1][0])
    store.remove(added[2][0])
    assert [store.holds(key) for key, _ in added] == [True, False, False, True]
    assert not store.holds(0)
    assert not store.holds(5)
    assert store.close_blocking(5.0) == 2
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert db.execute("SELECT key, record FROM spool").fetchall() == [
            (1, b"row 0"), (4, b"row 3")]


async def test_the_file_shrinks_once_a_backlog_is_removed(tmp_path: Path) -> None:
    """Removing most rows gives their pages back: the file left behind keeps its rows only."""
    store = await SpoolStore.open(tmp_path, durability="sync")
    added = [store.add(b"x" * 2_000) for _ in range(2_000)]
    for _, durable in added:
        assert durable is not None
        await durable
    for key, _ in added[:-1]:
        store.remove(key)
    _, durable = store.add(b"last")  # its commit carries the removals
    assert durable is not None
    await durable
    assert await store.close() == 2
    assert os.stat(store.path).st_size < 100_000  # 2,000 rows of 2 KB were over 4 MB


async def test_bytes_used_counts_live_records_and_full_checks_the_limit(tmp_path: Path) -> None:
    """bytes_used is the live records plus ROW_OVERHEAD each; full() says what would cross."""
    store = await SpoolStore.open(tmp_path, max_bytes=1000)
    key, _ = store.add(b"x" * 100)
    assert store.bytes_used == 100 + ROW_OVERHEAD
    assert not store.full(1000 - 2 * ROW_OVERHEAD - 100)
    assert store.full(1000 - 2 * ROW_OVERHEAD - 99)
    store.remove(key)
    store.remove(key)  # twice: nothing more
    assert store.bytes_used == 0
    assert store.rows == 0
    assert await store.close() == 0
    unlimited = await SpoolStore.open(tmp_path)
    assert not unlimited.full(10**12)
    assert await unlimited.close() == 0


async def test_a_closed_store_refuses_work_and_closes_once(tmp_path: Path) -> None:
    """add, remove and load after close raise SpoolError; close again gives the same count."""
    store = await SpoolStore.open(tmp_path)
    store.add(b"row")
    assert await store.close() == 1
    assert await store.close() == 1
    assert store.close_blocking(1.0) == 1
    with pytest.raises(SpoolError, match="closed"):
        store.add(b"late")
    with pytest.raises(SpoolError, match="closed"):
        store.remove(1)
    with pytest.raises(SpoolError, match="closed"):
        await store.load(0, 10)


# --- errors ------------------------------------------------------------------------------


async def test_a_path_below_a_file_is_refused_at_open(tmp_path: Path) -> None:
    """A spool directory that cannot exist (a file is in the way) raises a clear SpoolError."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match=r"spool directory: Not a directory; .*writable"):
        await SpoolStore.open(blocker / "spool")
    with pytest.raises(SpoolError, match="exists and is not a directory"):
        await SpoolStore.open(blocker)


NOBODY: Final = 65534
"""The uid a test run as root takes on to meet a directory it cannot write."""


async def test_a_read_only_directory_is_refused_at_open(tmp_path: Path) -> None:
    """A directory the process cannot write raises SpoolError at open.

    Root writes anywhere, so as root (CI) the test drops its effective uid to nobody's for
    the open (every thread's, as Linux applies it process-wide) and takes it back after.
    """
    if os.geteuid() != 0:
        os.chmod(tmp_path, 0o500)
        try:
            with pytest.raises(SpoolError, match="Permission denied"):
                await SpoolStore.open(tmp_path)
        finally:
            os.chmod(tmp_path, 0o700)
        return
    # pytest's own temporary directories are root's alone (0700): nobody could not even
    # look into them, which is another error than the one meant here.
    parent = Path(tempfile.mkdtemp())
    try:
        os.chmod(parent, 0o755)
        read_only = parent / "spool"
        os.mkdir(read_only, mode=0o555)
        try:
            os.seteuid(NOBODY)
        except OSError as exc:  # a user namespace without nobody's uid mapped
            pytest.skip(f"cannot take uid {NOBODY} here: {exc}")
        try:
            with pytest.raises(SpoolError, match="Permission denied"):
                await SpoolStore.open(read_only)
        finally:
            os.seteuid(0)
        assert os.listdir(read_only) == []
    finally:
        shutil.rmtree(parent)


async def test_a_full_disk_at_open_is_a_clear_spool_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC creating the spool file raises SpoolError naming the problem."""
    real_open = os.open

    def full_disk(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(str(tmp_path / "spool-")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_disk)
    with pytest.raises(SpoolError, match=r"No space left on device; .*free space"):
        await SpoolStore.open(tmp_path)


async def test_a_file_that_is_not_a_database_is_moved_aside_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A dead process's file that is not SQLite is renamed *.corrupt-<time>, with a warning."""
    caplog.set_level(logging.WARNING, logger="cio_queue")
    garbage = tmp_path / "spool-1-deadbeef.sqlite3"
    garbage.write_bytes(b"this is not a database " * 200)
    store = await SpoolStore.open(tmp_path)
    assert store.backlog_start is None
    assert exists(garbage) == [False]
    (moved,) = moved_aside(garbage)
    with moved.open("rb") as handle:
        assert handle.read() == b"this is not a database " * 200
    (warning,) = [r for r in caplog.records if "spool_file_corrupt" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert str(garbage) in warning.getMessage()
    assert str(moved) in warning.getMessage()
    assert await store.close() == 0


async def test_a_file_failing_quick_check_is_moved_aside_and_the_others_adopted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged spool file is moved aside, reported, and does not stop the adoption of others."""
    caplog.set_level(logging.WARNING, logger="cio_queue")
    damaged = await SpoolStore.open(tmp_path)
    for number in range(200):
        damaged.add(b"%d" % number * 500)
    assert await damaged.close() == 200
    healthy = await SpoolStore.open(tmp_path / "other")
    healthy.add(b"healthy")
    assert await healthy.close() == 1
    moved_healthy = tmp_path / "spool-2-healthy.sqlite3"
    healthy.path.rename(moved_healthy)
    with damaged.path.open("r+b") as handle:  # a B-tree page in the middle, overwritten
        handle.seek(4096 * 5)
        handle.write(b"\xff" * 4096)

    store = await SpoolStore.open(tmp_path)
    assert await store.load(0, 10) == [(1, b"healthy")]
    assert exists(damaged.path, moved_healthy) == [False, False]
    (moved,) = moved_aside(damaged.path)
    assert os.stat(moved).st_size > 4096 * 10
    (warning,) = [r for r in caplog.records if "spool_file_corrupt" in r.getMessage()]
    assert str(damaged.path) in warning.getMessage()
    store.remove(1)
    assert await store.close() == 0


async def test_a_failed_commit_logs_an_error_keeps_the_rows_and_the_next_one_succeeds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk fails the commit's sync futures loudly; the rows are committed later."""
    caplog.set_level(logging.WARNING, logger="cio_queue")
    store = await SpoolStore.open(tmp_path, durability="sync")
    _, durable = store.add(b"before")
    assert durable is not None
    await durable

    # SQLite's page limit makes it answer exactly as a full disk does.
    def limit_pages(file: Any) -> None:
        file._db.execute("PRAGMA max_page_count = 1")

    await store._call(limit_pages)
    added = [store.add(b"x" * 20_000) for _ in range(3)]
    for _, durable in added:
        assert durable is not None
        with anyio.fail_after(5), pytest.raises(SpoolError, match="disk is full"):
            await durable
    (error,) = [r for r in caplog.records if "spool_commit_failed" in r.getMessage()]
    assert error.levelno == logging.ERROR
    assert str(store.path) in error.getMessage()
    stats = store.statistics()
    assert (stats.unwritten, stats.failed_commits, stats.rows) == (3, 1, 4)
    assert [key for key, _ in await store.load(0, 10)] == [1, 2, 3, 4]
    store.remove(added[0][0])  # settled while the disk is full: never written

    def lift_limit(file: Any) -> None:
        file._db.execute("PRAGMA max_page_count = 1073741823")

    await store._call(lift_limit)
    _, durable = store.add(b"after")
    assert durable is not None
    with anyio.fail_after(5):
        await durable
    assert store.statistics().unwritten == 0
    assert any("spool_commit_recovered" in r.getMessage() for r in caplog.records)
    assert store.close_blocking(5.0) == 4
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert [key for (key,) in db.execute("SELECT key FROM spool")] == [1, 3, 4, 5]


async def test_a_failed_final_commit_makes_close_raise_and_keeps_the_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the last commit fails, close() raises SpoolError with the count, logged at ERROR."""
    caplog.set_level(logging.ERROR, logger="cio_queue")
    store = await SpoolStore.open(tmp_path, durability="sync")
    _, durable = store.add(b"kept")
    assert durable is not None
    await durable
    await store._call(lambda file: file._db.execute("PRAGMA max_page_count = 1"))
    _, unwaited = store.add(b"x" * 20_000)
    assert unwaited is not None
    unwaited.cancel()  # its caller went away
    with pytest.raises(SpoolError, match="1 rows were not written"):
        await store.close()
    assert any("spool_close_failed" in r.getMessage() and "lost=1" in r.getMessage()
               for r in caplog.records)
    reopened = await SpoolStore.open(tmp_path)
    assert await reopened.load(0, 10) == [(1, b"kept")]
    assert await reopened.close() == 1


async def test_close_blocking_gives_up_waiting_but_the_close_goes_on(tmp_path: Path) -> None:
    """close_blocking(timeout) raises SpoolError on time; the thread still closes the file."""
    store = await SpoolStore.open(tmp_path)
    store.add(b"row")
    busy, release = threading.Event(), threading.Event()

    def slow_disk(file: Any) -> None:
        busy.set()
        release.wait(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(store._call, slow_disk)
        await anyio.to_thread.run_sync(busy.wait, 10)
        with pytest.raises(SpoolError, match=r"did not close within 0\.05 s"):
            store.close_blocking(0.05)
        release.set()
    with anyio.fail_after(5):
        assert await store.close() == 1


_SETUP_KILL_ATTEMPTS: Final = 20
_KILLED_WHILE_SETTING_UP: Final = """
import os, sqlite3, sys, threading, time
path, journal = sys.argv[1], sys.argv[1] + "-journal"

def set_up():  # what _connect does to a new file, up to the WAL mode
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    db.execute("PRAGMA journal_mode = WAL")
    os._exit(1)  # done before a journal page was seen

threading.Thread(target=set_up).start()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        if os.stat(journal).st_size > 4096:  # the first page is in the journal
            os._exit(0)  # as a SIGKILL would: no cleanup
    except FileNotFoundError:
        pass
os._exit(2)
"""


async def test_adopting_a_file_killed_while_it_was_set_up_leaves_no_journal(
        tmp_path: Path) -> None:
    """A file whose process died while SQLite set it up is adopted with its -journal file.

    Switching a new file to WAL mode writes its first page through a rollback journal; a
    kill then leaves the file and ``*-journal``, and the adopter must remove both.
    """
    dead = tmp_path / "spool-1-deadbeef.sqlite3"
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("COV_CORE_")}  # untraced: quicker to catch the moment
    for _ in range(_SETUP_KILL_ATTEMPTS):
        dead.touch()
        with anyio.fail_after(30):
            child = await anyio.run_process(
                [sys.executable, "-c", _KILLED_WHILE_SETTING_UP, str(dead)], check=False,
                env=env)
        assert child.returncode in (0, 1), child.stderr.decode()
        # SQLite's thread may finish (and delete the journal) before the exit lands.
        if child.returncode == 0 and exists(dead, f"{dead}-journal") == [True, True]:
            break
        for name in os.listdir(tmp_path):  # a finished set-up: try again
            os.unlink(tmp_path / name)
    else:
        pytest.fail("the child never died with SQLite's first page in the journal")
    store = await SpoolStore.open(tmp_path)
    assert store.statistics().adopted_files == 1
    assert exists(dead, f"{dead}-journal") == [False, False]
    assert await store.close() == 0
    assert os.listdir(tmp_path) == []


async def test_a_cancelled_open_leaves_no_file_and_no_lock(tmp_path: Path) -> None:
    """Cancelling open() while the thread opens the file still closes (and deletes) it."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await SpoolStore.open(tmp_path)
    await wait_until(lambda: spool_files(tmp_path) == [])
    store = await SpoolStore.open(tmp_path)
    assert store.statistics().adopted_files == 0
    assert await store.close() == 0


async def test_a_crashed_thread_fails_what_waits_and_refuses_more(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug on the store's thread fails the waiting futures and later calls; nothing hangs."""
    caplog.set_level(logging.ERROR, logger="cio_queue")
    store = await SpoolStore.open(tmp_path, durability="sync")
    _, durable = store.add(b"kept")
    assert durable is not None
    await durable

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SpoolFile, "commit", broken)
    _, durable = store.add(b"lost")
    assert durable is not None
    with anyio.fail_after(5), pytest.raises(SpoolError, match="thread stopped"):
        await durable
    assert any("spool_crashed" in r.getMessage() for r in caplog.records)
    with pytest.raises(SpoolError, match="thread stopped"):
        store.add(b"more")
    with pytest.raises(SpoolError, match="thread stopped"):
        await store.load(0, 10)
    with pytest.raises(SpoolError, match="thread stopped"):
        await store.close()
    monkeypatch.undo()
    reopened = await SpoolStore.open(tmp_path)  # the crashed store's lock was released
    assert await reopened.load(0, 10) == [(1, b"kept")]
    assert await reopened.close() == 1


# --- the event loop ----------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["batched", "sync"])
async def test_the_loop_never_waits_on_the_disk(tmp_path: Path, durability: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the commit thread stuck inside a commit, the loop adds, removes and keeps time.

    The disk is held still, not timed: if ``add`` or ``remove`` ever waited for the
    thread (a lock held across the disk, a blocking hand-off), this test would hang until
    its bound, whatever the machine's load.
    """
    entered, release = threading.Event(), threading.Event()
    real_commit = SpoolFile.commit

    def held_commit(file: SpoolFile, inserts: dict[int, bytes], deletes: set[int]) -> None:
        entered.set()
        release.wait(60)  # bounded: a broken test ends, it does not hang the suite
        real_commit(file, inserts, deletes)

    monkeypatch.setattr(SpoolFile, "commit", held_commit)
    store = await SpoolStore.open(tmp_path, durability="sync" if durability == "sync"
                                  else "batched")
    record = b"r" * 300
    live: deque[int] = deque([store.add(record)[0]])
    try:
        await hold_the_disk_and_work(store, record, live, entered, release)
    finally:
        release.set()  # also when it failed, so that the commit thread ends
    assert await store.close() == 0


async def hold_the_disk_and_work(store: SpoolStore, record: bytes, live: deque[int],
                                 entered: threading.Event, release: threading.Event) -> None:
    """Add and remove 20,000 rows while the commit thread is held inside a commit."""
    with anyio.fail_after(30):
        await wait_until(entered.is_set, within=20)  # the thread is now inside the disk
        for number in range(20_000):
            live.append(store.add(record)[0])
            if len(live) > 2_000:  # settled in about the order they came
                store.remove(live.popleft())
            if number % 100 == 99:
                await anyio.lowlevel.checkpoint()  # the app's other work
        await anyio.sleep(0.01)  # and the loop's timers still fire
        assert not release.is_set()
        assert store.statistics().unwritten > 0  # none of it reached the disk yet
        release.set()
        while live:
            store.remove(live.popleft())
        await wait_until(lambda: store.statistics().unwritten == 0, within=20)


# --- crashes -----------------------------------------------------------------------------


@dataclass
class Cycle:
    """What one killed child reported, and when it was killed."""

    kill_time: float = 0.0
    added: dict[int, float] = field(default_factory=dict)
    removed: dict[int, float] = field(default_factory=dict)
    durable: set[int] = field(default_factory=set)


async def _read_lines(stream: BufferedByteReceiveStream, into: list[bytes]) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
        while True:
            into.append(await stream.receive_until(b"\n", 4096))


async def _start(*args: str) -> tuple[Process, BufferedByteReceiveStream, Path]:
    """Start a child and wait for its ``ready PATH`` line."""
    process = await anyio.open_process([sys.executable, CHILD, *args], stderr=None)
    assert process.stdout is not None
    stream = BufferedByteReceiveStream(process.stdout)
    with anyio.fail_after(30):
        ready = (await stream.receive_until(b"\n", 4096)).decode().split()
    assert ready[0] == "ready", ready
    return process, stream, Path(ready[1])


async def _run_and_kill(directory: Path, durability: str, tag: str, after: float) -> Cycle:
    process, stream, _ = await _start("steady", str(directory), durability, tag)
    lines: list[bytes] = []
    cycle = Cycle()
    async with process, anyio.create_task_group() as tg:
        tg.start_soon(_read_lines, stream, lines)
        await anyio.sleep(after)  # the random moment of the kill
        cycle.kill_time = time.monotonic()
        process.kill()
        with anyio.fail_after(10):
            await process.wait()
    for line in lines:
        match line.decode().split():
            case ["a", number, when]:
                cycle.added[int(number)] = float(when)
            case ["r", number, when]:
                cycle.removed[int(number)] = float(when)
            case ["d", number]:
                cycle.durable.add(int(number))
    return cycle


def _check_cycle(cycle: Cycle, found: list[int], durability: str) -> float:
    """Assert the store's promise for one kill; return the age of the oldest lost row."""
    cutoff = cycle.kill_time - INTERVAL - MARGIN
    assert found == sorted(found), "rows come back in the order they were added"
    assert len(set(found)) == len(found)
    present = set(found)
    removed_early = {n for n, when in cycle.removed.items() if when < cutoff}
    if durability == "sync":
        # The promise: every row whose add returned durable. One added earlier whose
        # commit had not ended (a slow fsync) was never promised, however long ago.
        must = set(cycle.durable)
    else:
        must = {n for n, when in cycle.added.items() if when < cutoff}
    must -= set(cycle.removed)  # a removed row may be gone, whenever it was removed
    assert must <= present, f"lost rows: {sorted(must - present)[:10]}"
    assert not removed_early & present, "rows removed long before the kill came back"
    lost = [cycle.kill_time - when for n, when in cycle.added.items()
            if n not in present and n not in cycle.removed]
    return max(lost, default=0.0)


@pytest.mark.parametrize("durability", ["batched", "sync"])
async def test_rows_survive_sigkill_at_random_moments(tmp_path: Path, durability: str) -> None:
    """Killed at random moments, a writer loses nothing the store promised to keep.

    Each child adopts the file its killed predecessor left, so the rows of every earlier
    cycle must also come back, unchanged and first.
    """
    rng = random.Random(f"{SEED}-{durability}")
    earlier: list[bytes] = []
    report = []
    for number in range(KILLS):
        tag = f"c{number}"
        cycle = await _run_and_kill(tmp_path, durability, tag, rng.uniform(0.7, 1.3))
        assert len(spool_files(tmp_path)) == 1  # the child's, which adopted its predecessor's
        store = await SpoolStore.open(tmp_path)
        records = [record for _, record in await store.load(0, 10**6)]
        assert await store.close() == len(records)  # left for the next child to adopt
        assert records[:len(earlier)] == earlier
        mine = [int(r.split(b":")[1].split(b".")[0]) for r in records[len(earlier):]]
        assert all(r.startswith(tag.encode() + b":") for r in records[len(earlier):])
        oldest_lost = _check_cycle(cycle, mine, durability)
        report.append(f"{len(cycle.added)} added, {len(mine)} found, oldest lost "
                      f"{oldest_lost * 1000:.0f} ms")
        earlier = records
    print(f"{durability}: " + "; ".join(report))


async def test_a_new_store_adopts_the_files_of_killed_processes_only(tmp_path: Path) -> None:
    """Four writers share a directory; two are killed; a new store takes exactly theirs."""
    count = 300
    kept = [n for n in range(count) if n % 4 != 3] + [count]
    children = [await _start("hold", str(tmp_path), f"w{n}", str(count)) for n in range(4)]
    try:
        assert len(spool_files(tmp_path)) == 4
        for process, _, _ in children[:2]:
            process.kill()
            with anyio.fail_after(10):
                await process.wait()
        store = await SpoolStore.open(tmp_path)
        assert store.statistics().adopted_files == 2
        records = [record.rstrip(b".").decode() for _, record in await store.load(0, 10**6)]
        by_file = sorted([[f"w{w}:{n}" for n in kept] for w in (0, 1)])
        half = len(records) // 2
        assert sorted([records[:half], records[half:]]) == by_file
        assert store.backlog == range(1, len(records) + 1)
        for _, _, path in children[:2]:
            assert exists(path, f"{path}-wal") == [False, False]
        survivors = {path for _, _, path in children[2:]}
        assert set(spool_files(tmp_path)) == survivors | {store.path}
    finally:
        for process, stream, _ in children[2:]:
            assert process.stdin is not None
            await process.stdin.aclose()
            with anyio.fail_after(10):
                assert await stream.receive_until(b"\n", 100) == b"closed %d" % len(kept)
                await process.wait()
            await process.aclose()
        for process, _, _ in children[:2]:
            await process.aclose()
    assert await store.close() == 2 * len(kept)
    final = await SpoolStore.open(tmp_path)
    assert final.statistics().adopted_files == 3
    assert len(await final.load(0, 10**6)) == 4 * len(kept)
    assert spool_files(tmp_path) == [final.path]
    assert await final.close() == 4 * len(kept)
