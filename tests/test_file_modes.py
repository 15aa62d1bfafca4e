"""The files the queue writes are owner-only, whatever the umask (README "Security").

Modes are checked, not access: they apply as set when the tests run as root (as in CI),
even though root could open the files anyway.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cio_queue import EventQueue, OutcomeStatus, QueueConfig, RetryPolicy

from .recording import RecordingSender

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds: the bound on every wait in this file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Let every permission through the umask, so only the modes the library sets count."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def config(**overrides: Any) -> QueueConfig:
    return QueueConfig(site_id="site", api_key="key", base_url="http://127.0.0.1:9",
                       flush_interval=0.01, rate_limit=None, retry=RetryPolicy(attempts=1),
                       shutdown_timeout=2.0, **overrides)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def lines_in(path: Path) -> int:
    return path.read_text(encoding="utf-8").count("\n")


async def reject_one(path: Path) -> None:
    """Run a queue whose one operation is rejected, so it is written to ``path``."""
    async with EventQueue(config(dead_letter_path=str(path)),
                          sender=RecordingSender(lambda request: 400)) as queue:
        receipt = await queue.track("42", "purchase", {"price": 9.5})
        with anyio.fail_after(WAIT):
            outcome = await receipt.wait()
    assert outcome.status is OutcomeStatus.REJECTED
    assert lines_in(path) == 1


@pytest.mark.usefixtures("open_umask")
async def test_a_dead_letter_file_and_its_lock_are_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    await reject_one(path)
    assert (mode(path), mode(path.with_name("dead.jsonl.lock"))) == (0o600, 0o600)


@pytest.mark.usefixtures("open_umask")
async def test_an_existing_dead_letter_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    path.touch()
    path.chmod(0o640)
    await reject_one(path)
    assert mode(path) == 0o640


@pytest.mark.usefixtures("open_umask")
async def test_the_spool_directory_is_created_0700_and_its_files_0600(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sender = RecordingSender()
    sender.hold.clear()  # nothing settles, so the operations stay in the spool's file
    async with EventQueue(config(spool_path=str(spool)), sender=sender) as queue:
        # No wait is needed: start() returned once the spool file was open, and opening it
        # committed its schema in WAL mode, which created the -wal file; that file stays
        # until the connection closes (exclusive locking: no -shm file at all).
        at_start = {path.name: mode(path) for path in spool.iterdir()}
        for n in range(10):
            await queue.track(str(n), "purchase", {"price": 9.5})
        modes = {path.name: mode(path) for path in spool.iterdir()}
        sender.hold.set()
    assert mode(spool) == 0o700
    assert at_start == modes, (at_start, modes)
    assert sorted(name.rsplit(".", 1)[1] for name in modes) == ["sqlite3", "sqlite3-wal"], modes
    assert set(modes.values()) == {0o600}, modes


@pytest.mark.usefixtures("open_umask")
async def test_an_existing_spool_directory_is_left_as_it_is(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o750)
    async with EventQueue(config(spool_path=str(spool)), sender=RecordingSender()) as queue:
        with anyio.fail_after(WAIT):
            await (await queue.track("42", "purchase")).wait()
        files = {path.name: mode(path) for path in spool.iterdir()}
    assert mode(spool) == 0o750
    assert set(files.values()) == {0o600}, files
