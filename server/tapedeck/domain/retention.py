"""Retention: when the chunk objects of a finished streaming recording are deleted.

Policy (``RetentionPolicy``, from settings; a negative value keeps the objects forever):

- ``chunks_s`` (``retention_chunks_s``, default 0): the parts stitched into a recording's
  audio are deleted this long after the recording ``completed``. Before deleting anything the
  stitched object is read back in full and must still have the size and MD5 recorded when the
  stitch was verified; otherwise nothing is deleted (``blocked``, logged as an error). Only
  parts of the finalize snapshot (the ``chunks`` table) whose object still has the snapshot's
  MD5 count as stitched; any other part (left out by an expiry auto-finalize, or PUT later
  through a presigned URL) is a *leftover*.
- ``expired_s`` (``retention_expired_s``, default 30 days): leftovers of a completed recording
  are deleted this long after it was finalized (``uploaded_at``), and every chunk object of an
  ``expired`` recording this long after it expired.
- ``failed_s`` (``retention_failed_s``, default 30 days): every chunk object of a ``failed``
  streaming recording, this long after it failed.

Every sweep of a recording also aborts the multipart uploads left unfinished under its
prefix (a worker that died while writing the stitched audio): they are invisible but hold
their parts until aborted.

The stitched audio and single-file uploads are never deleted here: only deleting the
recording (``Recordings.delete``) removes every object it owns.

State: ``recordings.chunks_retention`` is NULL (nothing deleted), ``stitched`` (stitched
parts deleted, leftovers remain), ``purged`` (no chunk object left) or ``blocked`` (the
stitched audio failed its check: nothing is deleted until an operator looks and resets the
state to NULL; an unreachable store is not ``blocked``, the sweep just fails and retries).
It is set with a
compare-and-set AFTER the deletions, so a crash mid-way leaves the previous state and the
next sweep (any process) deletes what remains: deleting is idempotent, and concurrent
sweepers (several worker processes) only repeat each other's work.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tapedeck.clock import iso
from tapedeck.domain.context import Context
from tapedeck.domain.objects import chunk_objects, part_key, recording_prefix
from tapedeck.infra.failpoints import Failpoints
from tapedeck.infra.metrics import Metrics
from tapedeck.infra.store import MD5_HEX, MultipartCleanup, ObjectInfo, ObjectNotFound
from tapedeck.settings import Settings

log = logging.getLogger("tapedeck.retention")

_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class RetentionPolicy:
    """Seconds chunk objects are kept (negative = forever); see the module docstring."""

    chunks_s: int = 0
    failed_s: int = 30 * 86400
    expired_s: int = 30 * 86400

    @classmethod
    def from_settings(cls, s: Settings) -> RetentionPolicy:
        """The policy of the ``retention_chunks_s``, ``_failed_s`` and ``_expired_s`` settings."""
        return cls(chunks_s=s.retention_chunks_s, failed_s=s.retention_failed_s,
                   expired_s=s.retention_expired_s)


# stage → (status, chunks_retention state it starts from, time column, policy field)
_STAGE_QUERIES: dict[str, tuple[str, str | None, str, str]] = {
    "stitched": ("completed", None, "updated_at", "chunks_s"),
    "leftover": ("completed", "stitched", "uploaded_at", "expired_s"),
    "failed": ("failed", None, "updated_at", "failed_s"),
    "expired": ("expired", None, "updated_at", "expired_s"),
}


class Retention:
    """Applies the policy to due recordings (see the module docstring)."""

    def __init__(self, ctx: Context, policy: RetentionPolicy, *,
                 failpoints: Failpoints | None = None, metrics: Metrics | None = None) -> None:
        self._ctx = ctx
        self.policy = policy
        self._fp = failpoints or Failpoints()
        self._metrics = metrics

    def due(self, limit: int = 100) -> list[tuple[str, str]]:
        """(recording id, stage) pairs whose retention has run out, oldest first per stage."""
        out: list[tuple[str, str]] = []
        now = self._ctx.clock.now()
        db = self._ctx.db.read()
        for stage, (status, state, column, field) in _STAGE_QUERIES.items():
            keep = getattr(self.policy, field)
            if keep < 0 or len(out) >= limit:
                continue
            cutoff = iso(now - timedelta(seconds=keep))
            rows = db.execute(
                f"SELECT id FROM recordings WHERE status = ? AND chunks_retention IS ?"
                f" AND {column} <= ? ORDER BY {column} LIMIT ?",
                [status, state, cutoff, limit - len(out)]).fetchall()
            out += [(r[0], stage) for r in rows]
        return out

    def sweep(self, limit: int = 100) -> dict[str, str]:
        """Clean every due recording; return id → outcome (see ``clean``)."""
        return {rec_id: self.clean(rec_id, stage) for rec_id, stage in self.due(limit)}

    def clean(self, recording_id: str, stage: str) -> str:
        """Delete the chunk objects ``stage`` allows; returns the new state (``stitched`` or
        ``purged``), ``blocked`` (stitched audio not verified: nothing deleted) or ``skipped``
        (the recording changed or is gone)."""
        status, state, _, _ = _STAGE_QUERIES[stage]
        with self._ctx.locks.hold(recording_id):
            rec = self._row(recording_id)
            if rec is None or rec["status"] != status or rec["chunks_retention"] != state:
                return "skipped"
            self._abort_incomplete(recording_id)
            if not rec["streaming"]:
                return self._mark(recording_id, status, state, "purged")
            if stage == "stitched":
                return self._clean_stitched(rec)
            every = [obj for objs in chunk_objects(self._ctx.store, recording_id).values()
                     for obj in objs]
            self._fp.hit("retention.cleanup", recording_id=recording_id, stage=stage)
            self._delete(recording_id, every, stage)
            return self._mark(recording_id, status, state, "purged")

    # -- the stitched stage ---------------------------------------------------------------------
    def _clean_stitched(self, rec: dict[str, Any]) -> str:
        recording_id = rec["id"]
        if not self._audio_verified(rec):
            return self._mark(recording_id, "completed", None, "blocked")
        snapshot = {part: (part_key(recording_id, part, key), md5) for part, md5, key in
                    self._ctx.db.read().execute(
                        "SELECT part, md5, object_key FROM chunks WHERE recording_id = ?",
                        [recording_id]).fetchall()}
        every = [(part, obj) for part, objs in
                 sorted(chunk_objects(self._ctx.store, recording_id).items()) for obj in objs]
        stitched = [obj for part, obj in every if part in snapshot
                    and obj.key == snapshot[part][0] and _same_bytes(obj, snapshot[part][1])]
        self._fp.hit("retention.cleanup", recording_id=recording_id, stage="stitched")
        self._delete(recording_id, stitched, "stitched")
        left = len(every) - len(stitched)
        return self._mark(recording_id, "completed", None, "stitched" if left else "purged")

    def _audio_verified(self, rec: dict[str, Any]) -> bool:
        """The stitched object exists with the size and MD5 recorded at stitch time."""
        media = self._ctx.db.read().execute(
            "SELECT file_size_bytes, md5 FROM media WHERE recording_id = ? AND object_key = ?"
            " AND status = 'ready'", [rec["id"], rec["audio_key"]]).fetchone()
        if rec["audio_key"] is None or media is None:
            log.error("recording %s is completed without ready audio; chunks kept", rec["id"])
            return False
        try:
            size, md5 = self._digest(rec["audio_key"])
        except ObjectNotFound:
            log.error("recording %s: stitched audio %s is missing; chunks kept", rec["id"],
                      rec["audio_key"])
            return False
        if (size, md5) != (media[0], media[1]):
            log.error("recording %s: stitched audio changed (size %d, MD5 %s; expected %s, %s);"
                      " chunks kept", rec["id"], size, md5, media[0], media[1])
            return False
        return True

    def _digest(self, key: str) -> tuple[int, str]:
        stream = self._ctx.store.open(key)
        md5, size = hashlib.md5(), 0
        try:
            while block := stream.read(_READ_BLOCK):
                md5.update(block)
                size += len(block)
        finally:
            stream.close()
        return size, md5.hexdigest()

    # -- shared -------------------------------------------------------------------------------
    def _abort_incomplete(self, recording_id: str) -> None:
        """Free the parts of multipart uploads a worker left unfinished when it died mid-stitch
        (invisible, never completed). The recording is finished, so none is still running."""
        store = self._ctx.store
        if not isinstance(store, MultipartCleanup):
            return  # a store without multipart uploads leaves no parts behind
        aborted = store.abort_incomplete_uploads(recording_prefix(recording_id))
        if aborted:
            log.info("recording %s: %d unfinished upload(s) aborted", recording_id, aborted)

    def _delete(self, recording_id: str, objects: Any, reason: str) -> None:
        count = 0
        for obj in objects:
            self._ctx.store.delete(obj.key)
            count += 1
            if self._metrics is not None:
                self._metrics.retention_deleted.labels(reason).inc()
            if count == 1:
                self._fp.hit("retention.deleting", recording_id=recording_id, key=obj.key)
        if count:
            log.info("recording %s: %d %s chunk object(s) deleted", recording_id, count, reason)

    def _mark(self, recording_id: str, status: str, old: str | None, new: str) -> str:
        with self._ctx.db.write() as tx:
            cur = tx.execute("UPDATE recordings SET chunks_retention = ? WHERE id = ?"
                             " AND status = ? AND chunks_retention IS ?",
                             [new, recording_id, status, old])
        return new if cur.rowcount == 1 else "skipped"

    def _row(self, recording_id: str) -> dict[str, Any] | None:
        cur = self._ctx.db.read().execute(
            "SELECT id, status, streaming, audio_key, chunks_retention FROM recordings"
            " WHERE id = ?", [recording_id])
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row,
                                                 strict=True))


def _same_bytes(obj: ObjectInfo, snapshot_md5: str) -> bool:
    """The stored object is the one snapshotted at finalize (multipart ETags: by trust)."""
    return not MD5_HEX.match(obj.etag) or obj.etag == snapshot_md5

