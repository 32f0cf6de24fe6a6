"""Transcription rules: read a transcript, request one on demand; the transcript object.

Lifecycle of a ``transcriptions`` row (``api.md`` "Transcriptions"):
``queued`` (at finalize / upload-complete, or on demand here) → ``processing`` (a worker took
the ``transcribe`` job: event ``transcription.started``) → ``completed`` | ``failed`` (events
``transcription.completed`` / ``transcription.failed``). The job handler
(``tapedeck.background.transcribe.job``) drives the last two steps; the stitcher fails a queued
transcription when the recording's audio cannot be assembled. Every row gets exactly one
terminal event, because each terminal write is conditional on the row not being terminal
yet and happens in the same transaction as its event.

Visibility: a transcription is visible exactly when its recording is (other projects, and
other devices' recordings for device tokens, answer ``transcription_not_found``). Reading
needs ``transcriptions:read`` — or, for a device token, ``recordings:read`` (a device reads
its own recordings, transcripts included). Requesting needs ``transcriptions:write``.

This module imports neither the engine nor numpy: API-only processes stay light.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tapedeck.auth import Principal
from tapedeck.clock import iso, parse_iso
from tapedeck.domain._base import Context, emit, load_recording
from tapedeck.domain.exports import paragraphs
from tapedeck.domain.idempotency import fingerprint
from tapedeck.domain.live import LiveFollower
from tapedeck.domain.models import Recording
from tapedeck.errors import NotFound, error, invalid
from tapedeck.ids import new_id
from tapedeck.infra.jobs import enqueue

#: Engines a transcription can be requested from (``provider``); ``whisper`` is the default.
PROVIDERS = ("whisper",)
TERMINAL_STATUSES = ("completed", "failed")
IN_FLIGHT_STATUSES = ("queued", "processing")
#: The ``error.type`` of every failure the transcription stage itself reports (the stitcher
#: may fail a queued transcription with its own type, e.g. ``invalid_audio``).
TRANSCRIPTION_FAILED = "transcription_failed"
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
#: Most speakers a request may ask for (``max_speakers``, ``speakers_expected``).
MAX_SPEAKERS = 20


@dataclass(frozen=True)
class SpeakerOptions:
    """A request's diarization options: ``diarize`` False = no speaker labels; the counts
    None = estimated. Stored as JSON in ``transcriptions.speaker_options``."""

    diarize: bool = True
    min_speakers: int | None = None
    max_speakers: int | None = None
    speakers_expected: int | None = None

    def validate(self) -> SpeakerOptions:
        """Self, or ``invalid_request`` naming the field out of range or inconsistent."""
        for name in ("min_speakers", "max_speakers", "speakers_expected"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise invalid(name, f"{name} must be between 1 and {MAX_SPEAKERS}.")
        lo, hi, exp = self.min_speakers, self.max_speakers, self.speakers_expected
        if lo is not None and hi is not None and lo > hi:
            raise invalid("min_speakers", "min_speakers must not exceed max_speakers.")
        if exp is not None and ((lo is not None and exp < lo) or (hi is not None and exp > hi)):
            raise invalid("speakers_expected",
                          "speakers_expected must lie within min_speakers and max_speakers.")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"diarize": self.diarize, "min_speakers": self.min_speakers,
                "max_speakers": self.max_speakers, "speakers_expected": self.speakers_expected}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SpeakerOptions:
        data = data or {}
        return cls(bool(data.get("diarize", True)), data.get("min_speakers"),
                   data.get("max_speakers"), data.get("speakers_expected"))


@dataclass(frozen=True)
class Transcription:
    """A ``transcriptions`` row; ``to_json`` is the transcription object of ``api.md``.

    ``segments`` holds the stored JSON segments exactly as served (``start_ms``, ``end_ms``,
    ``text``, ``confidence``, ``speaker``, ``words``). ``text``/``word_count`` are None until
    the transcription completes."""

    id: str
    recording_id: str
    project_id: str
    status: str
    provider: str
    created_at: datetime
    language: str | None = None
    model: str | None = None
    duration_ms: int | None = None
    text: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    word_count: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_reason: str | None = None
    job_id: str | None = None
    completed_at: datetime | None = None
    #: Made from chunks while the recording streamed (``tapedeck.domain.live``); then the
    #: JSON also has ``covered_ms`` (audio transcribed so far) and ``skipped_ms`` (silence).
    live: bool = False
    covered_ms: int | None = None
    skipped_ms: int | None = None
    #: ``[{label, talk_time_ms, end_user_id}]`` once diarized; None when not diarized.
    speakers: list[dict[str, Any]] | None = None
    speaker_options: SpeakerOptions = field(default_factory=SpeakerOptions)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Transcription:
        """Build from a ``transcriptions`` row (column names = field names)."""
        created = parse_iso(row["created_at"])
        assert created is not None
        return cls(
            id=row["id"], recording_id=row["recording_id"], project_id=row["project_id"],
            status=row["status"], provider=row["provider"], created_at=created,
            language=row["language"], model=row["model"], duration_ms=row["duration_ms"],
            text=row["text"], segments=json.loads(row["segments"] or "[]"),
            word_count=row["word_count"], error_type=row["error_type"],
            error_message=row["error_message"], error_reason=row.get("error_reason"),
            job_id=row["job_id"], completed_at=parse_iso(row["completed_at"]),
            live=bool(row.get("live")), skipped_ms=row.get("skipped_ms"),
            covered_ms=row["duration_ms"] if row.get("live") else None,
            speakers=json.loads(row["speakers"]) if row.get("speakers") else None,
            speaker_options=SpeakerOptions.from_json(
                json.loads(row["speaker_options"]) if row.get("speaker_options") else None))

    @property
    def error(self) -> dict[str, Any] | None:
        """``{type, message}`` (plus ``reason`` when known) of a failed transcription."""
        if self.error_type is None:
            return None
        out: dict[str, Any] = {"type": self.error_type, "message": self.error_message or ""}
        if self.error_reason is not None:
            out["reason"] = self.error_reason
        return out

    def to_json(self) -> dict[str, Any]:
        """The transcription object of ``api.md``, plus ``paragraphs``
        (``tapedeck.domain.exports.paragraphs`` of the segments), and ``live``, ``covered_ms``
        and ``skipped_ms`` for a live transcription."""
        out = {
            "id": self.id, "recording_id": self.recording_id, "status": self.status,
            "language": self.language, "provider": self.provider, "model": self.model,
            "duration_ms": self.duration_ms, "text": self.text, "segments": self.segments,
            "word_count": self.word_count, "error": self.error,
            "created_at": iso(self.created_at), "completed_at": iso(self.completed_at),
            "paragraphs": paragraphs(self.segments),
            "speakers": self.speakers,
        }
        if self.live:
            out.update(live=True, covered_ms=self.covered_ms, skipped_ms=self.skipped_ms)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], project_id: str) -> Transcription:
        """The inverse of ``to_json`` (for replaying a stored response over gRPC)."""
        created = parse_iso(data["created_at"])
        assert created is not None
        err = data.get("error") or {}
        return cls(
            id=data["id"], recording_id=data["recording_id"], project_id=project_id,
            status=data["status"], provider=data["provider"], created_at=created,
            language=data["language"], model=data["model"], duration_ms=data["duration_ms"],
            text=data["text"], segments=data["segments"], word_count=data["word_count"],
            error_type=err.get("type"), error_message=err.get("message"),
            error_reason=err.get("reason"), completed_at=parse_iso(data["completed_at"]),
            live=bool(data.get("live")), covered_ms=data.get("covered_ms"),
            skipped_ms=data.get("skipped_ms"),
            speakers=data.get("speakers"))

    def event_data(self) -> dict[str, Any]:
        """The ``data`` of this transcription's events: ``{id, recording_id, status}`` as in
        the original document, plus ``error`` once failed and ``speaker_count`` once
        completed with diarization."""
        out: dict[str, Any] = {"id": self.id, "recording_id": self.recording_id,
                               "status": self.status}
        if self.error is not None:
            out["error"] = self.error
        if self.status == "completed" and self.speakers is not None:
            out["speaker_count"] = len(self.speakers)
        return out


@dataclass(frozen=True)
class WatchUpdate:
    """One step of ``Transcriptions.watch``: new segments, audio covered, and the final
    transcription on the last update (else None)."""

    segments: list[dict[str, Any]]
    covered_ms: int
    transcription: Transcription | None


def load_transcription(db: Any, transcription_id: str) -> Transcription | None:
    """The row of ``transcription_id`` (no visibility check), or None."""
    cur = db.execute("SELECT * FROM transcriptions WHERE id = ?", [transcription_id])
    row = cur.fetchone()
    if row is None:
        return None
    return Transcription.from_row(dict(zip([d[0] for d in cur.description], row, strict=True)))


def with_live_view(db: Any, txn: Transcription) -> Transcription:
    """A live transcription still processing, with the segments so far and the ms covered
    (``tapedeck.domain.live.live_view``); any other one unchanged."""
    if not txn.live or txn.status != "processing":
        return txn
    from tapedeck.domain.live import live_view

    view = live_view(db, txn.recording_id)
    return dataclasses.replace(txn, segments=view.segments, covered_ms=view.covered_ms,
                               skipped_ms=view.skipped_ms)


def validate_request(language: str | None, provider: str | None) -> tuple[str | None, str]:
    """Normalize an on-demand request: ``language`` None/"" = auto-detect, else an ISO 639
    code (2-3 lowercase letters); ``provider`` None/"" = ``whisper``. ``invalid_request``
    naming the field otherwise."""
    if language is not None and language != "" and not _LANGUAGE.match(language):
        raise invalid("language", "language must be an ISO 639-1 code such as en, or omitted "
                                  "for auto-detection.")
    provider = provider or PROVIDERS[0]
    if provider not in PROVIDERS:
        raise invalid("provider", f"provider must be one of {', '.join(PROVIDERS)}.")
    return language or None, provider


def request_fingerprint(recording_id: str, language: str | None, provider: str | None,
                        speakers: SpeakerOptions | None = None) -> str:
    """The ``Idempotency-Key`` fingerprint of an on-demand request (REST and gRPC share it;
    omitted and default values fingerprint alike)."""
    body: dict[str, Any] = {"recording_id": recording_id, "language": language or None,
                            "provider": provider or PROVIDERS[0]}
    if speakers is not None and speakers != SpeakerOptions():
        body["speakers"] = speakers.to_json()
    return fingerprint("transcriptions.create", body)


class Transcriptions:
    """The transcription rules."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, p: Principal, transcription_id: str) -> Transcription:
        """One transcription visible to ``p`` (see the module docstring)."""
        _require_read(p)
        db = self._ctx.db.read()
        txn = load_transcription(db, transcription_id)
        if txn is None or not _recording_visible(db, p, txn.recording_id):
            raise error("transcription_not_found", "Transcription not found.",
                        transcription_id=transcription_id)
        return with_live_view(db, txn)

    def watch(self, p: Principal, transcription_id: str, *, poll_s: float = 0.25,
              stop: threading.Event | None = None,
              keepalive_polls: int | None = None) -> Iterator[WatchUpdate]:
        """Follow a transcription (same authorization as ``get``): an update whenever a live
        one has new stable segments or covers more audio (``segments`` = only the new ones),
        then a last one with the terminal transcription. Authorized once, at the start.
        Incremental: each poll reads the status and the pieces' versions
        (``tapedeck.domain.live.LiveFollower``); segments are read and merged again only
        when a piece changed, and only the changed pieces' rows. Re-reads every ``poll_s`` seconds
        (workers may be other processes); ends early, with no final update, once ``stop``
        is set (client gone, server stopping). With ``keepalive_polls``, an update with no new
        segments is also yielded after that many quiet polls (lets a stream notice a client
        that went away)."""
        stop = stop or threading.Event()
        txn = self.get(p, transcription_id)  # authorizes the stream once
        follower = LiveFollower(txn.recording_id)
        sent, covered, quiet = 0, -1, 0
        while True:
            db = self._ctx.db.read()
            # per poll: the status only; the pieces' versions only while it is live
            row = db.execute("SELECT status, live FROM transcriptions WHERE id = ?",
                             [transcription_id]).fetchone()
            if row is None:
                raise error("transcription_not_found", "Transcription not found.",
                            transcription_id=transcription_id)
            if row[0] in TERMINAL_STATUSES:
                txn = self.get(p, transcription_id)
                yield WatchUpdate([], txn.duration_ms or 0, txn)
                return
            quiet += 1
            segments: list[dict[str, Any]] = []
            now_covered = 0
            if row[1] and row[0] == "processing":
                view, _ = follower.poll(db)
                segments, now_covered = view.segments, view.covered_ms
            if (len(segments) > sent or now_covered > covered) \
                    or (keepalive_polls is not None and quiet >= keepalive_polls):
                covered = max(covered, now_covered)
                yield WatchUpdate(segments[sent:], covered, None)
                sent, quiet = max(sent, len(segments)), 0
            if stop.wait(poll_s):
                return

    def request(self, p: Principal, recording_id: str, language: str | None = None,
                provider: str | None = None,
                speakers: SpeakerOptions | None = None) -> Transcription:
        """Queue a new transcription of a recording whose audio is complete.

        The recording must be ``completed`` (stitched or validated), else ``invalid_state``;
        while its current transcription is still queued or processing, a new one is refused
        with ``invalid_state`` naming it. The new row is ``queued`` with the requested
        language (None = auto-detect), becomes the recording's ``transcription_id``, gets one
        ``transcribe`` job and emits ``transcription.queued`` — all in one transaction.
        ``speakers``: diarization options (default on, count estimated; ``invalid_request``
        naming a bad field)."""
        p.require("transcriptions:write")
        language, provider = validate_request(language, provider)
        options = (speakers or SpeakerOptions()).validate()
        ctx = self._ctx
        with ctx.locks.hold(recording_id), ctx.db.write() as tx:
            rec = load_recording(tx, p, recording_id)
            _check_can_transcribe(tx, rec)
            txn_id = new_id("txn_")
            now = iso(ctx.clock.now())
            tx.execute(
                "INSERT INTO transcriptions (id, recording_id, project_id, status, language,"
                " provider, created_at, speaker_options)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                [txn_id, rec.id, rec.project_id, language, provider, now,
                 None if options == SpeakerOptions() else json.dumps(options.to_json())])
            job_id = enqueue(tx, ctx.clock, "transcribe", recording_id=rec.id,
                             payload={"transcription_id": txn_id})
            tx.execute("UPDATE transcriptions SET job_id = ? WHERE id = ?", [job_id, txn_id])
            tx.execute("UPDATE recordings SET transcription_id = ?, transcription_status ="
                       " 'queued', updated_at = ? WHERE id = ?", [txn_id, now, rec.id])
            txn = load_transcription(tx, txn_id)
            assert txn is not None
            emit(tx, ctx.clock, rec.project_id, "transcription.queued", txn.event_data(),
                 rec.id)
        ctx.job_signals.notify("transcribe")  # committed: wake this process's transcribers
        return txn


def _require_read(p: Principal) -> None:
    if p.kind == "device" and "recordings:read" in p.scopes:
        return
    p.require("transcriptions:read")


def _recording_visible(db: Any, p: Principal, recording_id: str) -> bool:
    try:
        load_recording(db, p, recording_id)
    except NotFound:  # recording_not_found: the transcription is hidden the same way
        return False
    return True


def _check_can_transcribe(tx: Any, rec: Recording) -> None:
    """``invalid_state`` unless the audio is complete and no transcription is in flight."""
    if rec.status != "completed" or rec.audio_key is None:
        raise error("invalid_state",
                    f"The recording's audio is not complete (status {rec.status}); a "
                    "transcription can be requested once it is completed.", status=rec.status)
    current = load_transcription(tx, rec.transcription_id) if rec.transcription_id else None
    if current is not None and current.status in IN_FLIGHT_STATUSES:
        raise error("invalid_state",
                    f"Transcription {current.id} of this recording is still {current.status}.",
                    transcription_id=current.id, status=current.status)
