# pyright: strict
"""Untyped EventQueue calls with a str timestamp, which used to pass as Any."""

from __future__ import annotations

from cio_queue import EventQueue


async def str_timestamps(cio: EventQueue) -> None:
    await cio.track_anonymous("anon-1", "visited", {}, timestamp="1700000000")  # E: arg-type reportArgumentType
    await cio.track("42", "purchase", {}, timestamp="1700000000")  # E: arg-type reportArgumentType
    await cio.backfill("42", "purchase", "1700000000", price=9.5)  # E: arg-type reportArgumentType
