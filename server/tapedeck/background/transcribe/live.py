"""One chunk of a streaming recording → its transcript "piece" (live transcription).

``transcribe_piece(engine, chunk, prev, language)`` is what the ``live_transcribe`` job (and
the assembly, for pieces still missing at finalize) calls. Contract:

- Timeline. With the previous chunk's bytes, the two chunks are remuxed by the stitcher's own
  code (``tapedeck.oggopus.remux``) and decoded as ONE stream, so the seamless agent chunks
  decode exactly as in the stitched file (the encoder state carries across) and ``delta48``
  = this chunk's start minus the previous chunk's start on the stitched timeline (48 kHz):
  the boundary depends only on those two chunks, so the sum of the deltas is the stitched
  file's timeline, independent chunks' drift included. Without the previous chunk the piece
  is made from the chunk alone and ``delta48`` is None (the piece is redone once it lands).
- Overlap. The piece covers the last ``OVERLAP_MS`` of the previous chunk too (times before
  the chunk start are negative), so a word cut by the boundary is heard whole by this piece;
  ``tapedeck.domain.live.merge`` picks the cut deterministically.
- Silence. Silero VAD (``faster_whisper.vad``, bundled ONNX) finds speech; only speech spans
  (padded) are packed into windows of at most 30 s for the engine; the rest is never
  decoded by the model and is reported as ``skipped_ms``. Window times are mapped back to
  the chunk's timeline span by span.
- Segments/words come back in timeline order (ms relative to the chunk start). Failures
  raise ``TranscriptionFailed`` (``undecodable_audio`` for bytes that are not Ogg Opus).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from tapedeck.background.transcribe import (
    SILENCE_PEAK,
    BatchingEngine,
    Segment,
    TranscriptionEngine,
    TranscriptionFailed,
    WindowResult,
    Word,
    _run_engine,
)
from tapedeck.background.transcribe.decode import (
    SAMPLE_RATE,
    PcmPiece,
    Samples,
    UndecodableAudio,
    iter_pcm,
    iter_windows,
    quietest_cut,
)
from tapedeck.oggopus import InvalidAudio, remux

if TYPE_CHECKING:
    from tapedeck.diarize import Diarizer, Embedded

#: Audio of the previous chunk transcribed again with this one (covers a cut word).
OVERLAP_MS = 4000
#: Longest window handed to the engine (Whisper's context).
WINDOW_S = 30.0
_VAD = VadOptions(threshold=0.5, min_speech_duration_ms=0, min_silence_duration_ms=1000,
                  speech_pad_ms=300)
_RATIO = 3  # 48 kHz granules per 16 kHz sample


@dataclass(frozen=True)
class Piece:
    """A chunk's transcript; times in ms relative to the chunk's first sample."""

    delta48: int | None
    samples48: int
    overlap_ms: int
    language: str | None
    segments: tuple[Segment, ...]
    speech_ms: int
    skipped_ms: int
    #: The language the piece was transcribed with (None: detected by the piece itself).
    hint: str | None = None


@dataclass(frozen=True)
class _Span:
    """``length`` samples of the piece audio from ``src``, at ``dst`` inside a window."""

    src: int
    dst: int
    length: int


def decode(data: bytes) -> Samples:
    """All PCM of one Ogg Opus stream (``TranscriptionFailed('undecodable_audio')``)."""
    try:
        parts = [p.samples for p in iter_pcm(io.BytesIO(data))]
    except UndecodableAudio as exc:
        raise TranscriptionFailed("undecodable_audio", str(exc)) from exc
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def piece_audio(chunk: bytes, prev: bytes | None) -> tuple[Samples, int, int | None, int]:
    """``(audio, overlap samples, delta48, chunk samples48)``: the chunk's PCM preceded by up
    to ``OVERLAP_MS`` of the previous chunk, decoded as in the stitched file."""
    if prev is None:
        own = decode(chunk)
        return own, 0, None, len(own) * _RATIO
    pair = io.BytesIO()
    try:
        result = remux([io.BytesIO(prev), io.BytesIO(chunk)], pair)
    except InvalidAudio as exc:
        raise TranscriptionFailed("undecodable_audio", str(exc)) from exc
    delta48 = result.chunk_starts[1]
    pcm = decode(pair.getvalue())
    start = min(len(pcm), delta48 // _RATIO)
    overlap = min(start, OVERLAP_MS * SAMPLE_RATE // 1000)
    return pcm[start - overlap:], overlap, delta48, result.samples - delta48


def speech_spans(audio: Samples) -> list[tuple[int, int]]:
    """Padded speech regions ``[start, end)`` (samples) found by Silero VAD."""
    if len(audio) == 0 or float(np.max(np.abs(audio))) < SILENCE_PEAK:
        return []  # digital silence: not even the VAD runs
    found = get_speech_timestamps(audio, _VAD)
    return [(int(s["start"]), int(s["end"])) for s in found if s["end"] > s["start"]]


def _split_long(audio: Samples, start: int, end: int) -> Iterator[tuple[int, int]]:
    """A span cut into parts of at most ``WINDOW_S`` at quiet points."""
    max_n = int(WINDOW_S * SAMPLE_RATE)
    while end - start > max_n:
        cut = start + quietest_cut(audio[start:start + max_n], int(20 * SAMPLE_RATE), max_n)
        yield start, cut
        start = cut
    yield start, end


def pack_windows(audio: Samples, spans: list[tuple[int, int]]) -> Iterator[list[_Span]]:
    """Speech spans packed, in order, into windows of at most ``WINDOW_S``."""
    max_n = int(WINDOW_S * SAMPLE_RATE)
    window: list[_Span] = []
    used = 0
    for s, e in spans:
        for a, b in _split_long(audio, s, e):
            if used + (b - a) > max_n and window:
                yield window
                window, used = [], 0
            window.append(_Span(a, used, b - a))
            used += b - a
    if window:
        yield window


def _mapper(spans: list[_Span], shift: int) -> Callable[[int], int]:
    """Window ms → chunk-relative ms (``shift`` = overlap samples before the chunk start)."""

    def to_chunk(ms: int) -> int:
        sample = ms * SAMPLE_RATE // 1000
        span = spans[-1]
        for sp in spans:
            if sample < sp.dst + sp.length:
                span = sp
                break
        inside = min(max(0, sample - span.dst), span.length)
        return (span.src + inside - shift) * 1000 // SAMPLE_RATE

    return to_chunk


def _shift(seg: Segment, to_chunk: Callable[[int], int], floor: int) -> Segment:
    """A window segment on the chunk's timeline (monotonic from ``floor``)."""
    words: list[Word] = []
    at = max(floor, to_chunk(seg.start_ms))
    start = at
    for w in seg.words:
        ws = max(at, to_chunk(w.start_ms))
        we = max(ws, to_chunk(w.end_ms))
        words.append(Word(w.word, ws, we, w.confidence))
        at = ws
    end = max(words[-1].end_ms if words else start, to_chunk(seg.end_ms))
    return Segment(start, end, seg.text, seg.confidence, seg.speaker, tuple(words))


