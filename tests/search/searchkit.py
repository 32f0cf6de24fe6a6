"""Test kit for search and exports: transcripts stored through the domain with the same
completion write the transcription job makes (row ``completed``, the recording's current
transcription, the search index replaced in the SAME transaction), and segment builders."""

from __future__ import annotations

import json
from typing import Any

from tapedeck.auth import Principal
from tapedeck.clock import iso
from tapedeck.domain.recordings import NewRecording
from tapedeck.domain.search_index import backend_for
from tapedeck.ids import new_id

from serverkit import RunningServer


def segment(start_ms: int, end_ms: int, text: str, speaker: str | None = None,
            timed_words: bool = True) -> dict[str, Any]:
    """A segment shaped like the engine's, its words spread evenly over its span."""
    tokens = text.split()
    step = (end_ms - start_ms) / max(1, len(tokens))
    words = [{"word": (" " if i else "") + w, "start_ms": round(start_ms + i * step),
              "end_ms": round(start_ms + (i + 1) * step), "confidence": 0.9}
             for i, w in enumerate(tokens)] if timed_words else []
    return {"start_ms": start_ms, "end_ms": end_ms, "text": " " + text, "confidence": 0.9,
            "speaker": speaker, "words": words}


def new_recording(srv: RunningServer, p: Principal, **fields: Any) -> str:
    """A recording created through the domain; returns its id."""
    return srv.app.domain.recordings.create(p, NewRecording(**fields)).recording.id


def store_transcript(srv: RunningServer, recording_id: str,
                     segments: list[dict[str, Any]], language: str = "en") -> str:
    """A completed transcription of ``recording_id`` becoming its current one, written like
    ``TranscribeHandler._finish`` (one transaction, index replaced inside). Returns its id."""
    app = srv.app
    txn_id = new_id("txn_")
    now = iso(app.clock.now())
    text = " ".join(s["text"].strip() for s in segments)
    with app.db.write() as tx:
        project_id = tx.execute("SELECT project_id FROM recordings WHERE id = ?",
                                [recording_id]).fetchone()[0]
        tx.execute(
            "INSERT INTO transcriptions (id, recording_id, project_id, status, language,"
            " provider, model, duration_ms, text, segments, word_count, created_at,"
            " completed_at) VALUES (?, ?, ?, 'completed', ?, 'whisper', 'whisper-base', ?,"
            " ?, ?, ?, ?, ?)",
            [txn_id, recording_id, project_id, language,
             segments[-1]["end_ms"] if segments else 0, text,
             json.dumps(segments, ensure_ascii=False), len(text.split()), now, now])
        tx.execute("UPDATE recordings SET transcription_id = ?, transcription_status ="
                   " 'completed' WHERE id = ?", [txn_id, recording_id])
        backend_for(tx).replace(tx, txn_id)
    return txn_id
