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
import logging
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import IO

from tapedeck.auth import Principal
from tapedeck.clock import iso, parse_iso
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
from tapedeck.domain.chunk_stream import Passing, too_large
from tapedeck.domain.models import Chunk, ChunkList, ChunkUploadResult, Recording, UploadUrl
from tapedeck.domain.objects import presigning
from tapedeck.errors import TapedeckError, error, invalid
from tapedeck.infra.store import MD5_HEX, ObjectInfo
from tapedeck.oggopus import InvalidAudio
from tapedeck.oggopus.check import check_stream

_HEX = {"md5": MD5_HEX, "sha256": re.compile(r"^[0-9a-f]{64}$")}
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
MAX_URL_BATCH = 100  # parts per create_upload_urls call
_LISTERS = 16  # threads that look up a part's earlier objects while its upload streams
log = logging.getLogger(__name__)


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
        self._listers = ThreadPoolExecutor(_LISTERS, thread_name_prefix="chunk-list")
        self._streaming: dict[tuple[str, int], int] = {}  # parts with a _stream in flight
        self._streaming_lock = threading.Lock()

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
               require_checksum: bool = False, size: int | None = None) -> ChunkUploadResult:
        """Receive, verify and store one chunk (see the module docstring for the rules).
        ``size``: the body's length when the client announced it (``Content-Length``,
        ``size_bytes``); then the chunk streams to the store as it arrives (``_stream``),
        else it is received first, then stored."""
        md5, sha256 = normalize_digest("md5", md5), normalize_digest("sha256", sha256)
        if require_checksum and md5 is None and sha256 is None:
            raise invalid("md5", "Send the chunk's md5 or sha256.")
        limit = self._ctx.settings.max_chunk_bytes
        if size is not None and size > limit:
            raise too_large(limit)
        self.precheck(p, recording_id, part)
        self.meter.check(self._ctx.db.read(), self._ctx.settings, p.project_id, limit)
        put_stream = getattr(self._ctx.store, "put_stream", None)
        if size is not None and size > 0 and put_stream is not None:
            ledger_md5, known = self._known(recording_id, part)
            if md5 is None or ledger_md5 != md5:  # else most likely a retry: receive first
                passing = Passing(body, limit, md5=md5, sha256=sha256,
                                  check_audio=self._ctx.settings.check_chunks)
                with self._in_flight(recording_id, part) as concurrent:
                    return self._stream(p, recording_id, part, passing, size, put_stream,
                                        may_have_earlier=known or concurrent)
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
            info = self._put(new_chunk_key(recording_id, part, self._ctx.clock.now()), received)
            chunk = self._record(recording_id, part, info.size, received.md5, info.key)
        return ChunkUploadResult(recording_id, chunk, already_stored=False,
                                 replaced=current is not None)

    def _stream(self, p: Principal, recording_id: str, part: int, passing: Passing,
                size: int, put_stream: Callable[..., ObjectInfo], *,
                may_have_earlier: bool = True) -> ChunkUploadResult:
        """Send the chunk to a NEW versioned key while it arrives (one create-only PUT of
        ``size`` bytes; the store completes it only once ``passing`` approved the whole
        body, see ``chunk_stream``), meanwhile list the part's earlier objects; then, under
        the recording's lock, make it the part's current object (``_adopt``). The LIST
        runs only if the part ``may_have_earlier`` objects (``_known``): it competes with the
        PUT inside the store. The new key
        is nobody's current object before the PUT completes, so readers never see a
        half-written chunk; any failure deletes it again. Concurrent uploads of one part:
        the one that started last is current."""
        key = new_chunk_key(recording_id, part, self._ctx.clock.now())
        earlier = self._listers.submit(self._previous, recording_id, part, key) \
            if may_have_earlier else None
        md5_b64 = None if passing.expected_md5 is None else \
            base64.b64encode(bytes.fromhex(passing.expected_md5)).decode()
        try:
            info = put_stream(key, passing.blocks(), size, content_type="audio/ogg",
                              content_md5_b64=md5_b64, if_absent=True)
            if info.etag != passing.md5:  # the store holds other bytes than passed through
                raise error("checksum_mismatch", "The store's MD5 of the chunk differs from "
                            "the bytes received; nothing was stored.",
                            algorithm="md5", expected=passing.md5, actual=info.etag)
            previous = earlier.result() if earlier is not None else None
        except BaseException:
            self._discard(key)
            raise
        with self._ctx.locks.hold(recording_id):
            return self._adopt(p, recording_id, part, info, previous)

    def _adopt(self, p: Principal, recording_id: str, part: int, info: ObjectInfo,
               previous: ObjectInfo | None) -> ChunkUploadResult:
        """(Under the recording's lock.) The streamed object ``info`` becomes the part's
        current one; if ``previous`` (the part's latest earlier object) holds the same bytes,
        ``info`` is deleted and nothing changed (``already_stored``). If the recording stopped
        streaming meanwhile, ``info`` is deleted and the upload refused, unless finalize (or
        expiry) already pinned it: then it is the recording's audio and the upload succeeded."""
        try:
            self._recheck(p, recording_id, part)
        except TapedeckError:
            if self._pinned(recording_id, part) == info.key:
                chunk = Chunk(part, info.size, info.etag, self._ctx.clock.now())
                return ChunkUploadResult(recording_id, chunk, already_stored=False,
                                         replaced=previous is not None)
            self._discard(info.key)
            raise
        if previous is not None and previous.etag == info.etag:
            self._discard(info.key)
            chunk = self._record(recording_id, part, previous.size, previous.etag, previous.key)
            return ChunkUploadResult(recording_id, chunk, already_stored=True, replaced=False)
        chunk = self._record(recording_id, part, info.size, info.etag, info.key)
        return ChunkUploadResult(recording_id, chunk, already_stored=False,
                                 replaced=previous is not None)

    def _recheck(self, p: Principal, recording_id: str, part: int) -> None:
        """``precheck`` again, in one query while the recording is still streaming and not
        expired (the caller's access and the part were checked before the upload)."""
        row = self._ctx.db.read().execute(
            "SELECT status, expires_at FROM recordings WHERE id = ?", [recording_id]).fetchone()
        expires = parse_iso(row[1]) if row is not None else None
        if row is None or row[0] != "streaming" or (
                expires is not None and self._ctx.clock.now() >= expires):
            self.precheck(p, recording_id, part)  # the precise error

    def _previous(self, recording_id: str, part: int, key: str) -> ObjectInfo | None:
        """The part's latest object older than ``key`` (keys of one part sort by version)."""
        older = [obj for obj in chunk_objects(self._ctx.store, recording_id, part).get(part, [])
                 if obj.key < key]
        return older[-1] if older else None

    def _known(self, recording_id: str, part: int) -> tuple[str | None, bool]:
        """The ledger's MD5 of the part (None without a row) and whether the part may hold
        store objects already: it has a ledger row (an acknowledged upload, the truth kept
        in the store) or a presigned URL was issued for it (``presigned_parts``). Otherwise
        only an upload that was never acknowledged (it crashed before its ledger row) can
        have left an object, and a new upload simply becomes the part's current one."""
        row = self._ctx.db.read().execute(
            "SELECT (SELECT md5 FROM chunks WHERE recording_id = ? AND part = ?),"
            " EXISTS (SELECT 1 FROM presigned_parts WHERE recording_id = ? AND part = ?)",
            [recording_id, part, recording_id, part]).fetchone()
        return row[0], row[0] is not None or bool(row[1])

    @contextmanager
    def _in_flight(self, recording_id: str, part: int) -> Iterator[bool]:
        """Count a streamed upload of the part while it runs; yields whether another one of
        the same part was already running in this process (then its object may exist)."""
        key = (recording_id, part)
        with self._streaming_lock:
            running = self._streaming.get(key, 0)
            self._streaming[key] = running + 1
        try:
            yield running > 0
        finally:
            with self._streaming_lock:
                if self._streaming[key] == 1:
                    del self._streaming[key]
                else:
                    self._streaming[key] -= 1

    def _pinned(self, recording_id: str, part: int) -> str | None:
        row = self._ctx.db.read().execute(
            "SELECT object_key FROM chunks WHERE recording_id = ? AND part = ?",
            [recording_id, part]).fetchone()
        return None if row is None else row[0]

    def _discard(self, key: str) -> None:
        """Delete an object that did not become a chunk (if the store wrote it at all). A
        store that cannot be reached leaves it; it was never acknowledged."""
        try:
            self._ctx.store.delete(key)
        except TapedeckError as exc:
            log.warning("could not delete the unused chunk object %s: %s", key, exc.type)

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
        store's listing with a durable commit. A newer object of the part (a later
        version: keys of one part sort by version) is never replaced by an older one."""
        now = self._ctx.clock.now()
        # Always called under hold(recording_id), touching only this recording's rows:
        # ingest of other recordings does not wait for it (db_postgres, lock="shared").
        with self._ctx.db.write(durable=False, lock="shared") as tx:
            cur = tx.execute(
                "INSERT INTO chunks (recording_id, part, size_bytes, md5, received_at,"
                " object_key) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (recording_id, part)"
                " DO UPDATE SET size_bytes = excluded.size_bytes, md5 = excluded.md5,"
                " received_at = excluded.received_at, object_key = excluded.object_key"
                " WHERE chunks.object_key IS NULL OR chunks.object_key < excluded.object_key",
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
        listing = self._listing(recording_id, finalized=rec.finalize_request is not None)
        if rec.status == "streaming" and rec.finalize_request is None:
            self._adopt_presigned(recording_id)
        return listing

    def _adopt_presigned(self, recording_id: str) -> None:
        """Presigned PUTs bypass the ledger; a device lists its chunks to reconcile after
        them. Each stored part whose current object is not the ledger's goes through
        ``_record`` (the one hook: its live piece is queued) under the recording's lock."""
        with self._ctx.locks.hold(recording_id):
            known = dict(self._ctx.db.read().execute(
                "SELECT part, object_key FROM chunks WHERE recording_id = ?",
                [recording_id]).fetchall())
            for part, obj in sorted(stored_parts(self._ctx.store, recording_id).items()):
                if known.get(part) != obj.key:
                    self._record(recording_id, part, obj.size, obj.etag, obj.key)

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
        self._mark_presigned(recording_id, [part])
        expires = timedelta(seconds=self._ctx.settings.upload_url_ttl_s)
        url, headers = presigning(self._ctx.store).presign_put(
            new_chunk_key(recording_id, part, self._ctx.clock.now()), expires,
            content_md5_b64=md5_b64, if_absent=True, content_length=size)
        return UploadUrl(None, url, "PUT", headers, self._ctx.clock.now() + expires)

    def create_upload_urls(self, p: Principal, recording_id: str,
                           parts: Sequence[int]) -> tuple[tuple[int, UploadUrl], ...]:
        """Presigned create-only PUTs for several parts in one call (a device fetches URLs
        for its next chunks ahead, then PUTs each chunk straight to the store): the same URL
        as ``create_upload_url`` without a signed MD5 or size, one per part, in order.
        ``invalid_request`` (field ``parts``) for an empty list, more than
        ``MAX_URL_BATCH`` parts or a repeated part; any part out of range fails the call."""
        if not parts or len(parts) > MAX_URL_BATCH or len(set(parts)) != len(parts):
            raise invalid("parts", f"parts must be 1..{MAX_URL_BATCH} distinct part numbers.")
        rec = self.precheck(p, recording_id, parts[0])
        for part in parts[1:]:
            check_part(rec, part)
        self.meter.check(self._ctx.db.read(), self._ctx.settings, p.project_id,
                         self._ctx.settings.max_chunk_bytes)
        self._mark_presigned(recording_id, parts)
        expires = timedelta(seconds=self._ctx.settings.upload_url_ttl_s)
        presigner = presigning(self._ctx.store)
        out: tuple[tuple[int, UploadUrl], ...] = ()
        for part in parts:
            url, headers = presigner.presign_put(new_chunk_key(recording_id, part), expires,
                                                 if_absent=True)
            out += ((part, UploadUrl(None, url, "PUT", headers,
                                     self._ctx.clock.now() + expires)),)
        return out

    def _mark_presigned(self, recording_id: str, parts: Iterable[int]) -> None:
        """Durably note that presigned URLs are about to be issued for ``parts`` (see
        ``_known``); committed before any URL is answered."""
        with self._ctx.db.write() as tx:
            for part in parts:
                tx.execute("INSERT INTO presigned_parts (recording_id, part) VALUES (?, ?)"
                           " ON CONFLICT DO NOTHING", [recording_id, part])
