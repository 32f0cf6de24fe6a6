"""tapedeck.oggopus against real Opus (libopus via opuslib, opusenc, ffmpeg) and real tools
(opusinfo, opusdec, ffprobe). No mocks: every file here is checked by the reference tools.
"""

from __future__ import annotations

import io
import os
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapedeck.oggopus import (
    FLAG_EOS,
    GRANULE_RATE,
    InvalidAudio,
    OggOpusWriter,
    OggStreamWriter,
    OpusHead,
    OpusStreamReader,
    OpusTags,
    RemuxResult,
    encode_page,
    iter_packets,
    iter_pages,
    ogg_crc,
    packet_duration,
    probe,
    remux,
)
from tapedeck_agent.encoder import EncodedChunk, OpusChunker

from audio import (
    ffmpeg_pcm,
    ffprobe_duration,
    ffprobe_duration_includes_pre_skip,
    opusdec_pcm,
    opusenc,
    opusinfo_problems,
    speech_pcm,
    write_wav,
)
from stitchkit import encode_independent_chunks

PACKET = 960  # 20 ms at 48 kHz


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def ogg_crc_reference(data: bytes | bytearray) -> int:
    """The Ogg CRC-32 as the specification states it: table-driven, byte at a time
    (polynomial 0x04c11db7, MSB first, initial 0, no final XOR); slow, the fast path
    ``tapedeck.oggopus.ogg_crc`` is tested against it."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ b) & 0xFF]
    return crc


# -- helpers ---------------------------------------------------------------------------------


def continuous_chunks(seconds: float, chunk_ms: int, **kw: object) -> list[EncodedChunk]:
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, serial=0x1000, **kw)  # type: ignore[arg-type]
    return chunker.feed(speech_pcm(seconds)) + chunker.finish()


def whole_file(seconds: float, **kw: object) -> EncodedChunk:
    chunker = OpusChunker(chunk_duration_ms=None, serial=0x2000, **kw)  # type: ignore[arg-type]
    (chunk,) = chunker.feed(speech_pcm(seconds)) + chunker.finish()
    return chunk


def stitch(datas: list[bytes], serial: int | None = None) -> tuple[bytes, RemuxResult]:
    sink = io.BytesIO()
    result = remux((io.BytesIO(d) for d in datas), sink, serial=serial)
    return sink.getvalue(), result


def packets_of(data: bytes) -> list[bytes]:
    return [p.data for p in iter_packets(io.BytesIO(data))][2:]


def save(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def expected_ffprobe_seconds(samples: int, pre_skip: int) -> float:
    extra = pre_skip if ffprobe_duration_includes_pre_skip() else 0
    return (samples + extra) / GRANULE_RATE


@pytest.fixture(scope="module")
def small_file() -> bytes:
    """A valid 2 s Ogg Opus file (3 pages of audio)."""
    return whole_file(2.0).data


# -- CRC -------------------------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_fast_crc_equals_table_driven_reference(data: bytes) -> None:
    assert ogg_crc(data) == ogg_crc_reference(data)


def test_crc_of_pages_written_by_opusenc(tmp_path: Path) -> None:
    """Pages from the reference muxer verify with our CRC, and re-encoding them reproduces
    their CRC field byte for byte."""
    wav = write_wav(speech_pcm(3.0), tmp_path / "a.wav")
    data = opusenc(wav, tmp_path / "a.opus").read_bytes()
    pages = list(iter_pages(io.BytesIO(data)))
    assert len(pages) >= 3
    assert b"".join(p.to_bytes() for p in pages) == data


# -- TOC durations, headers ------------------------------------------------------------------


@pytest.mark.parametrize(("config", "samples"), [
    (0, 480), (1, 960), (2, 1920), (3, 2880), (9, 960), (11, 2880),  # SILK
    (12, 480), (13, 960), (15, 960),  # hybrid
    (16, 120), (17, 240), (18, 480), (19, 960), (31, 960),  # CELT
])
def test_packet_duration_by_config(config: int, samples: int) -> None:
    assert packet_duration(bytes([config << 3, 0])) == samples
    assert packet_duration(bytes([config << 3 | 1, 0])) == 2 * samples
    assert packet_duration(bytes([config << 3 | 2, 0])) == 2 * samples


def test_packet_duration_code3_and_invalid_packets() -> None:
    assert packet_duration(bytes([16 << 3 | 3, 48])) == 48 * 120  # 48 x 2.5 ms = 120 ms
    assert packet_duration(bytes([3 << 3 | 3, 2])) == 2 * 2880
    for bad, reason in ((b"", "empty Opus packet"),
                        (bytes([1 << 3 | 3]), "Opus code 3 packet without a frame count byte"),
                        (bytes([1 << 3 | 3, 0]), "Opus packet with invalid frame count 0"),
                        (bytes([3 << 3 | 3, 3]), "Opus packet with invalid frame count 3")):
        with pytest.raises(InvalidAudio, match=f"^{reason}$"):
            packet_duration(bad)


def test_packet_duration_matches_libopus() -> None:
    """Against the real encoder's packets at every frame size it supports."""
    from tapedeck_agent.encoder import load_opuslib

    opus = load_opuslib()
    for frame_ms, rate in [(2.5, 48_000), (5, 48_000), (10, 16_000), (20, 16_000),
                           (40, 16_000), (60, 16_000), (20, 48_000)]:
        encoder = opus.Encoder(rate, 1, "voip")
        frame = int(rate * frame_ms / 1000)
        packet = encoder.encode(speech_pcm(frame / rate, rate)[: frame * 2], frame)
        assert packet_duration(packet) == int(frame_ms * 48)


