"""The ``transcribe`` job: a recording's complete audio becomes its transcript.

Enqueued with payload ``{"transcription_id": "txn_…"}`` by the stitcher once the audio is
complete, or by ``Transcriptions.request`` on demand. One run:

1. Nothing to do (job succeeds) when the transcription row is gone (recording deleted) or
   already terminal.
2. ``queued`` → ``processing`` with event ``transcription.started`` and the recording's
   ``transcription_status`` — once per transcription (a re-run after a crash or a transient
   error finds it ``processing`` and emits nothing).
3. The stitched Ogg Opus object is copied to a temporary file (24 kbit/s: ~11 MB per hour;
   no store connection is held open for the minutes the engine takes), then decoded and
   transcribed window by window (``transcribe_ogg_opus``: memory bounded by one window).
   Between windows the run checks its lease and stops early if another worker owns the job.
   A single-file upload in another codec (wav, mp3, m4a, webm, flac, ogg) is first
   transcoded to a temporary 16 kHz mono Ogg Opus file at 32 kbit/s with PyAV (a
   faster-whisper dependency; streaming, ~50x real time), same timeline.
   Then, unless the request or the ``diarize`` setting turned it off, the final segments are
   diarized in ONE call of ``tapedeck.diarize`` over the whole audio (decoded again window
   by window; the project's voice profiles name matched speakers): every segment and word
   gets its ``speaker``, segments changing speaker are split, the row gets ``speakers``.
   A live transcription is instead assembled from its pieces and clustered from the window
   embeddings the pieces made while the recording streamed (``Diarizer.diarize_embedded``
   over the joined timeline: one clustering, no second decode of the audio); a piece
   without them is embedded from its chunk now. Its pieces' embeddings are dropped with the
   transcription's terminal event (biometric data kept no longer than it serves).
4. ONE transaction: job ``succeeded`` (lease checked), the row ``completed`` with text,
   segments (words inside), word count, language, provider, model and duration, the
   recording's ``transcription_status`` ``completed``, event ``transcription.completed``
   (data ``{id, recording_id, status}``, plus ``speaker_count`` when diarized). Silent or
   empty audio completes with empty text.

Failures: the row becomes ``failed`` with ``error.type`` ``transcription_failed`` and a
``reason``, the recording's ``transcription_status`` ``failed``, event
``transcription.failed`` — in the transaction that fails the job (``on_failure``), and only if
the row is not terminal yet, so each transcription has exactly one terminal event.
Permanent at once: ``undecodable_audio``, ``unsupported_language``, ``missing_audio`` (no
complete audio, or its object is gone). Retried by the queue: store/network errors (reason
``storage_unavailable`` after the last attempt), engine errors up to ``ENGINE_ATTEMPTS`` runs
(then ``engine_error``), a model that cannot be loaded (then ``engine_unavailable``) and
unexpected errors (``internal_error``).

Failpoint (tests): ``transcribe.started`` right after step 2.

The engine (one loaded model) is built lazily by the handler on its first job and reused for
every later job of the worker process; the handler's worker threads take turns on it.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO

from tapedeck.background.transcribe import (
    SAMPLE_RATE,
    Transcript,
    TranscriptionEngine,
    TranscriptionFailed,
    transcribe_ogg_opus,
)
from tapedeck.background.transcribe.models import ModelUnavailable
from tapedeck.background.worker import JobRun
from tapedeck.clock import Clock, iso
from tapedeck.domain.events import emit
from tapedeck.domain.search_index import backend_for
from tapedeck.domain.transcriptions import (
    TERMINAL_STATUSES,
    TRANSCRIPTION_FAILED,
    Transcription,
    load_transcription,
)
from tapedeck.infra.db import Database
from tapedeck.infra.failpoints import Failpoints
from tapedeck.infra.jobs import Failure, Job, JobFailed
from tapedeck.infra.sql import Tx
from tapedeck.infra.store import ObjectNotFound, ObjectStore
from tapedeck.runtime import Runtime
from tapedeck.settings import Settings

if TYPE_CHECKING:
    from tapedeck.diarize import (
        Diarization,
        DiarizeOptions,
        Diarizer,
        Embedded,
        VoiceProfile,
    )

log = logging.getLogger("tapedeck.background.transcribe")

#: Runs (in all) a job gets when the engine itself fails; a deterministic engine failure
#: should not cost the queue's full retry budget of CPU-heavy attempts.
ENGINE_ATTEMPTS = 3
_BLOCK = 1 << 20

EngineFactory = Callable[[], TranscriptionEngine]
DiarizerFactory = Callable[[], "Diarizer"]


class _EngineRetry(Exception):
    """An engine failure worth another attempt (transient for the queue)."""


class LazyDiarizer:
    """The speaker diarizer, built by ``factory`` on first use and kept; ``get()`` is None
    when diarization is off (no factory) or its weights are not installed (logged once).
    Callers serialize ``get()`` (each handler holds its lock)."""

    def __init__(self, factory: DiarizerFactory | None) -> None:
        self._factory = factory
        self._diarizer: Diarizer | None = None

    def get(self) -> Diarizer | None:
        if self._diarizer is None and self._factory is not None:
            from tapedeck.diarize.weights import WeightsUnavailable

            try:
                self._diarizer = self._factory()
            except WeightsUnavailable as exc:
                log.warning("no diarization on this worker: %s", exc)
                self._factory = None
        return self._diarizer


class TranscribeHandler:
    """Runs ``transcribe`` jobs (see the module docstring)."""

    def __init__(self, db: Database, store: ObjectStore, clock: Clock,
                 engine_factory: EngineFactory, *, max_attempts: int = 12,
                 failpoints: Failpoints | None = None,
                 diarizer_factory: DiarizerFactory | None = None) -> None:
        """``engine_factory`` builds the engine (loads the model); it is called once, on
        the first job. ``max_attempts`` is the queue's limit (``job_max_attempts``).
        ``diarizer_factory`` (None = no diarization) builds the speaker diarizer, once."""
        self._db = db
        self._store = store
        self._clock = clock
        self._factory = engine_factory
        self._engine: TranscriptionEngine | None = None
        self._lock = threading.Lock()  # one transcription at a time on the one engine
        self._max_attempts = max_attempts
        self._fp = failpoints or Failpoints()
        self._diarizer = LazyDiarizer(diarizer_factory)

    # -- the run -------------------------------------------------------------------------------
    def run(self, run: JobRun) -> None:
        """Transcribe the job's transcription (or do nothing; see the module docstring)."""
        txn = load_transcription(self._db.read(), str(run.job.payload.get("transcription_id")))
        if txn is None or txn.status in TERMINAL_STATUSES:
            log.info("job %s: transcription %s is %s; nothing to do", run.job.id,
                     run.job.payload.get("transcription_id"), txn.status if txn else "deleted")
            return
        audio_key, codec = self._audio(txn.recording_id)
        self._start(txn)
        self._fp.hit("transcribe.started", job_id=run.job.id, transcription_id=txn.id)
        started = time.monotonic()
        live = self._assemble_live(run, txn) if txn.live else None
        if live is not None:
            transcript, skipped, voices = live
            transcript, speakers = self._label_live(run, audio_key, transcript, txn, voices)
        else:
            (transcript, speakers), skipped = self._transcribe(run, audio_key, codec, txn), None
        log.info("transcription %s: %d ms of audio, %d words, language %s, %s speakers,"
                 " in %.1f s", txn.id, transcript.duration_ms, transcript.word_count,
                 transcript.language, "no" if speakers is None else len(speakers),
                 time.monotonic() - started)
        self._finish(run, txn, transcript, speakers, skipped)

    def _label_live(self, run: JobRun, key: str, t: Transcript, txn: Transcription,
                    voices: Embedded | None) -> tuple[Transcript, list[dict[str, Any]] | None]:
        """Speakers of an assembled live transcript: one diarization of the whole recording,
        clustered from the window embeddings its pieces made while it streamed (``voices``);
        without them (a piece predates them), over the stitched audio as ``_speakers`` does.
        Either way one clustering over the whole timeline, so labels are consistent."""
        if not txn.speaker_options.diarize:
            return t, None
        with self._lock:
            diarizer = self._diarizer.get()
            if diarizer is None:
                return t, None
            if voices is not None:
                log.info("transcription %s: speakers from the live pieces' %d windows",
                         txn.id, len(voices.emb))
                return self._apply(diarizer.diarize_embedded(voices, *self._known(txn)), t)
        with tempfile.TemporaryFile() as spool:
            self._download(key, spool)
            spool.seek(0)
            try:
                with self._lock:
                    return self._speakers(run, spool, t, txn)
            except TranscriptionFailed as exc:
                raise self._failure(run, exc) from exc

    def _assemble_live(self, run: JobRun, txn: Transcription
                       ) -> tuple[Transcript, int, Embedded | None] | None:
        """``(transcript, skipped ms, embedded speech)`` assembled from the live pieces
        (``tapedeck.background.transcribe.live_job.assemble``), or None (a piece failed, a chunk is
        gone): then the whole file is transcribed."""
        from tapedeck.background.transcribe.live_job import assemble

        with self._lock:
            engine = self._engine_for(run)
            diarizer = self._diarizer.get() if txn.speaker_options.diarize else None
            try:
                done = assemble(self._db, self._store, self._clock, txn.recording_id, engine,
                                txn.language, check=run.check, diarizer=diarizer)
            except TranscriptionFailed as exc:
                log.warning("transcription %s: live assembly failed (%s); whole file instead",
                            txn.id, exc)
                return None
        if done is None:
            return None
        log.info("transcription %s assembled from live pieces (%d redone now)", txn.id,
                 done.redone)
        return done.transcript, done.skipped_ms, done.voices

    def _audio(self, recording_id: str) -> tuple[str, str]:
        """``(store key, codec)`` of the recording's complete audio (``missing_audio`` if
        it has none)."""
        row = self._db.read().execute(
            "SELECT status, audio_key, codec FROM recordings WHERE id = ?",
            [recording_id]).fetchone()
        if row is None or row[0] != "completed" or not row[1]:
            raise JobFailed(TRANSCRIPTION_FAILED, "The recording has no complete audio.",
                            reason="missing_audio")
        return str(row[1]), str(row[2])

    def _start(self, txn: Transcription) -> None:
        """``queued`` → ``processing`` and ``transcription.started``, at most once."""
        with self._db.write() as tx:
            cur = tx.execute("UPDATE transcriptions SET status = 'processing' WHERE id = ?"
                             " AND status = 'queued'", [txn.id])
            if cur.rowcount != 1:
                return
            self._set_recording_status(tx, txn, "processing")
            fresh = load_transcription(tx, txn.id)
            assert fresh is not None
            emit(tx, self._clock, txn.project_id, "transcription.started", fresh.event_data(),
                 txn.recording_id)

    def _transcribe(self, run: JobRun, key: str, codec: str, txn: Transcription
                    ) -> tuple[Transcript, list[dict[str, Any]] | None]:
        with tempfile.TemporaryFile() as spool, tempfile.TemporaryFile() as opus:
            self._download(key, spool)
            spool.seek(0)
            try:
                if codec != "opus":
                    transcode_to_ogg_opus(spool, opus)
                    spool = opus
                    spool.seek(0)
                with self._lock:
                    engine = self._engine_for(run)
                    transcript = transcribe_ogg_opus(spool, engine, txn.language,
                                                     progress=lambda _ms: run.check())
                    spool.seek(0)
                    return self._speakers(run, spool, transcript, txn)
            except TranscriptionFailed as exc:
                raise self._failure(run, exc) from exc

    def _speakers(self, run: JobRun, audio: BinaryIO, t: Transcript, txn: Transcription
                  ) -> tuple[Transcript, list[dict[str, Any]] | None]:
        """The final segments labelled by speaker (``tapedeck.diarize``, one call over the
        whole audio) and the speakers list; ``(t, None)`` when diarization is off for this
        request or this worker (setting ``diarize``, or its weights are not installed)."""
        diarizer = self._diarizer.get() if txn.speaker_options.diarize else None
        if diarizer is None:
            return t, None
        from tapedeck.background.transcribe.decode import iter_pcm, iter_windows

        def blocks() -> Iterable[tuple[int, Any]]:
            for window in iter_windows(iter_pcm(audio)):
                yield window.start, window.samples
                run.check()

        return self._apply(diarizer.diarize(blocks(), *self._known(txn)), t)

    def _known(self, txn: Transcription) -> tuple[DiarizeOptions, list[VoiceProfile]]:
        """The request's speaker-count options and the project's voice profiles."""
        from tapedeck.diarize import DiarizeOptions
        from tapedeck.domain.voice_profiles import project_profiles

        o = txn.speaker_options
        return (DiarizeOptions(o.min_speakers, o.max_speakers, o.speakers_expected),
                project_profiles(self._db.read(), txn.project_id))

    @staticmethod
    def _apply(diarization: Diarization, t: Transcript
               ) -> tuple[Transcript, list[dict[str, Any]]]:
        from tapedeck.diarize import label_transcript

        segments, speakers = label_transcript(t.segments, diarization)
        return replace(t, segments=tuple(segments)), [s.to_json() for s in speakers]

    def _download(self, key: str, spool: BinaryIO) -> None:
        try:
            stream = self._store.open(key)
        except ObjectNotFound:
            raise JobFailed(TRANSCRIPTION_FAILED, "The recording's audio is no longer in the "
                            "store.", reason="missing_audio") from None
        try:
            while block := stream.read(_BLOCK):
                spool.write(block)
        finally:
            stream.close()

    def _engine_for(self, run: JobRun) -> TranscriptionEngine:
        """The loaded engine (built on first use; caller holds ``_lock``). A model that
        cannot be loaded is retried by the queue, and fails the job on the last attempt."""
        if self._engine is None:
            try:
                self._engine = self._factory()
            except ModelUnavailable as exc:
                if run.job.attempts >= self._max_attempts:
                    raise JobFailed(TRANSCRIPTION_FAILED, str(exc),
                                    reason="engine_unavailable") from exc
                raise
        return self._engine

    def _failure(self, run: JobRun, exc: TranscriptionFailed) -> Exception:
        """What to raise for an engine-level failure: retry engine errors a few times."""
        if exc.reason == "engine_error" and run.job.attempts < min(ENGINE_ATTEMPTS,
                                                                   self._max_attempts):
            return _EngineRetry(exc.message)
        return JobFailed(TRANSCRIPTION_FAILED, exc.message, reason=exc.reason)

    def _finish(self, run: JobRun, txn: Transcription, t: Transcript,
                speakers: list[dict[str, Any]] | None, skipped_ms: int | None = None) -> None:
        """Complete the job and the transcription in one transaction (``skipped_ms``: the
        audio a live transcription skipped as silence)."""
        provider = self._engine.name if self._engine is not None else txn.provider
        with self._db.write() as tx:
            run.complete(tx)
            cur = tx.execute(
                "UPDATE transcriptions SET status = 'completed', language = ?, provider = ?,"
                " model = ?, duration_ms = ?, text = ?, segments = ?, word_count = ?,"
                " completed_at = ?, skipped_ms = COALESCE(?, skipped_ms), speakers = ?"
                " WHERE id = ? AND status IN ('queued', 'processing')",
                [t.language, provider, t.model, t.duration_ms, t.text,
                 _segments_json(t), t.word_count, iso(self._clock.now()), skipped_ms,
                 None if speakers is None else json.dumps(speakers), txn.id])
            if cur.rowcount == 1:
                backend_for(tx).replace(tx, txn.id)  # the search index, same transaction
                self._terminal_event(tx, txn, "completed")

    # -- failures ------------------------------------------------------------------------------
    def on_failure(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Fail the transcription (unless already terminal) and emit its one terminal event."""
        txn = load_transcription(tx, str(job.payload.get("transcription_id")))
        if txn is None or txn.status in TERMINAL_STATUSES:
            return
        reason, message = _reason(failure)
        tx.execute(
            "UPDATE transcriptions SET status = 'failed', error_type = ?, error_reason = ?,"
            " error_message = ?, completed_at = ? WHERE id = ?",
            [TRANSCRIPTION_FAILED, reason, message, iso(self._clock.now()), txn.id])
        self._terminal_event(tx, txn, "failed")

    def _terminal_event(self, tx: Tx, txn: Transcription,
                        status: str) -> None:
        self._set_recording_status(tx, txn, status)
        if txn.live:  # the pieces' embeddings served this one assembly (biometric data)
            from tapedeck.background.transcribe.live_job import forget_voices

            forget_voices(tx, txn.recording_id)
        fresh = load_transcription(tx, txn.id)
        assert fresh is not None
        emit(tx, self._clock, txn.project_id, f"transcription.{status}", fresh.event_data(),
             txn.recording_id)

    def _set_recording_status(self, tx: Tx, txn: Transcription,
                              status: str) -> None:
        """The recording mirrors its current transcription's status."""
        tx.execute("UPDATE recordings SET transcription_status = ?, updated_at = ?"
                   " WHERE id = ? AND transcription_id = ?",
                   [status, iso(self._clock.now()), txn.recording_id, txn.id])


def transcode_to_ogg_opus(src: BinaryIO, dst: BinaryIO) -> None:
    """Decode any audio PyAV/ffmpeg reads from ``src`` and write it to ``dst`` as 16 kHz mono
    Ogg Opus (libopus, 32 kbit/s), frame by frame; the timeline (length, start) is kept.
    ``TranscriptionFailed("undecodable_audio")`` when ``src`` has no decodable audio."""
    import av

    try:
        with av.open(src, mode="r") as inp:
            audio = next((s for s in inp.streams if s.type == "audio"), None)
            if audio is None:
                raise TranscriptionFailed("undecodable_audio", "The file has no audio stream.")
            with av.open(dst, mode="w", format="ogg") as out:
                enc: Any = out.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
                enc.bit_rate = 32_000
                resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE,
                                              frame_size=enc.codec_context.frame_size or 320)
                frames: Iterable[Any] = inp.decode(audio)
                for frame in itertools.chain(frames, [None]):  # None flushes the resampler
                    for piece in resampler.resample(frame):
                        out.mux(enc.encode(piece))
                out.mux(enc.encode(None))
    except av.FFmpegError as exc:
        raise TranscriptionFailed("undecodable_audio", f"The file is not readable audio: "
                                                       f"{exc}") from exc


