"""A process that writes to a spool until it is killed, for the spool's crash tests.

Run as ``python spool_child.py MODE DIRECTORY ...``; every line it prints goes straight to
the pipe with one ``os.write`` (no buffer a SIGKILL could lose), so the parent knows
exactly what happened before the kill:

- ``steady DIRECTORY DURABILITY TAG``: ``ready PATH``, then rows at a steady rate, for ever:
  ``a I T`` once row I is added (T: ``time.monotonic()``, the same clock in every process),
  ``d I`` once its commit is durable (``sync`` only), ``r I T`` once it is removed (every
  third row, a little later).
- ``hold DIRECTORY TAG COUNT``: adds COUNT rows with ``sync``, removes every fourth, and
  adds one more row whose commit carries the removals; prints ``ready PATH`` and waits for
  its stdin to close, then closes the store and prints ``closed ROWS_LEFT``.

Row I's record is ``TAG:I`` padded to RECORD_BYTES.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import types
from pathlib import Path
from typing import Final

# Start in a third of the time: load cio_queue's modules without the package's
# __init__, which imports aiohttp. The tests start a dozen of these processes.
_package = types.ModuleType("cio_queue")
_package.__path__ = [str(Path(__file__).resolve().parent.parent / "cio_queue")]
sys.modules.setdefault("cio_queue", _package)

from cio_queue._spool import SpoolStore  # noqa: E402 - after the package stub

RECORD_BYTES: Final = 96
ADD_INTERVAL: Final = 0.002
"""Seconds between two rows of one writer task."""
SYNC_WRITERS: Final = 8


def record(tag: str, number: int) -> bytes:
    """The record of row ``number``."""
    return f"{tag}:{number}".encode().ljust(RECORD_BYTES, b".")


def say(*words: object) -> None:
    """Print one line, straight to the pipe."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


async def steady(directory: str, durability: str, tag: str) -> None:
    """Add rows for ever; remove every third one three rows later."""
    assert durability in ("batched", "sync")
    store = await SpoolStore.open(directory, durability="sync" if durability == "sync"
                                  else "batched")
    say("ready", store.path)
    counter = iter(range(10**9))
    keys: dict[int, int] = {}

    async def writer() -> None:
        while True:
            number = next(counter)
            key, durable = store.add(record(tag, number))
            keys[number] = key
            say("a", number, time.monotonic())
            if durable is not None:
                await durable
                say("d", number)
            old = number - 3
            if old >= 0 and old % 3 == 0 and old in keys:
                store.remove(keys.pop(old))
                say("r", old, time.monotonic())
            await asyncio.sleep(ADD_INTERVAL)

    writers = SYNC_WRITERS if durability == "sync" else 1
    await asyncio.gather(*(writer() for _ in range(writers)))


async def hold(directory: str, tag: str, count: int) -> None:
    """Add, remove, make it durable; close once stdin closes."""
    store = await SpoolStore.open(directory, durability="sync")
    added = [store.add(record(tag, number)) for number in range(count)]
    await asyncio.gather(*(durable for _, durable in added if durable is not None))
    for number, (key, _) in enumerate(added):
        if number % 4 == 3:
            store.remove(key)
    _, durable = store.add(record(tag, count))  # its commit carries the removals
    assert durable is not None
    await durable
    say("ready", store.path)
    await asyncio.to_thread(sys.stdin.buffer.read)
    say("closed", await store.close())


def main(argv: list[str]) -> None:
    """Run the mode named by the first argument."""
    match argv:
        case ["steady", directory, durability, tag]:
            asyncio.run(steady(directory, durability, tag))
        case ["hold", directory, tag, count]:
            asyncio.run(hold(directory, tag, int(count)))
        case _:
            raise SystemExit(f"usage: see {__file__}")


if __name__ == "__main__":
    main(sys.argv[1:])
