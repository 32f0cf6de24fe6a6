"""The object-store contract the domain needs, and nothing more.

``ObjectStore`` is the small core every backend implements (put/open/stat/list/delete).
What only some backends can do is an optional capability protocol (``Presigning``,
``MultipartCleanup``); callers check for it at run time (``isinstance(store, Presigning)``)
and either use it or fall back / refuse with a typed error. A new optional capability is one
more ``@runtime_checkable`` protocol here, added to ``CAPABILITIES``.

Keys are plain strings such as ``recordings/{id}/chunks/chunk_{part}.opus``. A PUT is atomic:
an object becomes visible under its key only once complete, so nothing half-written is ever
visible. Backends live one per module (``tapedeck.infra.store.s3`` for any S3-compatible store via
the minio SDK); ``tests/store`` runs one contract suite against every backend.

Every method raises ``tapedeck.errors.StorageUnavailable`` (type ``storage_unavailable``)
when the store cannot be reached, and ``ObjectNotFound`` for a missing key where noted.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, Protocol, runtime_checkable

from tapedeck.errors import error

MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
"""A lowercase hex MD5: what a client sends as a digest, and what the ETag of a single PUT
is (a multipart ETag, ``<hex>-<parts>``, is not an MD5 of the object)."""


def md5_of_b64(content_md5_b64: str) -> bytes:
    """The 16 bytes a base64 ``Content-MD5`` names; ``invalid_request`` (field
    ``content_md5``) when it is not base64 or not 16 bytes. Every backend checks a client's
    digest with this before it stores anything."""
    try:
        digest = base64.b64decode(content_md5_b64, validate=True)
    except ValueError as exc:
        raise error("invalid_request", "Content-MD5 is not base64.", field="content_md5") from exc
    if len(digest) != 16:
        raise error("invalid_request", "Content-MD5 is not an MD5 digest.", field="content_md5")
    return digest


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


class ObjectExists(Exception):
    """``put(if_absent=True)`` found the key already there (nothing was written)."""


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object. ``etag`` is the lowercase hex MD5 for single PUTs."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@runtime_checkable
class ObjectStore(Protocol):
    """The core every object store implements: what Tapedeck needs from any of them."""

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
        """Store ``data`` under ``key`` atomically. ``length=-1`` streams in multipart
        parts (for outputs of unknown size). With ``content_md5_b64`` the store itself
        rejects other bytes (``checksum_mismatch``). With ``if_absent`` (single PUTs only,
        ``length>=0``) the store writes only if ``key`` does not exist, checked atomically
        by the store; otherwise it raises ``ObjectExists`` and leaves the object as it was."""
        ...

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A readable stream of the object (close it after use). Raises ObjectNotFound.

        Ranged read: the bytes ``[offset, offset + length)`` clipped to the object's end
        (``length=None``: to the end), fetched from the store as a range (S3 ``Range`` GET),
        never by reading and discarding a prefix. An ``offset`` at or past the end, or
        ``length=0``, gives an empty stream (the key must still exist); a negative
        ``offset`` or ``length`` is a ``ValueError``."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Metadata, or None when the key does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...


def check_range(offset: int, length: int | None) -> None:
    """``ValueError`` for a negative ``offset``/``length`` of ``ObjectStore.open``."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"bad range: offset={offset}, length={length}")


@runtime_checkable
class MultipartCleanup(Protocol):
    """Optional: a store whose ``put(length=-1)`` leaves invisible parts behind when the
    writer dies mid-upload, and that can free them."""

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort every unfinished multipart upload (e.g. of a worker that died mid-``put``)
        whose key starts with ``prefix``, freeing its parts; returns how many. Objects are
        untouched. Only call it when no ``put`` under ``prefix`` can still be running."""
        ...


@runtime_checkable
class Presigning(Protocol):
    """Optional: a store that hands clients URLs to PUT/GET objects directly (the gateway
    offers direct uploads and downloads only when the store has this)."""

    def presign_put(
        self, key: str, expires: timedelta, *, content_md5_b64: str | None = None,
        if_absent: bool = False, content_length: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """A URL a client can PUT the object to directly, and the headers it must send.
        ``if_absent``: create-only (a PUT once the key exists fails); ``content_length``:
        the body must be exactly that many bytes."""
        ...

    def presign_get(self, key: str, expires: timedelta) -> str:
        """A URL a client can GET the object from directly."""
        ...


class StreamingPut(Protocol):
    """Optional capability: one PUT whose body is sent while it is still being produced.

    A store that has it (``tapedeck.infra.store.s3.S3Store``) lets a chunk go to the store as it
    arrives instead of after it was received; callers check with ``hasattr(store,
    "put_stream")`` and fall back to ``put`` of a spooled copy."""

    def put_stream(
        self,
        key: str,
        blocks: Iterable[bytes],
        length: int,
        *,
        content_type: str = "application/octet-stream",
        content_md5_b64: str | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store exactly ``length`` bytes pulled from ``blocks`` under ``key`` in ONE single
        PUT (so the ETag is the hex MD5), sending each block as it comes. The last block is
        held back until ``blocks`` is exhausted, so the object is written only if ``blocks``
        ends normally having yielded exactly ``length`` bytes: an exception raised by
        ``blocks`` (a failed check, a client that went away) or a crash of this process
        drops the connection with the body incomplete and nothing is stored; then the
        exception propagates. Other bytes than ``length`` → ``invalid_request`` (nothing
        stored). ``content_md5_b64`` and ``if_absent`` as for ``ObjectStore.put``. Memory:
        the block in flight and the one held back."""
        ...
CAPABILITIES: tuple[type, ...] = (MultipartCleanup, Presigning)
"""Every optional capability protocol (wrappers such as ``MeteredStore`` pass exactly these
methods through when the wrapped store has them)."""

CAPABILITY_METHODS: frozenset[str] = frozenset(
    name for cap in CAPABILITIES for name in vars(cap) if not name.startswith("_")
)
"""The method names of ``CAPABILITIES``."""