def transcribe_piece(engine: TranscriptionEngine, chunk: bytes, prev: bytes | None,
                     language: str | None, check: Callable[[], None] | None = None) -> Piece:
    """Transcribe one chunk (see the module docstring); ``check()`` runs between engine
    calls (the job's lease check)."""
    return transcribe_decoded(engine, piece_audio(chunk, prev), language, check)


def transcribe_decoded(engine: TranscriptionEngine,
                       decoded: tuple[Samples, int, int | None, int], language: str | None,
                       check: Callable[[], None] | None = None) -> Piece:
    """``transcribe_piece`` of what ``piece_audio`` decoded (so the caller can also
    ``embed_piece`` the same audio without decoding it twice)."""
    audio, overlap, delta48, samples48 = decoded
    segments, detected, spans = transcribe_audio(engine, audio, overlap, language, check)
    # Reported over the chunk's own audio (the overlap is the previous piece's to report).
    own = sum(max(0, e - max(s, overlap)) for s, e in spans)
    own_ms = (len(audio) - overlap) * 1000 // SAMPLE_RATE
    speech_ms = own * 1000 // SAMPLE_RATE
    return Piece(delta48, samples48, overlap * 1000 // SAMPLE_RATE, detected, tuple(segments),
                 speech_ms, max(0, own_ms - speech_ms), language)


def embed_piece(diarizer: Diarizer, audio: Samples, overlap: int) -> Embedded:
    """The chunk's own speech (``audio[overlap:]`` of ``piece_audio``: decoded with its
    predecessor, as in the stitched file) embedded for diarization, in frames relative to
    the chunk's first sample, cut into blocks as the whole file is (``iter_windows``)."""
    own = PcmPiece(0, np.asarray(audio[overlap:], np.float32))
    return diarizer.embed((w.start, w.samples) for w in iter_windows([own]))


def transcribe_audio(engine: TranscriptionEngine, audio: Samples, shift: int,
                     language: str | None, check: Callable[[], None] | None = None
                     ) -> tuple[list[Segment], str | None, list[tuple[int, int]]]:
    """``(segments, language, speech spans)`` of a stretch of PCM: Silero VAD first, only
    the speech packed into windows of at most ``WINDOW_S`` for the engine (a
    ``BatchingEngine`` gets them ``batch_size`` at a time), times mapped back to ms relative
    to sample ``shift`` of ``audio`` (in timeline order). ``check()`` runs between engine
    calls. Used for live pieces and, block by block, for whole files."""
    spans = speech_spans(audio)
    segments: list[Segment] = []
    detected = language
    windows = list(pack_windows(audio, spans))
    step = engine.batch_size if isinstance(engine, BatchingEngine) else 1
    for i in range(0, len(windows), step):
        if check is not None:
            check()
        group = windows[i:i + step]
        samples = [np.concatenate([audio[s.src:s.src + s.length] for s in w]) for w in group]
        for window, result in zip(group, _run_windows(engine, samples, detected), strict=True):
            if result.segments and detected is None:
                detected = result.language
            to_chunk = _mapper(window, shift)
            for seg in result.segments:
                if seg.text.strip():
                    floor = segments[-1].words[-1].start_ms if segments and segments[-1].words \
                        else (segments[-1].start_ms if segments
                              else -shift * 1000 // SAMPLE_RATE)
                    segments.append(_shift(seg, to_chunk, floor))
    return segments, detected, spans


def _run_windows(engine: TranscriptionEngine, samples: list[Samples],
                 language: str | None) -> list[WindowResult]:
    """The engine on a group of windows (one call when it batches), failures typed as in
    ``_run_engine``."""
    if len(samples) == 1 or not isinstance(engine, BatchingEngine):
        return [_run_engine(engine, s, language) for s in samples]
    try:
        return engine.transcribe_windows(samples, language)
    except TranscriptionFailed:
        raise
    except Exception as exc:  # the engine's own failures, whatever their type
        raise TranscriptionFailed("engine_error", f"{type(exc).__name__}: {exc}") from exc
