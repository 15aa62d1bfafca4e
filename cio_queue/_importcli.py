"""``cio-queue import FILE``: the import's command line, its progress display and summary.

Stage: outside the pipeline; the command line. It drives a
:class:`~cio_queue._import.FileImport` as a user's script would. On a terminal the progress
is a bar drawn by rich (the ``cli`` extra), with the rate, the time left and the counts;
without rich, or when stderr is not a terminal, it is a plain line every
``--progress-every`` seconds. The summary goes to stdout: a table on a terminal, plain
aligned text otherwise. Exit status: 0 when every line of the file has been delivered (for
``--dry-run``: is valid), 1 otherwise, 2 for bad usage or a file that cannot be read; never
a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TextIO

import anyio

from ._clitools import on_signals
from ._config import DEFAULT_RATE_LIMIT, QueueConfig
from ._exceptions import CioQueueError
from ._import import FileImport, ImportProgress, ImportResult
from ._importformats import DEFAULT_NAME_COLUMN, DEFAULT_TIMESTAMP_COLUMN, ImportFormat

__all__ = ["add_import_parser", "run_import"]

PLAIN_EVERY: Final = 10.0
"""Seconds between two plain progress lines, by default."""
SHOWN_PROBLEMS: Final = 20
"""Problems printed by an import (a dry run prints all); the rest are in the rejected file."""
_DRY_CREDENTIALS: Final = "dry-run"
_USAGE: Final = 2


class UsageError(Exception):
    """Options that do not go together."""


def add_import_parser(sub: Any) -> None:
    """Add the ``import`` subcommand to the ``cio-queue`` parser's subparsers."""
    parser = sub.add_parser(
        "import", help="send a JSON-lines or CSV file of people or events (credentials from "
                       "CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY / CUSTOMERIO_REGION)",
        description="Send every line of FILE through the queue, resumably: a checkpoint "
                    "beside it (FILE.import.progress) lets a second run skip what was "
                    "delivered, and lines not imported go to FILE.rejected.jsonl.")
    parser.add_argument("path", metavar="FILE")
    parser.add_argument("--format", choices=("jsonl", "csv"),
                        help="the file's format (default: csv for a .csv file, else jsonl)")
    parser.add_argument("--rows", choices=("people", "events"),
                        help="what a CSV row is (default: people; events with --event-name)")
    parser.add_argument("--id-column", help="the CSV column of the person's id (default: id "
                                            "for people, customer_id for events)")
    parser.add_argument("--event-name", help="the name of every event of a CSV of events")
    parser.add_argument("--name-column", default=DEFAULT_NAME_COLUMN,
                        help="the CSV column of the event name (default: %(default)s)")
    parser.add_argument("--timestamp-column", default=DEFAULT_TIMESTAMP_COLUMN,
                        help="the CSV column of the event time, if there is one "
                             "(default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every line and report problems; send nothing")
    parser.add_argument("--restart", action="store_true",
                        help="forget an earlier run's checkpoint and start from the top")
    parser.add_argument("--base-url", help="Track API scheme://host[:port], overriding the "
                                           "region")
    parser.add_argument("--rate-limit", type=float, default=DEFAULT_RATE_LIMIT,
                        help="requests per second, 0 for none (default: %(default)g)")
    parser.add_argument("--progress-every", type=float, default=PLAIN_EVERY,
                        metavar="SECONDS", help="seconds between plain progress lines "
                                                "(default: %(default)g)")


