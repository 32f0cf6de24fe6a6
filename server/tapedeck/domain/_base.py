"""Private helpers of the domain services (argument checks and shared errors).

The public contracts that used to live here have their own modules: ``objects`` (the
object-key layout), ``events`` (the outbox ``emit``), ``context`` (``Context``,
``KeyedLocks``) and ``visibility`` (``load_recording``, ``to_recording``). Their names stay
importable from here for one release, for code written against the old home; nothing
outside ``tapedeck.domain`` may import this module (tests/test_architecture.py).
"""

from __future__ import annotations

import base64

from tapedeck.domain.context import Context, NamedLocks
from tapedeck.domain.events import emit
from tapedeck.domain.models import Recording
from tapedeck.domain.objects import (
    CHUNK_KEY_RE,
    chunk_key,
    chunk_objects,
    chunk_prefix,
    new_chunk_key,
    part_key,
    recording_prefix,
    stored_parts,
)
from tapedeck.domain.visibility import load_recording, to_recording
from tapedeck.errors import TapedeckError, error, invalid
from tapedeck.infra.db import KeyedLocks

__all__ = [
    "CHUNK_KEY_RE", "Context", "KeyedLocks", "NamedLocks", "check_md5_b64", "check_part", "check_size",
    "chunk_key", "chunk_objects", "chunk_prefix", "emit", "load_recording", "new_chunk_key",
    "not_streaming", "part_key", "recording_prefix", "stored_parts", "to_recording",
]


def check_part(rec: Recording, part: int) -> None:
    """Parts run 1..max_chunks (``invalid_request`` naming ``part`` otherwise)."""
    limit = rec.max_chunks or 0
    if not 1 <= part <= limit:
        raise error("invalid_request", f"part must be between 1 and {limit}.", field="part")


def not_streaming(rec: Recording) -> TapedeckError:
    """The typed error for a chunk or finalize on a recording that is not streaming."""
    if rec.status == "expired" or rec.finalized_by == "expiry":
        return error("recording_expired", "The recording expired before it was finalized.",
                     status=rec.status)
    return error("recording_not_streaming",
                 f"The recording is {rec.status}; it no longer accepts chunks or finalize.",
                 status=rec.status)


def check_md5_b64(value: str | None) -> str | None:
    """A client's base64 Content-MD5, or None; ``invalid_request`` on ``content_md5`` if it is
    not the base64 of 16 bytes."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise invalid("content_md5", "content_md5 must be the base64 of a 16-byte MD5.")
    return value


def check_size(size_bytes: int | None, limit: int | None) -> int | None:
    """A client's announced upload size, or None: ``invalid_request`` on ``size_bytes`` unless
    positive, ``payload_too_large`` above ``limit``."""
    if size_bytes is None:
        return None
    if size_bytes < 1:
        raise invalid("size_bytes", "size_bytes must be a positive integer.")
    if limit is not None and size_bytes > limit:
        raise error("payload_too_large", f"A chunk may be at most {limit} bytes.",
                    max_bytes=limit)
    return size_bytes
