"""Mel features of the GE2E encoder, in numpy (what Resemblyzer computes with librosa).

16 kHz mono, 25 ms Hann window (``n_fft`` 400, periodic), 10 ms hop, centred frames with zero
padding, power spectrogram (``|STFT|²``, not log), 40 mel bands with librosa's default Slaney
mel scale and Slaney area normalization, 0 Hz to 8 kHz. Frame ``k`` is centred on sample
``k * HOP``.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 40

_F_SP = 200.0 / 3  # Slaney: linear part, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa ``htk=False``)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log = hz >= _MIN_LOG_HZ
    mel[log] = _MIN_LOG_MEL + np.log(hz[log] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log = mel >= _MIN_LOG_MEL
    hz[log] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log] - _MIN_LOG_MEL))
    return hz


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """``(n_mels, 1 + n_fft // 2)`` triangular filters, Slaney-normalized (librosa's
    ``filters.mel`` defaults)."""
    fft_freqs = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(np.array([0.0]))[0],
                                  hz_to_mel(np.array([sr / 2]))[0], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_FILTERS = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """``(frames, N_MELS)`` float32 power mel spectrogram of float32 samples in [-1, 1];
    ``1 + len(samples) // HOP`` frames."""
    x = np.pad(np.asarray(samples, dtype=np.float32), N_FFT // 2)
    n_frames = 1 + (len(x) - N_FFT) // HOP
    if n_frames <= 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, N_FFT), strides=(x.strides[0] * HOP, x.strides[0]))
    spec = np.fft.rfft(frames * _WINDOW, axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    return np.asarray(power @ _FILTERS.T, np.float32)
