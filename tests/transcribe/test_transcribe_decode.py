"""Streaming Ogg Opus decoding (real libopus files from opusenc) and windowing."""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tapedeck.background.transcribe.decode import (
    SAMPLE_RATE,
    PcmPiece,
    Samples,
    UndecodableAudio,
    iter_pcm,
    iter_windows,
    quietest_cut,
)
from tapedeck.oggopus import OggOpusWriter, OpusStreamReader

import asterisk_speech as speech
from asterisk_speech import SpeechFile


def _decode(data: bytes) -> tuple[list[PcmPiece], Samples]:
    pieces = list(iter_pcm(io.BytesIO(data)))
    return pieces, np.concatenate([p.samples for p in pieces])


def _corr(a: Samples, b: Samples) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_decoded_speech_has_the_exact_length_and_alignment(speech_file: SpeechFile) -> None:
    """pre_skip is dropped and the end trimmed: same sample count as the encoder's input,
    and best aligned at lag 0 (a pre-skip error would shift the signal)."""
    source = speech_file.samples
    pieces, pcm = _decode(speech_file.path.read_bytes())
    assert len(pcm) == len(source)
    assert [p.start for p in pieces] == list(np.cumsum([0] + [len(p.samples) for p in pieces])[:-1])
    at_zero = _corr(pcm, source)
    assert at_zero > 0.99
    for lag in (1, 2, 8):
        assert _corr(pcm[lag:], source[:-lag]) < at_zero
        assert _corr(pcm[:-lag], source[lag:]) < at_zero


@pytest.mark.parametrize("n", [1, 319, 16_000 * 3 + 123])
def test_odd_lengths_are_trimmed_exactly_like_opusdec(tmp_path: Path, n: int) -> None:
    source = np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32)
    path = speech.encode_ogg_opus([source], tmp_path / "odd.opus")
    _, pcm = _decode(path.read_bytes())
    assert len(pcm) == n
    subprocess.run(["opusdec", "--quiet", "--rate", "16000", str(path), str(tmp_path / "o.wav")],
                   check=True)
    with wave.open(str(tmp_path / "o.wav")) as w:
        assert w.getnframes() == n


def test_stereo_streams_are_downmixed_to_mono(tmp_path: Path, speech_file: SpeechFile) -> None:
    left = speech_file.samples[: SAMPLE_RATE * 5]
    right = (0.5 * left).astype(np.float32)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    path = tmp_path / "stereo.opus"
    cmd = ["opusenc", "--quiet", "--raw", "--raw-rate", "16000", "--raw-chan", "2", "-", str(path)]
    subprocess.run(cmd, input=speech.to_int16(stereo), check=True)
    _, pcm = _decode(path.read_bytes())
    assert len(pcm) == len(left)
    assert _corr(pcm, ((left + right) / 2).astype(np.float32)) > 0.98


def test_headers_only_stream_decodes_to_nothing(tmp_path: Path) -> None:
    path = speech.encode_ogg_opus([np.zeros(0, dtype=np.float32)], tmp_path / "empty.opus")
    assert list(iter_pcm(io.BytesIO(path.read_bytes()))) == []


def _vorbis(tmp_path: Path) -> bytes:
    path = tmp_path / "v.ogg"
    subprocess.run(["sox", "-n", "-r", "16000", str(path), "synth", "1", "sine", "440"], check=True)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "vorbis", "headless"])
def test_not_decodable_ogg_opus_raises(kind: str, tmp_path: Path,
                                       speech_file: SpeechFile) -> None:
    data = speech_file.path.read_bytes()
    first_audio = data.index(b"OggS", data.index(b"OpusTags"))
    bad = {
        "empty": b"",
        "garbage": bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)),
        "truncated": data[: len(data) // 2 + 11],
        "vorbis": _vorbis(tmp_path) if kind == "vorbis" else b"",
        "headless": data[first_audio:],  # audio pages without OpusHead/OpusTags
    }[kind]
    reason = {
        "empty": "empty stream",
        "garbage": "no Ogg page at byte 0",
        "truncated": "stream ends inside",  # a page header or a page, by where the cut falls
        "vorbis": "first packet is not an OpusHead",
        "headless": "first page is not a beginning-of-stream page",
    }[kind]
    with pytest.raises(UndecodableAudio, match=f"^{reason}"):
        for _ in iter_pcm(io.BytesIO(bad)):
            pass


# --- windowing ----------------------------------------------------------------------------


