"""The recording's status changes that a ``stitch`` job writes (package docstring, step 5 and
Failures): ``uploaded`` → ``stitching``; → ``completed`` with its media row and the
``transcribe`` job, in the transaction that completes the job; → ``failed`` with its queued
transcription, emitting ``recording.failed`` and ``transcription.failed``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tapedeck.background.worker import JobRun
from tapedeck.clock import Clock, iso
from tapedeck.domain.events import emit
from tapedeck.domain.models import Recording
from tapedeck.domain.visibility import to_recording
from tapedeck.ids import new_id
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import Failure, Job, enqueue
from tapedeck.infra.sql import Tx
from tapedeck.infra.store import ObjectStore


@dataclass(frozen=True)
class Audio:
    """A verified audio object ready to be published as the recording's media."""

    key: str
    size: int
    md5: str
    duration_ms: int | None
    media_id: str | None = None  # an existing media row (single-file uploads)


def find_recording(db: Tx, recording_id: str | None) -> Recording | None:
    """The recording ``recording_id`` as read through ``db`` (None once deleted)."""
    cur = db.execute("SELECT * FROM recordings WHERE id = ?", [recording_id])
    row = cur.fetchone()
    if row is None:
        return None
    return to_recording(db, dict(zip([d[0] for d in cur.description], row, strict=True)))


class Transitions:
    """Writes a ``stitch`` job's outcomes for one database, store and clock."""

    def __init__(self, db: Database, store: ObjectStore, clock: Clock,
                 notify: Callable[[str], None] | None = None) -> None:
        """``notify(kind)`` is called after a commit that enqueued a ``kind`` job."""
        self._db = db
        self._store = store
        self._clock = clock
        self._notify = notify

    def mark_stitching(self, recording_id: str) -> None:
        """``uploaded`` → ``stitching`` (no-op in any other status)."""
        with self._db.write() as tx:
            tx.execute("UPDATE recordings SET status = 'stitching', updated_at = ?"
                       " WHERE id = ? AND status = 'uploaded'",
                       [iso(self._clock.now()), recording_id])

    def publish(self, run: JobRun, rec: Recording, audio: Audio) -> None:
        """Complete the job and the recording in one transaction (package docstring, step
        5); a recording deleted meanwhile gets nothing, and a stitched object is deleted."""
        orphan = queued_transcription = False
        with self._db.write() as tx:
            run.complete(tx)
            current = find_recording(tx, rec.id)
            if current is None:  # deleted while we stitched: drop what we wrote
                orphan = audio.media_id is None
            elif current.status in ("uploaded", "stitching"):
                queued_transcription = self._commit_completed(tx, current, audio)
        if queued_transcription and self._notify is not None:
            self._notify("transcribe")
        if orphan:
            self._store.delete(audio.key)

    def _commit_completed(self, tx: Tx, rec: Recording,
                          audio: Audio) -> bool:
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

    def fail(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Fail the recording and its queued transcription; emit both events."""
        rec = find_recording(tx, job.recording_id)
        if rec is None or rec.status not in ("uploaded", "stitching"):
            return
        now = iso(self._clock.now())
        # "processing" here is a live transcription (tapedeck.domain.live): it fails too.
        txn_failed = rec.transcription_id is not None and rec.transcription_status in (
            "queued", "processing")
        tx.execute(
            "UPDATE recordings SET status = 'failed', failure_type = ?, failure_message = ?,"
            " transcription_status = ?, updated_at = ? WHERE id = ?",
            [failure.type, failure.message, "failed" if txn_failed else rec.transcription_status,
             now, rec.id])
        fresh = find_recording(tx, rec.id)
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
