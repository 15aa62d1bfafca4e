"""The dead-letter file and its replay: on a full disk, beside a live queue, after crashes.

Integration tests over real HTTP against FakeTrackAPI on 127.0.0.1, or through the queue
with a RecordingSender where only the disk matters.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.to_thread
import pytest

import cio_queue
from cio_queue import (
    EventQueue,
    OutcomeStatus,
    QueueConfig,
    RetryPolicy,
    Statistics,
)
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
                     max_queue_size=count, overflow="block")
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
    assert stats.failed == count, stats
    return events


def modes_in(directory: Path) -> dict[str, int]:
    """The permission bits of each file in ``directory``, by name."""
    return {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}


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


@pytest.mark.anyio
async def test_a_torn_last_line_never_swallows_the_next_record(tmp_path: Path) -> None:
    """A line cut short by a crash stays a line of its own, kept by replay; the rest goes."""
    path = tmp_path / "dead.jsonl"
    events = await write_dead_letters(path, 3)
    torn = path.read_bytes().splitlines(keepends=True)[-1][:40]
    await anyio.to_thread.run_sync(append_bytes, path, torn)  # a writer died mid-line
    events |= await write_dead_letters(path, 2, prefix="later-")
    async with FakeTrackAPI() as fake:
        with anyio.fail_after(30):
            stats = await cio_queue.replay(path, config(fake.url))
        delivered = delivered_events(fake)
    assert stats.delivered == 5
    assert delivered == {key: [eid] for key, eid in events.items()}
    assert path.read_bytes() == torn + b"\n"


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)