def test_opus_head_and_tags_round_trip() -> None:
    head = OpusHead(channels=2, pre_skip=3840, input_sample_rate=16_000, output_gain=-256)
    assert OpusHead.parse(head.to_bytes()) == head
    surround = OpusHead(channels=3, pre_skip=312, mapping_family=1, stream_count=2,
                        coupled_count=1, channel_mapping=bytes([0, 2, 1]))
    assert OpusHead.parse(surround.to_bytes()) == surround
    tags = OpusTags("tapedeck ünïcode", ("TITLE=a=b", "ARTIST=x"))
    assert OpusTags.parse(tags.to_bytes()) == tags


@pytest.mark.parametrize(("packet", "reason"), [
    (b"OpusHeaX" + bytes(11), "first packet is not an OpusHead"),
    (b"OpusHead\x01", "OpusHead is too short"),
    (b"OpusHead\x10\x01" + bytes(9), "unsupported OpusHead version 16"),
    (b"OpusHead\x01\x00" + bytes(9), "OpusHead declares 0 channels"),
    (b"OpusHead\x01\x03" + bytes(9), "mapping family 0 allows only 1 or 2 channels"),
])
def test_invalid_opus_heads(packet: bytes, reason: str) -> None:
    with pytest.raises(InvalidAudio, match=f"^{reason}"):
        OpusHead.parse(packet)


def test_invalid_opus_tags() -> None:
    for packet, reason in (
        (b"OpusTagX\0\0\0\0\0\0\0\0", "second packet is not an OpusTags header"),
        (b"OpusTags\x05\0\0\0ab", "OpusTags string runs past the end of the packet"),
        (b"OpusTags\0\0\0\0\x09\0\0\0", "OpusTags comment count exceeds the packet"),
    ):
        with pytest.raises(InvalidAudio, match=f"^{reason}$"):
            OpusTags.parse(packet)


# -- generic Ogg framing: property-based round trip ------------------------------------------

packet_sizes = st.one_of(st.integers(0, 600), st.integers(0, 70_000), st.sampled_from(
    [254, 255, 256, 510, 65_024, 65_025, 65_026]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(packet_sizes, st.booleans()), min_size=1, max_size=30),
       st.integers(0, 2**32 - 1))
