"""``MemoryStore``: the core ``ObjectStore`` contract in process memory.

For fast domain tests and single-process experiments; it is not durable (a restart loses
everything) and has no optional capabilities (no presigning, nothing to clean up after a
crash, since a ``put`` is one dictionary assignment). It behaves as ``S3Store`` does on
everything the core contract says (``tests/store`` runs the same suite on both):

- ``put`` reads the whole body first, then replaces the object in one step under a lock, so a
  reader sees the old object or the new one, never a part. ETags are the hex MD5 for
  ``length>=0`` and S3's multipart form (MD5 of the part MD5s + ``-N``, ``PART_SIZE`` parts)
  for ``length=-1``. ``content_md5_b64``/``if_absent``/short bodies fail as in S3Store.
- ``list`` is in key order (code point order = UTF-8 byte order).
- ``down = True`` makes every call raise ``storage_unavailable`` (an outage, for tests of what
  the domain does when the store cannot be reached); nothing stored is lost.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from tapedeck.errors import error
from tapedeck.infra.store import ObjectExists, ObjectInfo, ObjectNotFound, check_range, md5_of_b64

PART_SIZE = 5 * 1024 * 1024
"""Part size of a ``length=-1`` put (as ``tapedeck.infra.store.s3``): only the ETag depends on it."""


@dataclass(frozen=True)
class _Object:
    data: bytes
    info: ObjectInfo


def _utcnow() -> datetime:
    return datetime.now(UTC)



def _read_body(data: BinaryIO, length: int) -> bytes:
    """The whole body: all of ``data`` for ``length=-1``, else exactly ``length`` bytes."""
    body = data.read() if length < 0 else data.read(length)
    if length >= 0:
        while len(body) < length and (more := data.read(length - len(body))):
            body += more
        if len(body) < length:
            raise error("invalid_request",
                        f"The body ended after {len(body)} of {length} bytes.", field="body")
    return body


def _multipart_etag(body: bytes) -> str:
    parts = [body[i:i + PART_SIZE] for i in range(0, len(body), PART_SIZE)] or [b""]
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


class MemoryStore:
    """``ObjectStore`` (core only) on a dictionary; safe to share between threads.
    ``clock`` stamps ``last_modified`` (pass ``ManualClock.now`` in tests)."""

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[str, _Object] = {}
        self.down = False

    def _check_up(self) -> None:
        if self.down:
            raise error("storage_unavailable", None, reason="MemoryStore.down")

    def put(
        self,
        key: str,
        data: BinaryIO,
        length: int = -1,
        *,
        content_type: str = "application/octet-stream",
        content_md5_b64: str | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store ``data`` under ``key`` in one step (see module doc)."""
        if length < 0 and if_absent:
            raise ValueError("if_absent needs a known length (a single PUT)")
        expected = md5_of_b64(content_md5_b64) if content_md5_b64 is not None else None
        self._check_up()
        body = _read_body(data, length)
        if expected is not None and hashlib.md5(body).digest() != expected:
            raise error("checksum_mismatch",
                        "The object store refused the bytes: Content-MD5 does not match.")
        etag = hashlib.md5(body).hexdigest() if length >= 0 else _multipart_etag(body)
        info = ObjectInfo(key=key, size=len(body), etag=etag, last_modified=self._clock())
        with self._lock:
            if if_absent and key in self._objects:
                raise ObjectExists(key)
            self._objects[key] = _Object(body, info)
        return info

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A stream of the object (or of its range) as it was when opened."""
        check_range(offset, length)
        self._check_up()
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise ObjectNotFound(key)
        end = len(obj.data) if length is None else offset + length
        return io.BytesIO(obj.data[offset:end])

    def stat(self, key: str) -> ObjectInfo | None:
        self._check_up()
        with self._lock:
            obj = self._objects.get(key)
        return obj.info if obj is not None else None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order (a snapshot taken now)."""
        self._check_up()
        with self._lock:
            found = [o.info for k, o in self._objects.items() if k.startswith(prefix)]
        return iter(sorted(found, key=lambda info: info.key))

    def delete(self, key: str) -> None:
        self._check_up()
        with self._lock:
            self._objects.pop(key, None)