def _segments_json(t: Transcript) -> str:
    segments: list[dict[str, Any]] = t.to_json()["segments"]
    return json.dumps(segments, ensure_ascii=False, separators=(",", ":"))


def _reason(failure: Failure) -> tuple[str, str]:
    """``(reason, message)`` of a job failure as the transcription reports it."""
    if failure.type == TRANSCRIPTION_FAILED:
        return str(failure.details.get("reason", "engine_error")), failure.message
    if failure.type == "storage_unavailable":
        return "storage_unavailable", f"The object store was unavailable: {failure.message}"
    return "internal_error", "An internal error stopped the transcription."


def engine_factory(settings: Settings) -> EngineFactory:
    """Builds the faster-whisper engine from ``whisper_model``/``whisper_threads`` (the bundled
    whisper-base is assembled under ``data_dir/models`` on first use)."""
    from tapedeck.background.transcribe.whisper import decoding_options

    options = decoding_options(settings.whisper_decoding)  # checked by tapedeck.validate

    def build() -> TranscriptionEngine:
        from tapedeck.background.transcribe.whisper import load_engine

        return load_engine(settings.whisper_model, settings.data_dir, settings.whisper_threads,
                           options)

    return build


def build_handler(runtime: Runtime) -> TranscribeHandler | None:
    """The ``transcribe`` handler of a process (``tapedeck.background.worker.HANDLER_FACTORIES``), or
    None when faster-whisper is not installed (the kind then stays queued for another
    worker)."""
    if importlib.util.find_spec("faster_whisper") is None:
        log.info("faster-whisper is not installed; this worker does not transcribe")
        return None
    s = runtime.settings
    return TranscribeHandler(runtime.db, runtime.store, runtime.clock, engine_factory(s),
                             max_attempts=s.job_max_attempts,
                             failpoints=Failpoints(s.test_only_failpoints),
                             diarizer_factory=diarizer_factory(s.diarize))


def diarizer_factory(diarize: bool) -> DiarizerFactory | None:
    """Builds the speaker diarizer (GE2E weights from the resemblyzer package), or None when
    ``diarize`` (the setting) is off."""
    if not diarize:
        return None

    def build() -> Diarizer:
        from tapedeck.diarize import Diarizer

        return Diarizer()

    return build
