"""The ``live_transcribe`` job (one chunk → its piece) and the assembly of a live transcript.

Job payload ``{"recording_id", "part"}``, queued by ``tapedeck.domain.live.on_chunk_recorded``.
One run:
1. Nothing to do when the recording or its live transcription is gone or no longer in flight,
   when the chunk is not in the store (any more), or when the stored piece was made from the
   same chunk and previous-chunk bytes with the same language hint (``language_for``: a
   duplicate job, a re-run after a crash).
2. The chunk and the previous one are read with the stitcher's reader (``read_object`` of
   the part's current object: the store is the truth), decoded once, transcribed
   (``transcribe_decoded``; between windows the lease is checked) and, when the worker
   diarizes, its own speech embedded (``embed_piece``: the expensive half of diarization,
   done while the recording streams; the assembly only clusters).
3. ONE transaction: job ``succeeded`` (lease checked) and the ``live_pieces`` row upserted
   (segments, and the window embeddings in ``voice_spans``/``voice_emb``). A re-run
   overwrites the same row: nothing is doubled. The embeddings are biometric data: they are
   dropped when the live transcription ends (``forget_voices``) and with the recording.
Failures: undecodable chunk bytes fail the job at once, engine errors after
``ENGINE_ATTEMPTS`` runs, others after the queue's attempts; ``on_failure`` stores the piece
as ``failed`` (with the MD5s), and the assembly then transcribes the whole file instead.

Priority: the lane's thread lowers its own CPU priority (nice 10, Linux per-thread) before
loading its model, so CTranslate2's threads inherit it: chunk ingest, finalize, stitching and
whole-file transcription win the CPU when the node is busy; live jobs catch up in order.

``assemble(...)`` is called by the ``transcribe`` job of a live transcription after stitching;
it ends in ``transcript_from_segments``, the one place the stored transcript is built from
the assembled segments.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tapedeck.background.stitch import read_object
from tapedeck.background.transcribe import (
    Segment,
    Transcript,
    TranscriptionEngine,
    TranscriptionFailed,
    Word,
    _assemble,
)
from tapedeck.background.transcribe.job import (
    ENGINE_ATTEMPTS,
    DiarizerFactory,
    EngineFactory,
    LazyDiarizer,
    diarizer_factory,
)
from tapedeck.background.transcribe.live import Piece, embed_piece, piece_audio, transcribe_decoded
from tapedeck.background.worker import JobRun
from tapedeck.clock import Clock, iso, parse_iso
from tapedeck.domain.live import (
    KIND,
    PieceRow,
    Seg,
    live_transcription_id,
    load_pieces,
    merge,
    place,
)
from tapedeck.domain.objects import stored_parts
from tapedeck.infra.db import Database
from tapedeck.infra.failpoints import Failpoints
from tapedeck.infra.jobs import Failure, Job, JobFailed
from tapedeck.infra.sql import Tx
from tapedeck.infra.store import ObjectNotFound, ObjectStore
from tapedeck.runtime import Runtime

if TYPE_CHECKING:
    from tapedeck.diarize import Diarizer, Embedded

log = logging.getLogger("tapedeck.background.transcribe.live")

LIVE_NICE = 10


class _EngineRetry(Exception):
    """An engine failure worth another attempt (transient for the queue)."""


@dataclass(frozen=True)
class _Inputs:
    chunk: bytes
    prev: bytes | None
    md5: str
    prev_md5: str | None


def read_inputs(store: ObjectStore, recording_id: str, part: int) -> _Inputs | None:
    """The chunk's and previous chunk's bytes from the store (None if the chunk is absent):
    each part's current object (its latest upload, ``stored_parts``); a piece made from other
    bytes than finalize pinned fails the MD5 check at assembly and is redone."""
    chunk = _current_object(store, recording_id, part)
    if chunk is None:
        return None
    prev = _current_object(store, recording_id, part - 1) if part > 1 else None
    return _Inputs(chunk, prev, hashlib.md5(chunk).hexdigest(),
                   hashlib.md5(prev).hexdigest() if prev is not None else None)


def _current_object(store: ObjectStore, recording_id: str, part: int) -> bytes | None:
    obj = stored_parts(store, recording_id, part).get(part)
    if obj is None:
        return None
    try:
        return read_object(store, obj.key)
    except ObjectNotFound:  # replaced or deleted between the listing and the read
        return None


def piece_json(piece: Piece) -> str:
    segments = [{"start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text,
                 "confidence": s.confidence, "speaker": s.speaker,
                 "words": [{"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms,
                            "confidence": w.confidence} for w in s.words]}
                for s in piece.segments]
    return json.dumps(segments, ensure_ascii=False, separators=(",", ":"))


def store_piece(tx: Tx, clock: Clock, recording_id: str, part: int,
                inputs: _Inputs, piece: Piece | None, error: str | None = None,
                voice: Embedded | None = None) -> None:
    """Upsert the piece row (``failed`` when ``piece`` is None) with its speech embedded
    for diarization (``voice``; None: not embedded)."""
    spans, emb = _voice_columns(voice)
    tx.execute(
        "INSERT INTO live_pieces (recording_id, part, md5, prev_md5, status, delta48,"
        " samples48, overlap_ms, language, segments, speech_ms, skipped_ms, error, updated_at,"
        " language_hint, voice_spans, voice_emb)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (recording_id, part)"
        " DO UPDATE SET md5 = excluded.md5, prev_md5 = excluded.prev_md5, status ="
        " excluded.status, delta48 = excluded.delta48, samples48 = excluded.samples48,"
        " overlap_ms = excluded.overlap_ms, language = excluded.language, segments ="
        " excluded.segments, speech_ms = excluded.speech_ms, skipped_ms = excluded.skipped_ms,"
        " error = excluded.error, updated_at = excluded.updated_at,"
        " language_hint = excluded.language_hint, voice_spans = excluded.voice_spans,"
        " voice_emb = excluded.voice_emb",
        [recording_id, part, inputs.md5, inputs.prev_md5,
         "done" if piece is not None else "failed",
         piece.delta48 if piece else None, piece.samples48 if piece else 0,
         piece.overlap_ms if piece else 0, piece.language if piece else None,
         piece_json(piece) if piece else "[]", piece.speech_ms if piece else 0,
         piece.skipped_ms if piece else 0, error, iso(clock.now()),
         (piece.hint or "") if piece else None, spans, emb])


def _voice_columns(voice: Embedded | None) -> tuple[str | None, bytes | None]:
    if voice is None:
        return None, None
    spans = {"regions": [[r.start, r.end] for r in voice.regions],
             "spans": [list(sp) for sp in voice.spans]}
    return (json.dumps(spans, separators=(",", ":")),
            np.ascontiguousarray(voice.emb, np.float32).tobytes())


def load_voices(db: Any, recording_id: str) -> dict[int, Embedded]:
    """The embedded pieces of a recording by part (chunk-relative frames)."""
    from tapedeck.diarize import Embedded
    from tapedeck.diarize.segment import Region

    out: dict[int, Embedded] = {}
    for part, spans, emb in db.execute(
            "SELECT part, voice_spans, voice_emb FROM live_pieces WHERE recording_id = ?"
            " AND status = 'done' AND voice_spans IS NOT NULL", [recording_id]).fetchall():
        doc = json.loads(spans)
        out[part] = Embedded(tuple(Region(a, b) for a, b in doc["regions"]),
                             tuple((a, b) for a, b in doc["spans"]),
                             np.frombuffer(bytes(emb), np.float32).reshape(-1, 256).copy())
    return out


def forget_voices(tx: Tx, recording_id: str) -> None:
    """Drop the pieces' window embeddings (biometric data needed only by the assembly)."""
    tx.execute("UPDATE live_pieces SET voice_spans = NULL, voice_emb = NULL"
               " WHERE recording_id = ? AND voice_spans IS NOT NULL", [recording_id])


