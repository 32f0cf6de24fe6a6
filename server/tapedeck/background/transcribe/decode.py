"""Streaming Ogg Opus → 16 kHz mono PCM, and cutting PCM into windows for the engine.

Contracts:
- ``iter_pcm(stream)`` reads the stream page by page and yields ``PcmPiece``s in timeline
  order; memory stays bounded by one Ogg page of decoded audio whatever the length.
  It honours RFC 7845: ``pre_skip`` is dropped, the final page's granule position trims
  the end, and the OpusHead output gain is applied. Pages are read and validated by
  ``tapedeck.oggopus.OpusStreamReader`` (CRC, sequence, granule positions), so the input must
  be ONE logical stream, as the stitcher's remux produces; chained or multiplexed streams,
  multichannel (mapping family != 0) streams and anything else that is not decodable Ogg
  Opus raise ``UndecodableAudio``.
- ``iter_windows(pieces)`` regroups pieces into windows of at most ``max_s`` seconds, cut at
  the quietest ~200 ms between ``min_s`` and ``max_s`` so words are rarely split; every
  window carries its start sample, so window-relative timestamps add up to the recording's
  timeline. Memory: one window plus one piece.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import opuslib_next
import opuslib_next.api.decoder as opus_api

from tapedeck.oggopus import GRANULE_RATE, InvalidAudio, OpusHead, OpusStreamReader

SAMPLE_RATE = 16_000
_RATIO = GRANULE_RATE // SAMPLE_RATE  # granule positions and pre_skip are 48 kHz samples
_MAX_FRAME = SAMPLE_RATE * 120 // 1000  # the longest Opus packet: 120 ms

Samples = npt.NDArray[np.float32]


class UndecodableAudio(ValueError):
    """The bytes are not a decodable Ogg Opus stream (the message says where and why)."""


@dataclass(frozen=True)
class PcmPiece:
    """Mono float32 samples in [-1, 1] at 16 kHz, starting at sample ``start``."""

    start: int
    samples: Samples


# --- Opus decoding (RFC 7845) --------------------------------------------------------------


class _OpusDecoder:
    """One libopus decoder at 16 kHz mono (stereo streams are downmixed by libopus), with a
    reusable output buffer so no per-sample Python objects are created."""

    def __init__(self, head: OpusHead) -> None:
        self._decoder = opuslib_next.Decoder(SAMPLE_RATE, 1)
        self._buffer = np.zeros(_MAX_FRAME, dtype=np.int16)
        self._pointer = self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        self._gain = float(10.0 ** (head.output_gain / (20.0 * 256.0))) / 32768.0

    def decode(self, packet: bytes) -> Samples:
        """Decode one packet into float32 samples; ``UndecodableAudio`` on a corrupt packet."""
        n = opus_api.libopus_decode(
            self._decoder.decoder_state, packet, len(packet), self._pointer, _MAX_FRAME, 0
        )
        if n < 0:
            raise UndecodableAudio(f"corrupt Opus packet ({opuslib_next.OpusError(n)})")
        return self._buffer[:n].astype(np.float32) * np.float32(self._gain)


def _to_16k(samples48: int) -> int:
    return (samples48 + _RATIO // 2) // _RATIO


def _concat(parts: list[Samples]) -> Samples:
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _open(stream: BinaryIO) -> OpusStreamReader:
    reader = OpusStreamReader(stream)
    if reader.head.mapping_family != 0:
        raise UndecodableAudio(f"unsupported channel mapping family {reader.head.mapping_family}"
                               f" ({reader.head.channels} channels); only mono and stereo")
    return reader


def iter_pcm(stream: BinaryIO) -> Iterator[PcmPiece]:
    """Decode an Ogg Opus stream incrementally (see the module docstring for the contract).

    Positions are tracked in 48 kHz units (exact, as in the stream) and converted to 16 kHz
    only to slice each page's decoded audio: output = decoder output from ``pre_skip`` to the
    end of the packets minus the EOS page's end trimming."""
    try:
        reader = _open(stream)
        decoder = _OpusDecoder(reader.head)
        begin = _to_16k(reader.head.pre_skip)
        decoded = 0  # 16 kHz samples out of the decoder so far, pre-skip included
        position = 0  # samples yielded so far (the timeline)
        while (page := reader.next_audio_page()) is not None:
            page_start48 = reader.total - page.samples  # reader.total already counts the page
            raw = _concat([decoder.decode(p) for p in page.packets()])
            stop = _to_16k(page_start48 + page.samples - page.trim) - decoded
            pcm = raw[min(len(raw), max(0, begin - decoded)) : max(0, stop)]
            decoded += len(raw)
            if len(pcm):
                yield PcmPiece(position, pcm)
                position += len(pcm)
    except InvalidAudio as exc:
        raise UndecodableAudio(str(exc)) from exc


# --- windowing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PcmWindow:
    """A stretch of the recording handed to the engine in one call."""

    start: int  # first sample on the recording timeline (16 kHz)
    samples: Samples

    @property
    def start_ms(self) -> int:
        return self.start * 1000 // SAMPLE_RATE

    @property
    def duration_ms(self) -> int:
        return len(self.samples) * 1000 // SAMPLE_RATE


_FRAME = SAMPLE_RATE // 100  # 10 ms energy frames
_SMOOTH_FRAMES = 20  # quietest 200 ms


def quietest_cut(samples: Samples, lo: int, hi: int) -> int:
    """A sample index in ``[lo, hi]`` at the centre of the quietest ~200 ms of ``samples``."""
    lo_f, hi_f = lo // _FRAME, hi // _FRAME
    if hi_f - lo_f < _SMOOTH_FRAMES:
        return hi
    frames = samples[lo_f * _FRAME : hi_f * _FRAME].reshape(-1, _FRAME)
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    smooth = np.convolve(energy, np.ones(_SMOOTH_FRAMES) / _SMOOTH_FRAMES, mode="valid")
    best = int(np.argmin(smooth))
    return (lo_f + best + _SMOOTH_FRAMES // 2) * _FRAME


def iter_windows(
    pieces: Iterable[PcmPiece], max_s: float = 30.0, min_s: float = 20.0
) -> Iterator[PcmWindow]:
    """Regroup ``pieces`` into windows of ``min_s``..``max_s`` seconds (the last may be
    shorter), cut at the quietest point; see the module docstring."""
    max_n, min_n = int(max_s * SAMPLE_RATE), int(min_s * SAMPLE_RATE)
    buffered: list[Samples] = []
    size = 0
    start: int | None = None
    for piece in pieces:
        if start is None:
            start = piece.start
        buffered.append(piece.samples)
        size += len(piece.samples)
        while size >= max_n:
            samples = _concat(buffered)
            cut = quietest_cut(samples, min_n, max_n)
            yield PcmWindow(start, samples[:cut].copy())
            rest = samples[cut:].copy()
            buffered, size, start = [rest], len(rest), start + cut
    if size and start is not None:
        yield PcmWindow(start, _concat(buffered))
