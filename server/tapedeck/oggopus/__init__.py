"""Ogg Opus without decoding: parse, validate, write, and stitch (remux) chunk files.

Standard library only (the device agent and the server both import it). Sample counts and
granule positions are in 48 kHz units throughout (RFC 7845).

Public API::

    ogg_crc(data) -> int
    PageReader(stream).next_page() -> RawPage | None; iter_pages(stream); iter_packets(stream)
    OggStreamWriter(sink, serial).write_packet(data, granule) / flush(eos=) / close()
    OpusHead.parse(b) / .to_bytes(); OpusTags.parse(b) / .to_bytes()
    packet_duration(packet) -> int
    OggOpusWriter(sink, serial, head, tags).write_packet(packet) / finish(final_granule)
    probe(stream) -> OpusStreamInfo                       raises InvalidAudio
    remux(chunks, sink, serial=None) -> RemuxResult       raises InvalidAudio(part=k)
"""

from tapedeck.oggopus._crc import ogg_crc
from tapedeck.oggopus.ogg import (
    FLAG_BOS,
    FLAG_CONTINUED,
    FLAG_EOS,
    NO_GRANULE,
    OggPacket,
    OggPage,
    OggStreamWriter,
    PageReader,
    RawPage,
    Sink,
    encode_page,
    iter_packets,
    iter_pages,
)
from tapedeck.oggopus.opus import (
    GRANULE_RATE,
    InvalidAudio,
    OpusHead,
    OpusTags,
    packet_duration,
)
from tapedeck.oggopus.remux import RemuxResult, remux
from tapedeck.oggopus.stream import (
    OggOpusWriter,
    OpusStreamInfo,
    OpusStreamReader,
    probe,
    samples_to_ms,
)

__all__ = [
    "FLAG_BOS",
    "FLAG_CONTINUED",
    "FLAG_EOS",
    "GRANULE_RATE",
    "NO_GRANULE",
    "InvalidAudio",
    "OggOpusWriter",
    "OggPacket",
    "OggPage",
    "OggStreamWriter",
    "OpusHead",
    "OpusStreamInfo",
    "OpusStreamReader",
    "OpusTags",
    "PageReader",
    "RawPage",
    "RemuxResult",
    "Sink",
    "encode_page",
    "iter_packets",
    "iter_pages",
    "ogg_crc",
    "packet_duration",
    "probe",
    "remux",
    "samples_to_ms",
]
