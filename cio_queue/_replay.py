"""Replay a dead-letter file through a queue, resumably."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import structlog

from ._config import QueueConfig
from ._deadletter import iter_records, operation_from_record, read_lines, write_atomically
from ._outcome import OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue

__all__ = ["replay"]

log = structlog.get_logger("cio_queue")

CHUNK: Final = 1000
"""Lines replayed between two progress checkpoints."""


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".progress")


async def replay(path: str | os.PathLike[str], config: QueueConfig) -> Statistics:
    """Re-send a dead-letter file with the same guarantees as live traffic.

    Delivered lines are checkpointed, after every chunk, to ``PATH.progress``, so an
    interrupted replay resumes without resending them. At the end the file is rewritten,
    atomically, to hold only the lines that were not delivered again (rejected again,
    failed again, or unsent at this run's deadline) with their new reason, and the
    checkpoint file is removed. Lines that are not dead-letter records are kept as they
    are. ``config.dead_letter_path`` is ignored: this file is the dead-letter file.

    Returns:
        The statistics of the replay's queue.
    """
    path = Path(path)
    progress = _progress_path(path)
    lines = await anyio.to_thread.run_sync(read_lines, path)
    done: set[str] = set()
    if progress.exists():
        done = set((await anyio.to_thread.run_sync(progress.read_text)).split())
    cfg = dataclasses.replace(config, dead_letter_path=None, overflow="block",
                              enqueue_timeout=None)
    keep: list[str] = []
    todo: list[tuple[str, dict[str, Any]]] = []
    for line, record in iter_records(lines):
        if _digest(line) in done:
            continue
        if record is None:
            log.warning("cio_queue.replay_unreadable_line", line=line[:80])
            keep.append(line)
            continue
        todo.append((line, record))
    async with EventQueue(cfg) as queue:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            receipts: list[tuple[str, dict[str, Any], Receipt]] = []
            for line, record in chunk:
                try:
                    op = operation_from_record(record)
                except ValueError as exc:
                    log.warning("cio_queue.replay_unreadable_line", error=str(exc))
                    keep.append(line)
                    continue
                receipts.append((line, record, await queue._submit(op)))
            await queue.flush()
            delivered = []
            for line, record, receipt in receipts:
                outcome = await receipt.wait()
                if outcome.status is OutcomeStatus.DELIVERED:
                    delivered.append(_digest(line))
                    continue
                error = outcome.error
                updated = {**record, "reason": outcome.reason or outcome.status.value,
                           "attempts": record.get("attempts", 0) + outcome.attempts,
                           "status": error.status if error else None,
                           "error": str(error) if error else record.get("error")}
                keep.append(_dumps(updated))
            await anyio.to_thread.run_sync(_checkpoint, progress, delivered)
        stats = await queue.aclose()
    # Keep lines appended to the file by a live queue while this replay ran.
    current = await anyio.to_thread.run_sync(read_lines, path)
    keep.extend(current[len(lines):])
    await anyio.to_thread.run_sync(write_atomically, path, keep)
    progress.unlink(missing_ok=True)
    log.info("cio_queue.replayed", path=str(path), delivered=stats.delivered,
             remaining=len(keep))
    return stats


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def _checkpoint(progress: Path, digests: list[str]) -> None:
    if not digests:
        return
    with progress.open("a", encoding="utf-8") as handle:
        handle.write("".join(d + "\n" for d in digests))
        handle.flush()
        os.fsync(handle.fileno())
