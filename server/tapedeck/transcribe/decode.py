"""Streaming Ogg Opus → 16 kHz mono PCM, and cutting PCM into windows for the engine.

Contracts:
- ``iter_pcm(stream)`` reads the stream page by page and yields ``PcmPiece``s in timeline
  order; memory stays bounded by one Ogg page of decoded audio whatever the length.
  It honours RFC 7845: each logical stream's ``pre_skip`` is dropped, the final page's
  granule position trims the end, and the OpusHead output gain is applied. Chained streams
  (byte-concatenated files, one OpusHead per link) decode to one continuous timeline.
  Anything that is not decodable Ogg Opus raises ``UndecodableAudio``.
- ``iter_windows(pieces)`` regroups pieces into windows of at most ``max_s`` seconds, cut at
  the quietest ~200 ms between ``min_s`` and ``max_s`` so words are rarely split; every
  window carries its start sample, so window-relative timestamps add up to the recording's
  timeline. Memory: one window plus one piece.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import opuslib_next
import opuslib_next.api.decoder as opus_api

SAMPLE_RATE = 16_000
_GRANULE_RATE = 48_000  # Ogg Opus granule positions and pre_skip are in 48 kHz samples
_RATIO = _GRANULE_RATE // SAMPLE_RATE
_MAX_FRAME = SAMPLE_RATE * 120 // 1000  # the longest Opus packet: 120 ms

Samples = npt.NDArray[np.float32]


class UndecodableAudio(ValueError):
    """The bytes are not a decodable Ogg Opus stream (the message says where and why)."""


@dataclass(frozen=True)
class PcmPiece:
    """Mono float32 samples in [-1, 1] at 16 kHz, starting at sample ``start``."""

    start: int
    samples: Samples


# --- Ogg pages and packets (RFC 3533) ------------------------------------------------------
# TODO(oggopus): replace with tapedeck.oggopus once it lands, so the project has one parser.

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_FLAG_CONTINUED, _FLAG_BOS, _FLAG_EOS = 1, 2, 4


@dataclass(frozen=True)
class _Packet:
    """A complete packet; ``granule`` is the page's granule position when the packet is the
    last one completed on its page, else -1."""

    data: bytes
    serial: int
    bos: bool
    eos: bool
    granule: int


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise UndecodableAudio(f"truncated Ogg {what}")
    return data


def _iter_pages(stream: BinaryIO) -> Iterator[tuple[int, int, int, list[int], bytes]]:
    """Yield ``(flags, granule, serial, lacing, body)`` for each page; strict framing."""
    while header := stream.read(_PAGE_HEADER.size):
        if len(header) < _PAGE_HEADER.size:
            raise UndecodableAudio("truncated Ogg page header")
        magic, version, flags, granule, serial, _seq, _crc, nseg = _PAGE_HEADER.unpack(header)
        if magic != b"OggS" or version != 0:
            raise UndecodableAudio("not an Ogg stream (bad page capture pattern)")
        lacing = list(_read_exact(stream, nseg, "lacing table"))
        body = _read_exact(stream, sum(lacing), "page body")
        yield flags, granule, serial, lacing, body


def _iter_packets(stream: BinaryIO) -> Iterator[_Packet]:
    """Reassemble packets per logical stream (packets may span pages)."""
    partial: dict[int, bytes] = {}
    for flags, granule, serial, lacing, body in _iter_pages(stream):
        pending = partial.pop(serial, b"") if flags & _FLAG_CONTINUED else b""
        completed: list[bytes] = []
        pos, start = 0, 0
        for value in lacing:
            pos += value
            if value < 255:
                completed.append(pending + body[start:pos])
                pending, start = b"", pos
        if start < pos or (lacing and lacing[-1] == 255):
            partial[serial] = pending + body[start:pos]
        for i, data in enumerate(completed):
            last = i == len(completed) - 1
            yield _Packet(data, serial, bool(flags & _FLAG_BOS), bool(flags & _FLAG_EOS) and last,
                          granule if last else -1)


# --- Opus decoding (RFC 7845) --------------------------------------------------------------


@dataclass(frozen=True)
class OpusHead:
    """The fields of an OpusHead packet that decoding needs."""

    channels: int
    pre_skip: int  # 48 kHz samples
    output_gain_q8: int  # dB in Q7.8
    mapping_family: int


def parse_opus_head(packet: bytes) -> OpusHead:
    """Parse an OpusHead packet; raise ``UndecodableAudio`` if it is not one we can decode."""
    if len(packet) < 19 or packet[:8] != b"OpusHead":
        raise UndecodableAudio("first packet of the stream is not an OpusHead")
    version, channels, pre_skip, _rate, gain, family = struct.unpack_from("<BBHIhB", packet, 8)
    if version >> 4 != 0 or channels == 0:
        raise UndecodableAudio(f"unsupported OpusHead (version {version}, {channels} channels)")
    if family != 0 or channels > 2:
        raise UndecodableAudio(f"unsupported channel mapping family {family} ({channels} ch)")
    return OpusHead(channels, pre_skip, gain, family)


class _OpusDecoder:
    """One libopus decoder at 16 kHz mono (stereo streams are downmixed by libopus), with a
    reusable output buffer so no per-sample Python objects are created."""

    def __init__(self, head: OpusHead) -> None:
        self._decoder = opuslib_next.Decoder(SAMPLE_RATE, 1)
        self._buffer = np.zeros(_MAX_FRAME, dtype=np.int16)
        self._pointer = self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        self._gain = float(10.0 ** (head.output_gain_q8 / (20.0 * 256.0))) / 32768.0

    def decode(self, packet: bytes) -> Samples:
        """Decode one packet into float32 samples; ``UndecodableAudio`` on a corrupt packet."""
        n = opus_api.libopus_decode(
            self._decoder.decoder_state, packet, len(packet), self._pointer, _MAX_FRAME, 0
        )
        if n < 0:
            raise UndecodableAudio(f"corrupt Opus packet ({opuslib_next.OpusError(n)})")
        return self._buffer[:n].astype(np.float32) * np.float32(self._gain)


class _Link:
    """Decoding state of one logical stream (one link of a possibly chained file).

    ``decoded`` counts samples (16 kHz) produced by the decoder so far, including pre-skip;
    output is the decoder output minus the first ``skip`` samples, cut at ``end`` when the
    last page's granule position says the stream is shorter than its packets.
    """

    def __init__(self, serial: int, head: OpusHead) -> None:
        self.serial = serial
        self.decoder = _OpusDecoder(head)
        self.skip = _to_16k(head.pre_skip)
        self.headers_left = 1  # OpusTags
        self.decoded = 0
        self.pending: list[Samples] = []

    def feed(self, packet: _Packet) -> Samples:
        """Take one packet of this stream; return the samples it completes (often none:
        output is released at page ends, where the granule position allows end trimming)."""
        if self.headers_left:
            if not packet.data.startswith(b"OpusTags"):
                raise UndecodableAudio("missing OpusTags header")
            self.headers_left -= 1
            return _EMPTY
        self.pending.append(self.decoder.decode(packet.data))
        if packet.granule < 0:
            return _EMPTY
        return self._take_page(packet.granule, final=packet.eos)

    def _take_page(self, granule: int, final: bool) -> Samples:
        """Everything decoded since the last page end, with pre-skip and end trimming."""
        pcm = _concat(self.pending)
        self.pending = []
        first = self.decoded
        self.decoded += len(pcm)
        stop = len(pcm)
        if final:
            stop = min(stop, max(0, _to_16k(granule) - first))
        begin = min(stop, max(0, self.skip - first))
        return pcm[begin:stop]


def _to_16k(samples48: int) -> int:
    return (samples48 + _RATIO // 2) // _RATIO


_EMPTY: Samples = np.zeros(0, dtype=np.float32)


def _concat(parts: list[Samples]) -> Samples:
    if not parts:
        return _EMPTY
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def iter_pcm(stream: BinaryIO) -> Iterator[PcmPiece]:
    """Decode an Ogg Opus stream incrementally (see the module docstring for the contract)."""
    link: _Link | None = None
    position = 0
    for packet in _iter_packets(stream):
        if packet.bos:
            if link is not None and link.headers_left:
                continue  # a multiplexed stream's BOS: only the first Opus stream is decoded
            link = _Link(packet.serial, parse_opus_head(packet.data))  # first or next link
            continue
        if link is None:
            raise UndecodableAudio("Ogg stream does not start with a beginning-of-stream page")
        if packet.serial != link.serial:
            continue
        pcm = link.feed(packet)
        if len(pcm):
            yield PcmPiece(position, pcm)
            position += len(pcm)
    if link is None:
        raise UndecodableAudio("no Ogg Opus stream found")


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