def test_ogg_writer_parser_round_trip(spec: list[tuple[int, bool]], serial: int) -> None:
    """Random packets (empty, huge, lacing edge sizes) with random page flushes come back
    byte-identical, with libogg granule semantics, valid lacing, flags and sequence numbers."""
    rng = random.Random(serial)
    packets = [rng.randbytes(size) for size, _ in spec]
    sink = io.BytesIO()
    writer = OggStreamWriter(sink, serial)
    for i, (packet, (_, flush)) in enumerate(zip(packets, spec, strict=True)):
        writer.write_packet(packet, granule=i + 1)
        if flush:
            writer.flush()
    writer.flush(eos=True)
    data = sink.getvalue()
    parsed = list(iter_packets(io.BytesIO(data)))
    assert [p.data for p in parsed] == packets
    for i, (got, (_, flush)) in enumerate(zip(parsed, spec, strict=True)):
        assert got.granule in (None, i + 1)
        if flush or i == len(spec) - 1:
            assert got.granule == i + 1  # a flushed packet ends its page
    assert parsed[0].bos
    assert parsed[-1].eos != spec[-1][1]  # after a flush, EOS comes on an empty page
    pages = list(iter_pages(io.BytesIO(data)))
    assert [p.seqno for p in pages] == list(range(len(pages)))
    assert all(len(p.segments) <= 255 and p.serial == serial for p in pages)
    assert [p.eos for p in pages] == [False] * (len(pages) - 1) + [True]
    assert b"".join(p.to_bytes() for p in pages) == data


def _toc_packet(toc: int) -> st.SearchStrategy[tuple[int, int, int]]:
    frame = packet_duration(bytes([toc & 0xFC]))
    count = st.integers(1, 5760 // frame) if toc & 3 == 3 else st.just(0)
    return st.tuples(st.just(toc), count, st.integers(0, 400))


toc_packets = st.integers(0, 255).flatmap(_toc_packet)


@settings(max_examples=60, deadline=None)
@given(st.lists(toc_packets, min_size=1, max_size=120), st.integers(960, 96_000),
       st.integers(0, 5000), st.data())
def test_opus_writer_reader_round_trip(
    spec: list[tuple[int, int, int]], page_samples: int, pre_skip: int, data: st.DataObject,
) -> None:
    """OggOpusWriter → OpusStreamReader: packets, durations, paging policy and end trimming."""
    packets = [bytes([toc, count]) + bytes(size) for toc, count, size in spec]
    durations = [packet_duration(p) for p in packets]
    total = sum(durations)
    pre_skip = min(pre_skip, total - durations[-1])
    trim = data.draw(st.integers(0, min(durations[-1], total - pre_skip)))
    sink = io.BytesIO()
    writer = OggOpusWriter(sink, 7, OpusHead(pre_skip=pre_skip), page_samples=page_samples)
    for packet in packets:
        writer.write_packet(packet)
    assert writer.finish(total - trim) == total - trim
    reader = OpusStreamReader(io.BytesIO(sink.getvalue()))
    got: list[bytes] = []
    while (page := reader.next_audio_page()) is not None:
        got.extend(page.packets())
        assert page.durations == [packet_duration(p) for p in page.packets()]
        if not page.page.eos:  # a page closes once it holds page_samples of audio
            assert page.samples - page.durations[-1] < page_samples
    info = reader.info()
    assert got == packets
    assert (info.samples, info.end_trim, info.pre_skip) == (total - trim - pre_skip, trim,
                                                            pre_skip)


# -- OggOpusWriter with real audio -----------------------------------------------------------


def test_writer_output_passes_reference_tools(tmp_path: Path) -> None:
    """Real 2.5 ms CELT packets (400 per second) exercise the 255-segment limit; an end trim
    of 100 samples is honoured by opusdec, ffmpeg, ffprobe and opusinfo."""
    from tapedeck_agent.encoder import load_opuslib

    encoder = load_opuslib().Encoder(48_000, 1, "audio")
    pcm = speech_pcm(3.0, 48_000)
    sink = io.BytesIO()
    writer = OggOpusWriter(sink, 42, OpusHead(pre_skip=int(encoder.lookahead),
                                              input_sample_rate=48_000))
    for offset in range(0, len(pcm), 240):
        writer.write_packet(encoder.encode(pcm[offset : offset + 240], 120))
    final = writer.finish(writer.granule - 100)
    path = save(tmp_path, "w.opus", sink.getvalue())
    assert opusinfo_problems(path) == []
    pages = list(iter_pages(io.BytesIO(sink.getvalue())))
    assert max(len(p.segments) for p in pages) == 255
    assert pages[-1].flags & FLAG_EOS and pages[-1].granule == final
    samples = final - int(encoder.lookahead)
    assert len(opusdec_pcm(path)) == 2 * samples
    assert len(ffmpeg_pcm(path)) == 2 * samples
    assert ffprobe_duration(path) == pytest.approx(
        expected_ffprobe_seconds(samples, int(encoder.lookahead)), abs=0.0005)


def test_writer_rejects_impossible_final_granules() -> None:
    writer = OggOpusWriter(io.BytesIO(), 1, OpusHead(pre_skip=312))
    with pytest.raises(ValueError, match="no audio packets were written"):
        writer.finish()  # no packets
    writer.write_packet(bytes([1 << 3]))
    with pytest.raises(ValueError, match=r"final granule 961 outside \[\d+, 960\]"):
        writer.finish(961)  # beyond the audio
    with pytest.raises(ValueError, match=r"final granule 100 outside .* below pre-skip 312"):
        writer.finish(100)  # below the pre-skip


# -- probe: valid inputs ---------------------------------------------------------------------


def test_probe_files_from_opusenc_and_ffmpeg(tmp_path: Path) -> None:
    """Files from other muxers: opusenc (mono, stereo, OpusTags spanning several pages) and
    ffmpeg/libopus."""
    import subprocess

    mono = write_wav(speech_pcm(2.5), tmp_path / "mono.wav")
    info = probe(opusenc(mono, tmp_path / "mono.opus").open("rb"))
    assert (info.channels, info.pre_skip, info.samples) == (1, 312, 2.5 * GRANULE_RATE)
    assert info.duration_ms == 2500
    stereo = write_wav(speech_pcm(2.0) * 2, tmp_path / "st.wav", channels=2)
    assert probe(opusenc(stereo, tmp_path / "st.opus").open("rb")).channels == 2
    long_tags = opusenc(mono, tmp_path / "tags.opus", "--comment", "NOTE=" + "x" * 70_000)
    with long_tags.open("rb") as stream:
        reader = OpusStreamReader(stream)
        assert reader.tags.comments[-1] == "NOTE=" + "x" * 70_000
    assert probe(long_tags.open("rb")).samples == 2.5 * GRANULE_RATE
    out = tmp_path / "ff.opus"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(mono), "-c:a", "libopus", "-b:a", "24k",
                    str(out)], check=True)
    info = probe(out.open("rb"))
    assert info.samples == 2.5 * GRANULE_RATE


