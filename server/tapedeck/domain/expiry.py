"""Expiry: streaming recordings never finalized by ``expires_at``.

With ``expiry_auto_finalize`` (the default) a due recording that holds chunk 1 is finalized
from its contiguous parts 1..k, exactly like a device finalize (one stitching job, a queued
transcription), with ``finalized_by: "expiry"`` and ``gaps`` describing what is missing after
part k; a recording without chunk 1 (or with auto-finalize off) becomes ``expired``. Both
emit ``recording.expired``. Chunks arriving later are refused (``recording_expired``).
"""

from __future__ import annotations

import json
from typing import Any

from tapedeck.clock import iso
from tapedeck.domain import live
from tapedeck.domain._base import Context, emit, stored_parts, to_recording
from tapedeck.domain.models import Recording
from tapedeck.domain.recordings import (
    emit_transcription_queued,
    queue_processing,
    row,
    snapshot_chunks,
)
from tapedeck.infra.store import ObjectInfo


def contiguous_prefix(parts: set[int]) -> int:
    """The largest k such that parts 1..k are all present (0 if part 1 is missing)."""
    k = 0
    while k + 1 in parts:
        k += 1
    return k


def gaps_after(k: int, listing: dict[int, ObjectInfo],
               chunk_duration_ms: int | None) -> list[dict[str, Any]]:
    """The gap after part k when later parts exist: its missing and discarded parts and the
    time it starts at (unknown end: the device never said how long it recorded)."""
    later = sorted(part for part in listing if part > k)
    if not later:
        return []
    return [{
        "first_part": k + 1, "last_part": None,
        "start_ms": k * chunk_duration_ms if chunk_duration_ms else None, "end_ms": None,
        "missing_parts": [p for p in range(k + 1, later[-1]) if p not in listing],
        "discarded_parts": later,
    }]


class Expiry:
    """Finds and expires due streaming recordings."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def due(self, limit: int = 100) -> list[str]:
        """Ids of streaming recordings whose ``expires_at`` has passed, oldest first."""
        rows = self._ctx.db.read().execute(
            "SELECT id FROM recordings WHERE status = 'streaming' AND expires_at <= ?"
            " ORDER BY expires_at LIMIT ?", [iso(self._ctx.clock.now()), limit]).fetchall()
        return [r[0] for r in rows]

    def sweep(self, limit: int = 100) -> dict[str, str]:
        """Expire every due recording; return id → outcome (finalized | expired | skipped)."""
        return {rec_id: self.expire(rec_id) for rec_id in self.due(limit)}

    def expire(self, recording_id: str) -> str:
        """Expire one recording if it is still streaming and due."""
        ctx = self._ctx
        with ctx.locks.hold(recording_id):
            listing = stored_parts(ctx.store, recording_id)
            with ctx.db.write() as tx:
                found = tx.execute("SELECT 1 FROM recordings WHERE id = ?",
                                   [recording_id]).fetchone()
                current = row(tx, recording_id) if found else None
                now = iso(ctx.clock.now()) or ""
                if current is None or current["status"] != "streaming" \
                        or current["expires_at"] > now:
                    return "skipped"
                rec = to_recording(tx, current)
                k = contiguous_prefix(set(listing)) if ctx.settings.expiry_auto_finalize else 0
                if k == 0:
                    self._mark_expired(tx, rec)
                    return "expired"
                self._auto_finalize(tx, rec, k, listing)
        ctx.job_signals.notify("stitch")  # committed: wake this process's stitch workers
        return "finalized"

    def _mark_expired(self, tx: Any, rec: Recording) -> None:
        now = iso(self._ctx.clock.now())
        tx.execute("UPDATE recordings SET status = 'expired', finalized_by = 'expiry',"
                   " updated_at = ? WHERE id = ?", [now, rec.id])
        fresh = to_recording(tx, row(tx, rec.id))
        emit(tx, self._ctx.clock, rec.project_id, "recording.expired", fresh.to_json(), rec.id)
        live.fail_live(tx, self._ctx, rec.id, rec.project_id, "recording_expired",
                       "The recording expired before it was finalized.")

    def _auto_finalize(self, tx: Any, rec: Recording, k: int,
                       listing: dict[int, ObjectInfo]) -> None:
        ctx, now = self._ctx, iso(self._ctx.clock.now())
        kept = {part: listing[part] for part in range(1, k + 1)}
        snapshot_chunks(tx, rec.id, kept, now)
        job_id, txn_id = queue_processing(tx, rec, now)
        body = {"total_chunks": k, "final_duration_ms": None, "checksum_md5": None}
        tx.execute(
            "UPDATE recordings SET status = 'uploaded', uploaded_at = ?, finalize_request = ?,"
            " finalized_by = 'expiry', gaps = ?, stitching_job_id = ?,"
            " transcription_status = 'queued', transcription_id = ?, updated_at = ?"
            " WHERE id = ?",
            [now, json.dumps(body), json.dumps(gaps_after(k, listing, rec.chunk_duration_ms)),
             job_id, txn_id, now, rec.id])
        live.keep_live_status(tx, rec.id, txn_id)  # an adopted live transcription: processing
        fresh = to_recording(tx, row(tx, rec.id))
        emit(tx, ctx.clock, rec.project_id, "recording.expired", fresh.to_json(), rec.id)
        emit_transcription_queued(tx, ctx.clock, rec, txn_id)
