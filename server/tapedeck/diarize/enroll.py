"""Voice enrollment: the embedding of the speech in a piece of audio (any format PyAV reads).

``Enroller.embed(audio, start_ms, end_ms)`` decodes ``audio`` to 16 kHz mono with PyAV
(faster-whisper's dependency), keeps ``[start_ms, end_ms)`` (None = open), and returns the
unit mean GE2E embedding of its speech (Silero VAD regions) as raw float32 bytes plus the
milliseconds of speech it found — or None when the audio is not decodable. Memory: one
30 s block at a time plus ~1 KB per 0.5 s of speech.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from tapedeck.diarize import Block, Diarizer
from tapedeck.diarize.features import SAMPLE_RATE

_BLOCK = 30 * SAMPLE_RATE


class _Undecodable(Exception):
    pass


def decode_blocks(audio: BinaryIO, start_ms: int | None = None,
                  end_ms: int | None = None) -> Iterator[Block]:
    """``(start_sample, float32 samples)`` blocks (≤ 30 s) of ``[start_ms, end_ms)``, with
    sample 0 at ``start_ms``. Raises ``_Undecodable``."""
    import av

    lo = (start_ms or 0) * SAMPLE_RATE // 1000
    hi = None if end_ms is None else end_ms * SAMPLE_RATE // 1000
    try:
        with av.open(audio, mode="r") as inp:
            stream = next((s for s in inp.streams if s.type == "audio"), None)
            if stream is None:
                raise _Undecodable("no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            pos = 0
            buf: list[np.ndarray] = []
            held = 0
            out = 0
            frames: Any = inp.decode(stream)
            for frame in _chain(frames):
                for piece in resampler.resample(frame):
                    pcm = piece.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                    a, b = max(lo - pos, 0), len(pcm) if hi is None else min(len(pcm), hi - pos)
                    pos += len(pcm)
                    if b > a:
                        buf.append(pcm[a:b])
                        held += b - a
                    if held >= _BLOCK:
                        joined = np.concatenate(buf)
                        yield out, joined
                        out += len(joined)
                        buf, held = [], 0
                if hi is not None and pos >= hi:
                    break
            if buf:
                yield out, np.concatenate(buf)
    except av.FFmpegError as exc:
        raise _Undecodable(str(exc)) from exc


def _chain(frames: Any) -> Iterator[Any]:
    yield from frames
    yield None  # flushes the resampler


class Enroller:
    """A ``tapedeck.domain.voice_profiles.VoiceEmbedder`` over one loaded encoder."""

    def __init__(self, diarizer: Diarizer | None = None) -> None:
        self._diarizer = diarizer or Diarizer()

    def embed(self, audio: BinaryIO, start_ms: int | None, end_ms: int | None
              ) -> tuple[bytes, int] | None:
        try:
            found = self._diarizer.voice(decode_blocks(audio, start_ms, end_ms))
        except _Undecodable:
            return None
        if found is None:
            return np.zeros(256, np.float32).tobytes(), 0
        emb, speech_ms = found
        return np.asarray(emb, np.float32).tobytes(), speech_ms
