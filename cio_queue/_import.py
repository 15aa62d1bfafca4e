"""Import a file of people or events through an EventQueue: resumably, in bounded memory.

Stage: import, its async half. :class:`~cio_queue._importfiles.ImportFiles` owns the file,
its checkpoint and its rejected lines (see its module); it reads the file a chunk at a time
on a worker thread, where each record is parsed. Here the event loop calls EventQueue's
public method for each line (so the queue's own builders validate it), keeps up to
:data:`CHUNKS_IN_FLIGHT` chunks in the queue so that requests never wait for the disk, and
checkpoints each chunk, in order, once all its operations have settled.

A chunk with an operation that *failed* (retries run out, credentials refused) is not
checkpointed: the import stops reading, lets what it sent settle, notes what was delivered,
and ends, so that the next run sends the failed lines again and nothing after them is
skipped. Lines the API *rejected*, and invalid lines, go to ``FILE.rejected.jsonl`` and are
never retried.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._checkpoint import Chunk
from ._config import QueueConfig
from ._exceptions import InvalidEventError
from ._importfiles import ImportFiles, Line, Totals, rejected_line
from ._importformats import Call, ImportFormat
from ._log import log
from ._outcome import Outcome, OutcomeStatus, Receipt, Statistics
from ._queue import EventQueue
from ._sender import Request, Response

__all__ = ["CHUNKS_IN_FLIGHT", "IMPORT_FLUSH_INTERVAL", "FileImport", "ImportProgress",
           "ImportResult", "import_file"]

CHUNKS_IN_FLIGHT: Final = 3
"""Chunks whose operations may be in the queue at once: the next is read while they go."""
IMPORT_FLUSH_INTERVAL: Final = 0.25
"""The longest a partial batch waits (seconds): an import's queue never waits for more."""
SUBMIT_STEP: Final = 100
"""Lines enqueued between two yields to the event loop."""

OnProblem = Callable[[int, str], None]
"""Told of each line that is not imported: its number and what is wrong."""


@dataclass(frozen=True, slots=True)
class ImportProgress:
    """A snapshot of a running import, for a progress display.

    Attributes:
        done: bytes of the file settled (checkpointed), earlier runs included.
        start: of them, those settled before this run.
        size: the file's size (bytes).
        run: this run's totals so far (delivered and rejected as the queue counts them).
        before: the totals of the earlier runs.
        failed: operations of this run that failed.
        elapsed: seconds since this run started.
    """

    done: int
    start: int
    size: int
    run: Totals
    before: Totals
    failed: int
    elapsed: float


@dataclass(frozen=True, slots=True)
class ImportResult:
    """How an import ended.

    Attributes:
        path: the file.
        rejected_path: ``FILE.rejected.jsonl``, where the lines not imported are.
        run: this run's totals.
        total: the totals of every run of this import, this one included.
        failed: operations of this run that failed; the next run sends them again.
        failure: the first failed operation's outcome, if any.
        finished: whether the whole file has been worked through (nothing failed and
            nothing was interrupted).
        resumed: whether this run continued an earlier one.
        dry_run: whether nothing was sent (``delivered`` then counts valid lines).
        elapsed: seconds this run took.
        statistics: the final statistics of this run's queue.
    """

    path: Path
    rejected_path: Path
    run: Totals
    total: Totals
    failed: int
    failure: Outcome | None
    finished: bool
    resumed: bool
    dry_run: bool
    elapsed: float
    statistics: Statistics

    @property
    def complete(self) -> bool:
        """Whether every line of the file has been delivered (or found valid, dry)."""
        total = self.total
        return self.finished and total.delivered == total.lines


@dataclass(slots=True)
class _Sent:
    """A chunk in the queue: its lines with their receipts, and those refused at once."""

    chunk: Chunk[Line]
    receipts: list[tuple[Line, Receipt]] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)


class _DrySender:
    """Answer every request 200 unsent, so that a dry run's queue makes every check."""

    async def send(self, request: Request) -> Response:
        return Response(200, {}, b"{}")

    async def aclose(self) -> None:
        return None


async def import_file(path: str | os.PathLike[str], config: QueueConfig,
                      fmt: ImportFormat | None = None, *, dry_run: bool = False,
                      restart: bool = False, on_problem: OnProblem | None = None
                      ) -> ImportResult:
    """Send every line of a JSON-lines or CSV file through an EventQueue; see FileImport."""
    return await FileImport(path, config, fmt, dry_run=dry_run, restart=restart,
                            on_problem=on_problem).run()


