"""Prefixed identifiers: ``rec_`` + 20 base62 characters, sortable by creation time.

Ids made in one process sort strictly in the order they were made, even within one
millisecond or when the clock stands still or steps back (a ``ManualClock``, an NTP step):
the time part never goes below the last one and the random part then counts up (ULID's
monotonic mode). Versioned chunk keys rely on it: the newest upload of a part sorts last.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def base62(n: int, width: int) -> str:
    """``n`` in base 62, left-padded with zeros to ``width`` characters."""
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out)).rjust(width, "0")


def random_base62(length: int) -> str:
    """``length`` cryptographically random base62 characters."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


_TAIL = 62 ** 12


class _Monotonic:
    """The last (millisecond, random tail) handed out in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = (0, 0)

    def next(self, ms: int) -> tuple[int, int]:
        with self.lock:
            last_ms, last_tail = self.last
            if ms > last_ms:
                nxt = (ms, secrets.randbelow(_TAIL // 2))
            else:  # same millisecond, or the clock went back: count up from the last id
                tail = last_tail + 1 + secrets.randbelow(1 << 32)
                nxt = (last_ms, tail) if tail < _TAIL else (last_ms + 1, tail - _TAIL)
            self.last = nxt
            return nxt


_ORDER = _Monotonic()  # process-wide state, not a client: ids from every thread in order


def new_id(prefix: str, now: datetime | None = None) -> str:
    """A new identifier: prefix + 8 chars of millisecond time + 12 random chars. ``now``:
    the caller's ``Clock`` time (domain code passes ``ctx.clock.now()``); default the wall
    clock. See the module docstring for the order."""
    ms = time.time_ns() // 1_000_000 if now is None else int(now.timestamp() * 1000)
    at, tail = _ORDER.next(ms)
    return f"{prefix}{base62(at, 8)}{base62(tail, 12)}"
