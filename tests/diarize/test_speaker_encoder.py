"""The numpy GE2E forward: a pinned golden vector, batching, and its behaviour on real voices.

Golden vector derivation (computed once with this module, numpy 2.x, float32): the input is
``golden_mels()``, 2 windows of 160 x 40 values drawn from ``numpy.random.default_rng(14)``
``gamma(0.5, 0.02)`` (power-mel-like magnitudes); pinned to 1e-4: which 8 dimensions of each
embedding are largest, their values, and how many dimensions are positive. torch is never
installed for the project; the forward was cross-checked ONCE against torch 2.13.0 running
Resemblyzer's network in a throwaway venv (``torch_crosscheck.py`` beside this file: max
difference 5.8e-7; the mels against librosa: 2.1e-7 relative). Here it is shown right by its
behaviour (tests below) and pinned, so that any change to the loader, the gate order or the
arithmetic is caught.
"""

from __future__ import annotations

import numpy as np

from tapedeck.diarize.encoder import PARTIAL_FRAMES, SpeakerEncoder
from tapedeck.diarize.features import mel_filterbank, mel_spectrogram

import voicekit as vk

#: (dimension, value) of the 8 largest components of each golden embedding; 132 and 128 of
#: the 256 components are positive (the rest are 0 after the ReLU).
GOLDEN = [
    ({9: 0.15612, 15: 0.20140, 16: 0.15583, 28: 0.17435, 137: 0.20417, 152: 0.16571,
      155: 0.15621, 168: 0.16010}, 132),
    ({9: 0.16866, 15: 0.22938, 16: 0.16529, 137: 0.18245, 152: 0.18715, 155: 0.15547,
      188: 0.14974, 234: 0.15918}, 128),
]


def golden_mels() -> np.ndarray:
    rng = np.random.default_rng(14)
    return rng.gamma(0.5, 0.02, size=(2, PARTIAL_FRAMES, 40)).astype(np.float32)


def test_golden_vector(encoder: SpeakerEncoder) -> None:
    e = encoder.embed(golden_mels())
    assert e.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    for row, (top, positive) in zip(e, GOLDEN, strict=True):
        assert sorted(np.argsort(-row)[:8].tolist()) == sorted(top)
        np.testing.assert_allclose(row[list(top)], list(top.values()), atol=1e-4)
        assert int((row > 0).sum()) == positive


def test_batched_equals_one_by_one(encoder: SpeakerEncoder) -> None:
    mels = golden_mels()
    together = encoder.embed(mels)
    alone = np.concatenate([encoder.embed(mels[i:i + 1]) for i in range(len(mels))])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_filterbank_is_slaney() -> None:
    fb = mel_filterbank()
    assert fb.shape == (40, 201)
    # Slaney area normalization: each triangle's peak is 2 / (its width in Hz).
    freqs = np.linspace(0, 8000, 201)
    peaks = freqs[np.argmax(fb, axis=1)]
    assert np.all(np.diff(peaks) > 0)
    # Below 1 kHz the Slaney scale is linear: equally spaced centres (200/3 Hz apart).
    low = peaks[peaks < 900]
    assert np.allclose(np.diff(low), 200 / 3, atol=40 + 1e-9)
    # A 1 kHz tone lands in the band whose peak is nearest 1 kHz.
    t = np.arange(16000) / 16000
    mel = mel_spectrogram(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert mel.shape == (101, 40)
    assert abs(peaks[int(np.argmax(mel[50]))] - 1000) < 80


def _voice_embedding(encoder: SpeakerEncoder, voice: str, first: int, count: int) -> np.ndarray:
    out = []
    for path in vk.voice_files(voice)[first:first + count]:
        pcm, a, b = vk.prompt(path)
        mel = mel_spectrogram(pcm[a:b] * np.float32(10 ** (-30 / 20) / max(
            1e-6, float(np.sqrt(np.mean(pcm[a:b] ** 2))))))
        if len(mel) < PARTIAL_FRAMES:
            mel = np.pad(mel, ((0, PARTIAL_FRAMES - len(mel)), (0, 0)))
        wins = np.stack([mel[i:i + PARTIAL_FRAMES]
                         for i in range(0, len(mel) - PARTIAL_FRAMES + 1, 50)])
        out.append(encoder.embed(wins).mean(0))
    mean = np.mean(out, axis=0)
    return np.asarray(mean / np.linalg.norm(mean))


def test_same_voice_is_closer_than_other_voices(encoder: SpeakerEncoder) -> None:
    """Two disjoint sets of prompts of one person embed closer together than either does to
    another person's prompts (real recordings, see voicekit)."""
    voices = ["allison", "carlo", "irina"]
    a = {v: _voice_embedding(encoder, v, 0, 4) for v in voices}
    b = {v: _voice_embedding(encoder, v, 40, 4) for v in voices}
    for v in voices:
        same = float(a[v] @ b[v])
        assert same > 0.85, (v, same)
        for w in voices:
            if w != v:
                assert same - float(a[v] @ b[w]) > 0.05, (v, w)
