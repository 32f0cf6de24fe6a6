"""Opus encoding for the device agent: one continuous encoder cut into seamless chunk files.

``OpusChunker`` keeps ONE libopus encoder for the whole recording and cuts its packet stream
into standard Ogg Opus files of ``chunk_duration_ms`` each:

* chunk 1 has the encoder's real pre-skip (its lookahead, 312 samples at 48 kHz for 16 kHz
  VOIP) and plays recording samples [0, F - L) where F is the chunk length and L the
  lookahead (all sample numbers in 48 kHz units, the Ogg Opus timeline);
* chunk k > 1 starts with the previous chunk's last packets (80 ms: 4 packets of 20 ms) and a
  pre-skip covering exactly them (3840), so alone it plays recording samples
  [(k-1)F - L, kF - L): exactly F samples, with a decoder warmed up on the overlap;
* ``finish()`` pads the last frame with silence, encodes extra silent frames until the
  lookahead is flushed, and trims the end with the final granule position, so the chunks
  together cover exactly the samples fed.

``tapedeck.oggopus.remux`` drops the repeated packets again, which makes the stitched file
decode bit-identically to encoding the whole recording as one stream.

``dtx=True`` turns on libopus discontinuous transmission (``OPUS_SET_DTX``): during silence
and steady low background noise the encoder emits 1-byte packets (a TOC byte with an empty
frame, which a decoder plays as comfort noise) plus an 8-byte update every 400 ms, instead
of full frames. Every packet still stands for one 20 ms frame: the Ogg writer advances the
granule position by ``packet_samples`` for each, so the timeline (chunk lengths, the
stitched duration, transcript timestamps) is exactly the same as without DTX.
"""

from __future__ import annotations

import importlib
import io
import secrets
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tapedeck.oggopus import GRANULE_RATE, OggOpusWriter, OpusHead, OpusTags, samples_to_ms

DEFAULT_VENDOR = "tapedeck-agent"


def load_opuslib() -> ModuleType:
    """The ctypes wrapper over libopus: ``opuslib_next`` (maintained fork) or ``opuslib``."""
    try:
        return importlib.import_module("opuslib_next")
    except ImportError:  # pragma: no cover - depends on the installed fork
        return importlib.import_module("opuslib")


@dataclass(frozen=True)
class EncodedChunk:
    """One chunk file. ``start_sample``/``end_sample`` locate the audio it plays in the
    recording, in 48 kHz samples (end exclusive).
    """

    part: int
    data: bytes
    start_sample: int
    end_sample: int
    pre_skip: int
    packets: int

    @property
    def samples(self) -> int:
        """Playable samples (48 kHz)."""
        return self.end_sample - self.start_sample

    @property
    def duration_ms(self) -> int:
        """Playable duration, milliseconds rounded half up."""
        return samples_to_ms(self.samples)


