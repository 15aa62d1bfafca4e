"""What the command line's subcommands share: signal handling and argument types.

Stage: outside the pipeline; the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
from collections.abc import Callable, Iterator

__all__ = ["number", "on_signals"]


@contextlib.contextmanager
def on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` on SIGINT or SIGTERM (Ctrl-C, docker stop) while the block runs.

    Where the loop cannot watch signals (Windows, or a loop off the main thread), Ctrl-C
    raises KeyboardInterrupt instead.
    """
    loop = asyncio.get_running_loop()
    watched: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, callback)
            watched.append(signum)
    try:
        yield
    finally:
        for signum in watched:
            loop.remove_signal_handler(signum)


def number(kind: Callable[[str], float], minimum: float,
           maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) from ``minimum`` to ``maximum``."""
    noun = "an integer" if kind is int else "a number"
    bounds = f">= {minimum:g}" if maximum == math.inf else f"from {minimum:g} to {maximum:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        # An int needs no isfinite(), which would overflow on a huge one.
        if not (minimum <= value <= maximum and (kind is int or math.isfinite(value))):
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, got {text!r}")
        return value

    return parse
