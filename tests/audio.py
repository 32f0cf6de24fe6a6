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


# -- the reference tools (Debian opus-tools, ffmpeg) ---------------------------------------------


def opusinfo_problems(path: Path | str) -> list[str]:
    """Lines where ``opusinfo`` reports a warning or an error (empty: the file is clean).
    A non-zero exit status counts as a problem too.
    """
    result = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if "warning" in line.lower() or "error" in line.lower()]
    if result.returncode != 0:
        problems.append(f"opusinfo exit status {result.returncode}")
    return problems


def opusdec_pcm(path: Path | str, rate: int = 48_000) -> bytes:
    """Decode with ``opusdec`` (libopusfile: pre-skip, end trimming, chained streams) to int16
    PCM at ``rate``, no dithering.
    """
    result = subprocess.run(
        ["opusdec", "--quiet", "--rate", str(rate), "--no-dither", str(path), "-"],
        check=True, capture_output=True,
    )
    return result.stdout


def ffmpeg_pcm(path: Path | str, rate: int = 48_000) -> bytes:
    """Decode with ffmpeg's own Opus decoder to int16 mono PCM at ``rate``."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(rate),
         "-"],
        check=True, capture_output=True,
    )
    return result.stdout


def ffprobe_duration(path: Path | str) -> float:
    """``ffprobe -show_entries format=duration`` in seconds."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         str(path)],
        check=True, capture_output=True, text=True,
    )
    return float(result.stdout.strip())


def opusenc(wav: Path | str, out: Path | str, *args: str) -> Path:
    """Encode with the reference encoder/muxer ``opusenc`` (libopusenc)."""
    subprocess.run(["opusenc", "--quiet", *args, str(wav), str(out)], check=True,
                   capture_output=True)
    return Path(out)


def write_wav(pcm: bytes, path: Path | str, rate: int = 16_000, channels: int = 1) -> Path:
    """int16 LE PCM → WAV file (via sox)."""
    subprocess.run(
        ["sox", "-V1", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", str(channels),
         "-r", str(rate), "-L", "-", str(path)],
        input=pcm, check=True, capture_output=True,
    )
    return Path(path)


@cache
def ffprobe_duration_includes_pre_skip() -> bool:
    """Whether this ffprobe's format duration counts the pre-skip (ffmpeg 5.x does: it reports
    the last granule position / 48 kHz). Decided on a file made by the reference muxer
    (``opusenc``) holding exactly 1.000 s of audio.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(speech_pcm(1.0), Path(tmp) / "one.wav")
        reference = opusenc(wav, Path(tmp) / "one.opus")
        seconds = ffprobe_duration(reference)
    if abs(seconds - 1.0) < 0.0005:
        return False
    if abs(seconds - (1.0 + 312 / 48_000)) < 0.0005:
        return True
    raise AssertionError(f"unexpected ffprobe duration {seconds} for 1.000 s (+312 pre-skip)")


def low_noise_pcm(seconds: float, level: float, rate: int = 16_000, *, seed: int = 0) -> bytes:
    """``seconds`` of steady Gaussian background noise with standard deviation ``level``
    (int16 units: 3 ≈ a quiet microphone's self-noise, 25 ≈ a quiet room), deterministic."""
    import numpy as np

    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, level, round(seconds * rate))
    return bytes(np.clip(noise, -32768, 32767).astype("<i2").tobytes())


def day_mix_pcm(seconds: float, rate: int = 16_000, *, speech_share: float = 0.2,
                period_s: float = 60.0) -> bytes:
    """A day-like mix for a wearable: each ``period_s`` holds ``speech_share`` of real speech
    (the Asterisk prompts, continuing through the list), then half the rest near-silence
    (microphone self-noise) and half low background noise. Exactly ``seconds`` long."""
    out = bytearray()
    period = 0
    while len(out) < round(seconds * rate) * BYTES_PER_SAMPLE:
        talk = period_s * speech_share
        quiet = (period_s - talk) / 2
        out += speech_pcm(talk, rate, start=period * 7)
        out += low_noise_pcm(quiet, 3, rate, seed=2 * period)
        out += low_noise_pcm(quiet, 25, rate, seed=2 * period + 1)
        period += 1
    return bytes(out[: round(seconds * rate) * BYTES_PER_SAMPLE])
