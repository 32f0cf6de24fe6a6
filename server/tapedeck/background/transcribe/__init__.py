"""Offline transcription: the engine interface, transcript types and the job's entry point.

``transcribe_ogg_opus(stream, engine, language)`` is what the transcription job calls. It
decodes the (stitched) Ogg Opus stream incrementally, cuts it into blocks of at most
``BLOCK_S`` at quiet points, finds the speech of each block with Silero VAD, packs only the
speech into windows of at most 30 s for the engine (``tapedeck.background.transcribe.live.
transcribe_audio``, the same code as live pieces; a batching engine gets several windows per
call) and maps the window-relative timestamps back onto the recording's timeline. Memory is
bounded by one block whatever the recording length; the model is loaded once per engine
instance (one per worker process), never per call.

Contract of the returned ``Transcript``:
- empty or silent audio → a completed transcript with ``text == ""`` and no segments;
- segments and words are in timeline order: start times never decrease, ``end >= start``,
  and everything lies within ``[0, duration_ms]``;
- ``language`` is the requested one, else the one detected in the first window with speech
  (then kept for the remaining windows), else ``None``.
Failures raise ``TranscriptionFailed`` with ``reason`` ``undecodable_audio``,
``unsupported_language`` or ``engine_error``.

Engines live in submodules (``tapedeck.background.transcribe.whisper``) so importing this package does
not load faster-whisper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from tapedeck.background.transcribe.decode import (
    SAMPLE_RATE,
    PcmWindow,
    Samples,
    UndecodableAudio,
    iter_pcm,
    iter_windows,
)

#: Reasons a transcription fails (``TranscriptionFailed.reason``).
FAILURE_REASONS = ("undecodable_audio", "unsupported_language", "engine_error")

#: Windows whose peak stays below this (about -80 dBFS) are digital silence: not sent to
#: the engine at all (saves CPU on long pauses and avoids hallucinated text on silence).
SILENCE_PEAK = 1e-4


class TranscriptionFailed(Exception):
    """The transcription cannot complete; ``reason`` is one of ``FAILURE_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class Word:
    """One word with its time span (milliseconds) and confidence in [0, 1]."""

    word: str
    start_ms: int
    end_ms: int
    confidence: float
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    """A stretch of speech (milliseconds on the recording's timeline)."""

    start_ms: int
    end_ms: int
    text: str
    confidence: float
    speaker: str | None = None
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """The transcript fields of the API's transcription object."""

    text: str
    language: str | None
    model: str
    duration_ms: int
    segments: tuple[Segment, ...] = ()
    word_count: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of api.md (snake_case keys, ``speaker`` null when unknown)."""
        return {
            "text": self.text,
            "language": self.language,
            "model": self.model,
            "duration_ms": self.duration_ms,
            "word_count": self.word_count,
            "segments": [
                {
                    "start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text,
                    "confidence": s.confidence, "speaker": s.speaker,
                    "words": [
                        {"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms,
                         "confidence": w.confidence, "speaker": w.speaker}
                        for w in s.words
                    ],
                }
                for s in self.segments
            ],
        }


@dataclass(frozen=True)
class WindowResult:
    """What an engine returns for one window: timestamps relative to the window start."""

    language: str | None
    segments: tuple[Segment, ...] = field(default=())


class TranscriptionEngine(Protocol):
    """A speech-to-text engine. One instance holds one loaded model and is reused for
    every job of a worker; ``transcribe_window`` gets at most 30 s of 16 kHz mono audio.

    ``transcribe_window`` must return segments and words in order with times in
    ``[0, window duration]`` (ms, relative to the window), raise
    ``TranscriptionFailed("unsupported_language", ...)`` for a language it cannot do, and may
    raise anything else for internal failures (reported as ``engine_error``)."""

    @property
    def name(self) -> str:
        """The provider name reported in transcripts (e.g. ``whisper``)."""
        ...

    @property
    def model(self) -> str:
        """The model name reported in transcripts (e.g. ``whisper-base``)."""
        ...

    def transcribe_window(self, samples: Samples, language: str | None) -> WindowResult:
        """Transcribe one window (float32 mono at ``SAMPLE_RATE``)."""
        ...


@runtime_checkable
class BatchingEngine(TranscriptionEngine, Protocol):
    """An engine that transcribes several windows in one call more cheaply than one by one
    (batched encoder and decoder). ``transcribe_windows`` returns one ``WindowResult`` per
    window, with the same contract as ``transcribe_window`` for each."""

    @property
    def batch_size(self) -> int:
        """How many windows to hand over at once (1 = no gain from batching)."""
        ...

    def transcribe_windows(self, windows: Sequence[Samples],
                           language: str | None) -> list[WindowResult]:
        """Transcribe several windows (float32 mono at ``SAMPLE_RATE``)."""
        ...


#: Called after each window with the milliseconds of audio processed so far.
Progress = Callable[[int], None]


#: Whole files are transcribed in blocks of this much audio (cut at the quietest 200 ms of
#: its last third): Silero VAD over the block, then only its speech goes to the engine.
BLOCK_S = 300.0


def transcribe_ogg_opus(
    stream: BinaryIO,
    engine: TranscriptionEngine,
    language: str | None = None,
    progress: Progress | None = None,
) -> Transcript:
    """Transcribe a whole Ogg Opus recording read incrementally from ``stream``.

    Memory: one block (``BLOCK_S``) of PCM. See the module docstring for the output
    contract and failure reasons; ``progress`` is also called between engine calls."""
    from tapedeck.background.transcribe.live import transcribe_audio  # live imports this module

    segments: list[Segment] = []
    detected: str | None = language
    end_sample = 0
    for block in _windows(stream, BLOCK_S):
        end_sample = block.start + len(block.samples)
        at_ms = block.start_ms
        found, lang, _ = transcribe_audio(
            engine, block.samples, 0, detected,
            None if progress is None else (lambda: progress(at_ms)))  # noqa: B023 (used now)
        if found and detected is None:
            detected = lang
        segments.extend(_to_timeline(tuple(found), block, _last_start(segments)))
        if progress is not None:
            progress(end_sample * 1000 // SAMPLE_RATE)
    return _assemble(segments, detected, engine.model, end_sample * 1000 // SAMPLE_RATE)


def _windows(stream: BinaryIO, max_s: float = 30.0) -> Iterator[PcmWindow]:
    """Windows of the decoded stream; decoding errors become ``undecodable_audio``."""
    try:
        yield from iter_windows(iter_pcm(stream), max_s, max_s * 2 / 3)
    except UndecodableAudio as exc:
        raise TranscriptionFailed("undecodable_audio", str(exc)) from exc


def _run_engine(
    engine: TranscriptionEngine, samples: Samples, language: str | None
) -> WindowResult:
    try:
        return engine.transcribe_window(samples, language)
    except TranscriptionFailed:
        raise
    except Exception as exc:  # the engine's own failures, whatever their type
        raise TranscriptionFailed("engine_error", f"{type(exc).__name__}: {exc}") from exc


def _last_start(segments: list[Segment]) -> int:
    """The latest start time on the timeline so far (words included)."""
    if not segments:
        return 0
    last = segments[-1]
    return last.words[-1].start_ms if last.words else last.start_ms


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(value, hi))


def _to_timeline(
    segments: tuple[Segment, ...], window: PcmWindow, floor_ms: int
) -> Iterator[Segment]:
    """Shift window-relative segments onto the timeline, clamped into the window and so
    that start times never go back before ``floor_ms`` (the previous latest start)."""
    offset, end = window.start_ms, window.start_ms + window.duration_ms
    floor = max(floor_ms, offset)
    for seg in segments:
        seg_start = _clamp(seg.start_ms + offset, floor, end)
        words: list[Word] = []
        word_floor = seg_start
        for w in seg.words:
            w_start = _clamp(w.start_ms + offset, word_floor, end)
            w_end = _clamp(w.end_ms + offset, w_start, end)
            words.append(Word(w.word, w_start, w_end, w.confidence, w.speaker))
            word_floor = w_start
        seg_end = _clamp(seg.end_ms + offset, max(seg_start, words[-1].end_ms if words else 0),
                         end)
        floor = word_floor if words else seg_start
        yield Segment(seg_start, seg_end, seg.text, seg.confidence, seg.speaker, tuple(words))


def _assemble(
    segments: list[Segment], language: str | None, model: str, duration_ms: int
) -> Transcript:
    kept = tuple(s for s in segments if s.text.strip())
    text = " ".join(s.text.strip() for s in kept)
    words = sum(len(s.words) if s.words else len(s.text.split()) for s in kept)
    return Transcript(text, language, model, duration_ms, kept, words)


__all__ = [
    "FAILURE_REASONS",
    "SAMPLE_RATE",
    "BatchingEngine",
    "Progress",
    "Segment",
    "Transcript",
    "TranscriptionEngine",
    "TranscriptionFailed",
    "WindowResult",
    "Word",
    "transcribe_ogg_opus",
]
