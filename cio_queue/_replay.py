"""Replay a dead-letter file through a queue, resumably.

Outside the pipeline: it feeds the records of a dead-letter file back into intake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import structlog

from ._config import QueueConfig
from ._deadletter import (
    dumps_record,
    iter_records,
    operation_from_record,
    read_lines,
    write_atomically,
)
from ._outcome import OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue

__all__ = ["replay"]

log = structlog.get_logger("cio_queue")

CHUNK: Final = 1000
"""Lines enqueued between two progress checkpoints."""


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".progress")


async def replay(path: str | os.PathLike[str], config: QueueConfig) -> Statistics:
    """Re-send a dead-letter file with the same guarantees as live traffic.

    Delivered lines are checkpointed to ``PATH.progress`` after every chunk of lines and
    when the replay is interrupted, so a resumed replay resends only the operations that
    were in flight at the interruption (events with the same id, which the API dedupes).
    At the end the file is rewritten, atomically, to hold only the lines that were not
    delivered again (rejected again, failed again, or unsent at this run's deadline) with
    their new reason, and the checkpoint file is removed. Lines that are not dead-letter
    records are kept as they are. ``config.dead_letter_path`` is ignored: this file is the
    dead-letter file.

    Returns:
        The statistics of the replay's queue.
    """
    path = Path(path)
    progress = _progress_path(path)
    lines = await anyio.to_thread.run_sync(read_lines, path)
    done: set[str] = set()
    if progress.exists():
        done = set((await anyio.to_thread.run_sync(progress.read_text)).split())
    keep: list[str] = []
    todo: list[tuple[str, dict[str, Any]]] = []
    for line, record in iter_records(lines):
        if _digest(line) in done:
            continue
        if record is None:
            log.warning("cio_queue.replay_unreadable_line", line=line[:80])
            keep.append(line)
        else:
            todo.append((line, record))
    cfg = dataclasses.replace(config, dead_letter_path=None, overflow="block",
                              enqueue_timeout=None)
    stats, sent = await _send(todo, cfg, progress, keep)
    for record, receipt in sent:
        outcome = receipt.outcome
        assert outcome is not None  # aclose() settles every operation
        if outcome.status is not OutcomeStatus.DELIVERED:
            error = outcome.error
            keep.append(dumps_record({
                **record, "reason": outcome.reason or outcome.status.value,
                "attempts": record.get("attempts", 0) + outcome.attempts,
                "status": error.status if error else None,
                "error": str(error) if error else record.get("error")}))
    # Keep lines appended to the file by a live queue while this replay ran.
    current = await anyio.to_thread.run_sync(read_lines, path)
    keep.extend(current[len(lines):])
    await anyio.to_thread.run_sync(write_atomically, path, keep)
    progress.unlink(missing_ok=True)
    log.info("cio_queue.replayed", path=str(path), delivered=stats.delivered,
             remaining=len(keep))
    return stats


async def _send(todo: list[tuple[str, dict[str, Any]]], config: QueueConfig, progress: Path,
                keep: list[str]) -> tuple[Statistics, list[tuple[dict[str, Any], Receipt]]]:
    """Send the records through a queue, checkpointing deliveries; return what was sent."""
    unsaved: list[tuple[str, Receipt]] = []  # delivered or in flight, not yet checkpointed

    def checkpoint() -> None:
        delivered = [digest for digest, receipt in unsaved
                     if receipt.outcome and receipt.outcome.status is OutcomeStatus.DELIVERED]
        unsaved[:] = [(d, r) for d, r in unsaved if not r.done()]
        _checkpoint(progress, delivered)

    sent: list[tuple[dict[str, Any], Receipt]] = []
    try:
        async with EventQueue(config) as queue:
            for start in range(0, len(todo), CHUNK):
                for line, record in todo[start:start + CHUNK]:
                    try:
                        op = operation_from_record(record)
                    except ValueError as exc:
                        log.warning("cio_queue.replay_unreadable_line", error=str(exc))
                        keep.append(line)
                        continue
                    receipt = await queue._submit(op)
                    sent.append((record, receipt))
                    unsaved.append((_digest(line), receipt))
                await queue.flush()
                await anyio.to_thread.run_sync(checkpoint)
            stats = await queue.aclose()
    finally:
        # Also when interrupted: record every delivery so far, so that a resumed replay
        # resends only what was in flight at the cut.
        checkpoint()
    return stats, sent


def _checkpoint(progress: Path, digests: list[str]) -> None:
    if not digests:
        return
    with progress.open("a", encoding="utf-8") as handle:
        handle.write("".join(d + "\n" for d in digests))
        handle.flush()
        os.fsync(handle.fileno())
