"""Opus DTX (discontinuous transmission) through the whole audio path: the agent's chunker,
the Ogg writer, the server's validators and stitcher, and the decoders.

Real speech plus minutes of near-silence and of low background noise, encoded as the agent
does (one encoder, 80 ms overlaps); with DTX on, the silent stretches become 1-byte packets.
The timeline must not move: every chunk plays exactly its length, the stitched file is
exactly the recording's length (opusinfo, ffmpeg, opusdec), and the stitch is still
bit-exact against one whole-recording DTX encode."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.infra.weed import ManagedWeed
from tapedeck.oggopus import probe
from tapedeck_agent.encoder import EncodedChunk, OpusChunker

from audio import low_noise_pcm, speech_pcm
from serverkit import drop_bucket, make_settings
from stitchkit import (
    Project,
    decode,
    ffmpeg_samples,
    open_project,
    opusinfo,
    recording_row,
    streaming_recording,
)

RATE = 16_000
SPEECH_S, SILENCE_S, NOISE_S = 20.0, 120.0, 120.0
TOTAL_S = 2 * SPEECH_S + SILENCE_S + NOISE_S  # 280 s


def mixed_pcm() -> bytes:
    """Speech, two minutes of near-silence, two minutes of low noise, speech again."""
    return (speech_pcm(SPEECH_S, RATE) + low_noise_pcm(SILENCE_S, 3, RATE, seed=1)
            + low_noise_pcm(NOISE_S, 25, RATE, seed=2) + speech_pcm(SPEECH_S, RATE, start=9))


def encode(pcm: bytes, *, dtx: bool, chunk_ms: int | None = 30_000) -> list[EncodedChunk]:
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, complexity=5, serial=0xD7, dtx=dtx)
    return chunker.feed(pcm) + chunker.finish()


@pytest.fixture
def project(weed: ManagedWeed, tmp_path: Path) -> Iterator[Project]:
    proj = open_project(make_settings(weed, tmp_path / "data"))
    try:
        yield proj
    finally:
        proj.app.close(grace=1.0)
        drop_bucket(weed, proj.app.settings.s3_bucket)


def stitched(project: Project, chunks: list[EncodedChunk], path: Path) -> Path:
    rec_id = streaming_recording(project, [c.data for c in chunks], round(TOTAL_S * 1000))
    runtime = project.app.runtime
    worker = Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test")
    assert worker.run_once() == "succeeded"
    row = recording_row(project, rec_id)
    assert row["status"] == "completed" and row["duration_ms"] == round(TOTAL_S * 1000)
    stream = project.app.store.open(row["audio_key"])
    try:
        path.write_bytes(stream.read())
    finally:
        stream.close()
    return path


def test_dtx_keeps_the_timeline_exact_and_costs_a_fraction_in_silence(
        project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pcm = mixed_pcm()
    plain, dtx = encode(pcm, dtx=False), encode(pcm, dtx=True)
    # Same cut: the same chunks, each playing exactly the same samples.
    assert [(c.start_sample, c.end_sample, c.packets) for c in dtx] == \
        [(c.start_sample, c.end_sample, c.packets) for c in plain]
    assert dtx[-1].end_sample == round(TOTAL_S * 48_000)
    # The silent chunks (4 minutes of the middle) are DTX packets: 1 byte most of the time.
    quiet = [c for c in dtx if c.start_sample >= SPEECH_S * 48_000 + 48_000
             and c.end_sample <= (SPEECH_S + SILENCE_S + NOISE_S) * 48_000]
    assert len(quiet) >= 6
    plain_size = {c.part: len(c.data) for c in plain}
    # Near-silence costs under a fifth; steady noise takes libopus's VAD some seconds to
    # settle after a change, so the quiet stretch as a whole costs under a third.
    silent = [c for c in quiet if c.end_sample <= (SPEECH_S + SILENCE_S) * 48_000]
    assert silent and all(len(c.data) * 5 < plain_size[c.part] for c in silent)
    assert sum(len(c.data) for c in quiet) * 3 < sum(plain_size[c.part] for c in quiet)
    for c in quiet:
        path = tmp_path / f"chunk{c.part}.opus"
        path.write_bytes(c.data)
        assert ffmpeg_samples(path) == c.samples  # each chunk alone plays its exact length

    paths = {name: stitched(project, chunks, tmp_path / f"{name}.opus")
             for name, chunks in (("plain", plain), ("dtx", dtx))}
    for name, path in paths.items():
        report = opusinfo(path)
        assert "WARNING" not in report.upper() and "ERROR" not in report.upper(), report
        assert "Playback length: 4m:40.000s" in report, (name, report)
        assert ffmpeg_samples(path) == round(TOTAL_S * 48_000)
        assert probe(io.BytesIO(path.read_bytes())).samples > 0
    whole = tmp_path / "whole_dtx.opus"
    (one,) = encode(pcm, dtx=True, chunk_ms=None)
    whole.write_bytes(one.data)
    assert decode(paths["dtx"]) == decode(whole)  # still lossless: sample for sample

    plain_bytes = paths["plain"].stat().st_size
    dtx_bytes = paths["dtx"].stat().st_size
    assert dtx_bytes < 0.5 * plain_bytes
    with capsys.disabled():
        print(f"\n[dtx] {TOTAL_S:.0f} s ({2 * SPEECH_S:.0f} s speech): stitched "
              f"{plain_bytes} bytes without DTX, {dtx_bytes} with DTX "
              f"({dtx_bytes / plain_bytes:.2f}x)")
