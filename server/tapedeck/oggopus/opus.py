"""Opus-in-Ogg specifics (RFC 7845) and the Opus TOC byte (RFC 6716 section 3.1).

Everything here works on bytes only; nothing decodes audio. All sample counts are in 48 kHz
units, the unit of Ogg Opus granule positions, whatever the encoder's input rate was.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: Samples per second of every Ogg Opus granule position and pre-skip value.
GRANULE_RATE = 48_000

#: Longest legal Opus packet: 120 ms.
MAX_PACKET_SAMPLES = 5_760

OPUS_HEAD_MAGIC = b"OpusHead"
OPUS_TAGS_MAGIC = b"OpusTags"


class InvalidAudio(ValueError):
    """The bytes are not a single valid Ogg Opus logical stream.

    ``part`` is the 1-based chunk index when the stream was one chunk of a stitch (``None``
    for a lone stream); ``reason`` says what is wrong in words a developer can act on.
    """

    def __init__(self, reason: str, part: int | None = None) -> None:
        self.reason = reason
        self.part = part
        super().__init__(reason if part is None else f"chunk {part}: {reason}")

    def for_part(self, part: int) -> InvalidAudio:
        """The same error attributed to chunk ``part``."""
        return InvalidAudio(self.reason, part=part)


def _frame_samples(config: int) -> int:
    """Samples (48 kHz) of one frame for a TOC configuration number 0..31."""
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # Hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT-only: 2.5, 5, 10, 20 ms


def _toc_table() -> tuple[int, ...]:
    """Duration by TOC byte for frame-count codes 0..2; -1 marks code 3 (count in byte 2)."""
    table = []
    for toc in range(256):
        code = toc & 3
        frame = _frame_samples(toc >> 3)
        table.append(frame if code == 0 else (2 * frame if code in (1, 2) else -1))
    return tuple(table)


#: TOC_SAMPLES[toc] = packet duration for codes 0..2, or -1 for code 3 packets.
TOC_SAMPLES = _toc_table()


def packet_duration(packet: bytes | bytearray | memoryview) -> int:
    """Duration in 48 kHz samples of one Opus packet, from its TOC byte alone.

    Raises ``InvalidAudio`` for an empty packet, a code-3 packet without its frame-count byte,
    a zero frame count or a duration above 120 ms (RFC 6716 section 3.2.5).
    """
    if len(packet) == 0:
        raise InvalidAudio("empty Opus packet")
    toc = packet[0]
    samples = TOC_SAMPLES[toc]
    if samples >= 0:
        return samples
    return _code3_duration(packet)


def _code3_duration(packet: bytes | bytearray | memoryview) -> int:
    if len(packet) < 2:
        raise InvalidAudio("Opus code 3 packet without a frame count byte")
    count = packet[1] & 0x3F
    samples = count * _frame_samples(packet[0] >> 3)
    if count == 0 or samples > MAX_PACKET_SAMPLES:
        raise InvalidAudio(f"Opus packet with invalid frame count {count}")
    return samples


_HEAD = struct.Struct("<8sBBHIhB")  # magic, version, channels, pre_skip, rate, gain, family


@dataclass(frozen=True)
class OpusHead:
    """The identification header (RFC 7845 section 5.1).

    ``output_gain`` is in Q7.8 dB as stored. For mapping family 0 (mono/stereo) there is no
    channel mapping table; other families carry ``stream_count``, ``coupled_count`` and one
    ``channel_mapping`` byte per channel.
    """

    channels: int = 1
    pre_skip: int = 0
    input_sample_rate: int = 0
    output_gain: int = 0
    mapping_family: int = 0
    stream_count: int = 1
    coupled_count: int = 0
    channel_mapping: bytes = b""
    version: int = 1

    def __post_init__(self) -> None:
        if self.mapping_family == 0:  # implied by RFC 7845: one stream, stereo coupled
            object.__setattr__(self, "stream_count", 1)
            object.__setattr__(self, "coupled_count", self.channels - 1)
            object.__setattr__(self, "channel_mapping", b"")

    @classmethod
    def parse(cls, packet: bytes) -> OpusHead:
        """Parse and validate an OpusHead packet; raises ``InvalidAudio``."""
        if not packet.startswith(OPUS_HEAD_MAGIC):
            raise InvalidAudio("first packet is not an OpusHead (not an Ogg Opus stream)")
        if len(packet) < _HEAD.size:
            raise InvalidAudio("OpusHead is too short")
        _, version, channels, pre_skip, rate, gain, family = _HEAD.unpack_from(packet)
        if version >> 4 != 0:
            raise InvalidAudio(f"unsupported OpusHead version {version}")
        if channels == 0:
            raise InvalidAudio("OpusHead declares 0 channels")
        if family == 0:
            if channels > 2:
                raise InvalidAudio("mapping family 0 allows only 1 or 2 channels")
            return cls(channels, pre_skip, rate, gain, 0, 1, channels - 1, b"", version)
        return cls._parse_mapping(packet, version, channels, pre_skip, rate, gain, family)

    @classmethod
    def _parse_mapping(
        cls, packet: bytes, version: int, channels: int, pre_skip: int, rate: int, gain: int,
        family: int,
    ) -> OpusHead:
        end = _HEAD.size + 2 + channels
        if len(packet) < end:
            raise InvalidAudio("OpusHead channel mapping table is truncated")
        streams, coupled = packet[_HEAD.size], packet[_HEAD.size + 1]
        if streams == 0 or coupled > streams:
            raise InvalidAudio("OpusHead has an invalid stream count")
        mapping = bytes(packet[_HEAD.size + 2 : end])
        return cls(channels, pre_skip, rate, gain, family, streams, coupled, mapping, version)

    def to_bytes(self) -> bytes:
        """Serialize (version byte as stored, normally 1)."""
        head = _HEAD.pack(
            OPUS_HEAD_MAGIC, self.version, self.channels, self.pre_skip,
            self.input_sample_rate, self.output_gain, self.mapping_family,
        )
        if self.mapping_family == 0:
            return head
        return head + bytes([self.stream_count, self.coupled_count]) + self.channel_mapping


@dataclass(frozen=True)
class OpusTags:
    """The comment header (RFC 7845 section 5.2): vendor string and ``KEY=value`` comments."""

    vendor: str = "tapedeck"
    comments: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, packet: bytes) -> OpusTags:
        """Parse and validate an OpusTags packet; raises ``InvalidAudio``.

        Invalid UTF-8 is replaced rather than rejected: tags never affect the audio.
        """
        if not packet.startswith(OPUS_TAGS_MAGIC):
            raise InvalidAudio("second packet is not an OpusTags header")
        pos = 8
        vendor, pos = _read_string(packet, pos)
        count, pos = _read_u32(packet, pos)
        if count > (len(packet) - pos) // 4:
            raise InvalidAudio("OpusTags comment count exceeds the packet")
        comments = []
        for _ in range(count):
            comment, pos = _read_string(packet, pos)
            comments.append(comment)
        return cls(vendor, tuple(comments))

    def to_bytes(self) -> bytes:
        """Serialize to an OpusTags packet."""
        parts = [OPUS_TAGS_MAGIC, _string(self.vendor), struct.pack("<I", len(self.comments))]
        parts.extend(_string(c) for c in self.comments)
        return b"".join(parts)


def _read_u32(packet: bytes, pos: int) -> tuple[int, int]:
    if pos + 4 > len(packet):
        raise InvalidAudio("OpusTags is truncated")
    return int.from_bytes(packet[pos : pos + 4], "little"), pos + 4


def _read_string(packet: bytes, pos: int) -> tuple[str, int]:
    length, pos = _read_u32(packet, pos)
    if pos + length > len(packet):
        raise InvalidAudio("OpusTags string runs past the end of the packet")
    return packet[pos : pos + length].decode("utf-8", "replace"), pos + length


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<I", len(data)) + data
