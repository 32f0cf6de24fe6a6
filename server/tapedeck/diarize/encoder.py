"""The GE2E speaker encoder (Resemblyzer's network) in numpy.

Network: 3-layer LSTM (40 → 256 → 256 → 256, torch gate order i, f, g, o, two biases per
layer), the last layer's final hidden state → linear 256x256 → ReLU → L2 normalization. Input:
``PARTIAL_FRAMES`` (160 = 1.6 s) mel frames of ``features.mel_spectrogram``.

The forward is batched over windows: each layer projects its whole input sequence in one
matrix product, then steps through time for all windows at once (one ``(B, 256) @ (256, 1024)``
product per step), so the Python loop runs 3 x 160 times per batch, not per window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tapedeck.diarize.weights import load_weights

PARTIAL_FRAMES = 160
HIDDEN = 256
EMBEDDING = 256
LAYERS = 3
#: Windows per forward batch: bounds memory (~B x 160 x 1024 x 4 bytes of gate inputs).
BATCH = 128


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


class SpeakerEncoder:
    """Embeds mel windows into unit-norm 256-d voice vectors (cosine = dot product)."""

    def __init__(self, weights_path: Path | None = None) -> None:
        w = load_weights(weights_path)
        self._layers = [
            (np.ascontiguousarray(w[f"lstm.weight_ih_l{k}"].T),
             np.ascontiguousarray(w[f"lstm.weight_hh_l{k}"].T),
             w[f"lstm.bias_ih_l{k}"] + w[f"lstm.bias_hh_l{k}"])
            for k in range(LAYERS)
        ]
        self._linear_w = np.ascontiguousarray(w["linear.weight"].T)
        self._linear_b = w["linear.bias"]

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """``(B, T, 40)`` mel windows → ``(B, 256)`` float32 unit vectors (a window of silence
        embeds to zeros)."""
        mels = np.asarray(mels, dtype=np.float32)
        if mels.ndim != 3 or mels.shape[2] != self._layers[0][0].shape[0]:
            raise ValueError(f"expected (batch, frames, 40) mels, got {mels.shape}")
        out = [self._embed_batch(mels[i:i + BATCH]) for i in range(0, len(mels), BATCH)]
        return np.concatenate(out) if out else np.zeros((0, EMBEDDING), np.float32)

    def _embed_batch(self, x: np.ndarray) -> np.ndarray:
        seq = x
        h = np.zeros((len(x), HIDDEN), np.float32)
        for k, (w_ih, w_hh, bias) in enumerate(self._layers):
            last = k == LAYERS - 1
            seq, h = _lstm_layer(seq, w_ih, w_hh, bias, keep_sequence=not last)
        raw = np.maximum(h @ self._linear_w + self._linear_b, 0.0)
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norm, 1e-12), np.float32)


def _lstm_layer(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray,
                keep_sequence: bool) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM layer over ``(B, T, in)``: the output sequence (when kept) and final h."""
    b, t, _ = x.shape
    gates_in = (x.reshape(b * t, -1) @ w_ih + bias).reshape(b, t, 4 * HIDDEN)
    h = np.zeros((b, HIDDEN), np.float32)
    c = np.zeros((b, HIDDEN), np.float32)
    out = np.empty((b, t, HIDDEN), np.float32) if keep_sequence else x[:, :0, :0]
    for step in range(t):
        g = gates_in[:, step] + h @ w_hh
        i = _sigmoid(g[:, :HIDDEN])
        f = _sigmoid(g[:, HIDDEN:2 * HIDDEN])
        cand = np.tanh(g[:, 2 * HIDDEN:3 * HIDDEN])
        o = _sigmoid(g[:, 3 * HIDDEN:])
        c = f * c + i * cand
        h = o * np.tanh(c)
        if keep_sequence:
            out[:, step] = h
    return out, h
