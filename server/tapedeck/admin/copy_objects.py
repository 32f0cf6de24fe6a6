"""``tapedeck admin copy-objects``: copy every object of this installation's store (e.g. the
embedded SeaweedFS) into another S3 store, verifiably and resumably.

Contract: each source object is streamed to the target under the same key while its MD5 is
computed; the copy is then read back and must have the same size and MD5, or the command
fails naming the key. An object the target already holds with the same size and the same
plain-MD5 ETag (or, for multipart ETags, the same read-back MD5) is skipped, so a run that
was interrupted is simply run again. The result carries the object count, the byte count and
one digest (SHA-256 over the sorted ``key size md5`` lines) for the source and for the target:
equal digests mean equal contents. The readiness probe's scratch object (``health/probe``)
is not copied. The database is not copied here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tapedeck.errors import error
from tapedeck.infra.health import PROBE_KEY
from tapedeck.infra.store import ObjectInfo, ObjectStore

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_BLOCK = 1 << 20


@dataclass
class CopyResult:
    objects: int = 0
    bytes: int = 0
    copied: int = 0
    skipped: int = 0
    source_digest: str = ""
    target_digest: str = ""

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner, self.md5 = inner, hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.md5.update(data)
        return data


def md5_of(store: ObjectStore, key: str) -> str:
    """The MD5 of an object's bytes, read from the store."""
    digest, stream = hashlib.md5(), store.open(key)
    try:
        while block := stream.read(_BLOCK):
            digest.update(block)
    finally:
        stream.close()
    return digest.hexdigest()


def copy_objects(source: ObjectStore, target: ObjectStore, prefix: str = "") -> CopyResult:
    """Copy every object under ``prefix`` (see the module docstring)."""
    result = CopyResult()
    src_lines, dst_lines = [], []
    for info in _listing(source, prefix):
        md5, copied = _copy_one(source, target, info)
        result.objects += 1
        result.bytes += info.size
        result.copied += copied
        result.skipped += not copied
        src_lines.append(f"{info.key} {info.size} {md5}")
        there = target.stat(info.key)
        dst_lines.append(f"{info.key} {there.size if there else -1} {md5_of(target, info.key)}")
    result.source_digest = _digest(src_lines)
    result.target_digest = _digest(dst_lines)
    return result


def _listing(store: ObjectStore, prefix: str) -> Iterator[ObjectInfo]:
    """The objects to copy, by key; the readiness probe's scratch object is not data."""
    yield from sorted((i for i in store.list(prefix) if not i.key.startswith(PROBE_KEY)),
                      key=lambda i: i.key)


def _copy_one(source: ObjectStore, target: ObjectStore, info: ObjectInfo) -> tuple[str, bool]:
    """(md5 of the source object, whether it was copied now)."""
    there = target.stat(info.key)
    if there is not None and there.size == info.size:
        if _PLAIN_MD5.match(info.etag) and there.etag == info.etag:
            return info.etag, False
        md5 = md5_of(source, info.key)
        if md5 == md5_of(target, info.key):
            return md5, False
    stream = source.open(info.key)
    try:
        hashing = _Hashing(stream)
        target.put(info.key, hashing, info.size)  # type: ignore[arg-type]
    finally:
        stream.close()
    md5 = hashing.md5.hexdigest()
    check = target.stat(info.key)
    if check is None or check.size != info.size or md5_of(target, info.key) != md5:
        raise error("internal_error", f"The copy of {info.key} does not match its source.",
                    key=info.key)
    return md5, True


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
