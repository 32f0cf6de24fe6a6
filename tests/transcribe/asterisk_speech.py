"""Real recorded speech for transcription tests and benchmarks.

Source: Debian ``asterisk-core-sounds-en-wav`` (one human speaker, 8 kHz, CC-BY-SA-3.0) with
the reference transcripts shipped in ``core-sounds-en.txt.gz``. Prompts are resampled to
16 kHz, joined with short pauses and encoded to Ogg Opus with ``opusenc`` (Debian
``opus-tools``), i.e. real libopus. Long recordings are made cheaply by repeating the
packets of an encoded file into one new logical stream with ``tapedeck.oggopus``.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import wave
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import numpy.typing as npt

from tapedeck.oggopus import GRANULE_RATE, OggOpusWriter, OpusStreamReader, packet_duration

Samples = npt.NDArray[np.float32]

RATE = 16_000
SOUNDS_DIRS = (Path("/usr/share/asterisk/sounds/en"),
               Path("/usr/share/asterisk/sounds/en_US_f_Allison"))
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

#: ~53 s of speech: one long prompt (22 s, so the audio crosses a 30 s window boundary)
#: and eleven short ones; no digits or symbols, so the reference text is unambiguous.
PROMPTS = (
    "demo-echotest", "agent-alreadyon", "conf-placeintoconf", "cannot-complete-as-dialed",
    "check-number-dial-again", "conf-now-recording", "confbridge-lock-no-join", "dir-nomatch",
    "feature-not-avail-line", "number-not-answering", "conf-leaderhasleft", "confbridge-removed",
)


@dataclass(frozen=True)
class SpeechFile:
    """An Ogg Opus file of real speech with its source PCM and reference text."""

    path: Path
    samples: Samples
    reference: str
    onsets_ms: tuple[int, ...]  # where each prompt's speech starts in the track


def sounds_dir() -> Path:
    """The installed prompt directory (fails loudly when the package is missing)."""
    for d in SOUNDS_DIRS:
        if (d / "demo-echotest.wav").is_file():
            return d
    raise FileNotFoundError("install the Debian package asterisk-core-sounds-en-wav")


def reference_texts() -> dict[str, str]:
    """Prompt name → reference transcript."""
    texts: dict[str, str] = {}
    with gzip.open(TRANSCRIPTS, "rt", encoding="utf-8") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";"):
                texts[name.strip()] = text.strip()
    return texts


def read_prompt(name: str) -> Samples:
    """One prompt as float32 mono at 16 kHz (band-limited 2x upsampling of the 8 kHz file)."""
    with wave.open(str(sounds_dir() / f"{name}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    x = pcm.astype(np.float64) / 32768.0
    up = np.fft.irfft(np.fft.rfft(x), n=2 * len(x)) * 2.0
    return up.astype(np.float32)


def speech_track(names: Iterable[str] = PROMPTS, pause_s: float = 0.6) -> tuple[Samples, str]:
    """Prompts joined with ``pause_s`` of silence between them, and the reference text."""
    refs = reference_texts()
    gap = np.zeros(int(pause_s * RATE), dtype=np.float32)
    parts: list[Samples] = []
    texts: list[str] = []
    for name in names:
        if parts:
            parts.append(gap)
        parts.append(read_prompt(name))
        texts.append(refs[name])
    return np.concatenate(parts), " ".join(texts)


def to_int16(samples: Samples) -> bytes:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def encode_ogg_opus(blocks: Iterable[Samples], path: Path, bitrate_kbps: int = 24) -> Path:
    """Encode 16 kHz mono blocks to an Ogg Opus file with opusenc, streaming via stdin."""
    cmd = ["opusenc", "--quiet", "--raw", "--raw-bits", "16", "--raw-rate", str(RATE),
           "--raw-chan", "1", "--bitrate", str(bitrate_kbps), "-", str(path)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        for block in blocks:
            proc.stdin.write(to_int16(block))
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"opusenc failed with {proc.returncode}")
    return path


def long_recording(track: Samples, seconds: float, pause_s: float = 1.0) -> Iterable[Samples]:
    """``track`` repeated (with pauses) up to exactly ``seconds``, yielded block by block."""
    total = int(seconds * RATE)
    gap = np.zeros(int(pause_s * RATE), dtype=np.float32)
    emitted = 0
    while emitted < total:
        for block in (track, gap):
            block = block[: total - emitted]
            emitted += len(block)
            if len(block):
                yield block


def repeat_packets(src: Path, seconds: int, dest: Path) -> Path:
    """A single-stream Ogg Opus file of exactly ``seconds`` made of ``src``'s packets
    repeated (no encoding cost: ~0.1 s per 30 minutes)."""
    with src.open("rb") as f:
        reader = OpusStreamReader(f)
        head = reader.head
        packets = [p for page in iter(reader.next_audio_page, None) for p in page.packets()]
    final = head.pre_skip + seconds * GRANULE_RATE
    with dest.open("wb") as out:
        writer = OggOpusWriter(out, serial=0x7A9E, head=head)
        total = 0
        while total < final:
            for packet in packets:
                writer.write_packet(packet)
                total += packet_duration(packet)
                if total >= final:
                    break
        writer.finish(final)
    return dest


_NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
                 "6": "six", "7": "seven", "8": "eight", "9": "nine", "0": "zero"}


#: English contractions written out, as Whisper's own ``EnglishTextNormalizer`` does for WER
#: ("you're" and "you are" are the same words; the ambiguous 's and 'd are left alone).
_CONTRACTIONS = ((r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"),
                 (r"\bcannot\b", "can not"), (r"n't\b", " not"), (r"'re\b", " are"),
                 (r"'ll\b", " will"), (r"'ve\b", " have"), (r"\bi'm\b", "i am"))


def normalize(text: str) -> str:
    """Lower case, hyphens as spaces, contractions written out, no punctuation, single
    digits spelled out."""
    text = text.lower().replace("-", " ").replace("\u2019", "'")
    for pattern, words in _CONTRACTIONS:
        text = re.sub(pattern, words, text)
    text = re.sub(r"[^\w\s']", " ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(words)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after ``normalize`` on both sides."""
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))
