"""Chunk rules: upload (verified before it counts), list with missing parts, presigned PUT.

A chunk counts once its bytes are complete, their checksum matches what the client sent, and
the store holds them under a new ``recordings/{id}/chunks/chunk_{part}.{version}.opus``
(an atomic create-only PUT, so nothing half-written is ever visible and no object is ever
overwritten). While the recording is ``streaming``, identical bytes sent again change
nothing and different bytes replace the part (a newer object becomes its current one);
afterwards every upload answers ``recording_not_streaming`` (or ``recording_expired``), and
the objects finalize pinned are the audio.
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
from tapedeck.domain import limits, live
from tapedeck.domain._base import (
    Context,
    check_md5_b64,
    check_part,
    check_size,
    chunk_objects,
    load_recording,
    new_chunk_key,
    not_streaming,
    part_key,
    stored_parts,
)
from tapedeck.domain.models import Chunk, ChunkList, ChunkUploadResult, Recording, UploadUrl
from tapedeck.domain.objects import presigning
from tapedeck.errors import error, invalid
from tapedeck.oggopus import InvalidAudio
from tapedeck.oggopus.check import check_stream
from tapedeck.store import MD5_HEX, ObjectInfo

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
        self.meter = limits.StorageMeter(ctx.clock)  # the storage quota (also for Recordings)

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
        self.meter.check(self._ctx.db.read(), self._ctx.settings, p.project_id,
                         self._ctx.settings.max_chunk_bytes)
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
        """Under the recording's lock: store the part unless identical bytes are its current
        object.

        The store is the truth (presigned PUTs bypass the ledger): the part's current object
        (its latest upload) is looked up; identical bytes → ``already_stored``, nothing
        written. Otherwise the bytes go to a NEW versioned key with a create-only PUT, so no
        upload ever overwrites an object (finalize pins one; see ``_base.chunk_key``), and
        become the part's current object (``replaced`` if it had one)."""
        with self._ctx.locks.hold(recording_id):
            self.precheck(p, recording_id, part)
            current = self._current(recording_id, part)
            if current is not None and current.etag == received.md5:
                chunk = self._record(recording_id, part, current.size, current.etag,
                                     current.key)
                return ChunkUploadResult(recording_id, chunk, already_stored=True,
                                         replaced=False)
            info = self._put(new_chunk_key(recording_id, part), received)
            chunk = self._record(recording_id, part, info.size, received.md5, info.key)
        return ChunkUploadResult(recording_id, chunk, already_stored=False,
                                 replaced=current is not None)

    def _current(self, recording_id: str, part: int) -> ObjectInfo | None:
        """The part's current object in the store (one LIST of that part's keys)."""
        return stored_parts(self._ctx.store, recording_id, part).get(part)

    def _put(self, key: str, received: _Received) -> ObjectInfo:
        """One atomic create-only PUT of the received bytes; the store checks their MD5."""
        received.file.seek(0)
        md5_b64 = base64.b64encode(bytes.fromhex(received.md5)).decode()
        return self._ctx.store.put(key, received.file, received.size,  # type: ignore[arg-type]
                                   content_type="audio/ogg", content_md5_b64=md5_b64,
                                   if_absent=True)

    def _record(self, recording_id: str, part: int, size: int, md5: str, key: str) -> Chunk:
        """Note the part in the ledger. Not fsynced: while streaming the ledger is a cache
        (chunk counts); the store is the truth and finalize snapshots the ledger from the
        store's listing with a durable commit."""
        now = self._ctx.clock.now()
        with self._ctx.db.write(durable=False) as tx:
            cur = tx.execute(
                "INSERT INTO chunks (recording_id, part, size_bytes, md5, received_at,"
                " object_key) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (recording_id, part)"
                " DO UPDATE SET size_bytes = excluded.size_bytes, md5 = excluded.md5,"
                " received_at = excluded.received_at, object_key = excluded.object_key"
                " WHERE chunks.object_key IS NOT excluded.object_key",
                [recording_id, part, size, md5, iso(now), key])
            queued = cur.rowcount == 1 and live.on_chunk_recorded(tx, self._ctx, recording_id,
                                                                  part)
        if queued:  # committed: wake this process's live transcribers
            self._ctx.job_signals.notify(live.KIND)
        return Chunk(part, size, md5, now)

    def list(self, p: Principal, recording_id: str) -> ChunkList:
        """The chunks the store holds, and the parts missing up to the highest one."""
        p.require("recordings:read")
        rec = load_recording(self._ctx.db.read(), p, recording_id)
        return self._listing(recording_id, finalized=rec.finalize_request is not None)

    def delete(self, p: Principal, recording_id: str, part: int) -> ChunkList:
        """Delete every stored object of ``part`` while the recording is streaming (a stray
        part above ``total_chunks`` would otherwise make finalize answer ``chunk_mismatch``
        forever); returns the listing after it. Same callers and errors as an upload of
        the part, plus ``chunk_not_found`` when the store holds nothing for it. A presigned
        URL handed out earlier can still write the part again until it expires."""
        self.precheck(p, recording_id, part)
        with self._ctx.locks.hold(recording_id):
            self.precheck(p, recording_id, part)
            objects = chunk_objects(self._ctx.store, recording_id, part).get(part, [])
            if not objects:
                raise error("chunk_not_found", f"Part {part} is not stored.", part=part)
            for obj in objects:
                self._ctx.store.delete(obj.key)
            with self._ctx.db.write(durable=False) as tx:
                tx.execute("DELETE FROM chunks WHERE recording_id = ? AND part = ?",
                           [recording_id, part])
        return self._listing(recording_id)

    def _listing(self, recording_id: str, *, finalized: bool = False) -> ChunkList:
        """The current object of each part; once finalized, only the objects finalize pinned
        (a later PUT through an old URL is not the recording's audio, so it is not listed)."""
        if finalized:
            pinned = {part: part_key(recording_id, part, key) for part, key in
                      self._ctx.db.read().execute(
                          "SELECT part, object_key FROM chunks WHERE recording_id = ?",
                          [recording_id]).fetchall()}
            parts = {part: obj for part, objs in chunk_objects(self._ctx.store, recording_id).items()
                     for obj in objs if obj.key == pinned.get(part)}
        else:
            parts = stored_parts(self._ctx.store, recording_id)
        chunks = [Chunk(part, obj.size, obj.etag, obj.last_modified)
                  for part, obj in sorted(parts.items())]
        present = set(parts)
        top = max(present, default=0)
        return ChunkList(recording_id, chunks,
                         [i for i in range(1, top + 1) if i not in present])

    def create_upload_url(self, p: Principal, recording_id: str, part: int,
                          content_md5: str | None = None,
                          size_bytes: int | None = None) -> UploadUrl:
        """A presigned direct-to-store PUT for one part: a create-only URL (``If-None-Match:
        *`` is signed into it) to a new versioned key, so it can write the part once and never
        replace anything; the latest URL that was used is the part's current object. With
        ``size_bytes`` the size is signed too (``Content-Length``: any other size → 403);
        without it a presigned PUT cannot bound the size (S3 enforces a size range only on
        POST policies), so finalize refuses oversize parts (``chunk_too_large``)."""
        md5_b64 = check_md5_b64(content_md5)
        size = check_size(size_bytes, self._ctx.settings.max_chunk_bytes)
        self.precheck(p, recording_id, part)
        self.meter.check(self._ctx.db.read(), self._ctx.settings, p.project_id,
                         self._ctx.settings.max_chunk_bytes)
        expires = timedelta(seconds=self._ctx.settings.upload_url_ttl_s)
        url, headers = presigning(self._ctx.store).presign_put(
            new_chunk_key(recording_id, part), expires, content_md5_b64=md5_b64,
            if_absent=True, content_length=size)
        return UploadUrl(None, url, "PUT", headers, self._ctx.clock.now() + expires)
