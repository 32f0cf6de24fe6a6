"""Recording rules: create, read, list, finalize, delete, single-file upload, download.

Every public method takes the caller's ``Principal`` first and raises only
``TapedeckError``s. gRPC and REST both call these methods and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tapedeck.auth import Principal, UploadTokens
from tapedeck.clock import Clock, iso
from tapedeck.domain import cursors, limits, live
from tapedeck.domain._base import (
    Context,
    check_md5_b64,
    check_size,
    emit,
    load_recording,
    not_streaming,
    recording_prefix,
    stored_parts,
    to_recording,
)
from tapedeck.domain.chunks import Chunks
from tapedeck.domain.devices import recording_owner
from tapedeck.domain.models import (
    CODECS,
    MIME_TYPES,
    RECORDING_STATUSES,
    CreatedRecording,
    DownloadUrl,
    FinalizeResult,
    Page,
    Recording,
    UploadUrl,
)
from tapedeck.domain.objects import presigning
from tapedeck.domain.redaction import queue_redaction, redact_now
from tapedeck.domain.search_index import backend_for
from tapedeck.errors import error, invalid
from tapedeck.ids import new_id
from tapedeck.infra.store import MD5_HEX, ObjectInfo

MAX_DURATION_MS = 7 * 24 * 3600 * 1000
# Timestamps a recorder can plausibly send (and that ISO-8601 with 4-digit years can store).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class NewRecording:
    """The body of a create request, already type-checked by the transport."""

    device_id: str | None = None
    end_user_id: str | None = None
    name: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    estimated_duration_ms: int | None = None
    codec: str = "opus"
    streaming: bool = False
    chunk_duration_ms: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def validate_new(req: NewRecording) -> None:
    """Range and consistency checks of a create request (``invalid_request`` naming the field)."""
    if req.codec not in CODECS:
        raise invalid("codec", f"codec must be one of {', '.join(CODECS)}.")
    if req.streaming and req.codec != "opus":
        raise invalid("codec", "Streaming recordings must use the opus codec.")
    for name in ("started_at", "ended_at"):
        when = getattr(req, name)
        if when is not None and not EARLIEST <= when < LATEST:
            raise invalid(name, f"{name} must be between 1970 and 2200.")
    for name in ("estimated_duration_ms", "chunk_duration_ms"):
        value = getattr(req, name)
        if value is not None and not 0 <= value <= MAX_DURATION_MS:
            raise invalid(name, f"{name} must be between 0 and {MAX_DURATION_MS}.")
    if req.chunk_duration_ms is not None and req.chunk_duration_ms < 1000:
        raise invalid("chunk_duration_ms", "chunk_duration_ms must be at least 1000.")
    if req.name is not None and len(req.name) > 500:
        raise invalid("name", "name must be at most 500 characters.")
    if len(req.metadata) > 50 or any(
        len(k) > 40 or len(v) > 500 for k, v in req.metadata.items()
    ):
        raise invalid("metadata", "metadata allows 50 keys of ≤40 chars with values ≤500 chars.")
    if req.started_at and req.ended_at and req.ended_at < req.started_at:
        raise invalid("ended_at", "ended_at is before started_at.")


def validate_finalize(total_chunks: int, final_duration_ms: int,
                      checksum_md5: str | None) -> str | None:
    """Check a finalize body; return the normalized (lowercase) checksum."""
    if not 1 <= total_chunks <= 10_000:
        raise invalid("total_chunks", "total_chunks must be a positive integer.")
    if not 0 <= final_duration_ms <= MAX_DURATION_MS:
        raise invalid("final_duration_ms",
                      f"final_duration_ms must be between 0 and {MAX_DURATION_MS}.")
    if checksum_md5 is None or checksum_md5 == "":
        return None
    checksum = checksum_md5.lower()
    if not MD5_HEX.match(checksum):
        raise invalid("checksum_md5", "checksum_md5 must be 32 hexadecimal characters.")
    return checksum


class Recordings:
    """The recording rules."""

    def __init__(self, ctx: Context, uploads: UploadTokens, chunks: Chunks) -> None:
        self._ctx = ctx
        self._uploads = uploads
        self._chunks = chunks

    # -- create / read ----------------------------------------------------------------
    def create(self, p: Principal, req: NewRecording) -> CreatedRecording:
        """Create a streaming (``streaming``) or single-file (``pending``) recording."""
        p.require("recordings:write")
        validate_new(req)
        ctx, now = self._ctx, self._ctx.clock.now()
        rec_id = new_id("rec_", now)
        expires_at = max_chunks = None
        if req.streaming:
            ttl = max(ctx.settings.streaming_ttl_s * 1000, 2 * (req.estimated_duration_ms or 0))
            expires_at = now + timedelta(milliseconds=ttl)
            max_chunks = ctx.settings.max_chunks
        with ctx.db.write() as tx:
            device_id, end_user_id = recording_owner(tx, p, req.device_id, req.end_user_id)
            self._chunks.meter.check(tx, ctx.settings, p.project_id, 0)
            if req.streaming:
                limits.check_streaming_cap(tx, ctx.settings, now, device_id)
            tx.execute(
                "INSERT INTO recordings (id, project_id, device_id, end_user_id, name, status,"
                " codec, streaming, mime_type, started_at, ended_at, created_at,"
                " estimated_duration_ms, chunk_duration_ms, max_chunks, expires_at, metadata,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [rec_id, p.project_id, device_id, end_user_id, req.name,
                 "streaming" if req.streaming else "pending", req.codec, int(req.streaming),
                 MIME_TYPES[req.codec], iso(req.started_at), iso(req.ended_at), iso(now),
                 req.estimated_duration_ms, req.chunk_duration_ms, max_chunks, iso(expires_at),
                 json.dumps(req.metadata), iso(now)])
            rec = load_recording(tx, p, rec_id)
            emit(tx, ctx.clock, p.project_id, "recording.created", rec.to_json(), rec_id)
        template = None
        if expires_at is not None:
            token = self._uploads.issue(p.project_id, rec_id, expires_at)
            template = (f"{ctx.settings.gateway_url}/v1/recordings/{rec_id}/chunks/{{part}}"
                        f"?token={token}")
        return CreatedRecording(rec, template)

    def get(self, p: Principal, recording_id: str) -> Recording:
        """One recording visible to ``p``."""
        p.require("recordings:read")
        return load_recording(self._ctx.db.read(), p, recording_id)

    def list(self, p: Principal, *, limit: int = 25, cursor: str | None = None,
             device_id: str | None = None, end_user_id: str | None = None,
             status: str | None = None, created_from: datetime | None = None,
             created_to: datetime | None = None) -> Page:
        """Recordings newest first; ``cursor`` continues a previous page. ``created_from``
        (inclusive) and ``created_to`` (exclusive) bound ``created_at`` (aware datetimes;
        ``invalid_request`` when the window is empty)."""
        p.require("recordings:read")
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        if status is not None and status not in RECORDING_STATUSES:
            raise invalid("status", f"status must be one of {', '.join(RECORDING_STATUSES)}.")
        where, args = ["project_id = ?"], [p.project_id]
        if p.kind == "device":
            device_id = p.device_id
        for col, value in (("device_id", device_id), ("end_user_id", end_user_id),
                           ("status", status)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if created_from and created_to and created_to <= created_from:
            raise invalid("created_to", "created_to must be after created_from.")
        for op, when in ((">=", created_from), ("<", created_to)):
            if when is not None:
                where.append(f"created_at {op} ?")
                args.append(iso(when))
        if cursor:
            created_at, last_id = cursors.decode_position(cursor)
            where.append("(created_at, id) < (?, ?)")
            args += [created_at, last_id]
        db = self._ctx.db.read()
        cur = db.execute(
            f"SELECT * FROM recordings WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?", [*args, limit + 1])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = cursors.encode_position(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return Page([to_recording(db, r) for r in rows], nxt)

    # -- finalize -----------------------------------------------------------------------
    def finalize(self, p: Principal, recording_id: str, total_chunks: int,
                 final_duration_ms: int, checksum_md5: str | None) -> FinalizeResult:
        """Finalize a streaming recording exactly as the original document describes."""
        p.require("recordings:write")
        checksum = validate_finalize(total_chunks, final_duration_ms, checksum_md5)
        body = {"total_chunks": total_chunks, "final_duration_ms": final_duration_ms,
                "checksum_md5": checksum}
        ctx = self._ctx
        with ctx.locks.hold(recording_id):
            rec = load_recording(ctx.db.read(), p, recording_id)
            done = _already_finalized(rec, body)
            if done is not None:
                return done
            listing = self._check_chunks(recording_id, total_chunks, checksum)
            with ctx.db.write() as tx:
                rec = load_recording(tx, p, recording_id)
                done = _already_finalized(rec, body)
                if done is not None:
                    return done
                self._commit_finalize(tx, rec, body, listing)
                rec = load_recording(tx, p, recording_id)
        ctx.job_signals.notify("stitch")  # committed: wake this process's stitch workers
        return _finalize_result(rec)

    def _check_chunks(self, recording_id: str, total: int,
                      checksum: str | None) -> dict[int, ObjectInfo]:
        """Parts in the store must be exactly 1..total; verify the overall MD5 if given."""
        listing = stored_parts(self._ctx.store, recording_id)
        missing = [i for i in range(1, total + 1) if i not in listing]
        unexpected = sorted(part for part in listing if part > total)
        if missing or unexpected:
            raise error("chunk_mismatch",
                        f"Chunk count mismatch: expected parts 1..{total}, "
                        f"{len(missing)} missing, {len(unexpected)} unexpected.",
                        missing_chunks=missing, unexpected_chunks=unexpected)
        limit = self._ctx.settings.max_chunk_bytes
        oversize = sorted(part for part, obj in listing.items() if obj.size > limit)
        if oversize:
            raise error("chunk_too_large",
                        f"{len(oversize)} part(s) exceed max_chunk_bytes ({limit} bytes); "
                        "replace or delete them, then finalize again.",
                        oversize_chunks=oversize, max_bytes=limit)
        if checksum is not None:
            actual = self._md5_of_chunks(listing)
            if actual != checksum:
                raise error("checksum_mismatch",
                            "checksum_md5 does not match the MD5 of the chunks in part order.",
                            expected=checksum, actual=actual)
        return listing

    def _md5_of_chunks(self, listing: dict[int, ObjectInfo]) -> str:
        """MD5 of the listed objects (the ones finalize pins) in part order."""
        md5 = hashlib.md5()
        for _, obj in sorted(listing.items()):
            stream = self._ctx.store.open(obj.key)
            try:
                while block := stream.read(1 << 20):
                    md5.update(block)
            finally:
                stream.close()
        return md5.hexdigest()

    def _commit_finalize(self, tx: Any, rec: Recording, body: dict[str, Any],
                         listing: dict[int, ObjectInfo]) -> None:
        ctx = self._ctx
        if rec.status != "streaming":
            raise not_streaming(rec)
        now = iso(ctx.clock.now())
        snapshot_chunks(tx, rec.id, listing, now)
        job_id, txn_id = queue_processing(tx, rec, now)
        tx.execute(
            "UPDATE recordings SET status = 'uploaded', uploaded_at = ?, finalize_request = ?,"
            " finalized_by = 'device', stitching_job_id = ?, transcription_status = 'queued',"
            " transcription_id = ?, duration_ms = ?, updated_at = ? WHERE id = ?",
            [now, json.dumps(body), job_id, txn_id, body["final_duration_ms"], now, rec.id])
        live.keep_live_status(tx, rec.id, txn_id)  # an adopted live transcription: processing
        fresh = to_recording(tx, row(tx, rec.id))
        emit(tx, ctx.clock, rec.project_id, "recording.uploaded", fresh.to_json(), rec.id)
        emit_transcription_queued(tx, ctx.clock, rec, txn_id)

    # -- delete -------------------------------------------------------------------------
    def delete(self, p: Principal, recording_id: str) -> None:
        """Remove every object the recording owns, then the recording (event emitted); its
        stored events are redacted once delivered (``tapedeck.domain.redaction``)."""
        p.require("recordings:write")
        if p.kind == "device":
            raise error("forbidden", "Device tokens cannot delete recordings.")
        ctx = self._ctx
        with ctx.locks.hold(recording_id):
            rec = load_recording(ctx.db.read(), p, recording_id)
            for obj in list(ctx.store.list(recording_prefix(recording_id))):
                ctx.store.delete(obj.key)
            with ctx.db.write() as tx:
                tx.execute("DELETE FROM jobs WHERE recording_id = ? AND status != 'running'",
                           [rec.id])
                backend_for(tx).remove_recording(tx, rec.id)  # its search index rows
                tx.execute("DELETE FROM recordings WHERE id = ?", [rec.id])
                emit(tx, ctx.clock, rec.project_id, "recording.deleted",
                     {"id": rec.id, "deleted": True}, rec.id)
                queue_redaction(tx, rec.id, rec.project_id, iso(ctx.clock.now()))
                redact_now(tx, rec.id)

    # -- single-file upload and download -------------------------------------------------
    def create_upload_urls(self, p: Principal, recording_id: str,
                           parts: Sequence[int]) -> tuple[tuple[int, UploadUrl], ...]:
        """Presigned PUTs for several chunk parts of a streaming recording (``Chunks``)."""
        p.require("recordings:write")
        if not load_recording(self._ctx.db.read(), p, recording_id).streaming:
            raise invalid("parts", "parts is only allowed for streaming recordings.")
        return self._chunks.create_upload_urls(p, recording_id, parts)

    def create_upload_url(self, p: Principal, recording_id: str, *, type: str = "audio",
                          content_type: str | None = None, part: int | None = None,
                          content_md5: str | None = None,
                          size_bytes: int | None = None) -> UploadUrl:
        """A presigned direct-to-store PUT for the single file, or for one chunk part."""
        p.require("recordings:write")
        if type != "audio":
            raise invalid("type", "type must be audio.")
        md5_b64 = check_md5_b64(content_md5)
        ctx = self._ctx
        rec = load_recording(ctx.db.read(), p, recording_id)
        if rec.streaming:
            if part is None:
                raise invalid("part", "part is required for streaming recordings.")
            return self._chunks.create_upload_url(p, recording_id, part, content_md5,
                                                  size_bytes)
        expires = timedelta(seconds=ctx.settings.upload_url_ttl_s)
        if part is not None:
            raise invalid("part", "part is only allowed for streaming recordings.")
        if rec.status != "pending":
            raise error("invalid_state", "The file of this recording was already uploaded.")
        self._chunks.meter.check(ctx.db.read(), ctx.settings, rec.project_id,
                                 ctx.settings.max_file_bytes)
        media_id = self._pending_media(rec, content_type)
        key = f"{original_prefix(rec.id, media_id)}{new_id('v')}.{rec.codec}"
        size = check_size(size_bytes, None)
        url, headers = presigning(ctx.store).presign_put(key, expires, content_md5_b64=md5_b64,
                                             if_absent=True, content_length=size)
        return UploadUrl(media_id, url, "PUT", headers, ctx.clock.now() + expires)

    def _pending_media(self, rec: Recording, content_type: str | None) -> str:
        """The pending media row of the single file (created by the first upload-url).
        Every URL is create-only to a new versioned key under ``original_prefix``;
        upload-complete pins the latest one that holds a file."""
        existing = [m for m in rec.media if m.status == "pending"]
        if existing:
            return existing[0].id
        media_id = new_id("med_")
        key = f"{recording_prefix(rec.id)}original/{media_id}.{rec.codec}"
        with self._ctx.db.write() as tx:
            tx.execute(
                "INSERT INTO media (id, recording_id, type, mime_type, object_key, status,"
                " created_at) VALUES (?, ?, 'audio', ?, ?, 'pending', ?)",
                [media_id, rec.id, content_type or rec.mime_type or "application/octet-stream",
                 key, iso(self._ctx.clock.now())])
        return media_id

    def complete_upload(self, p: Principal, recording_id: str) -> Recording:
        """Verify the single file is in the store; ``pending`` → ``uploaded``, jobs queued."""
        p.require("recordings:write")
        ctx = self._ctx
        with ctx.locks.hold(recording_id):
            rec = load_recording(ctx.db.read(), p, recording_id)
            if rec.streaming:
                raise error("invalid_state", "Streaming recordings are finalized, not completed.")
            if rec.status != "pending":
                return rec
            media = next((m for m in rec.media if m.status == "pending"), None)
            info = self._uploaded_file(rec.id, media.id, media.object_key) if media else None
            if media is None or info is None:
                raise error("invalid_state", "No uploaded file found; PUT it to upload_url first.")
            now = iso(ctx.clock.now())
            with ctx.db.write() as tx:
                tx.execute("UPDATE media SET status = 'uploaded', file_size_bytes = ?, md5 = ?,"
                           " object_key = ? WHERE id = ?",
                           [info.size, info.etag, info.key, media.id])
                job_id, txn_id = queue_processing(tx, rec, now)
                tx.execute(
                    "UPDATE recordings SET status = 'uploaded', uploaded_at = ?,"
                    " file_size_bytes = ?, stitching_job_id = ?, transcription_status = 'queued',"
                    " transcription_id = ?, updated_at = ? WHERE id = ?",
                    [now, info.size, job_id, txn_id, now, rec.id])
                fresh = load_recording(tx, p, rec.id)
                emit(tx, ctx.clock, rec.project_id, "recording.uploaded", fresh.to_json(), rec.id)
                emit_transcription_queued(tx, ctx.clock, rec, txn_id)
            ctx.job_signals.notify("stitch")  # committed: wake this process's stitch workers
            return fresh

    def _uploaded_file(self, recording_id: str, media_id: str,
                       legacy_key: str) -> ObjectInfo | None:
        """The file upload-complete pins: the latest versioned upload of the media, else the
        unversioned key of media rows from before versioned uploads."""
        prefix = original_prefix(recording_id, media_id)
        versions = [o for o in self._ctx.store.list(prefix)
                    if o.key[len(prefix):].startswith("v") and o.key != legacy_key]
        if versions:
            return max(versions, key=lambda o: o.key)
        return self._ctx.store.stat(legacy_key)

    def create_download_url(self, p: Principal, recording_id: str) -> DownloadUrl:
        """A presigned GET of the stitched (or uploaded) audio."""
        p.require("recordings:read")
        ctx = self._ctx
        rec = load_recording(ctx.db.read(), p, recording_id)
        ready = [m for m in rec.media if m.status in ("ready", "uploaded")]
        if not ready:
            raise error("invalid_state", "The recording has no audio ready for download yet.",
                        status=rec.status)
        media = ready[-1]
        expires = timedelta(seconds=ctx.settings.upload_url_ttl_s)
        url = presigning(ctx.store).presign_get(media.object_key, expires)
        return DownloadUrl(url, media.id, media.mime_type, media.file_size_bytes,
                           ctx.clock.now() + expires)


def original_prefix(recording_id: str, media_id: str) -> str:
    """Prefix of the single file's uploads: ``…/original/{media_id}.{version}.{codec}``."""
    return f"{recording_prefix(recording_id)}original/{media_id}."


