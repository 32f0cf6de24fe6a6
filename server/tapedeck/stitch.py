"""The ``stitch`` job: a finalized recording's chunks become ONE Ogg Opus file in the store.

Streaming recordings (``uploaded`` → ``stitching`` → ``completed`` | ``failed``):
1. Chunks 1..N are streamed from the store in order, from exactly the objects finalize
   pinned (``chunks.object_key``: versioned create-only keys that no upload can
   overwrite), with memory bounded by a constant. Each must still have the size and MD5
   snapshotted at finalize (``chunks`` table; the MD5 check is skipped for multipart ETags),
   and, when the device sent ``checksum_md5``, all bytes in part order must hash to it —
   else ``checksum_mismatch`` naming the part. A missing chunk fails with ``chunk_missing``.
2. ``tapedeck.oggopus.remux`` joins them into one logical stream (no re-encoding); a chunk
   that is not valid Ogg Opus fails the recording with ``invalid_audio`` naming the part.
3. The output is streamed into the store under ``audio_key(id)`` with ``put(length=-1)``
   (S3 multipart; chunks are below the 5 MiB compose minimum). Every check above and the
   duration check run BEFORE the upload's last read returns, so any failure aborts the
   upload: an object appears under the final key only complete and verified.
4. Duration: the stitched duration must be within ``duration_tolerance_ms`` of
   ``final_duration_ms``: max(100 ms, one packet per chunk boundary) — what independent
   chunks (a fresh encoder each) may lose or gain at every boundary. Else
   ``duration_mismatch``.
5. ONE transaction: job ``succeeded`` (lease checked), a ``media`` row (audio, ready, size,
   MD5), the recording ``completed`` with ``duration_ms`` (the stitched, exact value),
   ``file_size_bytes`` and ``audio_key``, and the ``transcribe`` job enqueued for the
   transcription row queued at finalize. api.md has no event for these transitions.

Single-file recordings (``uploaded`` → ``completed`` | ``failed``, no stitching): the
uploaded object must still match the MD5 recorded at upload-complete, then it is validated
in place — Ogg Opus (codec ``opus``, and ``ogg`` files that are Opus) fully with
``oggopus.probe``; other codecs by demuxing every packet with PyAV when it is installed
(container readable, an audio stream, its duration), else accepted unprobed with
``duration_ms`` unset. The media row becomes ``ready`` and the same completion follows.

Failures (permanent, or transient ones after the last attempt) set the recording ``failed``
with ``failure.type``/``message``, fail its queued transcription with the same error (its one
terminal transcription outcome) and emit ``recording.failed`` and ``transcription.failed``.

Crash safety: the handler holds no state between attempts; a re-run stitches from scratch
(deterministic output: chunk 1's serial number) and overwrites the same key with the same
bytes; completion is exactly once because it commits with the job's lease check.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from tapedeck.clock import Clock, iso
from tapedeck.db import Database
from tapedeck.domain.events import emit
from tapedeck.domain.models import Recording
from tapedeck.domain.objects import part_key, recording_prefix
from tapedeck.domain.visibility import to_recording
from tapedeck.failpoints import Failpoints
from tapedeck.ids import new_id
from tapedeck.jobs import Failure, Job, JobFailed, enqueue
from tapedeck.oggopus import InvalidAudio, RemuxResult, probe, remux
from tapedeck.oggopus.opus import GRANULE_RATE
from tapedeck.sql import Tx
from tapedeck.store import MD5_HEX, ObjectNotFound, ObjectStore
from tapedeck.worker import JobRun

if TYPE_CHECKING:
    from tapedeck.app import App

log = logging.getLogger("tapedeck.stitch")

DURATION_TOLERANCE_MIN_MS = 100
#: S3's minimum multipart part size: the ``stitch.uploading`` failpoint fires once the first
#: part of the output was handed to the store (or all of a smaller output was).
_FIRST_PART = 5 * 1024 * 1024
_PIPE_LIMIT = 8 * 1024 * 1024
_READ_BLOCK = 1 << 20


def audio_key(recording_id: str) -> str:
    """Store key of a recording's stitched audio."""
    return f"{recording_prefix(recording_id)}audio/{recording_id}.opus"


