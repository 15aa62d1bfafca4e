"""Event ids: ULIDs made at enqueue, when an operation is validated and built.

Stage: intake, at the call site.

A ULID is 48 bits of milliseconds and 80 random bits in 26 Crockford base-32 characters,
so ids sort by creation time and a retried event keeps the id the API dedupes on. The
generator is reseeded in a forked child, which would otherwise repeat its parent's ids.
"""

from __future__ import annotations

import os
import random
import time
from typing import Final

__all__ = ["new_ulid", "ulid_of"]

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two Crockford characters: four lookups encode 40 bits.
_PAIRS: Final = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_random = random.Random()  # noqa: S311 - ULIDs need uniqueness, not secrecy
if hasattr(os, "register_at_fork"):
    # A forked child would otherwise repeat its parent's random sequence, and so its ids.
    os.register_at_fork(after_in_child=_random.seed)
# The last millisecond seen and its 10-character text, as one tuple: a thread that reads
# it while another replaces it gets one pair or the other, never a mix of the two.
_ulid_time: tuple[int, str] = (-1, "")


def _encode_40(value: int) -> str:
    pairs = _PAIRS
    return (pairs[value >> 30] + pairs[(value >> 20) & 1023] + pairs[(value >> 10) & 1023]
            + pairs[value & 1023])


def new_ulid() -> str:
    """Return a new ULID: 48 bits of milliseconds, 80 random bits, 26 Crockford chars."""
    global _ulid_time  # noqa: PLW0603 - the cache of the current millisecond's text
    millis = time.time_ns() // 1_000_000
    last, prefix = _ulid_time
    if millis != last:
        # 48 bits take 10 characters: the first carries the top 3 bits (2 pad bits).
        prefix = (_CROCKFORD[millis >> 45] + _encode_40(millis >> 5 & (1 << 40) - 1)
                  + _CROCKFORD[millis & 31])
        _ulid_time = (millis, prefix)
    # 80 random bits drawn as 30 + 30 + 20, each an int of one machine digit, encoded
    # 10 bits at a time: about half the cost of shifting one 80-bit int (once per event).
    # One f-string builds the text in one go, where eight + made a string each (120 ns).
    bits, pairs = _random.getrandbits, _PAIRS
    high, middle, low = bits(30), bits(30), bits(20)
    return (f"{prefix}{pairs[high >> 20]}{pairs[high >> 10 & 1023]}{pairs[high & 1023]}"
            f"{pairs[middle >> 20]}{pairs[middle >> 10 & 1023]}{pairs[middle & 1023]}"
            f"{pairs[low >> 10]}{pairs[low & 1023]}")


def ulid_of(millis: int, randomness: int) -> str:
    """Return the ULID of given parts: 48 bits of milliseconds and 80 bits of the caller's.

    For ids that must come out the same every time, such as an import's, which are made
    from the import's start time and the line number.
    """
    if not (0 <= millis < 1 << 48 and 0 <= randomness < 1 << 80):
        raise ValueError("a ULID has 48 bits of milliseconds and 80 bits of randomness")
    return (_CROCKFORD[millis >> 45] + _encode_40(millis >> 5 & (1 << 40) - 1)
            + _CROCKFORD[millis & 31] + _encode_40(randomness >> 40)
            + _encode_40(randomness & (1 << 40) - 1))
