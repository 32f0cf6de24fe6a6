"""Real test audio: human speech from Debian packages, resampled with sox.

Sources (installed by the project's setup): the Asterisk English prompts
(``asterisk-core-sounds-en-wav``, one human speaker, 8 kHz), the ALSA channel test voices
(``alsa-utils``) and ``espeak-ng`` synthetic speech. Everything is returned as int16
little-endian mono PCM at the requested rate (16 kHz by default), deterministic for a given
request. Nothing here touches the network.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
ALSA_DIR = Path("/usr/share/sounds/alsa")
BYTES_PER_SAMPLE = 2


def to_pcm(path: Path | str, rate: int = 16_000) -> bytes:
    """Any audio file sox can read → int16 LE mono PCM at ``rate``."""
    result = subprocess.run(
        ["sox", "-V1", str(path), "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1",
         "-r", str(rate), "-L", "-"],
        check=True, capture_output=True,
    )
    return result.stdout


def espeak_pcm(text: str, rate: int = 16_000) -> bytes:
    """Synthetic speech for ``text`` via espeak-ng (its WAV piped through sox)."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True,
                         capture_output=True).stdout
    result = subprocess.run(
        ["sox", "-V1", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16",
         "-c", "1", "-r", str(rate), "-L", "-"],
        input=wav, check=True, capture_output=True,
    )
    return result.stdout


def speech_files() -> list[Path]:
    """Real human speech recordings available on this machine, in a stable order."""
    files = sorted(ASTERISK_DIR.glob("*.wav"))
    files += sorted(p for p in ALSA_DIR.glob("*.wav") if p.name != "Noise.wav")
    if not files:
        raise FileNotFoundError("no speech WAVs: install asterisk-core-sounds-en-wav/alsa-utils")
    return files


@cache
def _file_pcm(path: Path, rate: int) -> bytes:
    return to_pcm(path, rate)


def speech_pcm(seconds: float, rate: int = 16_000, *, start: int = 0) -> bytes:
    """Exactly ``seconds`` of real speech (prompts back to back, looping if needed),
    beginning with speech file number ``start``.
    """
    wanted = round(seconds * rate) * BYTES_PER_SAMPLE
    files = speech_files()
    out = bytearray()
    index = start
    while len(out) < wanted:
        out += _file_pcm(files[index % len(files)], rate)
        index += 1
    return bytes(out[:wanted])


def iter_speech_pcm(
    seconds: float, block_seconds: float = 300.0, rate: int = 16_000
) -> Iterator[bytes]:
    """``seconds`` of speech as blocks of ``block_seconds`` (for hour-long inputs without
    holding the whole PCM in memory); consecutive blocks continue through the prompt list.
    """
    files = speech_files()
    block = round(block_seconds * rate) * BYTES_PER_SAMPLE
    remaining = round(seconds * rate) * BYTES_PER_SAMPLE
    buf = bytearray()
    index = 0
    while remaining > 0:
        while len(buf) < min(block, remaining):
            buf += to_pcm(files[index % len(files)], rate)
            index += 1
        size = min(block, remaining)
        yield bytes(buf[:size])
        del buf[:size]
        remaining -= size
