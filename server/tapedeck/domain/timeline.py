"""A recording's status timeline (the console's recording page): what happened to it, oldest
first, from the rows that record it — its events (created, finalized, failed, each
transcription step), its chunks (when each part arrived), its stitch jobs (queued,
stitched or failed) and, for callers with ``webhooks:read``, each webhook delivery of its
events (endpoint, status, attempts, last status code, next retry).

Chunk times are the store's ``last_modified`` of each part's current object while it is
listed (the ledger's ``received_at`` is rewritten at finalize), else the ledger's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from tapedeck.auth import Principal
from tapedeck.clock import parse_iso
from tapedeck.domain._base import Context, load_recording
from tapedeck.domain.objects import stored_parts
from tapedeck.errors import TapedeckError
from tapedeck.infra.sql import Tx

#: Event type → the timeline's kind and title.
EVENT_TITLES = {
    "recording.created": ("created", "Recording created"),
    "recording.uploaded": ("finalized", "Audio complete (finalized / uploaded)"),
    "recording.failed": ("failed", "Recording failed"),
    "recording.expired": ("failed", "Recording expired before finalize"),
    "transcription.queued": ("transcription", "Transcription queued"),
    "transcription.started": ("transcription", "Transcription started"),
    "transcription.completed": ("transcribed", "Transcribed"),
    "transcription.failed": ("failed", "Transcription failed"),
}


@dataclass(frozen=True)
class TimelineEntry:
    """One step: when, a kind (``created``, ``chunk``, ``finalized``, ``stitch``,
    ``stitched``, ``transcription``, ``transcribed``, ``failed``, ``webhook``), a title and
    a detail line (both plain text: the page escapes them)."""

    at: datetime
    kind: str
    title: str
    detail: str = ""


def timeline(ctx: Context, p: Principal, recording_id: str) -> list[TimelineEntry]:
    """The timeline of a recording visible to ``p`` (``recordings:read``), oldest first."""
    p.require("recordings:read")
    db = ctx.db.read()
    rec = load_recording(db, p, recording_id)
    out = _events(db, rec.id) + _chunks(ctx, db, rec.id) + _stitch_jobs(db, rec.id)
    if "webhooks:read" in p.scopes:
        out += _deliveries(db, rec.project_id, rec.id)
    order = {"created": 0, "chunk": 1, "finalized": 2}
    return sorted(out, key=lambda e: (e.at, order.get(e.kind, 3)))


def _at(text: str | None) -> datetime:
    when = parse_iso(text)
    assert when is not None
    return when


def _events(db: Tx, recording_id: str) -> list[TimelineEntry]:
    rows = db.execute("SELECT type, created_at, data FROM events WHERE recording_id = ?"
                      " ORDER BY created_at, id", [recording_id]).fetchall()
    out = []
    for type_, created_at, data in rows:
        kind, title = EVENT_TITLES.get(type_, ("event", type_))
        out.append(TimelineEntry(_at(created_at), kind, title, _event_detail(type_, data)))
    return out


def _event_detail(type_: str, data: str) -> str:
    try:
        body = json.loads(data or "{}")
    except ValueError:
        return type_
    err = body.get("error") or body.get("failure") or {}
    if isinstance(err, dict) and err.get("type"):
        return f"{type_}: {err.get('type')}: {err.get('message', '')}"
    return type_


def _chunks(ctx: Context, db: Tx, recording_id: str) -> list[TimelineEntry]:
    rows = db.execute("SELECT part, size_bytes, received_at FROM chunks WHERE recording_id = ?"
                      " ORDER BY part", [recording_id]).fetchall()
    try:
        stored = stored_parts(ctx.store, recording_id)
    except TapedeckError:  # the store is down: the ledger's times still tell the story
        stored = {}
    out = []
    for part, size, received_at in rows:
        obj = stored.get(part)
        at = obj.last_modified if obj is not None else _at(received_at)
        out.append(TimelineEntry(at, "chunk", f"Chunk {part} received", f"{size} bytes"))
    return out


def _stitch_jobs(db: Tx, recording_id: str) -> list[TimelineEntry]:
    rows = db.execute("SELECT id, status, attempts, created_at, finished_at, last_error"
                      " FROM jobs WHERE recording_id = ? AND kind = 'stitch'"
                      " ORDER BY created_at, id", [recording_id]).fetchall()
    out = []
    for job_id, status, attempts, created_at, finished_at, last_error in rows:
        out.append(TimelineEntry(_at(created_at), "stitch", "Stitching queued", job_id))
        if status == "succeeded" and finished_at:
            out.append(TimelineEntry(_at(finished_at), "stitched", "Stitched",
                                     f"{job_id}, attempt {attempts}"))
        elif status == "failed" and finished_at:
            out.append(TimelineEntry(_at(finished_at), "failed", "Stitching failed",
                                     f"{job_id}: {last_error or 'failed'}"))
    return out


def _deliveries(db: Tx, project_id: str, recording_id: str) -> list[TimelineEntry]:
    rows = db.execute(
        "SELECT e.type, w.url, d.origin, d.status, d.attempts, d.last_status_code,"
        " d.next_attempt_at, d.created_at, d.completed_at FROM webhook_deliveries d"
        " JOIN events e ON e.id = d.event_id JOIN webhook_endpoints w ON w.id = d.endpoint_id"
        " WHERE e.recording_id = ? AND d.project_id = ? ORDER BY d.seq",
        [recording_id, project_id]).fetchall()
    out = []
    for type_, url, origin, status, attempts, code, next_at, created_at, done_at in rows:
        detail = f"{url}: {status}, {attempts} attempt(s)"
        if code is not None:
            detail += f", last answer {code}"
        if status == "pending" and next_at:
            detail += f", next retry {next_at}"
        title = f"Webhook {type_}" + (" (replay)" if origin == "replay" else "")
        out.append(TimelineEntry(_at(done_at or created_at), "webhook", title, detail))
    return out