def first_language(pieces: dict[int, PieceRow]) -> str | None:
    """The language detected by the earliest piece that found speech."""
    return next((p.language for _, p in sorted(pieces.items())
                 if p.status == "done" and p.language and p.segments), None)


def language_for(pieces: dict[int, PieceRow], part: int, requested: str | None) -> str | None:
    """The language part ``part`` is transcribed with (its *hint*): the requested one, else
    the one detected by the earliest EARLIER piece that found speech, else None (the piece
    detects its own). A function of the pieces before it only, so the assembly (which
    checks every piece's hint in part order) ends with the same transcript whatever order
    the pieces ran in; a live job that guessed from an incomplete set is redone there."""
    if requested:
        return requested
    return first_language({k: p for k, p in pieces.items() if k < part})


def _hint_matches(pc: PieceRow, hint: str | None) -> bool:
    """The piece was transcribed with ``hint`` (a piece from before hints were recorded
    is taken as it is)."""
    return pc.language_hint is None or (pc.language_hint or None) == hint


class LiveTranscribeHandler:
    """Runs ``live_transcribe`` jobs (see the module docstring)."""

    def __init__(self, db: Database, store: ObjectStore, clock: Clock,
                 engine_factory: EngineFactory, *, max_attempts: int = 12,
                 failpoints: Failpoints | None = None,
                 diarizer_factory: DiarizerFactory | None = None) -> None:
        """``diarizer_factory`` (None = no diarization): each piece's speech is also
        embedded for the speakers. Failpoint (tests): ``live_transcribe.started`` once the
        chunk was read."""
        self._fp = failpoints or Failpoints()
        self._diarizer = LazyDiarizer(diarizer_factory)
        self._db = db
        self._store = store
        self._clock = clock
        self._factory = engine_factory
        self._engine: TranscriptionEngine | None = None
        self._lock = threading.Lock()
        self._max_attempts = max_attempts

    def run(self, run: JobRun) -> None:
        recording_id = str(run.job.payload.get("recording_id"))
        part = int(run.job.payload.get("part", 0))
        db = self._db.read()
        txn_id = live_transcription_id(db, recording_id)
        if txn_id is None:
            log.info("job %s: no live transcription in flight for %s", run.job.id, recording_id)
            return
        inputs = read_inputs(self._store, recording_id, part)
        if inputs is None:
            return
        self._fp.hit("live_transcribe.started", job_id=run.job.id, recording_id=recording_id,
                     part=part)
        pieces = load_pieces(db, recording_id)
        language = language_for(pieces, part, db.execute(
            "SELECT language FROM transcriptions WHERE id = ?", [txn_id]).fetchone()[0])
        if _valid(pieces.get(part), (inputs.md5, inputs.prev_md5), language):
            return
        with self._lock:
            engine = self._engine_for()
            try:
                piece, voice = make_piece(engine, self._diarizer.get(), inputs, language,
                                          run.check)
            except TranscriptionFailed as exc:
                if exc.reason == "engine_error" and run.job.attempts < min(
                        ENGINE_ATTEMPTS, self._max_attempts):
                    raise _EngineRetry(exc.message) from exc
                raise JobFailed("transcription_failed", exc.message, reason=exc.reason,
                                md5=inputs.md5, prev_md5=inputs.prev_md5) from exc
        with self._db.write() as tx:
            run.complete(tx)
            store_piece(tx, self._clock, recording_id, part, inputs, piece, voice=voice)
        log.info("recording %s part %d: %d segments, %d ms speech, %d ms skipped, %s windows",
                 recording_id, part, len(piece.segments), piece.speech_ms, piece.skipped_ms,
                 "no" if voice is None else len(voice.emb))

    def _engine_for(self) -> TranscriptionEngine:
        if self._engine is None:
            _lower_priority()
            self._engine = self._factory()
        return self._engine

    def on_failure(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Mark the piece ``failed`` for the bytes it was tried on (assembly falls back)."""
        recording_id = str(job.payload.get("recording_id"))
        part = int(job.payload.get("part", 0))
        if tx.execute("SELECT 1 FROM recordings WHERE id = ?", [recording_id]).fetchone() is None:
            return
        md5 = failure.details.get("md5")
        if md5 is None:  # not an engine failure: blame the bytes the ledger holds
            row = tx.execute("SELECT md5 FROM chunks WHERE recording_id = ? AND part = ?",
                             [recording_id, part]).fetchone()
            if row is None:
                return
            md5 = row[0]
        inputs = _Inputs(b"", None, str(md5), failure.details.get("prev_md5"))
        store_piece(tx, self._clock, recording_id, part, inputs, None, failure.to_json())


def make_piece(engine: TranscriptionEngine, diarizer: Diarizer | None, inputs: _Inputs,
               language: str | None, check: Callable[[], None] | None = None
               ) -> tuple[Piece, Embedded | None]:
    """The chunk's piece and (with a diarizer) its speech embedded, from ONE decode."""
    decoded = piece_audio(inputs.chunk, inputs.prev)
    piece = transcribe_decoded(engine, decoded, language, check)
    voice = embed_piece(diarizer, decoded[0], decoded[1]) if diarizer is not None else None
    return piece, voice


def _lower_priority() -> None:
    """Nice this thread (and the threads it creates from now on) on Linux."""
    with contextlib.suppress(AttributeError, OSError):  # other platforms: no effect
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LIVE_NICE)


