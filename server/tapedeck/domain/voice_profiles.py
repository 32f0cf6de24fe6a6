"""Voice profiles: an end user's enrolled voice, to name them in diarized transcripts.

Rules:

- A profile belongs to one end user of one project (``vp_…``). It is made from a span of one
  of that project's recordings (``recording_id``, ``start_ms``, ``end_ms``; the audio must be
  complete) or from an uploaded sample (any audio PyAV reads). The voice must hold at least
  ``MIN_SPEECH_MS`` of speech, else ``invalid_request`` (field ``audio``).
- What is stored is the embedding (256 float32, biometric data) and where it came from; no
  audio. Deleting the profile deletes it; deleting the end user deletes their profiles (foreign
  key cascade); ``retention_voice_profiles_s`` deletes profiles older than that
  (``ProfileRetention``, run by the sweeper).
- Another project's end users and profiles answer ``end_user_not_found`` /
  ``voice_profile_not_found``; only the owning project's transcriptions are matched against
  its profiles (``project_profiles``).
- ``end_users:write`` creates and deletes; ``end_users:read`` lists.

The embedding itself is computed by an injected ``VoiceEmbedder`` (``tapedeck.diarize.enroll``
builds the real one), so this module imports neither numpy nor the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Protocol

from tapedeck.auth import Principal
from tapedeck.clock import iso, parse_iso
from tapedeck.domain import cursors
from tapedeck.domain._base import Context, load_recording
from tapedeck.domain.models import Page
from tapedeck.errors import error, invalid
from tapedeck.ids import new_id

#: Least speech (VAD) a sample must hold to enroll a voice.
MIN_SPEECH_MS = 3000
#: Longest span of a recording enrolled (longer spans are refused).
MAX_SPAN_MS = 10 * 60 * 1000
SOURCES = ("recording", "upload")


class VoiceEmbedder(Protocol):
    """Computes a voice embedding: ``(raw float32 bytes, speech milliseconds)`` of the speech
    in ``audio`` between ``start_ms`` and ``end_ms`` (None = whole), or None if it holds no
    decodable audio."""

    def embed(self, audio: BinaryIO, start_ms: int | None, end_ms: int | None
              ) -> tuple[bytes, int] | None: ...


@dataclass(frozen=True)
class VoiceProfile:
    """A stored profile (without its embedding); ``to_json`` is its REST shape."""

    id: str
    end_user_id: str
    source: str
    recording_id: str | None
    start_ms: int | None
    end_ms: int | None
    speech_ms: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "end_user_id": self.end_user_id, "source": self.source,
                "recording_id": self.recording_id, "start_ms": self.start_ms,
                "end_ms": self.end_ms, "speech_ms": self.speech_ms,
                "created_at": iso(self.created_at)}


_COLUMNS = ("id, end_user_id, source, recording_id, start_ms, end_ms, speech_ms, created_at")


def _from_row(row: Any) -> VoiceProfile:
    created = parse_iso(row[7])
    assert created is not None
    return VoiceProfile(row[0], row[1], row[2], row[3], row[4], row[5], row[6], created)


def project_profiles(db: Any, project_id: str) -> list[Any]:
    """Every profile of a project as ``tapedeck.diarize.VoiceProfile`` (for matching; imports
    numpy, so only the worker calls it)."""
    import numpy as np

    from tapedeck.diarize import VoiceProfile as Known

    rows = db.execute("SELECT id, end_user_id, embedding FROM voice_profiles"
                      " WHERE project_id = ? ORDER BY created_at, id", [project_id]).fetchall()
    return [Known(r[0], r[1], np.frombuffer(r[2], np.float32).copy()) for r in rows]


class VoiceProfiles:
    """The voice profile rules (see the module docstring)."""

    def __init__(self, ctx: Context, embedder: Callable[[], VoiceEmbedder]) -> None:
        """``embedder`` builds the embedder on first use (it loads the encoder)."""
        self._ctx = ctx
        self._factory = embedder
        self._embedder: VoiceEmbedder | None = None

    def _embed(self, audio: BinaryIO, start_ms: int | None, end_ms: int | None
               ) -> tuple[bytes, int]:
        if self._embedder is None:
            self._embedder = self._factory()
        found = self._embedder.embed(audio, start_ms, end_ms)
        if found is None:
            raise invalid("audio", "The audio could not be decoded.")
        if found[1] < MIN_SPEECH_MS:
            raise invalid("audio", f"The audio holds {found[1]} ms of speech; at least "
                                   f"{MIN_SPEECH_MS} ms are needed to enroll a voice.")
        return found

    def _require_end_user(self, p: Principal, end_user_id: str) -> None:
        row = self._ctx.db.read().execute(
            "SELECT 1 FROM end_users WHERE id = ? AND project_id = ?",
            [end_user_id, p.project_id]).fetchone()
        if row is None:
            raise error("end_user_not_found", "End user not found.", end_user_id=end_user_id)

    def create_from_recording(self, p: Principal, end_user_id: str, recording_id: str,
                              start_ms: int, end_ms: int) -> VoiceProfile:
        """Enroll from ``[start_ms, end_ms)`` of a complete recording of the project."""
        p.require("end_users:write")
        self._require_end_user(p, end_user_id)
        if start_ms < 0:
            raise invalid("start_ms", "start_ms must not be negative.")
        if end_ms <= start_ms or end_ms - start_ms > MAX_SPAN_MS:
            raise invalid("end_ms", f"end_ms must be after start_ms, by at most "
                                    f"{MAX_SPAN_MS} ms.")
        rec = load_recording(self._ctx.db.read(), p, recording_id)
        if rec.status != "completed" or rec.audio_key is None:
            raise error("invalid_state", f"The recording's audio is not complete (status "
                                         f"{rec.status}).", status=rec.status)
        stream = self._ctx.store.open(rec.audio_key)
        try:
            emb, speech = self._embed(stream, start_ms, end_ms)
        finally:
            stream.close()
        return self._insert(p, end_user_id, emb, speech, "recording", rec.id, start_ms, end_ms)

    def create_from_sample(self, p: Principal, end_user_id: str, audio: BinaryIO
                           ) -> VoiceProfile:
        """Enroll from an uploaded sample (wav, ogg, mp3, flac, …)."""
        p.require("end_users:write")
        self._require_end_user(p, end_user_id)
        emb, speech = self._embed(audio, None, None)
        return self._insert(p, end_user_id, emb, speech, "upload", None, None, None)

    def _insert(self, p: Principal, end_user_id: str, emb: bytes, speech: int, source: str,
                recording_id: str | None, start_ms: int | None, end_ms: int | None
                ) -> VoiceProfile:
        vp_id = new_id("vp_")
        with self._ctx.db.write() as tx:
            if tx.execute("SELECT 1 FROM end_users WHERE id = ? AND project_id = ?",
                          [end_user_id, p.project_id]).fetchone() is None:
                raise error("end_user_not_found", "End user not found.",
                            end_user_id=end_user_id)
            tx.execute(
                "INSERT INTO voice_profiles (id, project_id, end_user_id, embedding, source,"
                " recording_id, start_ms, end_ms, speech_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [vp_id, p.project_id, end_user_id, emb, source, recording_id, start_ms,
                 end_ms, speech, iso(self._ctx.clock.now())])
            row = tx.execute(f"SELECT {_COLUMNS} FROM voice_profiles WHERE id = ?",
                             [vp_id]).fetchone()
        return _from_row(row)

    def list(self, p: Principal, end_user_id: str, *, limit: int = 25,
             cursor: str | None = None) -> Page:
        """One page of the end user's profiles, oldest first (``limit`` 1..100; ``cursor``
        is a previous page's ``next_cursor``)."""
        p.require("end_users:read")
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        self._require_end_user(p, end_user_id)
        where, args = "project_id = ? AND end_user_id = ?", [p.project_id, end_user_id]
        if cursor:
            created, last_id = cursors.decode_position(cursor)
            where += " AND (created_at > ? OR (created_at = ? AND id > ?))"
            args += [created, created, last_id]
        rows = self._ctx.db.read().execute(
            f"SELECT {_COLUMNS} FROM voice_profiles WHERE {where}"
            " ORDER BY created_at, id LIMIT ?", [*args, limit + 1]).fetchall()
        found = [_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(found, cursors.encode_position(iso(found[-1].created_at), found[-1].id)
                    if more else None)

    def counts(self, p: Principal, end_user_ids: Sequence[str]) -> dict[str, int]:
        """How many profiles each of ``end_user_ids`` has (0 for unknown or other projects'
        ids); every id is a key of the answer."""
        p.require("end_users:read")
        out = dict.fromkeys(end_user_ids, 0)
        if out:
            marks = ", ".join("?" * len(out))
            out.update({r[0]: int(r[1]) for r in self._ctx.db.read().execute(
                "SELECT end_user_id, count(*) FROM voice_profiles WHERE project_id = ?"
                f" AND end_user_id IN ({marks}) GROUP BY end_user_id",
                [p.project_id, *out]).fetchall()})
        return out

    def delete(self, p: Principal, end_user_id: str, profile_id: str) -> None:
        """Delete one profile and its embedding (``voice_profile_not_found`` if it is not
        this end user's in this project)."""
        p.require("end_users:write")
        with self._ctx.db.write() as tx:
            cur = tx.execute("DELETE FROM voice_profiles WHERE id = ? AND end_user_id = ?"
                             " AND project_id = ?", [profile_id, end_user_id, p.project_id])
            if cur.rowcount != 1:
                raise error("voice_profile_not_found", "Voice profile not found.",
                            voice_profile_id=profile_id)


class ProfileRetention:
    """Retention of voice profiles: ``run()`` deletes every profile older than ``ttl_s``
    (setting ``retention_voice_profiles_s``; -1 = keep until deleted). Run by the sweeper."""

    def __init__(self, ctx: Context, ttl_s: int) -> None:
        self._ctx = ctx
        self._ttl_s = ttl_s

    def run(self) -> int:
        """Delete the expired profiles (embeddings included); how many were deleted."""
        if self._ttl_s < 0:
            return 0
        before = self._ctx.clock.now() - timedelta(seconds=self._ttl_s)
        with self._ctx.db.write() as tx:
            cur = tx.execute("DELETE FROM voice_profiles WHERE created_at < ?", [iso(before)])
            return int(cur.rowcount)


__all__ = ["MIN_SPEECH_MS", "SOURCES", "ProfileRetention", "VoiceEmbedder", "VoiceProfile",
           "VoiceProfiles", "project_profiles"]