def _pieces(samples: Samples, size: int) -> list[PcmPiece]:
    return [PcmPiece(i, samples[i : i + size]) for i in range(0, len(samples), size)]


def test_windows_cover_the_audio_exactly_within_bounds() -> None:
    rng = np.random.default_rng(3)
    audio = rng.normal(0, 0.1, SAMPLE_RATE * 95 + 77).astype(np.float32)
    windows = list(iter_windows(_pieces(audio, 7_681)))
    assert np.array_equal(np.concatenate([w.samples for w in windows]), audio)
    starts = [w.start for w in windows]
    assert starts == list(np.cumsum([0] + [len(w.samples) for w in windows])[:-1])
    assert all(len(w.samples) <= 30 * SAMPLE_RATE for w in windows)
    assert all(len(w.samples) >= 20 * SAMPLE_RATE for w in windows[:-1])


def test_windows_are_cut_in_pauses() -> None:
    """Speech-like noise with 300 ms pauses at 24.0 s and 49.5 s: cuts land inside them."""
    audio = np.random.default_rng(4).normal(0, 0.1, SAMPLE_RATE * 70).astype(np.float32)
    pauses = [(24.0, 24.3), (49.5, 49.8)]
    for a, b in pauses:
        audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] = 0.0
    windows = list(iter_windows(_pieces(audio, 16_000)))
    cuts = [w.start / SAMPLE_RATE for w in windows[1:]]
    assert len(cuts) == 2
    for cut, (a, b) in zip(cuts, pauses, strict=True):
        assert a < cut < b


def test_quietest_cut_falls_back_to_the_limit_on_short_ranges() -> None:
    audio = np.zeros(SAMPLE_RATE, dtype=np.float32)
    assert quietest_cut(audio, 1000, 2000) == 2000


def test_short_audio_is_one_window_and_empty_audio_none() -> None:
    audio = np.ones(SAMPLE_RATE * 3, dtype=np.float32)
    assert [len(w.samples) for w in iter_windows(_pieces(audio, 500))] == [len(audio)]
    assert list(iter_windows([])) == []


# --- memory on long recordings --------------------------------------------------------------

# Peak RSS from VmHWM: ru_maxrss would report the parent's size (Linux keeps the pre-exec
# high-water mark across fork/vfork + exec).
_MEASURE = """
import re, sys
from pathlib import Path
from tapedeck.background.transcribe.decode import iter_pcm, iter_windows
n = 0
with open(sys.argv[1], "rb") as f:
    for w in iter_windows(iter_pcm(f)):
        n += len(w.samples)
print(n, re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def _peak_rss_kib(path: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def test_decode_and_windowing_memory_does_not_grow_with_duration(
    tmp_path: Path, long_speech: tuple[Path, Path]
) -> None:
    """Peak RSS for a 30-minute recording stays within 16 MiB of a 5-minute one (a decoder
    that kept the audio would need ~96 MiB more for the extra 25 minutes of float32)."""
    short, long = long_speech
    n_short, rss_short = _peak_rss_kib(short)
    n_long, rss_long = _peak_rss_kib(long)
    print(f"peak RSS: 5 min {rss_short / 1024:.1f} MiB, 30 min {rss_long / 1024:.1f} MiB")
    assert (n_short, n_long) == (5 * 60 * SAMPLE_RATE, 30 * 60 * SAMPLE_RATE)
    assert rss_long - rss_short < 16 * 1024


def test_output_gain_from_the_opus_head_is_applied(tmp_path: Path,
                                                   speech_file: SpeechFile) -> None:
    """Same packets, OpusHead output gain +6.02 dB (Q7.8: 1541) → twice the amplitude."""
    with speech_file.path.open("rb") as f:
        reader = OpusStreamReader(f)
        head = reader.head
        pages = list(iter(reader.next_audio_page, None))
    gained = tmp_path / "gain.opus"
    with gained.open("wb") as out:
        writer = OggOpusWriter(out, 1, replace(head, output_gain=1541))
        for packet in [p for page in pages for p in page.packets()]:
            writer.write_packet(packet)
        writer.finish(reader.final_granule)
    _, plain = _decode(speech_file.path.read_bytes())
    _, louder = _decode(gained.read_bytes())
    assert len(louder) == len(plain)
    ratio = float(np.sum(np.abs(louder)) / np.sum(np.abs(plain)))
    assert ratio == pytest.approx(2.0, rel=1e-3)