class FileImport:
    """One run of the import of a file: :meth:`run` it, watch it with :meth:`progress`.

    Each line is enqueued by EventQueue's public method of its kind, so it is validated
    exactly as an app's call is; the file is read a chunk at a time on a worker thread, so
    memory stays bounded and the event loop free whatever its length. Each chunk is
    checkpointed in ``FILE.import.progress`` once its operations have settled, and an
    interrupted run notes what its unsettled chunks delivered: the next run of the same
    import resumes there, and sends again only what was in flight at the cut (events with
    the same id, which the API deduplicates), or the chunks a crash cut.

    The queue is ``config``'s, except: no dead-letter file or spool (the checkpoint and
    ``FILE.rejected.jsonl`` take their place), ``overflow="block"`` without a timeout, and a
    ``flush_interval`` of at most :data:`IMPORT_FLUSH_INTERVAL`.

    Args:
        path: the file.
        config: the queue's configuration (credentials, transport, rate limit...).
        fmt: how to read the file; by default, by its extension.
        dry_run: send nothing and write nothing: only check every line (read from the
            top), reporting each problem.
        restart: forget an earlier run of this import and start from the top.
        on_problem: told of each line that is not imported, with its number.
    """

    def __init__(self, path: str | os.PathLike[str], config: QueueConfig,
                 fmt: ImportFormat | None = None, *, dry_run: bool = False,
                 restart: bool = False, on_problem: OnProblem | None = None) -> None:
        self.path = Path(path)
        self._format = fmt or ImportFormat()
        self._config = dataclasses.replace(
            config, dead_letter_path=None, spool_path=None, overflow="block",
            enqueue_timeout=None, spool_durability="batched", max_spool_bytes=None,
            flush_interval=min(config.flush_interval, IMPORT_FLUSH_INTERVAL))
        self._dry_run = dry_run
        self._restart = restart
        self._on_problem = on_problem
        self._files: ImportFiles | None = None
        self._queue: EventQueue | None = None
        self._started = time.monotonic()
        self._lines = 0  # handled in this run: enqueued, or refused at once
        self._invalid = 0
        self._settled = Totals()  # of this run's chunks that are checkpointed
        self._done = 0
        self._window: deque[_Sent] = deque()  # in the queue, not yet checkpointed
        self._failure: Outcome | None = None

    def __repr__(self) -> str:
        return f"<FileImport {self.path}>"

    def progress(self) -> ImportProgress:
        """Return where the run is: bytes settled, totals so far, failures."""
        files = self._files
        stats = self._queue.statistics() if self._queue is not None else Statistics()
        return ImportProgress(
            done=self._done, start=files.done if files else 0,
            size=files.size if files else 0, run=self._totals(stats),
            before=files.totals if files else Totals(), failed=_failed(stats),
            elapsed=time.monotonic() - self._started)

    def _totals(self, stats: Statistics) -> Totals:
        """This run's totals: delivered and rejected as its queue counts them."""
        return Totals(self._lines, stats.delivered, stats.rejected, self._invalid)

    async def run(self) -> ImportResult:
        """Import the file (or what an earlier run left of it); return how it ended.

        Raises:
            ImportFileError: another import of the file runs, its CSV header lacks a
                column, or it is not the file its checkpoint was made for.
            OSError: the file cannot be read, or a file beside it written.
        """
        self._started = time.monotonic()
        files = await anyio.to_thread.run_sync(
            lambda: ImportFiles.open(self.path, self._format, dry_run=self._dry_run,
                                     restart=self._restart))
        self._files = files
        self._done = files.done
        try:
            finished, stats = await self._send_all(files)
        finally:
            files.close()
        result = self._result(files, finished, stats)
        log.info("cio_queue.imported", path=str(self.path), resumed=files.resumed,
                 dry_run=self._dry_run, lines=result.run.lines,
                 delivered=result.run.delivered, rejected=result.run.rejected,
                 invalid=result.run.invalid, failed=result.failed)
        return result

    async def _send_all(self, files: ImportFiles) -> tuple[bool, Statistics]:
        """Send every chunk; return whether the file was worked through, and the stats."""
        sender = _DrySender() if self._dry_run else None
        queue = EventQueue(self._config, sender=sender)
        self._queue = queue
        finished = False
        try:
            async with queue:
                while (self._failure is None
                       and (chunk := await anyio.to_thread.run_sync(files.read_chunk))):
                    sent = _Sent(chunk)
                    self._window.append(sent)  # noted if cut in the middle, too
                    await self._send(queue, sent)
                    if len(self._window) >= CHUNKS_IN_FLIGHT:
                        await self._settle(files)
                await queue.flush()
                while self._window and self._failure is None:
                    await self._settle(files)
                finished = self._failure is None
        finally:
            # Also when interrupted: note what the chunks not checkpointed delivered (the
            # queue's aclose() has settled them), so the next run resends only the rest.
            if self._window:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(files.note_delivered, self._delivered())
        return finished, queue.statistics()

    async def _send(self, queue: EventQueue, sent: _Sent) -> None:
        """Enqueue a chunk's lines by EventQueue's methods, yielding now and then."""
        for n, line in enumerate(sent.chunk.lines, 1):
            if n % SUBMIT_STEP == 0:
                await anyio.lowlevel.checkpoint()
            problem = line.problem
            if problem is None:
                try:
                    sent.receipts.append((line, await _call(queue, line)))
                    continue
                except InvalidEventError as exc:
                    problem = str(exc)
            sent.invalid.append(rejected_line(line, reason="invalid", error=problem))
            self._invalid += 1
            self._tell(line.number, problem)
        self._lines += len(sent.chunk.lines)

    async def _settle(self, files: ImportFiles) -> None:
        """Wait for the oldest chunk to settle; checkpoint it, or stop on a failure."""
        sent = self._window[0]
        for _, receipt in sent.receipts:
            await receipt.wait()
        rejected = list(sent.invalid)
        delivered = 0
        for line, receipt in sent.receipts:
            outcome = receipt.outcome
            assert outcome is not None
            if outcome.status is OutcomeStatus.DELIVERED:
                delivered += 1
            elif outcome.status is OutcomeStatus.REJECTED:
                rejected.append(_rejected(line, outcome))
                self._tell(line.number, f"rejected by the API: {outcome.error}")
            elif self._failure is None:
                self._failure = outcome
        if self._failure is not None:
            return  # not checkpointed: the next run sends it again, less what was delivered
        self._window.popleft()
        settled = self._settled
        settled.lines += len(sent.chunk.lines)
        settled.delivered += delivered
        settled.rejected += len(sent.receipts) - delivered
        settled.invalid += len(sent.invalid)
        total = files.totals + settled
        await anyio.to_thread.run_sync(files.keep, sent.chunk, rejected, total)
        self._done = sent.chunk.end_offset

    def _delivered(self) -> list[int]:
        return [line.number for sent in self._window for line, receipt in sent.receipts
                if receipt.outcome is not None
                and receipt.outcome.status is OutcomeStatus.DELIVERED]

    def _tell(self, number: int, problem: str) -> None:
        if self._on_problem is not None:
            self._on_problem(number, problem)

    def _result(self, files: ImportFiles, finished: bool, stats: Statistics) -> ImportResult:
        run = self._totals(stats)
        return ImportResult(
            path=self.path, rejected_path=files.rejected, run=run,
            total=files.totals + run, failed=_failed(stats), failure=self._failure,
            finished=finished, resumed=files.resumed, dry_run=self._dry_run,
            elapsed=time.monotonic() - self._started, statistics=stats)


async def _call(queue: EventQueue, line: Line) -> Receipt:
    """Enqueue a line: by the EventQueue method it names, or as a dead-letter record."""
    parsed = line.parsed
    if isinstance(parsed, Call):
        receipt: Receipt = await getattr(queue, parsed.kind)(**parsed.arguments)
        return receipt
    assert parsed is not None
    return await queue._submit(parsed)  # checked as replay checks a record, and sent as it is


def _rejected(line: Line, outcome: Outcome) -> bytes:
    error = outcome.error
    return rejected_line(line, reason=outcome.reason or outcome.status.value,
                         status=error.status if error else None,
                         error=str(error) if error else outcome.status.value)


def _failed(stats: Statistics) -> int:
    return stats.failed + stats.dead_lettered + stats.dropped
