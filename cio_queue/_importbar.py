"""The import's progress bar and summary table on a terminal, drawn by rich.

Stage: outside the pipeline; the command line (the import's display).

Imported only when stderr is a terminal and rich is installed (the ``cli`` extra);
``_importcli`` falls back to plain lines otherwise. rich draws the bar from a thread of its
own, refreshing a few times a second; the event loop only updates the task's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, TextIO

import anyio
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ._importcli import ProblemCount, Summary

if TYPE_CHECKING:
    from ._import import ImportProgress

__all__ = ["Bar", "print_summary"]

UPDATE_EVERY: Final = 0.2
"""Seconds between two updates of the bar's figures."""


class _TwoLineProgress(Progress):
    """A Progress whose bar has the counts on a line of their own below it."""

    counts: Text = Text()

    def get_renderables(self) -> Iterable[RenderableType]:
        """The bar's line, then the counts' line."""
        yield self.make_tasks_table(self.tasks)
        yield self.counts


class Bar:
    """A progress bar on stderr: share of the file done, rate and time left, then the counts.

    Two lines, so that it fits an 80-column terminal::

        importing people.csv ━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━━  71% 9,812/s 0:00:04
          71,000 lines: 70,998 delivered, 1 rejected, 1 invalid, 0 failed
    """

    rich = True

    def __init__(self, label: str, *, shown: int | None, dry_run: bool) -> None:
        self._console = Console(stderr=True)
        self._delivered = "valid" if dry_run else "delivered"
        self._progress = _TwoLineProgress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=None),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=self._console, transient=False, expand=True)
        self._task = self._progress.add_task(label, total=None, start=False, rate="")
        self._problems = ProblemCount(shown)
        self._started = False
        self._progress.start()

    async def run(self, progress: Callable[[], ImportProgress]) -> None:
        """Update the bar's figures every UPDATE_EVERY seconds until cancelled."""
        while True:
            self._show(progress())
            await anyio.sleep(UPDATE_EVERY)

    def _show(self, p: ImportProgress) -> None:
        if p.size and not self._started:
            self._progress.reset(self._task, total=p.size, completed=p.done)
            self._started = True
        run = p.run
        rate = run.lines / p.elapsed if p.elapsed > 0 else 0.0
        self._progress.update(self._task, completed=p.done, rate=f"{rate:,.0f}/s")
        self._progress.counts = Text.assemble(
            f"  {run.lines:,} lines: ", (f"{run.delivered:,} {self._delivered}", "green"),
            ", ", (f"{run.rejected:,} rejected", "yellow"), ", ",
            (f"{run.invalid:,} invalid", "magenta"), ", ", (f"{p.failed:,} failed", "red"))

    def problem(self, number: int, problem: str) -> None:
        """Print a problem above the bar, while fewer than ``shown`` have been."""
        text = self._problems.text(number, problem)
        if text is not None:
            self._console.print(text, markup=False, highlight=False)

    def stop(self, final: ImportProgress) -> None:
        """Draw the bar one last time, with the final figures, and leave it on the screen."""
        self._show(final)
        self._progress.stop()


def print_summary(summary: Summary, stream: TextIO) -> None:
    """Print the summary as a table."""
    console = Console(file=stream)
    table = Table(title=summary.headline(), title_justify="left", show_edge=False)
    table.add_column("")
    table.add_column("this run", justify="right")
    table.add_column("all runs", justify="right")
    for what, run, total in summary.rows():
        table.add_row(what, run, total)
    console.print(table)
    for line in summary.footer():
        console.print(line, markup=False, highlight=False)