def snapshot_chunks(tx: Any, recording_id: str, listing: dict[int, ObjectInfo],
                    now: str | None) -> None:
    """Freeze the parts that make up the audio (part → object key, size, md5): the stitcher
    reads exactly these objects, which no upload can overwrite (versioned create-only keys)."""
    tx.execute("DELETE FROM chunks WHERE recording_id = ?", [recording_id])
    for part, obj in sorted(listing.items()):
        tx.execute("INSERT INTO chunks (recording_id, part, size_bytes, md5, received_at,"
                   " object_key) VALUES (?, ?, ?, ?, ?, ?)",
                   [recording_id, part, obj.size, obj.etag, now, obj.key])


def queue_processing(tx: Any, rec: Recording, now: str | None) -> tuple[str, str]:
    """Queue the one stitching job and the queued transcription; return their ids. A live
    transcription in flight (``tapedeck.domain.live``) is adopted instead of a new one."""
    job_id, txn_id = new_id("job_stitcher_"), new_id("txn_")
    tx.execute(
        "INSERT INTO jobs (id, kind, recording_id, status, run_after, created_at,"
        " updated_at) VALUES (?, 'stitch', ?, 'queued', ?, ?, ?)",
        [job_id, rec.id, now, now, now])
    live_txn = live.live_transcription_id(tx, rec.id)
    if live_txn is not None:
        return job_id, live_txn
    tx.execute(
        "INSERT INTO transcriptions (id, recording_id, project_id, status, provider,"
        " created_at) VALUES (?, ?, ?, 'queued', 'whisper', ?)",
        [txn_id, rec.id, rec.project_id, now])
    return job_id, txn_id


