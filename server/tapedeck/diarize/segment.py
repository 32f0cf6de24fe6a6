"""Speech regions (Silero VAD, as shipped in faster-whisper) and their embedding windows.

A block of PCM (≤ one transcription window, ~30 s) is cut into speech regions by the VAD; each
region is volume-normalized (to -30 dBFS, louder only, like Resemblyzer's preprocessing) and
cut into ``PARTIAL_FRAMES`` (1.6 s) mel windows every ``STEP_FRAMES``. A region shorter than a
window still gets one window when it holds at least ``MIN_WINDOW_FRAMES``: its mel frames
repeated to fill the window. (Zero padding, as Resemblyzer does, embeds "a word, then
silence": measured on one voice's single-word prompts, their centroid then sits at cosine
0.88 from the same voice's sentences — as far as two different voices — and they form a
cluster of their own; repeated, 0.95-0.96.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tapedeck.diarize.encoder import PARTIAL_FRAMES
from tapedeck.diarize.features import HOP, N_MELS, SAMPLE_RATE, mel_spectrogram

#: Hop between embedding windows (0.5 s of 10 ms frames).
STEP_FRAMES = 50
#: A region shorter than this (0.5 s) gets no embedding window of its own.
MIN_WINDOW_FRAMES = 50
_TARGET_RMS = 10 ** (-30 / 20)


@dataclass(frozen=True)
class Region:
    """A stretch of speech: ``[start, end)`` in 10 ms frames on the recording's timeline."""

    start: int
    end: int


@dataclass(frozen=True)
class Windows:
    """Embedding windows of one block: frame spans on the timeline and their mels."""

    spans: list[tuple[int, int]]  # [start, end) frames, clipped to the region
    mels: np.ndarray  # (n, PARTIAL_FRAMES, N_MELS)


def speech_regions(samples: np.ndarray, offset_samples: int) -> list[Region]:
    """Speech in ``samples`` (16 kHz float32) as timeline frame spans."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    opts = VadOptions(min_silence_duration_ms=250, speech_pad_ms=60, min_speech_duration_ms=200)
    found = get_speech_timestamps(np.asarray(samples, np.float32), opts, SAMPLE_RATE)
    return [Region((offset_samples + s["start"]) // HOP, (offset_samples + s["end"]) // HOP)
            for s in found if s["end"] > s["start"]]


def windows(samples: np.ndarray, offset_samples: int, regions: list[Region]) -> Windows:
    """The embedding windows of ``regions`` (which lie inside this block)."""
    spans: list[tuple[int, int]] = []
    mels: list[np.ndarray] = []
    base = offset_samples // HOP
    for r in regions:
        lo, hi = (r.start - base) * HOP, (r.end - base) * HOP
        pcm = _normalize(np.asarray(samples[max(0, lo):hi], np.float32))
        mel = mel_spectrogram(pcm)[: r.end - r.start]
        n = len(mel)
        if n < MIN_WINDOW_FRAMES:
            continue
        if n < PARTIAL_FRAMES:
            mel = np.pad(mel, ((0, PARTIAL_FRAMES - n), (0, 0)), mode="wrap")
        last = max(0, n - PARTIAL_FRAMES)
        starts = list(range(0, last + 1, STEP_FRAMES))
        if starts[-1] != last:
            starts.append(last)  # the region's end is covered too
        for s in starts:
            spans.append((r.start + s, min(r.end, r.start + s + PARTIAL_FRAMES)))
            mels.append(mel[s:s + PARTIAL_FRAMES])
    arr = np.stack(mels) if mels else np.zeros((0, PARTIAL_FRAMES, N_MELS), np.float32)
    return Windows(spans, arr)


def _normalize(pcm: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
    if rms <= 1e-6 or rms >= _TARGET_RMS:
        return pcm
    return pcm * np.float32(_TARGET_RMS / rms)