# -- assembly -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assembled:
    """A live transcript ready to be completed, with the audio skipped as silence."""

    transcript: Transcript
    skipped_ms: int
    redone: int
    #: The recording's speech embedded for diarization, on the stitched timeline (None:
    #: no diarizer was given).
    voices: Embedded | None = None


def assemble(db: Database, store: ObjectStore, clock: Clock, recording_id: str,
             engine: TranscriptionEngine, language: str | None,
             check: Callable[[], None] | None = None,
             diarizer: Diarizer | None = None) -> Assembled | None:
    """The live transcript of a stitched recording from its pieces, transcribing now the
    pieces that are missing or stale (made from other bytes, or with another language than
    ``language_for`` calls for at their place). None when a piece failed or a chunk is no
    longer readable: the caller then transcribes the whole file. With a ``diarizer``, also
    the pieces' embedded speech on the stitched timeline (``voices``), embedding now the
    pieces that were stored without."""
    read = db.read()
    snapshot = dict(read.execute("SELECT part, md5 FROM chunks WHERE recording_id = ?"
                                 " ORDER BY part", [recording_id]).fetchall())
    row = read.execute("SELECT duration_ms FROM recordings WHERE id = ?",
                       [recording_id]).fetchone()
    if not snapshot or row is None or row[0] is None:
        return None
    pieces = load_pieces(read, recording_id)
    chain: dict[int, PieceRow] = {}
    redone = 0
    for part in range(1, max(snapshot) + 1):
        want = (snapshot.get(part), snapshot.get(part - 1) if part > 1 else None)
        hint = language_for(chain, part, language)
        pc = pieces.get(part)
        if not _valid(pc, want, hint) and wait_for_live_piece(db, clock, recording_id, part,
                                                               check):
            pc = load_pieces(db.read(), recording_id).get(part)
        if pc is not None and pc.status == "failed" and pc.md5 == want[0]:
            log.info("recording %s: piece %d failed; whole-file path", recording_id, part)
            return None
        if pc is None or not _valid(pc, want, hint):
            pc = _redo(db, store, clock, recording_id, part, engine, hint, want, check,
                       diarizer)
            if pc is None:
                return None
            redone += 1
        chain[part] = pc
    segments = merge(place(list(chain.values())))
    transcript = transcript_from_segments(segments, language or first_language(chain),
                                          engine.model, int(row[0]))
    voices = None
    if diarizer is not None:
        voices = _timeline_voices(db, store, recording_id, chain, diarizer, snapshot)
        if voices is None:
            return None
    return Assembled(transcript, sum(p.skipped_ms for p in chain.values()), redone, voices)


