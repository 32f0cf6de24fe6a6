"""tapedeck_agent.encoder: one libopus encoder cut into seamless Ogg Opus chunk files, checked
with the reference tools (opusinfo, opusdec) on real speech.
"""

from __future__ import annotations

import array
import io
import itertools
import math
import random
import re
from pathlib import Path

import pytest

from tapedeck.oggopus import GRANULE_RATE, iter_packets, probe, remux
from tapedeck_agent.encoder import (
    EncodedChunk,
    OpusChunker,
    load_opuslib,
)

from audio import opusdec_pcm, opusinfo_problems, speech_pcm
from stitchkit import encode_independent_chunks

SECONDS = 5.5


def encode(pcm: bytes, chunk_ms: int | None = 1000, **kw: object) -> list[EncodedChunk]:
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, serial=0x5EED, **kw)  # type: ignore[arg-type]
    return chunker.feed(pcm) + chunker.finish()


def decode(data: bytes, tmp_path: Path) -> array.array[int]:
    path = tmp_path / "decode.opus"
    path.write_bytes(data)
    return array.array("h", opusdec_pcm(path))


def snr_db(reference: array.array[int], other: array.array[int]) -> float:
    signal = sum(x * x for x in reference)
    noise = sum((x - y) ** 2 for x, y in zip(reference, other, strict=True))
    return 10 * math.log10(signal / max(noise, 1))


@pytest.fixture(scope="module")
def pcm() -> bytes:
    return speech_pcm(SECONDS)


@pytest.fixture(scope="module")
def chunks(pcm: bytes) -> list[EncodedChunk]:
    return encode(pcm)


def test_lookahead_comes_from_libopus() -> None:
    encoder = load_opuslib().Encoder(16_000, 1, "voip")
    assert OpusChunker().lookahead == encoder.lookahead * 3 == 312


