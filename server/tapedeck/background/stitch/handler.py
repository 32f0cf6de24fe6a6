"""The ``stitch`` job handler (its contract is the package docstring): ``StitchHandler.run``
stitches a streaming recording from its pinned chunks, or validates a single file, and
publishes it; ``on_failure`` fails the recording; ``build_handler`` is the factory the
worker names (``tapedeck.background.worker.HANDLER_FACTORIES``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tapedeck.background.stitch.chunks import ChunkRecord, verified_chunks
from tapedeck.background.stitch.single import validate_single
from tapedeck.background.stitch.transition import Audio, Transitions, find_recording
from tapedeck.background.stitch.upload import stitch_into_store
from tapedeck.background.worker import JobRun
from tapedeck.clock import Clock
from tapedeck.domain.models import Recording
from tapedeck.domain.objects import part_key, recording_prefix
from tapedeck.infra.db import Database
from tapedeck.infra.failpoints import Failpoints
from tapedeck.infra.jobs import Failure, Job, JobFailed
from tapedeck.infra.sql import Tx
from tapedeck.infra.store import ObjectStore
from tapedeck.oggopus import InvalidAudio, RemuxResult
from tapedeck.oggopus.opus import GRANULE_RATE
from tapedeck.runtime import Runtime

log = logging.getLogger("tapedeck.background.stitch")

DURATION_TOLERANCE_MIN_MS = 100


def audio_key(recording_id: str) -> str:
    """Store key of a recording's stitched audio."""
    return f"{recording_prefix(recording_id)}audio/{recording_id}.opus"


def duration_tolerance_ms(result: RemuxResult) -> int:
    """Allowed |stitched - final_duration_ms|: max(100 ms, one packet per chunk boundary)."""
    packet_ms = -(-result.final_granule * 1000 // (GRANULE_RATE * max(1, result.packets)))
    return max(DURATION_TOLERANCE_MIN_MS, (result.chunks - 1) * packet_ms)


class StitchHandler:
    """Runs ``stitch`` jobs (see the package docstring)."""

    def __init__(self, db: Database, store: ObjectStore, clock: Clock,
                 failpoints: Failpoints | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        """``notify(kind)`` is called after a commit that enqueued a ``kind`` job (the
        domain's ``JobSignals.notify``: this process's transcribers start at once)."""
        self._db = db
        self._store = store
        self._fp = failpoints or Failpoints()
        self._transitions = Transitions(db, store, clock, notify)

    def run(self, run: JobRun) -> None:
        """Stitch (or validate) the job's recording and publish it, or raise ``JobFailed``."""
        rec = find_recording(self._db.read(), run.job.recording_id)
        if rec is None or rec.status not in ("uploaded", "stitching"):
            log.info("job %s: recording %s is %s; nothing to do", run.job.id,
                     run.job.recording_id, rec.status if rec else "deleted")
            return
        where = {"job_id": run.job.id, "recording_id": rec.id}
        self._fp.hit("stitch.claimed", **where)
        if rec.streaming:
            self._transitions.mark_stitching(rec.id)
            self._fp.hit("stitch.stitching", **where)
            audio = self._stitch(run, rec)
        else:
            audio = validate_single(self._db, self._store, rec)
        self._fp.hit("stitch.uploaded", **where)
        self._transitions.publish(run, rec, audio)

    def on_failure(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Fail the recording and its queued transcription; emit both events."""
        self._transitions.fail(tx, job, failure)

    # -- streaming ----------------------------------------------------------------------------
    def _stitch(self, run: JobRun, rec: Recording) -> Audio:
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
        return Audio(out.key, out.size, out.md5, out.remux.duration_ms)

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


def build_handler(runtime: Runtime) -> StitchHandler:
    """The ``stitch`` handler of a process (``tapedeck.background.worker.HANDLER_FACTORIES``); the jobs
    it enqueues (transcriptions) wake this process's workers through ``job_signals``."""
    return StitchHandler(runtime.db, runtime.store, runtime.clock,
                         Failpoints(runtime.settings.test_only_failpoints),
                         notify=runtime.job_signals.notify)
