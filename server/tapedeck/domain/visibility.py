"""Visibility: which recordings a principal may see (others are reported as not found),
and the ``Recording`` read model built from a row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tapedeck.auth import Principal
from tapedeck.clock import parse_iso
from tapedeck.domain.models import Media, Recording
from tapedeck.errors import error
from tapedeck.infra.sql import Tx


def load_recording(db: Tx, p: Principal, recording_id: str) -> Recording:
    """The recording if this principal may see it, else ``recording_not_found``.

    Other projects' and (for device tokens) other devices' recordings are reported as not
    found, never as forbidden, so their existence is not revealed."""
    row = db.execute("SELECT * FROM recordings WHERE id = ?", [recording_id]).fetchone()
    if row is not None:
        cols = [d[0] for d in db.execute("SELECT * FROM recordings LIMIT 0").description]
        rec = dict(zip(cols, row, strict=True))
        if visible(p, rec):
            return to_recording(db, rec)
    raise error("recording_not_found", "Recording not found.", recording_id=recording_id)


def visible(p: Principal, rec: dict[str, Any]) -> bool:
    """Whether ``p`` may see the recording row ``rec`` (its project; for device tokens its
    device; for upload tokens that one recording)."""
    if rec["project_id"] != p.project_id:
        return False
    if p.kind == "device":
        return bool(rec["device_id"] == p.device_id)
    if p.kind == "upload":
        return bool(rec["id"] == p.recording_id)
    return True


def to_recording(db: Tx, rec: dict[str, Any]) -> Recording:
    """A ``Recording`` from a row, with its chunk count and media."""
    count = db.execute("SELECT count(*) FROM chunks WHERE recording_id = ?",
                       [rec["id"]]).fetchone()[0]
    media = [
        Media(id=m[0], type=m[1], mime_type=m[2], file_size_bytes=m[3], status=m[4],
              created_at=parse_iso(m[5]) or datetime.now(UTC), object_key=m[6])
        for m in db.execute(
            "SELECT id, type, mime_type, file_size_bytes, status, created_at, object_key"
            " FROM media WHERE recording_id = ? ORDER BY created_at, id", [rec["id"]])
    ]
    return Recording.from_row(rec, count, media)
