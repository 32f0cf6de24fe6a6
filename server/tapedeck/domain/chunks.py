"""Chunk rules: upload (verified before it counts), list with missing parts, presigned PUT.

A chunk counts once its bytes are complete, their checksum matches what the client sent, and
the store holds them under ``recordings/{id}/chunks/chunk_{part}.opus`` (an atomic PUT, so
nothing half-written is ever visible there). While the recording is ``streaming``, identical
bytes sent again change nothing and different bytes replace the part; afterwards every upload
answers ``recording_not_streaming`` (or ``recording_expired``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import IO

from tapedeck.auth import Principal
from tapedeck.clock import iso
from tapedeck.domain._base import (
    Context,
    check_md5_b64,
    check_part,
    chunk_key,
    load_recording,
    not_streaming,
    stored_parts,
)
from tapedeck.domain.models import Chunk, ChunkList, ChunkUploadResult, Recording, UploadUrl
from tapedeck.errors import error, invalid
from tapedeck.oggopus import InvalidAudio
from tapedeck.oggopus.check import check_stream
from tapedeck.store import MD5_HEX, ObjectExists, ObjectInfo

_HEX = {"md5": MD5_HEX, "sha256": re.compile(r"^[0-9a-f]{64}$")}
_SPOOL_IN_MEMORY = 8 * 1024 * 1024


class _Received:
    """A chunk body spooled (memory, then disk) with its size and digests.

    The MD5 is always computed (it becomes the store's Content-MD5 and ETag); the SHA-256
    only when ``want_sha256`` (the client sent one to check), else ``sha256`` is None.
    """

    def __init__(self, body: Iterable[bytes], limit: int, *, want_sha256: bool,
                 check_audio: bool = False) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115  # closed by the caller
        md5 = hashlib.md5()
        sha = hashlib.sha256() if want_sha256 else None
        self.size = 0

        def take(block: bytes) -> None:
            self.size += len(block)
            if self.size > limit:
                raise error("payload_too_large", f"A chunk may be at most {limit} bytes.",
                            max_bytes=limit)
            md5.update(block)
            if sha is not None:
                sha.update(block)
            self.file.write(block)

        try:
            if check_audio:
                _checked(body, take)
            else:
                for block in body:
                    take(block)
        except BaseException:
            self.file.close()
            raise
        self.file.seek(0)
        self.md5 = md5.hexdigest()
        self.sha256 = sha.hexdigest() if sha is not None else None

    def verify(self, md5: str | None, sha256: str | None) -> None:
        """``checksum_mismatch`` (nothing stored) unless every given digest matches."""
        for name, expected, actual in (("md5", md5, self.md5), ("sha256", sha256, self.sha256)):
            if expected is not None and expected != actual:
                raise error("checksum_mismatch",
                            f"The chunk's {name} does not match its bytes; nothing was stored.",
                            algorithm=name, expected=expected, actual=actual)


def _checked(body: Iterable[bytes], take: Callable[[bytes], None]) -> None:
    """Stream ``body`` into ``take`` while checking it is one valid Ogg Opus stream (rob):
    ``invalid_audio`` (422) at the first bad page, so nothing is stored and the device can
    send the chunk again. An empty body stays ``invalid_request``."""
    received = 0

    def counted(block: bytes) -> None:
        nonlocal received
        received += len(block)
        take(block)

    try:
        check_stream(body, counted)
    except InvalidAudio as exc:
        if received == 0:
            raise invalid("body", "A chunk must not be empty; nothing was stored.") from None
        raise error("invalid_audio", f"The chunk is not valid Ogg Opus: {exc.reason}; nothing "
                    "was stored.", reason=exc.reason) from None


def normalize_digest(name: str, value: str | None) -> str | None:
    """A lowercase hex digest, or None; ``invalid_request`` naming the field if malformed."""
    if value is None or value == "":
        return None
    value = value.lower()
    if not _HEX[name].match(value):
        raise invalid(name, f"{name} must be a lowercase hex digest.")
    return value


class Chunks:
    """The chunk rules."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def precheck(self, p: Principal, recording_id: str, part: int) -> Recording:
        """Fail fast (before reading a body) if this chunk would be refused anyway."""
        p.require("recordings:write")
        if p.kind == "upload" and p.recording_id != recording_id:
            raise error("forbidden", "This upload token is for another recording.")
        rec = load_recording(self._ctx.db.read(), p, recording_id)
        if not rec.streaming:
            raise error("invalid_state", "Only streaming recordings take chunks.")
        check_part(rec, part)
        if rec.status != "streaming":
            raise not_streaming(rec)
        expires = rec.expires_at
        if expires is not None and self._ctx.clock.now() >= expires:
            raise error("recording_expired", "The recording expired before it was finalized.",
                        status=rec.status)
        return rec

    def upload(self, p: Principal, recording_id: str, part: int, body: Iterable[bytes], *,
               md5: str | None = None, sha256: str | None = None,
               require_checksum: bool = False) -> ChunkUploadResult:
        """Receive, verify and store one chunk (see the module docstring for the rules)."""
        md5, sha256 = normalize_digest("md5", md5), normalize_digest("sha256", sha256)
        if require_checksum and md5 is None and sha256 is None:
            raise invalid("md5", "Send the chunk's md5 or sha256.")
        self.precheck(p, recording_id, part)
        received = _Received(body, self._ctx.settings.max_chunk_bytes,
                             want_sha256=sha256 is not None,
                             check_audio=self._ctx.settings.check_chunks)
        try:
            if received.size == 0:
                raise invalid("body", "A chunk must not be empty; nothing was stored.")
            received.verify(md5, sha256)
            return self._store(p, recording_id, part, received)
        finally:
            received.file.close()

    def _store(self, p: Principal, recording_id: str, part: int,
               received: _Received) -> ChunkUploadResult:
        """Under the recording's lock: store the part unless identical bytes are there.

        The store is the truth (presigned PUTs bypass the ledger), so the common case, a new
        part, is one conditional PUT (written only if the key is absent) and no HEAD; only
        when the key exists is it stat-ed to tell ``already_stored`` from ``replaced``. A
        ledger row with the same MD5 (a likely retry) only makes it ask the store first, so
        a retry does not send the bytes twice."""
        with self._ctx.locks.hold(recording_id):
            self.precheck(p, recording_id, part)
            if self._ledger_md5(recording_id, part) == received.md5:
                return self._settle(recording_id, part, received)
            try:
                info = self._put(chunk_key(recording_id, part), received, if_absent=True)
            except ObjectExists:
                return self._settle(recording_id, part, received)
            chunk = self._record(recording_id, part, info.size, received.md5)
        return ChunkUploadResult(recording_id, chunk, already_stored=False, replaced=False)

    def _settle(self, recording_id: str, part: int, received: _Received) -> ChunkUploadResult:
        """(Lock held.) Compare with what the store holds: identical → ``already_stored``
        (nothing written), else PUT over it (``replaced`` if something was there)."""
        key = chunk_key(recording_id, part)
        existing = self._ctx.store.stat(key)
        if existing is not None and existing.etag == received.md5:
            chunk = self._record(recording_id, part, existing.size, existing.etag)
            return ChunkUploadResult(recording_id, chunk, already_stored=True, replaced=False)
        info = self._put(key, received, if_absent=False)
        chunk = self._record(recording_id, part, info.size, received.md5)
        return ChunkUploadResult(recording_id, chunk, already_stored=False,
                                 replaced=existing is not None)

    def _put(self, key: str, received: _Received, *, if_absent: bool) -> ObjectInfo:
        """One atomic PUT of the received bytes; the store checks them against their MD5."""
        received.file.seek(0)
        md5_b64 = base64.b64encode(bytes.fromhex(received.md5)).decode()
        return self._ctx.store.put(key, received.file, received.size,  # type: ignore[arg-type]
                                   content_type="audio/ogg", content_md5_b64=md5_b64,
                                   if_absent=if_absent)

    def _ledger_md5(self, recording_id: str, part: int) -> str | None:
        """The MD5 the ledger last recorded for the part (a hint; the store is the truth)."""
        row = self._ctx.db.read().execute(
            "SELECT md5 FROM chunks WHERE recording_id = ? AND part = ?",
            [recording_id, part]).fetchone()
        return None if row is None else str(row[0])

    def _record(self, recording_id: str, part: int, size: int, md5: str) -> Chunk:
        """Note the part in the ledger. Not fsynced: while streaming the ledger is a cache
        (chunk counts, the retry hint); the store is the truth and finalize snapshots the
        ledger from the store's listing with a durable commit."""
        now = self._ctx.clock.now()
        with self._ctx.db.write(durable=False) as tx:
            tx.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?) ON CONFLICT (recording_id, part)"
                " DO UPDATE SET size_bytes = excluded.size_bytes, md5 = excluded.md5,"
                " received_at = excluded.received_at WHERE chunks.md5 != excluded.md5",
                [recording_id, part, size, md5, iso(now)])
        return Chunk(part, size, md5, now)

    def list(self, p: Principal, recording_id: str) -> ChunkList:
        """The chunks the store holds, and the parts missing up to the highest one."""
        p.require("recordings:read")
        load_recording(self._ctx.db.read(), p, recording_id)
        parts = stored_parts(self._ctx.store, recording_id)
        chunks = [Chunk(part, obj.size, obj.etag, obj.last_modified)
                  for part, obj in sorted(parts.items())]
        present = set(parts)
        top = max(present, default=0)
        return ChunkList(recording_id, chunks,
                         [i for i in range(1, top + 1) if i not in present])

    def create_upload_url(self, p: Principal, recording_id: str, part: int,
                          content_md5: str | None = None) -> UploadUrl:
        """A presigned direct-to-store PUT for one part."""
        md5_b64 = check_md5_b64(content_md5)
        self.precheck(p, recording_id, part)
        expires = timedelta(seconds=self._ctx.settings.upload_url_ttl_s)
        url, headers = self._ctx.store.presign_put(chunk_key(recording_id, part), expires,
                                                   content_md5_b64=md5_b64)
        return UploadUrl(None, url, "PUT", headers, self._ctx.clock.now() + expires)
