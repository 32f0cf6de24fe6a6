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
from collections.abc import Iterable
from datetime import timedelta
from typing import IO

from tapedeck.auth import Principal
from tapedeck.clock import iso
from tapedeck.domain._base import (
    Context,
    check_part,
    chunk_key,
    load_recording,
    stored_parts,
)
from tapedeck.domain.models import Chunk, ChunkList, ChunkUploadResult, Recording, UploadUrl
from tapedeck.domain.recordings import _check_md5_b64, not_streaming
from tapedeck.errors import error, invalid

_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
_SPOOL_IN_MEMORY = 8 * 1024 * 1024


class _Received:
    """A chunk body spooled (memory, then disk) with its size and digests."""

    def __init__(self, body: Iterable[bytes], limit: int) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115  # closed by the caller
        md5, sha = hashlib.md5(), hashlib.sha256()
        self.size = 0
        for block in body:
            self.size += len(block)
            if self.size > limit:
                self.file.close()
                raise error("payload_too_large", f"A chunk may be at most {limit} bytes.",
                            max_bytes=limit)
            md5.update(block)
            sha.update(block)
            self.file.write(block)
        self.file.seek(0)
        self.md5, self.sha256 = md5.hexdigest(), sha.hexdigest()

    def verify(self, md5: str | None, sha256: str | None) -> None:
        """``checksum_mismatch`` (nothing stored) unless every given digest matches."""
        for name, expected, actual in (("md5", md5, self.md5), ("sha256", sha256, self.sha256)):
            if expected is not None and expected != actual:
                raise error("checksum_mismatch",
                            f"The chunk's {name} does not match its bytes; nothing was stored.",
                            algorithm=name, expected=expected, actual=actual)


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
        received = _Received(body, self._ctx.settings.max_chunk_bytes)
        try:
            if received.size == 0:
                raise invalid("body", "A chunk must not be empty; nothing was stored.")
            received.verify(md5, sha256)
            return self._store(p, recording_id, part, received)
        finally:
            received.file.close()

    def _store(self, p: Principal, recording_id: str, part: int,
               received: _Received) -> ChunkUploadResult:
        ctx, key = self._ctx, chunk_key(recording_id, part)
        with ctx.locks.hold(recording_id):
            self.precheck(p, recording_id, part)
            existing = ctx.store.stat(key)
            if existing is not None and existing.etag == received.md5:
                chunk = self._record(recording_id, part, existing.size, existing.etag)
                return ChunkUploadResult(recording_id, chunk, already_stored=True,
                                         replaced=False)
            md5_b64 = base64.b64encode(bytes.fromhex(received.md5)).decode()
            info = ctx.store.put(key, received.file, received.size,  # type: ignore[arg-type]
                                 content_type="audio/ogg", content_md5_b64=md5_b64)
            chunk = self._record(recording_id, part, info.size, received.md5)
        return ChunkUploadResult(recording_id, chunk, already_stored=False,
                                 replaced=existing is not None)

    def _record(self, recording_id: str, part: int, size: int, md5: str) -> Chunk:
        now = self._ctx.clock.now()
        with self._ctx.db.write() as tx:
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
        md5_b64 = _check_md5_b64(content_md5)
        self.precheck(p, recording_id, part)
        expires = timedelta(seconds=self._ctx.settings.upload_url_ttl_s)
        url, headers = self._ctx.store.presign_put(chunk_key(recording_id, part), expires,
                                                   content_md5_b64=md5_b64)
        return UploadUrl(None, url, "PUT", headers, self._ctx.clock.now() + expires)
