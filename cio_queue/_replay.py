"""Replay a dead-letter file through a queue: beside a live queue, resumably, in bounded memory.

Stage: replay, its async half. :class:`~cio_queue._replayfiles.ReplayFiles` owns the
files and the protocol that makes a replay safe beside a live queue and resumable after a
crash (see its module). Here the work file is read a chunk at a time on a worker thread,
where each line is parsed and its operation rebuilt and sealed; the event loop only
enqueues the operations into one EventQueue, a few at a time, and waits for them to
settle before the chunk is checkpointed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Final

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._config import QueueConfig
from ._deadrecord import dumps_record, record_again
from ._log import log
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue
from ._replayfiles import Chunk, Line, ReplayFiles

__all__ = ["replay"]

SUBMIT_STEP: Final = 100
"""Operations enqueued between two yields to the event loop."""


async def replay(path: str | os.PathLike[str], config: QueueConfig) -> Statistics:
    """Re-send a dead-letter file with the same guarantees as live traffic.

    Safe beside a live queue that appends to the same file, in this process or another:
    the replay first takes the file away (renamed to ``PATH.replaying``, under the lock
    every append holds), so new lines start a new ``PATH``, and at the end it puts back
    the lines that stay, before whatever was appended meanwhile. What stays: the lines that
    were not delivered again (rejected again, failed again, or unsent at this run's
    deadline), with their new reason and their attempts added up, and the lines that are
    no valid operation, unchanged, each reported in a WARNING with its line number.

    The file is read in chunks on a worker thread, so memory stays bounded and the event
    loop free whatever its length. Each chunk is checkpointed in ``PATH.progress`` once its
    operations have settled, and an interrupted replay also notes what its last chunk
    delivered: the next call resumes and resends only what was in flight at the cut
    (events with the same id, which the API deduplicates), or a chunk after a crash. Only
    one replay of a file runs at a time. ``config.dead_letter_path`` is ignored: this file
    is the dead-letter file.

    Returns:
        The statistics of the replay's queue (all zero when it only finished the clean-up
        of an interrupted replay).

    Raises:
        ReplayInProgressError: another replay of this file is running.
        FileNotFoundError: there is no such file, nor an interrupted replay of it.
        OSError: the file or its directory cannot be read or written.
    """
    files = await anyio.to_thread.run_sync(ReplayFiles.open, Path(path))
    try:
        stats = Statistics() if files.committed else await _Replay(files, config).run()
        await anyio.to_thread.run_sync(files.finish)
    finally:
        files.close()
    log.info("cio_queue.replayed", path=str(files.path), resumed=files.resumed,
             delivered=stats.delivered, rejected=stats.rejected, failed=stats.failed)
    return stats


class _Replay:
    """One run through the work file: read, send and checkpoint a chunk at a time."""

    def __init__(self, files: ReplayFiles, config: QueueConfig) -> None:
        self._files = files
        self._config = dataclasses.replace(config, dead_letter_path=None, overflow="block",
                                           enqueue_timeout=None)
        self._batch = config.transport == "batch"
        self._sent: list[tuple[Line, Receipt]] = []  # of the chunk not yet checkpointed

    async def run(self) -> Statistics:
        """Send every chunk; return the queue's final statistics."""
        try:
            async with EventQueue(self._config) as queue:
                while (chunk := await anyio.to_thread.run_sync(self._read)) is not None:
                    await self._send(queue, chunk)
                    await anyio.to_thread.run_sync(self._keep, chunk)
                    self._sent = []
        finally:
            # Also when interrupted: note what the cut chunk delivered (aclose() has
            # settled it), so that a resumed replay resends only what was in flight.
            if self._sent:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._note_delivered)
        return queue.statistics()

    def _read(self) -> Chunk[Line] | None:
        return self._files.read_chunk(batch=self._batch)

    async def _send(self, queue: EventQueue, chunk: Chunk[Line]) -> None:
        """Enqueue the chunk's operations, yielding now and then; wait until all settle."""
        for line in chunk.lines:
            if line.op is not None:
                self._sent.append((line, await queue._submit(line.op)))
                if len(self._sent) % SUBMIT_STEP == 0:
                    await anyio.lowlevel.checkpoint()
        await queue.flush()

    def _keep(self, chunk: Chunk[Line]) -> None:
        """Write what the settled chunk keeps and checkpoint it (on a worker thread)."""
        outcomes = {line.number: receipt.outcome for line, receipt in self._sent}
        now = time.time()
        kept = [kept for line in chunk.lines
                if (kept := _kept(line, outcomes.get(line.number), now)) is not None]
        self._files.keep(chunk, kept)

    def _note_delivered(self) -> None:
        self._files.note_delivered([line.number for line, receipt in self._sent
                                    if _delivered(receipt.outcome)])


def _delivered(outcome: Outcome | None) -> bool:
    return outcome is not None and outcome.status is OutcomeStatus.DELIVERED


def _kept(line: Line, outcome: Outcome | None, now: float) -> bytes | None:
    """The line to keep for ``line``: as it was, with its new outcome, or none."""
    if line.record is None:
        return line.raw if line.raw.endswith(b"\n") else line.raw + b"\n"
    assert outcome is not None  # flush() settled every operation of the chunk
    if outcome.status is OutcomeStatus.DELIVERED:
        return None
    return dumps_record(record_again(line.record, outcome, now)).encode() + b"\n"