class OpusChunker:
    """Feed int16 little-endian interleaved PCM of any length; get finished chunk files.

    ``feed()`` returns the chunks completed by that call (usually none): a chunk is handed out
    when the first packet after it is encoded (20 ms later), so that a recording ending
    exactly on a chunk boundary does not produce a 6.5 ms last chunk; ``finish()`` returns the
    rest, ending the recording. The last chunk is up to 2 packets longer than
    ``chunk_duration_ms`` when the remainder and the lookahead flush land after a full chunk
    (60 min in 5-min chunks is 12 chunks). ``chunk_duration_ms=None`` makes one single chunk (a
    whole-recording encode). ``frame_ms`` is 10, 20, 40 or 60; ``chunk_duration_ms`` must be a
    multiple of it. ``dtx`` turns on discontinuous transmission (see the module docstring).
    """

    def __init__(
        self, *, sample_rate: int = 16_000, channels: int = 1,
        chunk_duration_ms: int | None = 300_000, frame_ms: int = 20, bitrate: int = 24_000,
        complexity: int = 10, application: str = "voip", overlap_ms: int = 80,
        serial: int | None = None, vendor: str = DEFAULT_VENDOR, dtx: bool = False,
    ) -> None:
        _check_format(sample_rate, frame_ms, chunk_duration_ms)
        opus = load_opuslib()
        self._encoder: Any = opus.Encoder(sample_rate, channels, application)
        self._encoder.bitrate = bitrate
        self._encoder.complexity = complexity
        self._encoder.dtx = int(dtx)
        self.dtx = dtx
        self.sample_rate = sample_rate
        self.channels = channels
        self._factor = GRANULE_RATE // sample_rate
        self._frame = sample_rate * frame_ms // 1000  # samples per channel per packet
        self._frame_bytes = self._frame * 2 * channels
        self.packet_samples = frame_ms * GRANULE_RATE // 1000
        self.lookahead = int(self._encoder.lookahead) * self._factor
        self._per_chunk = None if chunk_duration_ms is None else chunk_duration_ms // frame_ms
        self._overlap = -(-overlap_ms // frame_ms)
        self._serial = secrets.randbits(32) if serial is None else serial
        self._tags = OpusTags(vendor)
        self._pcm = bytearray()
        self._fed = 0  # samples per channel fed
        self._encoded = 0  # packets encoded
        self._recent: deque[bytes] = deque(maxlen=self._overlap)
        self._packets: list[bytes] = []  # current chunk, overlap prefix included
        self._prefix = 0  # overlap packets at the start of the current chunk
        self._first = 0  # index (in the recording) of the current chunk's first new packet
        self._part = 1
        self._finished = False

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[EncodedChunk]:
        """Encode ``pcm``; returns the chunks it completed."""
        if self._finished:
            raise ValueError("feed() after finish()")
        self._pcm += pcm
        out: list[EncodedChunk] = []
        usable = len(self._pcm) - len(self._pcm) % self._frame_bytes
        for offset in range(0, usable, self._frame_bytes):
            self._encode(bytes(self._pcm[offset : offset + self._frame_bytes]), out)
        del self._pcm[:usable]
        self._fed += usable // (2 * self.channels)
        return out

    def finish(self) -> list[EncodedChunk]:
        """Flush the encoder and return the remaining chunk(s); ``[]`` if nothing was fed."""
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        if len(self._pcm) % (2 * self.channels):
            raise ValueError("PCM ended inside a sample")
        self._fed += len(self._pcm) // (2 * self.channels)
        if self._fed == 0:
            return []
        out: list[EncodedChunk] = []
        silence = bytes(self._frame_bytes)
        if self._pcm:
            self._encode(bytes(self._pcm) + silence[len(self._pcm) :], out, last=True)
            self._pcm.clear()
        needed = -(-(self._fed * self._factor + self.lookahead) // self.packet_samples)
        while self._encoded < needed:
            self._encode(silence, out, last=True)
        out.append(self._emit(final=True))
        return out

    def _chunk_full(self) -> bool:
        return self._per_chunk is not None and len(self._packets) - self._prefix == \
            self._per_chunk

    def _encode(self, frame: bytes, out: list[EncodedChunk], *, last: bool = False) -> None:
        """Encode one frame into the current chunk, first emitting the current chunk if it is
        full, except for the ``last`` frames of the recording (the padded remainder and the
        lookahead flush), which extend the final chunk instead of starting a tiny one.
        """
        if self._chunk_full() and not last:
            out.append(self._emit(final=False))
        packet = bytes(self._encoder.encode(frame, self._frame))
        self._packets.append(packet)
        self._recent.append(packet)
        self._encoded += 1

    def _emit(self, *, final: bool) -> EncodedChunk:
        """Write the current chunk as an Ogg Opus file and start the next one."""
        step = self.packet_samples
        new = len(self._packets) - self._prefix
        if self._part == 1:
            start, pre_skip = 0, self.lookahead
        else:
            start, pre_skip = self._first * step - self.lookahead, self._prefix * step
        end = self._fed * self._factor if final else (self._first + new) * step - self.lookahead
        sink = io.BytesIO()
        head = OpusHead(channels=self.channels, pre_skip=pre_skip,
                        input_sample_rate=self.sample_rate)
        writer = OggOpusWriter(sink, (self._serial + self._part - 1) & 0xFFFFFFFF, head,
                               self._tags)
        for packet in self._packets:
            writer.write_packet(packet, step)
        writer.finish(pre_skip + end - start)
        chunk = EncodedChunk(self._part, sink.getvalue(), start, end, pre_skip,
                             len(self._packets))
        self._part += 1
        self._first += new
        self._packets = list(self._recent)
        self._prefix = len(self._packets)
        return chunk


def _check_format(sample_rate: int, frame_ms: int, chunk_duration_ms: int | None) -> None:
    """``ValueError`` unless libopus takes ``sample_rate`` and ``frame_ms`` and chunks hold a
    whole number of frames."""
    if sample_rate not in (8_000, 12_000, 16_000, 24_000, 48_000):
        raise ValueError("sample_rate must be 8, 12, 16, 24 or 48 kHz")
    if frame_ms not in (10, 20, 40, 60):
        raise ValueError("frame_ms must be 10, 20, 40 or 60")
    if chunk_duration_ms is not None and (chunk_duration_ms <= 0 or chunk_duration_ms % frame_ms):
        raise ValueError("chunk_duration_ms must be a positive multiple of frame_ms")