def run_import(args: argparse.Namespace) -> int:
    """Run ``cio-queue import`` with parsed arguments; return the exit status."""
    try:
        fmt = _format_of(args)
        config = _config_of(args)
        return asyncio.run(_run(args, config, fmt))
    except (UsageError, CioQueueError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # a file that is missing or unreadable, or a full disk
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")


def _fail(message: str) -> int:
    print(f"cio-queue import: {message}", file=sys.stderr)
    return _USAGE


def _format_of(args: argparse.Namespace) -> ImportFormat:
    rows: Literal["people", "events"] = args.rows or (
        "events" if args.event_name is not None else "people")
    if rows == "people" and args.event_name is not None:
        raise UsageError("--event-name is for a CSV of events, not --rows people")
    if args.progress_every <= 0:
        raise UsageError("--progress-every must be a number of seconds > 0")
    return ImportFormat(format=args.format, rows=rows, id_column=args.id_column,
                        event_name=args.event_name, name_column=args.name_column,
                        timestamp_column=args.timestamp_column)


def _config_of(args: argparse.Namespace) -> QueueConfig:
    """A backfill's queue: the batch transport, a blocking queue, the rate limit asked for."""
    settings: dict[str, Any] = {"transport": "batch", "overflow": "block",
                                "rate_limit": args.rate_limit or None}
    if args.base_url:
        settings["base_url"] = args.base_url
    if args.dry_run:  # nothing is sent, so no credentials are needed
        return QueueConfig(site_id=_DRY_CREDENTIALS, api_key=_DRY_CREDENTIALS, **settings)
    return QueueConfig.from_env(**settings)


async def _run(args: argparse.Namespace, config: QueueConfig, fmt: ImportFormat) -> int:
    display = _display(args)
    importer = FileImport(args.path, config, fmt, dry_run=args.dry_run, restart=args.restart,
                          on_problem=display.problem)
    result: ImportResult | None = None
    with anyio.CancelScope() as interrupted:
        # SIGINT and SIGTERM end the run as a failure would: what was sent settles, the
        # delivered lines are noted, and the summary says how to resume.
        showing = asyncio.create_task(display.run(importer.progress))
        try:
            with on_signals(interrupted.cancel):
                result = await importer.run()
        finally:
            showing.cancel()
            with suppress(asyncio.CancelledError):
                await showing
            display.stop(importer.progress())
    summary = Summary(importer.path.name, importer.progress(), result)
    summary.print(sys.stdout, rich=display.rich and sys.stdout.isatty())
    return summary.status


# --- progress ------------------------------------------------------------------------------

class _Display(Protocol):
    rich: bool

    async def run(self, progress: Callable[[], ImportProgress]) -> None:
        """Show the progress until cancelled."""

    def problem(self, number: int, problem: str) -> None:
        """Show a line that is not imported."""

    def stop(self, final: ImportProgress) -> None:
        """Show the final figures and stop showing the progress."""


def _display(args: argparse.Namespace) -> _Display:
    label = "checking" if args.dry_run else "importing"
    shown = None if args.dry_run else SHOWN_PROBLEMS
    if sys.stderr.isatty():
        try:
            from ._importbar import Bar  # noqa: PLC0415 - rich is optional (the cli extra)
        except ImportError:
            pass
        else:
            return Bar(f"{label} {Path(args.path).name}", shown=shown, dry_run=args.dry_run)
    return PlainLines(sys.stderr, every=args.progress_every, shown=shown,
                      dry_run=args.dry_run)


class PlainLines:
    """Progress as a plain line every ``every`` seconds, and problems as plain lines."""

    rich = False

    def __init__(self, stream: TextIO, *, every: float, shown: int | None,
                 dry_run: bool) -> None:
        self._stream = stream
        self._every = every
        self._problems = ProblemCount(shown)
        self._dry_run = dry_run

    async def run(self, progress: Callable[[], ImportProgress]) -> None:
        """Print a progress line every ``every`` seconds until cancelled."""
        while True:
            await anyio.sleep(self._every)
            self._print(progress_line(progress(), dry_run=self._dry_run))

    def problem(self, number: int, problem: str) -> None:
        """Print a problem, while fewer than ``shown`` have been."""
        text = self._problems.text(number, problem)
        if text is not None:
            self._print(text)

    def stop(self, final: ImportProgress) -> None:
        """Nothing to stop: every line is complete, and the summary follows."""

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


class ProblemCount:
    """Which problems to show: the first ``shown`` (all with None), then one line more."""

    def __init__(self, shown: int | None) -> None:
        self._shown = shown
        self._count = 0

    def text(self, number: int, problem: str) -> str | None:
        """The line to print for this problem, or None to print nothing."""
        self._count += 1
        if self._shown is None or self._count <= self._shown:
            return f"line {number}: {problem}"
        if self._count == self._shown + 1:
            return "(more problems: each is in the rejected lines' file)"
        return None


def progress_line(p: ImportProgress, *, dry_run: bool = False) -> str:
    """One plain line of progress: share done, counts, rate and time left."""
    run = p.run
    share = f"{100 * p.done / p.size:5.1f}%" if p.size else "  0.0%"
    delivered = "valid" if dry_run else "delivered"
    rate = _rate(p)
    left = _time_left(p)
    return (f"{share}  {run.lines:,} lines  {run.delivered:,} {delivered}  "
            f"{run.rejected:,} rejected  {run.invalid:,} invalid  {p.failed:,} failed  "
            f"{rate:,.0f} lines/s  {left}")


def _rate(p: ImportProgress) -> float:
    return p.run.lines / p.elapsed if p.elapsed > 0 else 0.0


def _time_left(p: ImportProgress) -> str:
    done = p.done - p.start
    if done <= 0 or p.elapsed <= 0:
        return "ETA -"
    return "ETA " + duration(max(0, p.size - p.done) * p.elapsed / done)


def duration(seconds: float) -> str:
    """Seconds as ``1h02m``, ``3m04s`` or ``5.6s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


# --- the summary ---------------------------------------------------------------------------

class Summary:
    """The end of a run: its headline, the counts of this run and all runs, the status."""

    def __init__(self, name: str, progress: ImportProgress,
                 result: ImportResult | None) -> None:
        self.name = name
        self.progress = progress
        self.result = result
        run = result.run if result is not None else progress.run
        self.run = run
        self.total = result.total if result is not None else progress.before + progress.run
        self.failed = result.failed if result is not None else progress.failed

    @property
    def status(self) -> int:
        """0 when every line is delivered (dry: valid), 1 otherwise."""
        result = self.result
        return 0 if result is not None and result.complete and self.failed == 0 else 1

    def headline(self) -> str:
        """What happened, in one line."""
        result = self.result
        if result is None:
            return f"{self.name}: interrupted; run the same command again to resume"
        if result.dry_run:
            bad = result.run.invalid
            return (f"{self.name}: dry run, nothing sent: "
                    + ("every line is valid" if bad == 0 else f"{bad:,} invalid lines"))
        if result.failure is not None:
            cause = result.failure.reason or result.failure.status.value
            error = f" ({result.failure.error})" if result.failure.error else ""
            return (f"{self.name}: stopped: {self.failed:,} operations failed: "
                    f"{cause}{error}; fix that, then run the same command again to resume")
        if result.resumed and result.run.lines == 0:
            return f"{self.name}: nothing left to import (an earlier run worked through it)"
        return f"{self.name}: imported"

    def rows(self) -> list[tuple[str, str, str]]:
        """The table: (what, this run, all runs)."""
        run, total = self.run, self.total
        delivered = "valid" if self.result is not None and self.result.dry_run else "delivered"
        return [("lines", f"{run.lines:,}", f"{total.lines:,}"),
                (delivered, f"{run.delivered:,}", f"{total.delivered:,}"),
                ("rejected by the API", f"{run.rejected:,}", f"{total.rejected:,}"),
                ("invalid", f"{run.invalid:,}", f"{total.invalid:,}"),
                ("failed (sent again by the next run)", f"{self.failed:,}", "")]

    def footer(self) -> list[str]:
        """Time, rate, and where the lines not imported are."""
        p = self.progress
        lines = [f"{duration(p.elapsed)}, {_rate(p):,.0f} lines/s"]
        result = self.result
        if result is not None and not result.dry_run and (self.total.rejected
                                                          or self.total.invalid):
            lines.append(f"lines not imported, with their reasons: {result.rejected_path}")
        return lines

    def print(self, stream: TextIO, *, rich: bool) -> None:
        """Print the summary: a rich table when ``rich``, else plain aligned text."""
        if rich:
            from ._importbar import print_summary  # noqa: PLC0415 - rich is optional

            print_summary(self, stream)
            return
        print(self.headline(), file=stream)
        width = max(len(what) for what, _, _ in self.rows())
        print(f"{'':{width}}  {'this run':>12}  {'all runs':>12}", file=stream)
        for what, run, total in self.rows():
            print(f"{what:{width}}  {run:>12}  {total:>12}", file=stream)
        for line in self.footer():
            print(line, file=stream)
