"""Identifiers: time-ordered ids for documents and events, and random secrets."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: sortable, no ambiguous letters


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_last_millis = 0
_last_random = 0


def sortable_id() -> str:
    """A 26-character ULID: 48 bits of milliseconds, then 80 random bits.

    Monotonic within a process (ULID's monotonic variant): an id made in the same millisecond as
    the previous one increments its random part, so ids sort in the order they were made and the
    outbox relays events in the order their changes committed. Only the event loop's thread makes
    ids, so no lock is needed.
    """
    global _last_millis, _last_random
    millis = time.time_ns() // 1_000_000
    if millis <= _last_millis and _last_random < (1 << 80) - 1:
        millis, random_part = _last_millis, _last_random + 1
    else:
        random_part = int.from_bytes(os.urandom(10), "big")
    _last_millis, _last_random = millis, random_part
    return _base32(millis, 10) + _base32(random_part, 16)