def duration_tolerance_ms(result: RemuxResult) -> int:
    """Allowed |stitched - final_duration_ms|: max(100 ms, one packet per chunk boundary)."""
    packet_ms = -(-result.final_granule * 1000 // (GRANULE_RATE * max(1, result.packets)))
    return max(DURATION_TOLERANCE_MIN_MS, (result.chunks - 1) * packet_ms)


# -- streaming a producer's output into the store ----------------------------------------------

class _ProducerFailed(Exception):
    """Raised to the store's reader when the producer failed (carries the cause)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _ReaderGone(Exception):
    """Raised to the producer when the consumer stopped reading (upload failed)."""


class _Pipe:
    """A bounded in-memory byte pipe: one producer thread writes, the store's upload reads.

    ``read`` blocks until data, end of stream (``close``) or the producer's failure
    (``fail``: the next read raises ``_ProducerFailed``, so the upload aborts). ``abort`` (by
    the consumer) makes the producer's next ``write`` raise ``_ReaderGone``.
    """

    def __init__(self, limit: int = _PIPE_LIMIT, on_read: Callable[[int, bool], None] | None = None,
                 ) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._limit = limit
        self._eof = False
        self._error: BaseException | None = None
        self._aborted = False
        self._on_read = on_read
        self.bytes_read = 0

    def write(self, data: bytes, /) -> int:
        with self._cond:
            while len(self._buf) >= self._limit and not self._aborted:
                self._cond.wait()
            if self._aborted:
                raise _ReaderGone()
            self._buf += data
            self._cond.notify_all()
        return len(data)

    def close(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        if self._on_read is not None:
            self._on_read(self.bytes_read, self._at_eof())
        with self._cond:
            want = len(self._buf) if n < 0 else min(n, _READ_BLOCK)
            while self._error is None and not self._eof and (not self._buf or len(self._buf) < want):
                self._cond.wait()
            if self._error is not None:
                raise _ProducerFailed(self._error)
            size = len(self._buf) if n < 0 else min(n, len(self._buf))
            out = bytes(self._buf[:size])
            del self._buf[:size]
            self.bytes_read += size
            self._cond.notify_all()
            return out

    def _at_eof(self) -> bool:
        with self._cond:
            return self._eof and not self._buf


class _HashingSink:
    """Forwards writes to a sink, counting and MD5-hashing them."""

    def __init__(self, sink: _Pipe) -> None:
        self._sink = sink
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.md5.update(data)
        self.size += len(data)
        return self._sink.write(data)


@dataclass(frozen=True)
class Stitched:
    """A stitched object in the store."""

    key: str
    size: int
    md5: str
    remux: RemuxResult


def stitch_into_store(store: ObjectStore, chunks: Iterable[BinaryIO], key: str, *,
                      check: Callable[[RemuxResult], None] | None = None,
                      on_upload: Callable[[], None] | None = None) -> Stitched:
    """Remux ``chunks`` into one Ogg Opus object streamed to ``key`` (multipart put).

    The remux runs in a helper thread feeding the upload through a bounded pipe, so reading
    chunks, remuxing and uploading overlap. ``check(result)`` runs after the remux and before
    the upload's final read: raising there (or anywhere in the remux) aborts the upload, and
    the exception is re-raised here. ``on_upload()`` is called once when the first 5 MiB part
    (or the whole of a smaller output) has been read by the upload.
    """
    fired = threading.Event()

    def on_read(done: int, eof: bool) -> None:
        if on_upload is not None and not fired.is_set() and (done > _FIRST_PART or eof):
            fired.set()
            on_upload()

    pipe = _Pipe(on_read=on_read)
    sink = _HashingSink(pipe)
    box: dict[str, RemuxResult] = {}

    def produce() -> None:
        try:
            result = remux(chunks, sink)
            if check is not None:
                check(result)
            box["result"] = result
            pipe.close()
        except _ReaderGone:
            pass
        except BaseException as exc:
            pipe.fail(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # a generator: stop its prefetching now, in this thread
                close()

    producer = threading.Thread(target=produce, daemon=True, name=f"stitch-{key}")
    producer.start()
    try:
        info = store.put(key, pipe, -1, content_type="audio/ogg")  # type: ignore[arg-type]
    except _ProducerFailed as exc:
        raise exc.cause from None
    finally:
        pipe.abort()
        producer.join()
    if info.size != sink.size:  # pragma: no cover - the store contract guarantees this
        raise RuntimeError(f"store kept {info.size} of {sink.size} bytes")
    return Stitched(key, sink.size, sink.md5.hexdigest(), box["result"])


# -- reading verified inputs --------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as snapshotted at finalize: the pinned object (``key``), its size and MD5."""

    part: int
    size: int
    md5: str
    key: str


def read_object(store: ObjectStore, key: str) -> bytes:
    """All bytes of ``key`` (``ObjectNotFound`` if absent)."""
    stream = store.open(key)
    try:
        return stream.read()
    finally:
        stream.close()


class _VerifiedChunk(io.RawIOBase):
    """One pinned chunk object streamed from the store (never held whole in memory),
    counted and MD5-hashed as it is read, also into the recording's running ``whole`` MD5.

    ``finish()`` reads whatever the consumer left, closes the stream and raises
    ``JobFailed('checksum_mismatch')`` unless the bytes have the snapshotted size and MD5
    (the MD5 check is skipped for multipart ETags)."""

    def __init__(self, stream: BinaryIO, chunk: ChunkRecord, whole: Any) -> None:
        super().__init__()
        self._stream = stream
        self._chunk = chunk
        self._whole = whole
        self._md5 = hashlib.md5()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(min(len(view), _READ_BLOCK))
        n = len(data)
        view[:n] = data
        self._md5.update(data)
        self._whole.update(data)
        self.size += n
        return n

    def finish(self) -> None:
        while self.readinto(bytearray(_READ_BLOCK)):
            pass
        self._stream.close()
        chunk, digest = self._chunk, self._md5.hexdigest()
        if self.size != chunk.size or (MD5_HEX.match(chunk.md5) and digest != chunk.md5):
            raise JobFailed("checksum_mismatch",
                            f"Chunk {chunk.part} changed after finalize (MD5 {digest}, "
                            f"expected {chunk.md5}).", part=chunk.part)

    def close(self) -> None:
        self._stream.close()
        super().close()


def _open_chunk(store: ObjectStore, chunk: ChunkRecord) -> BinaryIO:
    try:
        return store.open(chunk.key)
    except ObjectNotFound:
        raise JobFailed("chunk_missing", f"Chunk {chunk.part} is no longer in the store.",
                        part=chunk.part) from None


def verified_chunks(store: ObjectStore, chunks: list[ChunkRecord], checksum_md5: str | None,
                    before_each: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """Chunk streams in part order, read from the objects finalize pinned, each checked
    against its snapshot once consumed; after the last one, the MD5 of all bytes against
    ``checksum_md5`` (if given). Raises ``JobFailed``.

    Memory is bounded by a constant whatever the chunk sizes: each chunk is streamed in
    ``_READ_BLOCK`` reads (nothing is prefetched or held whole), and its check runs when the
    consumer asks for the next chunk (or the end), before the stitched upload can finish."""
    whole = hashlib.md5()
    for chunk in chunks:
        if before_each is not None:
            before_each()
        current = _VerifiedChunk(_open_chunk(store, chunk), chunk, whole)
        try:
            yield io.BufferedReader(current, buffer_size=_READ_BLOCK)
            current.finish()
        finally:
            current.close()
    if checksum_md5 is not None and whole.hexdigest() != checksum_md5:
        raise JobFailed("checksum_mismatch",
                        "The chunks no longer match the checksum_md5 given at finalize.",
                        expected=checksum_md5, actual=whole.hexdigest())


# -- the job handler ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Audio:
    """A verified audio object ready to be published as the recording's media."""

    key: str
    size: int
    md5: str
    duration_ms: int | None
    media_id: str | None = None  # an existing media row (single-file uploads)


class StitchHandler:
    """Runs ``stitch`` jobs (see the module docstring)."""

    def __init__(self, db: Database, store: ObjectStore, clock: Clock,
                 failpoints: Failpoints | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        """``notify(kind)`` is called after a commit that enqueued a ``kind`` job (the
        domain's ``JobSignals.notify``: this process's transcribers start at once)."""
        self._db = db
        self._store = store
        self._clock = clock
        self._fp = failpoints or Failpoints()
        self._notify = notify

    def run(self, run: JobRun) -> None:
        """Stitch (or validate) the job's recording and publish it, or raise ``JobFailed``."""
        rec = self._recording(self._db.read(), run.job.recording_id)
        if rec is None or rec.status not in ("uploaded", "stitching"):
            log.info("job %s: recording %s is %s; nothing to do", run.job.id,
                     run.job.recording_id, rec.status if rec else "deleted")
            return
        where = {"job_id": run.job.id, "recording_id": rec.id}
        self._fp.hit("stitch.claimed", **where)
        if rec.streaming:
            self._mark_stitching(rec.id)
            self._fp.hit("stitch.stitching", **where)
            audio = self._stitch(run, rec)
        else:
            audio = self._validate_single(rec)
        self._fp.hit("stitch.uploaded", **where)
        self._publish(run, rec, audio)

    # -- streaming ----------------------------------------------------------------------------
    def _mark_stitching(self, recording_id: str) -> None:
        with self._db.write() as tx:
            tx.execute("UPDATE recordings SET status = 'stitching', updated_at = ?"
                       " WHERE id = ? AND status = 'uploaded'",
                       [iso(self._clock.now()), recording_id])

    def _stitch(self, run: JobRun, rec: Recording) -> _Audio:
        chunks = self._chunks(rec)
        body = rec.finalize_request or {}
        source = verified_chunks(self._store, chunks, body.get("checksum_md5"),
                                 before_each=run.check)

        def check(result: RemuxResult) -> None:
            expected = body.get("final_duration_ms")
            tolerance = duration_tolerance_ms(result)
            if expected is not None and abs(result.duration_ms - expected) > tolerance:
                raise JobFailed("duration_mismatch",
                                f"The stitched audio lasts {result.duration_ms} ms; finalize "
                                f"said {expected} ms (tolerance {tolerance} ms).",
                                expected_ms=expected, actual_ms=result.duration_ms)

        try:
            out = stitch_into_store(
                self._store, source, audio_key(rec.id), check=check,
                on_upload=lambda: self._fp.hit("stitch.uploading", job_id=run.job.id,
                                               recording_id=rec.id))
        except InvalidAudio as exc:
            raise JobFailed("invalid_audio",
                            f"Chunk {exc.part} is not valid Ogg Opus: {exc.reason}",
                            part=exc.part) from exc
        log.info("recording %s stitched: %d chunks, %d ms, %d bytes, %d seamless boundaries",
                 rec.id, out.remux.chunks, out.remux.duration_ms, out.size,
                 out.remux.seamless_boundaries)
        return _Audio(out.key, out.size, out.md5, out.remux.duration_ms)

    def _chunks(self, rec: Recording) -> list[ChunkRecord]:
        rows = self._db.read().execute(
            "SELECT part, size_bytes, md5, object_key FROM chunks WHERE recording_id = ?"
            " ORDER BY part", [rec.id]).fetchall()
        chunks = [ChunkRecord(part, size, md5, part_key(rec.id, part, key))
                  for part, size, md5, key in rows]
        total = (rec.finalize_request or {}).get("total_chunks", len(chunks))
        if [c.part for c in chunks] != list(range(1, total + 1)):
            raise JobFailed("chunk_missing",
                            f"The finalize snapshot does not hold parts 1..{total}.")
        return chunks

    # -- single file --------------------------------------------------------------------------
    def _validate_single(self, rec: Recording) -> _Audio:
        media = next((m for m in reversed(rec.media) if m.status == "uploaded"), None)
        if media is None:
            raise JobFailed("missing_audio", "The recording has no uploaded file.")
        snapshot = self._db.read().execute("SELECT md5 FROM media WHERE id = ?",
                                           [media.id]).fetchone()[0] or ""
        with tempfile.TemporaryFile() as spool:
            size, digest = self._download(media.object_key, spool)
            if MD5_HEX.match(snapshot) and digest != snapshot:
                raise JobFailed("checksum_mismatch",
                                "The uploaded file changed after upload-complete.")
            spool.seek(0)
            duration = probe_audio(spool, rec.codec)
        return _Audio(media.object_key, size, digest, duration, media.id)

    def _download(self, key: str, spool: BinaryIO) -> tuple[int, str]:
        try:
            stream = self._store.open(key)
        except ObjectNotFound:
            raise JobFailed("missing_audio", "The uploaded file is no longer in the store.",
                            ) from None
        md5, size = hashlib.md5(), 0
        try:
            while block := stream.read(_READ_BLOCK):
                md5.update(block)
                size += len(block)
                spool.write(block)
        finally:
            stream.close()
        return size, md5.hexdigest()

    # -- outcomes -----------------------------------------------------------------------------
    def _publish(self, run: JobRun, rec: Recording, audio: _Audio) -> None:
        """Complete the job and the recording in one transaction (see module docstring)."""
        orphan = queued_transcription = False
        with self._db.write() as tx:
            run.complete(tx)
            current = self._recording(tx, rec.id)
            if current is None:  # deleted while we stitched: drop what we wrote
                orphan = audio.media_id is None
            elif current.status in ("uploaded", "stitching"):
                queued_transcription = self._commit_completed(tx, current, audio)
        if queued_transcription and self._notify is not None:
            self._notify("transcribe")
        if orphan:
            self._store.delete(audio.key)

    def _commit_completed(self, tx: Tx, rec: Recording,
                          audio: _Audio) -> bool:
        """Record the completed audio; True when a ``transcribe`` job was enqueued."""
        now = iso(self._clock.now())
        if audio.media_id is None:
            tx.execute(
                "INSERT INTO media (id, recording_id, type, mime_type, object_key,"
                " file_size_bytes, md5, status, created_at)"
                " VALUES (?, ?, 'audio', 'audio/ogg', ?, ?, ?, 'ready', ?)",
                [new_id("med_"), rec.id, audio.key, audio.size, audio.md5, now])
        else:
            tx.execute("UPDATE media SET status = 'ready', file_size_bytes = ?, md5 = ?"
                       " WHERE id = ?", [audio.size, audio.md5, audio.media_id])
        tx.execute(
            "UPDATE recordings SET status = 'completed', duration_ms = COALESCE(?, duration_ms),"
            " file_size_bytes = ?, audio_key = ?, updated_at = ? WHERE id = ?",
            [audio.duration_ms, audio.size, audio.key, now, rec.id])
        # "processing" here is a live transcription (tapedeck.domain.live): assemble it now.
        if rec.transcription_id and rec.transcription_status in ("queued", "processing"):
            job_id = enqueue(tx, self._clock, "transcribe", recording_id=rec.id,
                             payload={"transcription_id": rec.transcription_id})
            tx.execute("UPDATE transcriptions SET job_id = ? WHERE id = ?",
                       [job_id, rec.transcription_id])
            return True
        return False

    def on_failure(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Fail the recording and its queued transcription; emit both events."""
        rec = self._recording(tx, job.recording_id)
        if rec is None or rec.status not in ("uploaded", "stitching"):
            return
        now = iso(self._clock.now())
        # "processing" here is a live transcription (tapedeck.domain.live): it fails too.
        txn_failed = rec.transcription_id is not None and rec.transcription_status in (
            "queued", "processing")
        tx.execute(
            "UPDATE recordings SET status = 'failed', failure_type = ?, failure_message = ?,"
            " transcription_status = CASE WHEN ? THEN 'failed' ELSE transcription_status END,"
            " updated_at = ? WHERE id = ?",
            [failure.type, failure.message, txn_failed, now, rec.id])
        fresh = self._recording(tx, rec.id)
        assert fresh is not None
        emit(tx, self._clock, rec.project_id, "recording.failed", fresh.to_json(), rec.id)
        if txn_failed:
            message = f"The recording failed before transcription: {failure.message}"
            tx.execute("UPDATE transcriptions SET status = 'failed', error_type = ?,"
                       " error_message = ?, completed_at = ? WHERE id = ?",
                       [failure.type, message, now, rec.transcription_id])
            emit(tx, self._clock, rec.project_id, "transcription.failed",
                 {"id": rec.transcription_id, "recording_id": rec.id, "status": "failed",
                  "error": {"type": failure.type, "message": message}}, rec.id)

    @staticmethod
    def _recording(db: Tx, recording_id: str | None) -> Recording | None:
        cur = db.execute("SELECT * FROM recordings WHERE id = ?", [recording_id])
        row = cur.fetchone()
        if row is None:
            return None
        return to_recording(db, dict(zip([d[0] for d in cur.description], row, strict=True)))


# -- probing single files -----------------------------------------------------------------------

def probe_audio(stream: BinaryIO, codec: str) -> int | None:
    """Validate an uploaded file; return its duration in ms (None if it cannot be probed
    here). Raises ``JobFailed('invalid_audio')`` for unreadable audio."""
    if codec in ("opus", "ogg"):
        try:
            return probe(stream).duration_ms
        except InvalidAudio as exc:
            if codec == "opus":
                raise JobFailed("invalid_audio", f"The file is not valid Ogg Opus: {exc.reason}",
                                ) from exc
            stream.seek(0)  # an Ogg file of another codec (Vorbis, FLAC): probe generically
    return _probe_with_av(stream)


def _probe_with_av(stream: BinaryIO) -> int | None:
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(stream, mode="r") as container:
            audio = next((s for s in container.streams if s.type == "audio"), None)
            if audio is None:
                raise JobFailed("invalid_audio", "The file has no audio stream.")
            return _demuxed_ms(container, audio)
    except av.FFmpegError as exc:
        raise JobFailed("invalid_audio", f"The file is not readable audio: {exc}") from exc


def _demuxed_ms(container: Any, audio: Any) -> int:
    """Duration of ``audio`` by demuxing every packet (validates the container as it goes)."""
    end = 0.0
    packets = 0
    for packet in container.demux(audio):
        if packet.pts is None or packet.duration is None:
            continue
        packets += 1
        end = max(end, float((packet.pts + packet.duration) * packet.time_base))
    if packets == 0:
        raise JobFailed("invalid_audio", "The file holds no audio packets.")
    start = float(audio.start_time * audio.time_base) if audio.start_time is not None else 0.0
    return round((end - start) * 1000)


def build_handler(app: App) -> StitchHandler:
    """The ``stitch`` handler of an ``App`` (``tapedeck.worker.HANDLER_FACTORIES``)."""
    return StitchHandler(app.db, app.store, app.clock, Failpoints(app.settings.test_only_failpoints),
                         notify=app.domain.ctx.job_signals.notify)
