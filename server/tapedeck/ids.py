"""Prefixed identifiers: ``rec_`` + 20 base62 characters, sortable by creation time."""

from __future__ import annotations

import secrets
import time

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


def new_id(prefix: str) -> str:
    """A new identifier: prefix + 8 chars of millisecond time + 12 random chars."""
    return f"{prefix}{base62(time.time_ns() // 1_000_000, 8)}{random_base62(12)}"
