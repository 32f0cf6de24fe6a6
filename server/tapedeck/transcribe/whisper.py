"""The faster-whisper (CTranslate2) engine: CPU, int8, model loaded once per instance.

Each call transcribes one window (at most 30 s, the model's context) with Silero VAD
(bundled with faster-whisper) so pauses and noise produce no hallucinated text, word
timestamps on, and no conditioning on previous text (windows are independent, which keeps
one bad window from derailing the next).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faster_whisper import WhisperModel

from tapedeck.transcribe import Segment, TranscriptionFailed, WindowResult, Word
from tapedeck.transcribe.decode import Samples
from tapedeck.transcribe.models import ModelUnavailable, resolve_model


@dataclass(frozen=True)
class WhisperOptions:
    """Decoding options. ``beam_size`` 1 (greedy) is about twice as fast as 5 on CPU at a small
    accuracy cost; see bench/transcribe.py."""

    beam_size: int = 5
    vad: bool = True


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

    @property
    def name(self) -> str:
        return "whisper"

    @property
    def model(self) -> str:
        return self._name

    def transcribe_window(self, samples: Samples, language: str | None) -> WindowResult:
        """Transcribe one ≤30 s window; times are milliseconds relative to its start."""
        if language is not None and language not in self._languages:
            raise TranscriptionFailed("unsupported_language",
                                      f"whisper cannot transcribe language {language!r}")
        found, info = self._model.transcribe(
            samples, language=language, beam_size=self._options.beam_size,
            word_timestamps=True, vad_filter=self._options.vad,
            condition_on_previous_text=False,
        )
        segments = tuple(_segment(s) for s in found)  # the generator does the decoding
        return WindowResult(str(info.language) if segments else language, segments)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _segment(raw: Any) -> Segment:
    """Convert a faster-whisper segment (seconds, log-probabilities) to ours."""
    words = tuple(
        Word(str(w.word).strip(), _ms(w.start), _ms(w.end), round(float(w.probability), 4))
        for w in (raw.words or ())
        if str(w.word).strip()
    )
    # avg_logprob belongs to the whole decoding pass (all segments of a window share it),
    # so a segment's own confidence is the mean of its words' probabilities when it has words.
    if words:
        confidence = round(sum(w.confidence for w in words) / len(words), 4)
    else:
        confidence = round(min(1.0, math.exp(float(raw.avg_logprob))), 4)
    return Segment(_ms(raw.start), _ms(raw.end), str(raw.text).strip(), confidence, None, words)


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