def test_probe_reads_short_reads_streaming() -> None:
    """A stream that returns at most 7 bytes per read gives the same answer."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data, self._pos = data, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            chunk = self._data[self._pos : self._pos + min(7, n if n >= 0 else 7)]
            self._pos += len(chunk)
            return chunk

    data = whole_file(1.5).data
    assert probe(Trickle(data)) == probe(io.BytesIO(data))  # type: ignore[arg-type]


# -- probe: invalid inputs -------------------------------------------------------------------


def _pages(data: bytes) -> list[bytes]:
    return [p.to_bytes() for p in iter_pages(io.BytesIO(data))]


def corruptions(good: bytes, wav: bytes) -> dict[str, bytes]:
    pages = _pages(good)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    header_page = next(iter_pages(io.BytesIO(good)))
    not_bos = encode_page(0, 0, header_page.serial, 0, header_page.segments, header_page.body)
    return {
        "empty": b"",
        "random bytes": random.Random(1).randbytes(5000),
        "wav renamed": wav,
        "truncated mid-page": good[: len(good) - 100],
        "truncated at page boundary (no EOS)": b"".join(pages[:-1]),
        "bad CRC": bytes(flipped),
        "missing OpusHead": b"".join(pages[1:]),
        "missing OpusTags": pages[0] + b"".join(pages[2:]),
        "OpusHead page without BOS": not_bos + b"".join(pages[1:]),
        "missing middle page": b"".join(pages[:3] + pages[4:]),
        "chained stream": good + good,
        "trailing garbage": good + b"garbage!" * 4,
        "only headers": b"".join(pages[:2]),
    }


PROBE_REASONS = {  # how probe() names each of ``corruptions`` (the start of its reason)
    "empty": "empty stream",
    "random bytes": "no Ogg page at byte 0 ",
    "wav renamed": "no Ogg page at byte 0 ",
    "truncated mid-page": "stream ends inside ",
    "truncated at page boundary (no EOS)": "stream ends without an end-of-stream page",
    "bad CRC": "bad CRC on the page at byte ",
    "missing OpusHead": "first page is not a beginning-of-stream page",
    "missing OpusTags": "page sequence jumps from 0 to 2 ",
    "OpusHead page without BOS": "first page is not a beginning-of-stream page",
    "missing middle page": "page sequence jumps from 2 to 4 ",
    "chained stream": "data after the end-of-stream page ",
    "trailing garbage": "no Ogg page at byte ",
    "only headers": "stream ends without an end-of-stream page",
}


def test_probe_rejects_everything_that_is_not_one_valid_stream(small_file: bytes,
                                                               tmp_path: Path) -> None:
    wav = write_wav(speech_pcm(0.5), tmp_path / "x.wav").read_bytes()
    assert len(_pages(small_file)) >= 5
    for name, data in corruptions(small_file, wav).items():
        with pytest.raises(InvalidAudio) as caught:
            probe(io.BytesIO(data))
        assert caught.value.part is None, name
        assert caught.value.reason.startswith(PROBE_REASONS[name]), (name, caught.value.reason)


def test_probe_rejects_inconsistent_granule_positions(small_file: bytes) -> None:
    pages = list(iter_pages(io.BytesIO(small_file)))
    bumped = pages[3]
    pages[3] = type(bumped)(bumped.flags, bumped.granule + 960, bumped.serial, bumped.seqno,
                            bumped.segments, bumped.body)
    with pytest.raises(InvalidAudio, match="granule"):
        probe(io.BytesIO(b"".join(p.to_bytes() for p in pages)))


# -- remux: continuous-encoder chunks --------------------------------------------------------


@pytest.fixture(scope="module")
def twelve() -> tuple[list[EncodedChunk], EncodedChunk]:
    """12 chunks of 1 s from one encoder (11.3 s of speech), and the same speech encoded as
    one stream."""
    chunks = continuous_chunks(11.3, 1000)
    assert len(chunks) == 12
    return chunks, whole_file(11.3)


def test_stitched_continuous_chunks_equal_the_whole_recording(
    twelve: tuple[list[EncodedChunk], EncodedChunk], tmp_path: Path,
) -> None:
    chunks, whole = twelve
    data, result = stitch([c.data for c in chunks])
    path = save(tmp_path, "stitched.opus", data)
    whole_path = save(tmp_path, "whole.opus", whole.data)
    samples = round(11.3 * GRANULE_RATE)
    assert result.samples == samples and result.duration_ms == 11_300
    assert result.seamless_boundaries == 11 and result.drift_samples == 0
    assert result.bytes_written == len(data)
    assert opusinfo_problems(path) == []
    assert ffprobe_duration(path) == pytest.approx(expected_ffprobe_seconds(samples, 312),
                                                   abs=0.0005)
    assert packets_of(data) == packets_of(whole.data)  # the very same Opus packets
    decoded = opusdec_pcm(path)
    assert len(decoded) == 2 * samples
    assert decoded == opusdec_pcm(whole_path)  # sample for sample
    assert len(ffmpeg_pcm(path)) == 2 * samples
    info = probe(io.BytesIO(data))
    assert (info.samples, info.pre_skip, info.packets) == (samples, 312, result.packets)


def relace(data: bytes) -> bytes:
    """The same stream re-paged with full 255-entry lacing tables, so packets continue from
    page to page (as libogg-based muxers do with large packets)."""
    reader = OpusStreamReader(io.BytesIO(data))
    packets: list[tuple[bytes, int]] = []
    while (page := reader.next_audio_page()) is not None:
        packets.extend(zip(page.packets(), page.durations, strict=True))
    sink = io.BytesIO()
    writer = OggStreamWriter(sink, reader.serial)
    writer.write_packet(reader.head_packet, 0)
    writer.flush()
    writer.write_packet(reader.tags_packet, 0)
    writer.flush()
    granule = 0
    for i, (packet, duration) in enumerate(packets):
        granule += duration
        writer.write_packet(packet, granule if i < len(packets) - 1 else reader.final_granule)
    writer.flush(eos=True)
    return sink.getvalue()


def test_chunks_with_packets_spanning_pages_stitch_bit_exact(tmp_path: Path) -> None:
    pcm = speech_pcm(9.5, 48_000)  # 128 kbps: ~320-byte packets, 2 lacing values each
    chunker = OpusChunker(chunk_duration_ms=3000, sample_rate=48_000, bitrate=128_000)
    chunks = chunker.feed(pcm) + chunker.finish()
    whole = OpusChunker(chunk_duration_ms=None, sample_rate=48_000, bitrate=128_000)
    (single,) = whole.feed(pcm) + whole.finish()
    relaced = [relace(c.data) for c in chunks]
    pages = [p for data in relaced for p in iter_pages(io.BytesIO(data))]
    assert sum(p.continued for p in pages) >= 2
    for data, chunk in zip(relaced, chunks, strict=True):
        assert probe(io.BytesIO(data)).samples == chunk.samples
    data, result = stitch(relaced)
    assert packets_of(data) == packets_of(single.data)
    assert result.seamless_boundaries == len(chunks) - 1
    assert result.samples == 9.5 * GRANULE_RATE
    assert opusinfo_problems(save(tmp_path, "r.opus", data)) == []


def test_remux_streams_lazily_and_accepts_short_reads_and_partial_writes(
    twelve: tuple[list[EncodedChunk], EncodedChunk],
) -> None:
    """One input open at a time; 5-byte reads; a sink that accepts at most 1000 bytes per
    write: the output is the same bytes."""
    chunks, _ = twelve
    expected, _ = stitch([c.data for c in chunks])
    open_now = []

    class Small(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(5 if n is None or n < 0 else min(n, 5))

    def lazy() -> Iterator[BinaryIO]:
        for chunk in chunks:
            open_now.append(1)
            assert len(open_now) == 1
            yield Small(chunk.data)
            open_now.pop()

    class Partial:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> int:
            self.data += data[:1000]
            return min(1000, len(data))

    sink = Partial()
    remux(lazy(), sink)
    assert bytes(sink.data) == expected


def test_remux_of_one_chunk_keeps_its_packets(small_file: bytes) -> None:
    data, result = stitch([small_file])
    assert packets_of(data) == packets_of(small_file)
    assert probe(io.BytesIO(data)).samples == probe(io.BytesIO(small_file)).samples
    assert result.chunks == 1


def test_remux_output_serial(twelve: tuple[list[EncodedChunk], EncodedChunk]) -> None:
    chunks, _ = twelve
    data, _ = stitch([c.data for c in chunks[:2]], serial=0xABCDEF)
    assert {p.serial for p in iter_pages(io.BytesIO(data))} == {0xABCDEF}
    data, _ = stitch([c.data for c in chunks[:2]])
    first_serial = next(iter_pages(io.BytesIO(chunks[0].data))).serial
    assert {p.serial for p in iter_pages(io.BytesIO(data))} == {first_serial}


# -- remux: independent chunks ---------------------------------------------------------------


@pytest.mark.parametrize(("chunk_ms", "gap", "drift"), [
    (530, 168 + 312, 480),  # padding 168 + warm-up 312: below one packet, kept
    (500, 648 + 312, 960),  # exactly one packet, kept
    (499, 696 + 312, 48),  # above one packet: the last packet of the earlier chunk goes
])
def test_independent_chunks_stitch_within_one_packet_per_boundary(
    chunk_ms: int, gap: int, drift: int, tmp_path: Path,
) -> None:
    """Fresh encoder per chunk: each boundary leaves end padding + encoder warm-up (``gap``
    samples); the stitch keeps it below one packet (``drift`` per boundary)."""
    seconds = 6.2
    chunks = encode_independent_chunks(speech_pcm(seconds), chunk_duration_ms=chunk_ms)
    first = probe(io.BytesIO(chunks[0].data))
    assert first.end_trim + first.pre_skip == gap
    data, result = stitch([c.data for c in chunks])
    path = save(tmp_path, "ind.opus", data)
    boundaries = len(chunks) - 1
    truth = round(seconds * GRANULE_RATE)
    assert sum(c.samples for c in chunks) == truth
    assert result.drift_samples == result.samples - truth == boundaries * drift
    assert result.dropped_packets == (boundaries if drift < gap else 0)
    assert opusinfo_problems(path) == []
    assert len(opusdec_pcm(path)) == 2 * result.samples
    assert ffprobe_duration(path) == pytest.approx(
        expected_ffprobe_seconds(result.samples, 312), abs=0.0005)


def test_chunks_from_the_reference_muxer_stitch(tmp_path: Path) -> None:
    """Independent chunks made by opusenc (another muxer, other page layout)."""
    files = []
    for i in range(3):
        wav = write_wav(speech_pcm(1.5, start=i), tmp_path / f"{i}.wav")
        files.append(opusenc(wav, tmp_path / f"{i}.opus", "--bitrate", "24").read_bytes())
    data, result = stitch(files)
    path = save(tmp_path, "s.opus", data)
    assert opusinfo_problems(path) == []
    assert 0 <= result.samples - 3 * 1.5 * GRANULE_RATE <= 2 * PACKET


# -- remux: invalid chunks -------------------------------------------------------------------


def test_remux_names_the_invalid_chunk(twelve: tuple[list[EncodedChunk], EncodedChunk],
                                       tmp_path: Path) -> None:
    chunks, _ = twelve
    datas = [c.data for c in chunks]
    wav = write_wav(speech_pcm(0.5), tmp_path / "x.wav").read_bytes()
    for index, (name, bad) in enumerate(corruptions(datas[4], wav).items()):
        part = index % 12 + 1
        inputs = list(datas)
        inputs[part - 1] = bad
        with pytest.raises(InvalidAudio) as caught:
            stitch(inputs)
        assert caught.value.part == part, name


def test_remux_rejects_a_different_channel_layout(tmp_path: Path) -> None:
    mono = continuous_chunks(2.0, 1000)
    stereo = OpusChunker(channels=2, chunk_duration_ms=None)
    (two,) = stereo.feed(speech_pcm(1.0) * 2) + stereo.finish()
    with pytest.raises(InvalidAudio, match=r"^chunk 2: channel layout differs from chunk 1$") as caught:
        stitch([mono[0].data, two.data])
    assert caught.value.part == 2


def test_remux_needs_chunks() -> None:
    with pytest.raises(ValueError, match="no chunks to remux"):
        remux([], io.BytesIO())


# -- remux: memory does not grow with the number of chunks -----------------------------------


class _CountingSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _peak_remux_memory(paths: list[Path]) -> tuple[int, int]:
    def streams() -> Iterator[BinaryIO]:
        for path in paths:
            with path.open("rb") as stream:
                yield stream

    sink = _CountingSink()
    tracemalloc.start()
    try:
        remux(streams(), sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, sink.size


def test_remux_memory_is_flat_in_the_number_of_chunks(tmp_path: Path) -> None:
    chunks = continuous_chunks(400.0, 10_000, complexity=0)  # 40 chunks, ~1.2 MB
    paths = [save(tmp_path, f"c{c.part}.opus", c.data) for c in chunks]
    peak_few, _ = _peak_remux_memory(paths[:4])
    peak_all, size_all = _peak_remux_memory(paths)
    assert size_all > 1_000_000
    assert peak_all < size_all / 2
    assert peak_all < 2 * peak_few + 256 * 1024


def test_crc_fast_path_handles_large_buffers() -> None:
    data = os.urandom(100_000)
    assert ogg_crc(data) == ogg_crc_reference(data)