#: 48 kHz samples per 10 ms diarization frame.
_FRAME48 = 480


def _timeline_voices(db: Database, store: ObjectStore, recording_id: str,
                     chain: dict[int, PieceRow], diarizer: Diarizer,
                     snapshot: dict[int, Any]) -> Embedded | None:
    """Every piece's embedded speech shifted to its chunk's start on the stitched timeline
    (the sum of the deltas, as ``place`` does); a piece stored without is embedded now from
    its pinned bytes (None when they are no longer readable)."""
    from tapedeck.diarize import Embedded

    stored = load_voices(db.read(), recording_id)
    parts: list[Embedded] = []
    start48 = 0
    for i, (part, pc) in enumerate(sorted(chain.items())):
        if i:
            assert pc.delta48 is not None
            start48 += pc.delta48
        voice = stored.get(part)
        if voice is None:
            inputs = read_inputs(store, recording_id, part)
            if inputs is None or inputs.md5 != snapshot.get(part):
                return None
            audio, overlap, _, _ = piece_audio(inputs.chunk, inputs.prev)
            voice = embed_piece(diarizer, audio, overlap)
        parts.append(voice.shifted(start48 // _FRAME48))
    return Embedded.join(parts)


def _valid(pc: PieceRow | None, want: tuple[Any, Any], hint: str | None) -> bool:
    """Made from the pinned bytes (chunk and previous chunk) with the language it calls for."""
    return (pc is not None and pc.status == "done" and (pc.md5, pc.prev_md5) == want
            and _hint_matches(pc, hint))


#: How often the assembly looks whether the live lane has finished a piece it is running.
WAIT_POLL_S = 0.05


def live_piece_running(db: Database, clock: Clock, recording_id: str, part: int) -> bool:
    """A ``live_transcribe`` job of this part is running under a lease that has not expired."""
    now = clock.now()
    for payload, expires in db.read().execute(
            "SELECT payload, lease_expires_at FROM jobs WHERE kind = ? AND recording_id = ?"
            " AND status = 'running'", [KIND, recording_id]).fetchall():
        until = parse_iso(expires)
        if json.loads(payload).get("part") == part and until is not None and until > now:
            return True
    return False


def wait_for_live_piece(db: Database, clock: Clock, recording_id: str, part: int,
                        check: Callable[[], None] | None) -> bool:
    """Wait while the live lane is transcribing this part (it started when the chunk landed,
    so it finishes sooner than a redo, and two decodes of one chunk would share the CPU).
    Returns True when it waited; the caller re-reads the piece and redoes it only if it is
    still missing or stale. A dead live worker's lease expires, which ends the wait."""
    waited = False
    while live_piece_running(db, clock, recording_id, part):
        waited = True
        if check is not None:
            check()
        time.sleep(WAIT_POLL_S)
    return waited


def _redo(db: Database, store: ObjectStore, clock: Clock, recording_id: str, part: int,
          engine: TranscriptionEngine, language: str | None, want: tuple[Any, Any],
          check: Callable[[], None] | None, diarizer: Diarizer | None) -> PieceRow | None:
    inputs = read_inputs(store, recording_id, part)
    if inputs is None or (inputs.md5, inputs.prev_md5) != want:
        return None
    piece, voice = make_piece(engine, diarizer, inputs, language, check)
    with db.write() as tx:
        store_piece(tx, clock, recording_id, part, inputs, piece, voice=voice)
    return load_pieces(db.read(), recording_id).get(part)


def transcript_from_segments(segments: list[Seg], language: str | None, model: str,
                             duration_ms: int) -> Transcript:
    """THE function that turns assembled segments (with words, on the stitched timeline)
    into the stored transcript: clamped into ``[0, duration_ms]``, empty text dropped.
    (Speaker labelling over the stitched audio belongs here.)"""
    out: list[Segment] = []
    for s in segments:
        words = tuple(Word(w["word"], _clamp(w["start_ms"], duration_ms),
                           _clamp(w["end_ms"], duration_ms), float(w["confidence"]))
                      for w in s.get("words", []))
        out.append(Segment(_clamp(s["start_ms"], duration_ms), _clamp(s["end_ms"], duration_ms),
                           str(s["text"]), float(s["confidence"]), s.get("speaker"), words))
    return _assemble(out, language, model, duration_ms)


def _clamp(ms: int, duration_ms: int) -> int:
    return max(0, min(int(ms), duration_ms))


def build_handler(runtime: Runtime) -> LiveTranscribeHandler | None:
    """The ``live_transcribe`` handler (``tapedeck.background.worker.HANDLER_FACTORIES``); None (no lane)
    when ``live_transcription`` is off or faster-whisper is not installed."""
    settings = runtime.settings
    if not settings.live_transcription or importlib.util.find_spec("faster_whisper") is None:
        return None
    from tapedeck.background.transcribe.whisper import decoding_options

    # whisper_decoding was checked at startup (tapedeck.validate)
    options = decoding_options(settings.whisper_decoding, settings.live_beam_size)

    def build() -> TranscriptionEngine:
        from tapedeck.background.transcribe.whisper import load_engine

        return load_engine(settings.live_whisper_model or settings.whisper_model,
                           settings.data_dir, settings.whisper_threads, options)

    return LiveTranscribeHandler(runtime.db, runtime.store, runtime.clock, build,
                                 max_attempts=settings.job_max_attempts,
                                 failpoints=Failpoints(settings.test_only_failpoints),
                                 diarizer_factory=diarizer_factory(settings.diarize))