def test_chunks_cover_the_recording_exactly(chunks: list[EncodedChunk]) -> None:
    total = round(SECONDS * GRANULE_RATE)
    assert [c.part for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert chunks[0].start_sample == 0 and chunks[-1].end_sample == total
    assert all(a.end_sample == b.start_sample for a, b in itertools.pairwise(chunks))
    assert [c.pre_skip for c in chunks] == [312] + [3840] * 5
    assert [c.samples for c in chunks] == [48_000 - 312] + [48_000] * 4 + [24_000 + 312]
    assert [c.duration_ms for c in chunks] == [994, 1000, 1000, 1000, 1000, 507]
    assert [c.packets for c in chunks] == [50, 54, 54, 54, 54, 4 + 26]


def test_each_chunk_is_a_clean_file_of_exactly_its_length(chunks: list[EncodedChunk],
                                                         tmp_path: Path) -> None:
    for chunk in chunks:
        path = tmp_path / f"chunk_{chunk.part}.opus"
        path.write_bytes(chunk.data)
        assert opusinfo_problems(path) == [], chunk.part
        assert len(opusdec_pcm(path)) == 2 * chunk.samples, chunk.part
        info = probe(io.BytesIO(chunk.data))
        assert (info.samples, info.pre_skip, info.packets) == (chunk.samples, chunk.pre_skip,
                                                               chunk.packets)


def test_chunk_k_starts_with_the_previous_chunks_last_four_packets(
    chunks: list[EncodedChunk],
) -> None:
    packets = [[p.data for p in iter_packets(io.BytesIO(c.data))][2:] for c in chunks]
    for before, after in itertools.pairwise(packets):
        assert after[:4] == before[-4:]


def test_each_chunk_alone_plays_its_part_of_the_recording(
    pcm: bytes, chunks: list[EncodedChunk], tmp_path: Path,
) -> None:
    """Decoded alone, chunk k matches the whole-recording decode over its sample range
    (chunk 1 bit for bit; later chunks after an 80 ms decoder warm-up, > 15 dB SNR; a
    misalignment of even a few samples would drop that to ~0 dB)."""
    (whole,) = encode(pcm, None)
    reference = decode(whole.data, tmp_path)
    for chunk in chunks:
        alone = decode(chunk.data, tmp_path)
        part = reference[chunk.start_sample : chunk.end_sample]
        if chunk.part == 1:
            assert alone == part
        else:
            assert snr_db(part, alone) > 15, chunk.part


def test_byte_concatenation_decodes_to_the_exact_total(chunks: list[EncodedChunk],
                                                       tmp_path: Path) -> None:
    """Chained Ogg (what a naive concatenation gives) still decodes to the exact length."""
    assert len(decode(b"".join(c.data for c in chunks), tmp_path)) == \
        round(SECONDS * GRANULE_RATE)


def test_feeding_in_odd_pieces_gives_the_same_bytes(pcm: bytes,
                                                    chunks: list[EncodedChunk]) -> None:
    chunker = OpusChunker(chunk_duration_ms=1000, serial=0x5EED)
    rng = random.Random(7)
    out: list[EncodedChunk] = []
    offset = 0
    while offset < len(pcm):
        size = rng.choice([1, 3, 639, 640, 641, 5000])
        out += chunker.feed(pcm[offset : offset + size])
        offset += size
    out += chunker.finish()
    assert out == chunks


def test_a_chunk_is_handed_out_after_its_last_packet() -> None:
    chunker = OpusChunker(chunk_duration_ms=1000)
    assert chunker.feed(speech_pcm(1.0)) == []  # full, waiting for the next packet
    (first,) = chunker.feed(speech_pcm(0.02))
    assert first.part == 1


def test_recording_of_whole_chunks_makes_no_tiny_last_chunk(tmp_path: Path) -> None:
    """3.000 s in 1 s chunks: 3 chunks; the last one also carries the lookahead flush."""
    chunks = encode(speech_pcm(3.0))
    assert [c.samples for c in chunks] == [48_000 - 312, 48_000, 48_000 + 312]
    path = tmp_path / "last.opus"
    path.write_bytes(chunks[-1].data)
    assert opusinfo_problems(path) == []


def test_short_and_empty_recordings(tmp_path: Path) -> None:
    assert OpusChunker().finish() == []
    (only,) = encode(speech_pcm(0.333), 1000)
    assert (only.part, only.pre_skip, only.samples) == (1, 312, round(0.333 * GRANULE_RATE))
    assert len(decode(only.data, tmp_path)) == only.samples


def test_stereo_48k_10ms_frames_stitch_seamlessly(tmp_path: Path) -> None:
    mono = speech_pcm(2.3, 48_000)
    stereo = bytes(array.array("h", [s for s in array.array("h", mono) for _ in range(2)]))
    chunks = encode(stereo, 500, sample_rate=48_000, channels=2, frame_ms=10, bitrate=64_000)
    assert [c.pre_skip for c in chunks[:2]] == [OpusChunker(sample_rate=48_000).lookahead, 3840]
    for chunk in chunks:
        path = tmp_path / f"s{chunk.part}.opus"
        path.write_bytes(chunk.data)
        assert opusinfo_problems(path) == []
    sink = io.BytesIO()
    result = remux((io.BytesIO(c.data) for c in chunks), sink)
    assert result.seamless_boundaries == len(chunks) - 1
    assert result.samples == round(2.3 * GRANULE_RATE)


def test_independent_chunks(pcm: bytes, tmp_path: Path) -> None:
    chunks = encode_independent_chunks(pcm, chunk_duration_ms=2000)
    assert [c.part for c in chunks] == [1, 2, 3]
    assert [(c.start_sample, c.end_sample) for c in chunks] == [
        (0, 96_000), (96_000, 192_000), (192_000, 264_000)]
    assert {c.pre_skip for c in chunks} == {312}
    for chunk in chunks:
        path = tmp_path / f"i{chunk.part}.opus"
        path.write_bytes(chunk.data)
        assert opusinfo_problems(path) == []
        assert probe(io.BytesIO(chunk.data)).samples == chunk.samples


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sample_rate": 44_100}, "sample_rate must be 8, 12, 16, 24 or 48 kHz"),
    ({"frame_ms": 25}, "frame_ms must be 10, 20, 40 or 60"),
    ({"chunk_duration_ms": 1010}, "chunk_duration_ms must be a positive multiple of frame_ms"),
    ({"chunk_duration_ms": 0}, "chunk_duration_ms must be a positive multiple of frame_ms"),
])
def test_invalid_settings(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        OpusChunker(**kwargs)  # type: ignore[arg-type]


def test_misuse_is_refused() -> None:
    chunker = OpusChunker()
    chunker.feed(b"\x01")
    with pytest.raises(ValueError, match="PCM ended inside a sample"):
        chunker.finish()  # half a sample
    with pytest.raises(ValueError, match=re.escape("feed() after finish()")):
        chunker.feed(b"\0\0")
