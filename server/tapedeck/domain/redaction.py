"""Deleted means deleted: the stored events of a deleted recording are redacted once their
webhook deliveries are done.

``Recordings.delete`` removes the recording's objects and rows (chunks, media, transcriptions
cascade) and queues the recording in ``deleted_recordings``, in the same transaction as its
``recording.deleted`` event. Its earlier events (``recording.created``, ``.uploaded``,
``transcription.*`` …) carry the recording's name, metadata, device/end-user ids and
transcript fields in ``events.data``. An event is redacted as soon as nothing still has to
deliver it: it is out of ``webhook_outbox`` (fanned out) and none of its deliveries is
``pending`` (delivered, failed for good or cancelled). Redaction keeps only the event's
envelope (``id``, ``type``, ``project_id``, ``recording_id``, ``created_at``) and, in
``data``, the identifiers ``id``, ``recording_id``, ``status`` plus ``"redacted": true``.
Delivery rows and attempts (status codes, timings, no payloads) are kept as an audit trail.

``redact_now`` runs inside the delete transaction (usually every event is done already);
``EventRedaction.sweep`` (the ``sweeper`` role) redacts the rest once their deliveries end,
and drops the queue row once the recording has no unredacted event left. A replay of a
redacted event delivers the redacted payload.
"""

from __future__ import annotations

import json
from typing import Any

from tapedeck.domain._base import Context

KEPT_FIELDS = ("id", "recording_id", "status")

_DONE = """NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id)
    AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                    WHERE d.event_id = e.id AND d.status = 'pending')"""


def redacted(data: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an event's ``data`` after its recording was deleted."""
    return {**{k: data[k] for k in KEPT_FIELDS if k in data}, "redacted": True}


def queue_redaction(tx: Any, recording_id: str, project_id: str, now: str | None) -> None:
    """Note (in the delete transaction) that the recording's events must be redacted."""
    tx.execute("INSERT INTO deleted_recordings (recording_id, project_id, deleted_at)"
               " VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [recording_id, project_id, now])


def redact_now(tx: Any, recording_id: str) -> tuple[int, int]:
    """Redact the recording's events that nothing has to deliver any more; drop its queue row
    when none is left unredacted. Returns (redacted now, still waiting)."""
    rows = tx.execute(
        f"SELECT e.id, e.data, ({_DONE}) FROM events e WHERE e.recording_id = ?"
        " AND e.type != 'recording.deleted'", [recording_id]).fetchall()
    done = waiting = 0
    for event_id, data, is_done in rows:
        body = json.loads(data)
        if body.get("redacted") is True:
            continue
        if not is_done:
            waiting += 1
            continue
        tx.execute("UPDATE events SET data = ? WHERE id = ?",
                   [json.dumps(redacted(body)), event_id])
        done += 1
    if waiting == 0:
        tx.execute("DELETE FROM deleted_recordings WHERE recording_id = ?", [recording_id])
    return done, waiting


class EventRedaction:
    """Redacts the events of deleted recordings once their deliveries are done."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def sweep(self, limit: int = 100) -> dict[str, int]:
        """One pass over the queued recordings (oldest first); recording id → events
        redacted in this pass."""
        rows = self._ctx.db.read().execute(
            "SELECT recording_id FROM deleted_recordings ORDER BY deleted_at LIMIT ?",
            [limit]).fetchall()
        out = {}
        for (recording_id,) in rows:
            with self._ctx.db.write() as tx:
                out[recording_id] = redact_now(tx, recording_id)[0]
        return out

    def pending(self) -> int:
        """Recordings whose events still wait for deliveries to finish."""
        return int(self._ctx.db.read().execute(
            "SELECT count(*) FROM deleted_recordings").fetchone()[0])