def emit_transcription_queued(tx: Any, clock: Clock, rec: Recording, txn_id: str) -> None:
    """The ``transcription.queued`` event of a recording whose audio is complete (not for an
    adopted live transcription: it was announced with its first chunk)."""
    if live.keep_live_status(tx, rec.id, txn_id):
        return
    emit(tx, clock, rec.project_id, "transcription.queued",
         {"id": txn_id, "recording_id": rec.id, "status": "queued"}, rec.id)


def row(tx: Any, recording_id: str) -> dict[str, Any]:
    """The ``recordings`` row of ``recording_id`` as a dict (it must exist)."""
    cur = tx.execute("SELECT * FROM recordings WHERE id = ?", [recording_id])
    cols = [d[0] for d in cur.description]
    return dict(zip(cols, cur.fetchone(), strict=True))


def _already_finalized(rec: Recording, body: dict[str, Any]) -> FinalizeResult | None:
    """The idempotent answer for a repeated finalize, or ``finalize_conflict``; None if new."""
    if rec.finalize_request is None:
        if rec.status != "streaming":
            raise not_streaming(rec)
        return None
    if rec.finalize_request != body:
        raise error("finalize_conflict",
                    "The recording was already finalized with a different body.",
                    finalized_with=rec.finalize_request)
    if rec.status == "failed":  # rob: agree with every other write to a failed recording
        raise not_streaming(rec)
    return _finalize_result(rec)


def _finalize_result(rec: Recording) -> FinalizeResult:
    return FinalizeResult(rec.id, rec.status, rec.transcription_status, rec.chunks_received,
                          rec.stitching_job_id)


@dataclass(frozen=True)
class AudioFile:
    """The stored audio of a recording, for serving through the gateway."""

    key: str
    size: int
    mime_type: str


def audio_file(ctx: Context, p: Principal, recording_id: str) -> AudioFile:
    """The stitched (or uploaded) audio object of a recording visible to ``p``, with the same
    authorization as ``create_download_url``; ``invalid_state`` while none is ready."""
    p.require("recordings:read")
    rec = load_recording(ctx.db.read(), p, recording_id)
    ready = [m for m in rec.media if m.status in ("ready", "uploaded")]
    info = ctx.store.stat(ready[-1].object_key) if ready else None
    if not ready or info is None:
        raise error("invalid_state", "The recording has no audio ready yet.", status=rec.status)
    return AudioFile(info.key, info.size, ready[-1].mime_type)
