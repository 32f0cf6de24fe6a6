"""One-off cross-check of the numpy GE2E forward and mel features against torch and librosa.

Not a test (torch is never a dependency). Run once, 2026-12-03, with the result below:

    .venv/bin/python tests/diarize/torch_crosscheck.py export /tmp/x.npz
    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 numpy librosa
    /tmp/tv/bin/python tests/diarize/torch_crosscheck.py compare /tmp/x.npz PRETRAINED_PT

``compare`` loads Resemblyzer's ``pretrained.pt`` with ``torch.load`` into ``nn.LSTM(40, 256,
3)`` + ``nn.Linear(256, 256)`` exactly as ``resemblyzer.VoiceEncoder`` does and runs its
forward (ReLU of the last layer's final hidden state, L2-normalized); the mels are also
recomputed with ``librosa.feature.melspectrogram`` (Resemblyzer's own call). Measured:
torch vs numpy embeddings max abs difference 5.8e-7 (cosine 1.0) on the golden input and on
real speech; librosa 0.11 vs our mel max relative error 2.1e-7.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def export(path: str) -> None:
    from tapedeck.diarize.encoder import SpeakerEncoder
    from tapedeck.diarize.features import mel_spectrogram

    import voicekit as vk

    enc = SpeakerEncoder()
    golden = np.random.default_rng(14).gamma(0.5, 0.02, size=(2, 160, 40)).astype(np.float32)
    pcm = np.concatenate([vk.prompt(f)[0] for f in vk.voice_files("allison")[3:6]])
    pcm = (pcm / max(1e-6, float(np.sqrt(np.mean(pcm ** 2)))) * 10 ** (-30 / 20))
    mel = mel_spectrogram(pcm.astype(np.float32))
    wins = np.stack([mel[i:i + 160] for i in range(0, len(mel) - 159, 50)])
    np.savez(path, golden=golden, pcm=pcm.astype(np.float32), mel=mel, wins=wins,
             e_golden=enc.embed(golden), e_wins=enc.embed(wins))


def compare(path: str, weights: str) -> None:
    import librosa
    import torch
    from torch import nn

    x = np.load(path)
    lstm, linear = nn.LSTM(40, 256, 3, batch_first=True), nn.Linear(256, 256)
    holder = nn.Module()
    holder.lstm, holder.linear = lstm, linear
    holder.load_state_dict(torch.load(weights, map_location="cpu")["model_state"], strict=False)

    def fwd(mels: Any) -> Any:
        with torch.no_grad():
            _, (h, _) = lstm(torch.from_numpy(mels))
            e = torch.relu(linear(h[-1]))
            return (e / torch.norm(e, dim=1, keepdim=True)).numpy()

    for name in ("golden", "wins"):
        t, mine = fwd(x[name]), x["e_" + name]
        print(name, "max |torch - numpy|", float(np.abs(t - mine).max()))
    lm = librosa.feature.melspectrogram(y=x["pcm"], sr=16000, n_fft=400, hop_length=160,
                                        n_mels=40).astype(np.float32).T
    print("librosa", librosa.__version__, "mel max relative error",
          float(np.abs(lm - x["mel"]).max() / np.abs(lm).max()))


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2])
    else:
        compare(sys.argv[2], sys.argv[3])
