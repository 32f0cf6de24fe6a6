"""The faster-whisper (CTranslate2) engine: CPU, int8, model loaded once per instance.

Each call transcribes one window (at most 30 s, the model's context) with Silero VAD
(bundled with faster-whisper) so pauses and noise produce no hallucinated text, word
timestamps on, and no conditioning on previous text (windows are independent, which keeps
one bad window from derailing the next).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

from tapedeck.background.transcribe import Segment, TranscriptionFailed, WindowResult, Word
from tapedeck.background.transcribe.decode import SAMPLE_RATE, Samples
from tapedeck.background.transcribe.models import ModelUnavailable, resolve_model

#: faster-whisper's default temperature fallback: a window whose output looks wrong
#: (compression ratio > 2.4 or mean log-probability < -1) is decoded again at the next one.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class WhisperOptions:
    """Decoding options (measured in bench/transcribe_options.py); the defaults are the
    ``fast`` profile.

    ``beam_size`` 1 is greedy decoding; ``best_of`` candidates are sampled only when a
    fallback temperature > 0 runs; ``fallback`` False decodes each window once at
    temperature 0; ``batch_size`` > 1 lets ``transcribe_windows`` encode and decode that many
    windows in one CTranslate2 call (faster-whisper's ``BatchedInferencePipeline``; no
    fallback there); ``vad`` runs Silero inside each ``transcribe_window`` call."""

    beam_size: int = 1
    vad: bool = True
    best_of: int = 1
    fallback: bool = False
    batch_size: int = 8
    batch_timestamps: bool = False

    def temperature(self) -> float | tuple[float, ...]:
        return FALLBACK_TEMPERATURES if self.fallback else 0.0


#: The profiles of the ``whisper_decoding`` setting. ``fast`` (the default) measured in
#: bench/transcribe_options.py: the same WER as ``accurate`` on the real-speech references,
#: at about half the CPU time; ``accurate`` is the decoding before it.
PROFILES: dict[str, WhisperOptions] = {
    "fast": WhisperOptions(),
    "accurate": WhisperOptions(beam_size=5, best_of=5, fallback=True, batch_size=0,
                               batch_timestamps=True),
}


def decoding_options(profile: str, beam_size: int | None = None) -> WhisperOptions:
    """The options of a ``whisper_decoding`` profile (``beam_size`` overriding its beam);
    ``ValueError`` naming the choices for an unknown profile."""
    if profile not in PROFILES:
        raise ValueError(f"whisper_decoding must be one of {', '.join(PROFILES)}, "
                         f"not {profile!r}")
    options = PROFILES[profile]
    return options if beam_size is None else replace(options, beam_size=beam_size)


class WhisperEngine:
    """A ``TranscriptionEngine`` over one loaded ``faster_whisper.WhisperModel``.

    Build one per worker process and reuse it for every job; call ``transcribe_window``
    from one thread at a time (parallelism comes from ``threads`` inside CTranslate2)."""

    def __init__(
        self,
        model_path: str,
        model_name: str,
        threads: int = 2,
        options: WhisperOptions | None = None,
    ) -> None:
        """Load the model from ``model_path`` (a directory, or a name already in the local
        Hugging Face cache; nothing is downloaded). ``threads`` = CPU threads for inference."""
        self._name = model_name
        self._options = options or WhisperOptions()
        self._model = WhisperModel(
            model_path, device="cpu", compute_type="int8", cpu_threads=threads,
            num_workers=1, local_files_only=True,
        )
        self._languages = frozenset(str(code) for code in self._model.supported_languages)
        self._batched = BatchedInferencePipeline(self._model)

    @property
    def name(self) -> str:
        return "whisper"

    @property
    def model(self) -> str:
        return self._name

    @property
    def options(self) -> WhisperOptions:
        return self._options

    @property
    def batch_size(self) -> int:
        """Windows ``transcribe_windows`` takes at once to good effect (1 = one by one)."""
        return max(1, self._options.batch_size)

    def _check_language(self, language: str | None) -> None:
        if language is not None and language not in self._languages:
            raise TranscriptionFailed("unsupported_language",
                                      f"whisper cannot transcribe language {language!r}")

    def transcribe_window(self, samples: Samples, language: str | None) -> WindowResult:
        """Transcribe one ≤30 s window; times are milliseconds relative to its start."""
        self._check_language(language)
        opts = self._options
        found, info = self._model.transcribe(
            samples, language=language, beam_size=opts.beam_size, best_of=opts.best_of,
            temperature=opts.temperature(), word_timestamps=True, vad_filter=opts.vad,
            condition_on_previous_text=False,
        )
        segments = tuple(_segment(s) for s in found)  # the generator does the decoding
        return WindowResult(str(info.language) if segments else language, segments)

    def transcribe_windows(self, windows: Sequence[Samples],
                           language: str | None) -> list[WindowResult]:
        """Several ≤30 s windows (speech already found by the caller's VAD): one result per
        window, times relative to each window's start. With ``batch_size`` > 1 they go
        through CTranslate2 ``batch_size`` at a time; else one by one (``transcribe_window``)."""
        if self._options.batch_size <= 1 or len(windows) <= 1:
            return [self.transcribe_window(w, language) for w in windows]
        self._check_language(language)
        starts = np.cumsum([0] + [len(w) for w in windows])
        clips = [{"start": float(a) / SAMPLE_RATE, "end": float(b) / SAMPLE_RATE}
                 for a, b in itertools.pairwise(starts)]
        opts = self._options
        self._batched.last_speech_timestamp = 0.0  # its word-timing state: one call each
        found, info = self._batched.transcribe(
            np.concatenate(list(windows)), language=language, beam_size=opts.beam_size,
            best_of=opts.best_of, temperature=0.0, word_timestamps=True, vad_filter=False,
            clip_timestamps=clips, batch_size=opts.batch_size,
            without_timestamps=not opts.batch_timestamps,
        )
        per_window: list[list[Segment]] = [[] for _ in windows]
        for raw in found:  # times are on the concatenation: back to each window's own
            index = min(len(windows) - 1, max(0, int(np.searchsorted(
                starts, round(raw.start * SAMPLE_RATE), side="right")) - 1))
            seg = _segment(raw, -int(starts[index]) * 1000 // SAMPLE_RATE)
            per_window[index].extend((seg,) if opts.batch_timestamps else _sentences(seg))
        detected = str(info.language) if any(per_window) else language
        return [WindowResult(detected, tuple(segs)) for segs in per_window]


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _segment(raw: Any, shift_ms: int = 0) -> Segment:
    """Convert a faster-whisper segment (seconds, log-probabilities) to ours, ``shift_ms``
    added to its times."""
    words = tuple(
        Word(str(w.word).strip(), max(0, _ms(w.start) + shift_ms),
             max(0, _ms(w.end) + shift_ms), round(float(w.probability), 4))
        for w in (raw.words or ())
        if str(w.word).strip()
    )
    # avg_logprob belongs to the whole decoding pass (all segments of a window share it),
    # so a segment's own confidence is the mean of its words' probabilities when it has words.
    if words:
        confidence = round(sum(w.confidence for w in words) / len(words), 4)
    else:
        confidence = round(min(1.0, math.exp(float(raw.avg_logprob))), 4)
    return Segment(max(0, _ms(raw.start) + shift_ms), max(0, _ms(raw.end) + shift_ms),
                   str(raw.text).strip(), confidence, None, words)


_SENTENCE_END = (".", "?", "!", "\u3002", "\uff1f", "\uff01")  # and the CJK full-width ones


def _sentences(seg: Segment) -> Iterator[Segment]:
    """A segment cut after every word that ends a sentence: without timestamp tokens the
    batched pipeline returns one segment per window, and captions want sentences."""
    if not seg.words:
        yield seg
        return
    group: list[Word] = []
    for word in seg.words:
        group.append(word)
        if word.word.endswith(_SENTENCE_END):
            yield _of_words(group, seg.speaker)
            group = []
    if group:
        yield _of_words(group, seg.speaker)


def _of_words(words: list[Word], speaker: str | None) -> Segment:
    confidence = round(sum(w.confidence for w in words) / len(words), 4)
    return Segment(words[0].start_ms, words[-1].end_ms, " ".join(w.word for w in words),
                   confidence, speaker, tuple(words))


def load_engine(
    setting: str, cache_dir: Path, threads: int = 2, options: WhisperOptions | None = None
) -> WhisperEngine:
    """Build the engine from the ``whisper_model`` setting (see ``models.resolve_model``):
    empty → the bundled whisper-base, assembled under ``cache_dir`` on first use. Raises
    ``ModelUnavailable`` when the model cannot be assembled or loaded."""
    name, path = resolve_model(setting, cache_dir)
    try:
        return WhisperEngine(path, name, threads, options)
    except Exception as exc:  # CTranslate2 / huggingface_hub errors, whatever their type
        raise ModelUnavailable(f"cannot load whisper model {setting or name!r} from {path!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
