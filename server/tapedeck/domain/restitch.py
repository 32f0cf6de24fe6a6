"""Re-running the stitch job of a failed recording (``POST /v1/recordings/{id}/stitch``, the
console's "Re-run stitching").

A recording fails when its ``stitch`` job fails (``tapedeck.background.stitch``: a chunk missing or
corrupt, a checksum or duration mismatch, the store down after the last retry). Once the
cause is fixed outside Tapedeck (a chunk object restored in the store, the store back up),
an operator re-runs it: in ONE transaction the recording goes back to ``uploaded`` with its
failure cleared, a new ``stitch`` job is queued and becomes its ``stitching_job_id``, and
when its transcription had failed with the recording, a new one is queued (event
``transcription.queued``) so the stitched audio is transcribed as after a first finalize.
The finalize snapshot (``chunks``) is kept: the job reads exactly the parts finalize pinned.
No recording event is emitted (api.md has none for it); the outcome is the job's
(``recording.failed`` again, or completed).
"""

from __future__ import annotations

from tapedeck.auth import Principal
from tapedeck.clock import iso
from tapedeck.domain._base import Context, emit, load_recording, to_recording
from tapedeck.domain.models import Recording
from tapedeck.errors import error
from tapedeck.ids import new_id
from tapedeck.infra.sql import Tx


def restitch(ctx: Context, p: Principal, recording_id: str) -> Recording:
    """Queue a new stitch job for a failed recording (see the module docstring). Needs
    ``recordings:write`` and not a device token (``forbidden``); ``invalid_state`` unless
    the recording is ``failed`` with its audio complete (finalized, or its file uploaded) and
    no stitch job queued or running."""
    p.require("recordings:write")
    if p.kind == "device":
        raise error("forbidden", "Device tokens cannot re-run stitching.")
    with ctx.locks.hold(recording_id), ctx.db.write() as tx:
        rec = load_recording(tx, p, recording_id)
        _check_can_restitch(tx, rec)
        now = iso(ctx.clock.now())
        job_id = new_id("job_stitcher_")
        tx.execute(
            "INSERT INTO jobs (id, kind, recording_id, status, run_after, created_at,"
            " updated_at) VALUES (?, 'stitch', ?, 'queued', ?, ?, ?)",
            [job_id, rec.id, now, now, now])
        txn_id = _requeue_transcription(tx, ctx, rec, now)
        tx.execute(
            "UPDATE recordings SET status = 'uploaded', failure_type = NULL,"
            " failure_message = NULL, stitching_job_id = ?, transcription_id = ?,"
            " transcription_status = ?, updated_at = ? WHERE id = ?",
            [job_id, txn_id, "queued" if txn_id != rec.transcription_id else
             rec.transcription_status, now, rec.id])
        fresh = tx.execute("SELECT * FROM recordings WHERE id = ?", [rec.id])
        cols = [d[0] for d in fresh.description]
        out = to_recording(tx, dict(zip(cols, fresh.fetchone(), strict=True)))
    ctx.job_signals.notify("stitch")
    return out


def _check_can_restitch(tx: Tx, rec: Recording) -> None:
    if rec.status != "failed":
        raise error("invalid_state", f"The recording is {rec.status}; only a failed recording "
                    "can be stitched again.", status=rec.status)
    complete = rec.finalize_request is not None if rec.streaming else any(
        m.status == "uploaded" for m in rec.media)
    if not complete:
        raise error("invalid_state", "The recording's audio was never complete; there is "
                    "nothing to stitch.", status=rec.status)
    busy = tx.execute("SELECT id FROM jobs WHERE recording_id = ? AND kind = 'stitch'"
                      " AND status IN ('queued', 'running')", [rec.id]).fetchone()
    if busy is not None:
        raise error("invalid_state", "A stitch job of the recording is still queued or "
                    "running.", status=rec.status, job_id=busy[0])


def _requeue_transcription(tx: Tx, ctx: Context, rec: Recording, now: str) -> str | None:
    """A new queued transcription when the current one failed (with the recording); the
    current one (or none) otherwise: a completed transcript stays."""
    if rec.transcription_status != "failed":
        return rec.transcription_id
    txn_id = new_id("txn_")
    tx.execute(
        "INSERT INTO transcriptions (id, recording_id, project_id, status, provider,"
        " created_at) VALUES (?, ?, ?, 'queued', 'whisper', ?)",
        [txn_id, rec.id, rec.project_id, now])
    emit(tx, ctx.clock, rec.project_id, "transcription.queued",
         {"id": txn_id, "recording_id": rec.id, "status": "queued"}, rec.id)
    return txn_id
