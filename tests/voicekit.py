"""Conversations built from real recordings of different people (Debian packages).

Voices (each package is one professional speaker reading IVR prompts, 8 kHz):
``asterisk-core-sounds-en-wav`` (Allison, en-US, woman), ``asterisk-core-sounds-fr-wav``
(June, fr-CA, woman), ``asterisk-core-sounds-it-wav`` (Carlo, it-IT, man),
``asterisk-core-sounds-ru-wav`` (ru-RU, woman; named "irina" here) and
``asterisk-prompt-it-menardi-wav`` (Menardi, it-IT, woman).

A conversation is a seeded random sequence of turns; each turn is one speaker's prompts
(picked at random from that voice's files) back to back with 150 ms of silence between
them, until the turn reaches its drawn length (2 to 30 s); turns are separated by 400 ms of
silence and consecutive turns always change speaker. The reference annotation is each
prompt's speech span (its leading and trailing silence trimmed at -45 dBFS per 10 ms frame),
labelled with the voice name. Everything is resampled to 16 kHz by sox; deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from audio import to_pcm

SOUNDS = Path("/usr/share/asterisk/sounds")
VOICES = {
    "allison": "en_US_f_Allison",
    "june": "fr_CA_f_June",
    "menardi": "it_IT_f_Menardi",
    "carlo": "it_IT_m_Carlo",
    "irina": "ru_RU_f_IvrvoiceRU",
}
RATE = 16_000
_FRAME = RATE // 100
_FLOOR = 10 ** (-45 / 20)


@dataclass(frozen=True)
class Conversation:
    """16 kHz float32 audio and its reference ``(start_s, end_s, voice)`` speech spans."""

    pcm: np.ndarray
    reference: list[tuple[float, float, str]]
    turns: list[tuple[float, float, str]]

    @property
    def voices(self) -> list[str]:
        """Voices in order of first appearance."""
        return list(dict.fromkeys(v for _, _, v in self.turns))


@cache
def voice_files(voice: str) -> tuple[Path, ...]:
    """The voice's prompt files (longer than 0.8 s), in a stable order."""
    root = SOUNDS / VOICES[voice]
    if not root.exists():
        raise FileNotFoundError(f"{root}: install asterisk-core-sounds-*-wav (scripts/setup)")
    return tuple(sorted(p for p in root.rglob("*.wav") if p.stat().st_size > 8000 * 2 * 0.8))


@cache
def prompt(path: Path) -> tuple[np.ndarray, int, int]:
    """``(16 kHz float32 samples, first, last speech sample)`` of one prompt."""
    pcm = np.frombuffer(to_pcm(path, RATE), np.int16).astype(np.float32) / 32768
    n = len(pcm) // _FRAME
    rms = np.sqrt(np.mean(pcm[: n * _FRAME].reshape(n, _FRAME) ** 2, axis=1))
    active = np.flatnonzero(rms > _FLOOR)
    if len(active) == 0:
        return pcm, 0, 0
    return pcm, int(active[0]) * _FRAME, int(active[-1] + 1) * _FRAME


def conversation(voices: list[str], n_turns: int, seed: int, *, min_turn: float = 2.0,
                 max_turn: float = 30.0) -> Conversation:
    """A conversation of ``n_turns`` among ``voices`` (see the module docstring); every
    voice gets at least one turn when ``n_turns >= len(voices)``."""
    rng = random.Random(seed)
    order = list(voices)
    rng.shuffle(order)
    speakers = order[:]
    while len(speakers) < n_turns:
        speakers.append(rng.choice([v for v in voices if v != speakers[-1]] or voices))
    pieces: list[np.ndarray] = []
    ref: list[tuple[float, float, str]] = []
    turns: list[tuple[float, float, str]] = []
    t = 0
    gap_in, gap_turn = np.zeros(int(0.15 * RATE), np.float32), np.zeros(int(0.4 * RATE), np.float32)
    for voice in speakers[:n_turns]:
        target = rng.uniform(min_turn, max_turn) * RATE
        files = voice_files(voice)
        turn_start = t
        while t - turn_start < target:
            pcm, a, b = prompt(files[rng.randrange(len(files))])
            if t - turn_start + len(pcm) > max_turn * RATE and t > turn_start:
                break
            if b > a:
                ref.append(((t + a) / RATE, (t + b) / RATE, voice))
            pieces += [pcm, gap_in]
            t += len(pcm) + len(gap_in)
        turns.append((turn_start / RATE, t / RATE, voice))
        pieces.append(gap_turn)
        t += len(gap_turn)
    return Conversation(np.concatenate(pieces), ref, turns)


def der(conv: Conversation, turns: list[tuple[float, float, str]], collar: float = 0.25) -> float:
    """pyannote.metrics' diarization error rate of hypothesis ``turns`` over the whole
    conversation (``collar`` in seconds, as ``DiarizationErrorRate(collar=...)`` takes it)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for i, (a, b, v) in enumerate(conv.reference):
        reference[Segment(a, b), i] = v
    for i, (a, b, v) in enumerate(turns):
        hypothesis[Segment(a, b), i] = v
    uem = Timeline([Segment(0.0, len(conv.pcm) / RATE)])
    return float(DiarizationErrorRate(collar=collar)(reference, hypothesis, uem=uem))
