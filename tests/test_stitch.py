"""The stitch job against a real SeaweedFS and SQLite file, with real Opus chunks (libopus).

Recordings go through the domain (create, upload chunks, finalize) exactly as the API does;
the job is run by a real ``Worker`` claim loop (``run_once``) from the queue."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tapedeck.background.stitch import audio_key, build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.clock import ManualClock
from tapedeck.errors import TapedeckError
from tapedeck.infra.jobs import JobQueue, RetryPolicy
from tapedeck.infra.weed import ManagedWeed
from tapedeck.oggopus import probe

from serverkit import drop_bucket, make_settings
from stitchkit import (
    Project,
    continuous_chunks,
    decode,
    duration_ms,
    events,
    ffmpeg_samples,
    ffprobe_duration_s,
    independent_chunks,
    jobs_of,
    open_project,
    opusinfo,
    pcm,
    recording_row,
    single_file_recording,
    streaming_recording,
    whole_encode,
)


@pytest.fixture
def project(weed: ManagedWeed, tmp_path: Path) -> Iterator[Project]:
    proj = open_project(make_settings(weed, tmp_path / "data"))
    try:
        yield proj
    finally:
        proj.app.close(grace=1.0)
        drop_bucket(weed, proj.app.settings.s3_bucket)


def stitch_worker(project: Project, queue: JobQueue | None = None) -> Worker:
    """A claim loop that runs only stitch jobs (transcribe jobs stay queued)."""
    runtime = project.app.runtime
    return Worker(queue or queue_for(runtime), {"stitch": build_handler(runtime)}, "test")


def fetch(project: Project, key: str, path: Path) -> Path:
    stream = project.app.store.open(key)
    try:
        path.write_bytes(stream.read())
    finally:
        stream.close()
    return path


def test_twelve_continuous_chunks_stitch_bit_exactly(project: Project, tmp_path: Path) -> None:
    seconds = 60.0
    chunks = continuous_chunks(seconds, 5_000)
    assert len(chunks) == 12
    rec_id = streaming_recording(project, [c.data for c in chunks], duration_ms(seconds))
    assert recording_row(project, rec_id)["status"] == "uploaded"

    assert stitch_worker(project).run_once() == "succeeded"

    row = recording_row(project, rec_id)
    assert row["status"] == "completed"
    assert row["duration_ms"] == 60_000
    assert row["audio_key"] == audio_key(rec_id)
    stitched = fetch(project, row["audio_key"], tmp_path / "stitched.opus")
    assert row["file_size_bytes"] == stitched.stat().st_size
    report = opusinfo(stitched)
    assert "WARNING" not in report.upper() and "ERROR" not in report.upper(), report
    assert "Total data length" in report
    assert "Playback length: 1m:00.000s" in report
    # ffprobe (ffmpeg 5.1) counts the pre-skip in the container duration, for any Ogg Opus
    # file (opusenc's too); minus the pre-skip it is exact to the ms, and ffmpeg decodes
    # exactly 60 s of samples.
    pre_skip = probe(io.BytesIO(stitched.read_bytes())).pre_skip
    assert round((ffprobe_duration_s(stitched) - pre_skip / 48_000) * 1000) == 60_000
    assert ffmpeg_samples(stitched) == 60 * 48_000
    whole = tmp_path / "whole.opus"
    whole.write_bytes(whole_encode(seconds))
    assert decode(stitched) == decode(whole)  # sample for sample
    assert len(decode(stitched)) == 60 * 48_000 * 4

    media = project.app.db.read().execute(
        "SELECT type, status, mime_type, object_key, file_size_bytes, md5 FROM media"
        " WHERE recording_id = ?", [rec_id]).fetchall()
    assert media == [("audio", "ready", "audio/ogg", audio_key(rec_id),
                      stitched.stat().st_size, hashlib.md5(stitched.read_bytes()).hexdigest())]
    jobs = {j["kind"]: j for j in jobs_of(project, rec_id)}
    assert jobs["stitch"]["status"] == "succeeded" and jobs["stitch"]["attempts"] == 1
    assert jobs["stitch"]["id"] == row["stitching_job_id"]
    assert jobs["transcribe"]["status"] == "queued"  # no transcribe handler in this worker
    assert jobs["transcribe"]["id"].startswith("job_transcriber_")
    assert json.loads(jobs["transcribe"]["payload"]) == {
        "transcription_id": row["transcription_id"]}
    txn = project.app.db.read().execute("SELECT status, job_id FROM transcriptions WHERE id = ?",
                                        [row["transcription_id"]]).fetchone()
    assert txn == ("queued", jobs["transcribe"]["id"])
    # No event names these transitions in api.md: only the finalize events exist.
    assert [t for t, _ in events(project, rec_id)] == [
        "recording.created", "recording.uploaded", "transcription.queued"]
    assert stitch_worker(project).run_once() is None  # nothing left it can run


def test_independent_chunks_stitch_within_one_packet_per_boundary(project: Project,
                                                                  tmp_path: Path) -> None:
    seconds = 24.0
    chunks = independent_chunks(seconds, 3_000)
    assert len(chunks) == 8
    rec_id = streaming_recording(project, [c.data for c in chunks], duration_ms(seconds))
    assert stitch_worker(project).run_once() == "succeeded"
    row = recording_row(project, rec_id)
    assert row["status"] == "completed"
    assert abs(row["duration_ms"] - 24_000) <= 7 * 20
    stitched = fetch(project, row["audio_key"], tmp_path / "s.opus")
    report = opusinfo(stitched)
    assert "WARNING" not in report.upper(), report
    assert f"Playback length: 0m:{row['duration_ms'] / 1000:06.3f}s" in report
    assert abs(ffmpeg_samples(stitched) - row["duration_ms"] * 48) < 48


def _wav_bytes(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm(seconds))
    return out.getvalue()


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) * 2 // 3],
    "random_bytes": lambda data: os.urandom(len(data)),
    "wav_renamed": lambda data: _wav_bytes(1.0),
    "flipped_byte": lambda data: data[:5000] + bytes([data[5000] ^ 0x40]) + data[5001:],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_chunk_fails_with_invalid_audio_naming_the_part(project: Project,
                                                                kind: str) -> None:
    chunks = [c.data for c in continuous_chunks(12.0, 3_000)]
    chunks[2] = CORRUPTIONS[kind](chunks[2])
    bad = streaming_recording(project, chunks, 12_000)
    good = streaming_recording(project, [c.data for c in continuous_chunks(6.0, 3_000)], 6_000)
    worker = stitch_worker(project)

    assert worker.run_once() == "failed"
    row = recording_row(project, bad)
    assert (row["status"], row["failure_type"]) == ("failed", "invalid_audio")
    assert row["failure_message"].startswith("Chunk 3 ")
    assert row["transcription_status"] == "failed"
    assert project.app.store.stat(audio_key(bad)) is None
    txn = project.app.db.read().execute(
        "SELECT status, error_type FROM transcriptions WHERE recording_id = ?", [bad]).fetchall()
    assert txn == [("failed", "invalid_audio")]
    evs = events(project, bad)
    assert [t for t, _ in evs][-2:] == ["recording.failed", "transcription.failed"]
    assert evs[-2][1]["failure"]["type"] == "invalid_audio"
    assert evs[-1][1]["error"]["type"] == "invalid_audio"
    stitch_job = jobs_of(project, bad)[0]
    assert stitch_job["status"] == "failed" and stitch_job["attempts"] == 1  # not retried
    assert json.loads(stitch_job["last_error"])["part"] == 3

    assert worker.run_once() == "succeeded"  # the worker keeps going
    assert recording_row(project, good)["status"] == "completed"


@pytest.mark.both_backends  # the failure transition once broke on PostgreSQL (a bool as int8)
def test_chunk_replaced_after_finalize_fails_checksum(project: Project) -> None:
    """No upload path can overwrite a pinned chunk object; one changed behind the server's
    back (a store operator, corruption) is still caught."""
    chunks = [c.data for c in continuous_chunks(9.0, 3_000)]
    rec_id = streaming_recording(project, chunks, 9_000)
    other = continuous_chunks(9.0, 3_000, start=5)[1].data  # valid Opus, other bytes
    pinned = project.app.db.read().execute(
        "SELECT object_key FROM chunks WHERE recording_id = ? AND part = 2", [rec_id]).fetchone()[0]
    project.app.store.put(pinned, io.BytesIO(other), len(other))
    assert stitch_worker(project).run_once() == "failed"
    row = recording_row(project, rec_id)
    assert (row["status"], row["failure_type"]) == ("failed", "checksum_mismatch")
    assert row["failure_message"].startswith("Chunk 2 ")
    assert project.app.store.stat(audio_key(rec_id)) is None


def test_duration_far_from_final_duration_fails_and_publishes_nothing(project: Project) -> None:
    chunks = [c.data for c in continuous_chunks(9.0, 3_000)]
    rec_id = streaming_recording(project, chunks, 12_000)  # device claims 3 s more
    assert stitch_worker(project).run_once() == "failed"
    row = recording_row(project, rec_id)
    assert (row["status"], row["failure_type"]) == ("failed", "duration_mismatch")
    assert "9000 ms" in row["failure_message"] and "12000 ms" in row["failure_message"]
    assert project.app.store.stat(audio_key(rec_id)) is None


def test_duration_within_tolerance_completes_with_the_exact_duration(project: Project) -> None:
    chunks = [c.data for c in continuous_chunks(9.0, 3_000)]
    rec_id = streaming_recording(project, chunks, 9_090)
    assert stitch_worker(project).run_once() == "succeeded"
    assert recording_row(project, rec_id)["duration_ms"] == 9_000


def test_single_opus_file_is_validated_not_stitched(project: Project) -> None:
    rec_id = single_file_recording(project, whole_encode(7.0))
    assert stitch_worker(project).run_once() == "succeeded"
    row = recording_row(project, rec_id)
    assert (row["status"], row["duration_ms"]) == ("completed", 7_000)
    media = project.app.db.read().execute(
        "SELECT status, object_key FROM media WHERE recording_id = ?", [rec_id]).fetchall()
    assert media == [("ready", row["audio_key"])]
    assert "/original/" in row["audio_key"]
    assert [j["kind"] for j in jobs_of(project, rec_id)] == ["stitch", "transcribe"]


def test_single_file_that_is_not_opus_fails(project: Project) -> None:
    rec_id = single_file_recording(project, _wav_bytes(1.0), codec="opus")
    assert stitch_worker(project).run_once() == "failed"
    row = recording_row(project, rec_id)
    assert (row["status"], row["failure_type"]) == ("failed", "invalid_audio")


def test_single_wav_file_is_probed(project: Project) -> None:
    rec_id = single_file_recording(project, _wav_bytes(2.5), codec="wav")
    assert stitch_worker(project).run_once() == "succeeded"
    row = recording_row(project, rec_id)
    assert (row["status"], row["duration_ms"]) == ("completed", 2_500)


def test_garbage_wav_file_fails(project: Project) -> None:
    rec_id = single_file_recording(project, os.urandom(4000), codec="wav")
    assert stitch_worker(project).run_once() == "failed"
    assert recording_row(project, rec_id)["failure_type"] == "invalid_audio"


def test_deleted_recording_job_is_a_no_op(project: Project) -> None:
    chunks = [c.data for c in continuous_chunks(6.0, 3_000)]
    rec_id = streaming_recording(project, chunks, 6_000)
    job_id = recording_row(project, rec_id)["stitching_job_id"]
    # Simulate a delete that raced a running job: the job row survives its recording.
    with project.app.db.write() as tx:
        tx.execute("DELETE FROM recordings WHERE id = ?", [rec_id])
    assert stitch_worker(project).run_once() == "succeeded"
    job = queue_for(project.app.runtime).get(job_id)
    assert job is not None and job["status"] == "succeeded"


def wait_writable(store: Any, timeout: float = 60.0) -> None:
    """Wait until a restarted store accepts writes (its volume server can lag behind the
    S3 endpoint's first answer on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.put("probe/writable", io.BytesIO(b"ok"), 2)
            store.delete("probe/writable")
            return
        except TapedeckError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_store_down_is_retried_with_backoff_then_succeeds(tmp_path: Path) -> None:
    clock = ManualClock()
    with ManagedWeed(tmp_path / "weed", memory_limit="256MiB") as own:
        proj = open_project(make_settings(own, tmp_path / "data"), clock=clock)
        try:
            chunks = [c.data for c in continuous_chunks(6.0, 3_000)]
            rec_id = streaming_recording(proj, chunks, 6_000)
            queue = JobQueue(proj.app.db, clock, lease_s=30,
                             retry=RetryPolicy(max_attempts=5, base_s=10, jitter=0.25))
            worker = stitch_worker(proj, queue)
            own.stop()
            assert worker.run_once() == "retry"  # first backoff: 10 s ± 25 %
            clock.advance(timedelta(seconds=13))
            assert worker.run_once() == "retry"
            job = jobs_of(proj, rec_id)[0]
            assert (job["status"], job["attempts"]) == ("queued", 2)
            assert json.loads(job["last_error"])["type"] == "storage_unavailable"
            assert recording_row(proj, rec_id)["status"] == "stitching"
            clock.advance(timedelta(seconds=14))
            assert worker.run_once() is None  # second backoff is 20 s ± 25 %: not due yet
            own.start()
            wait_writable(proj.app.store)
            clock.advance(timedelta(seconds=12))
            assert worker.run_once() == "succeeded"
            assert recording_row(proj, rec_id)["status"] == "completed"
            runs = proj.app.db.read().execute(
                "SELECT attempt, outcome FROM job_runs WHERE job_id = ? ORDER BY attempt",
                [job["id"]]).fetchall()
            assert runs == [(1, "retry"), (2, "retry"), (3, "succeeded")]
        finally:
            proj.app.close(grace=1.0)


def test_opusinfo_tool_is_strict_enough(tmp_path: Path) -> None:
    """The checks above rely on opusinfo flagging a broken stream: byte-concatenated chunks
    (a chained stream whose links overlap) must not pass as one clean stream."""
    chunks = continuous_chunks(6.0, 3_000)
    path = tmp_path / "concat.opus"
    path.write_bytes(b"".join(c.data for c in chunks))
    out = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True)
    assert "New logical stream" in out.stdout + out.stderr


def big_opus_part(size: int) -> bytes:
    """A valid Ogg Opus file of about ``size`` bytes: real speech packets repeated with
    continuous granule positions (what a long presigned part looks like to the stitcher)."""
    from tapedeck.oggopus import OggStreamWriter, iter_packets
    from tapedeck.oggopus.opus import OpusHead, OpusTags, packet_duration

    packets = [p.data for p in iter_packets(io.BytesIO(whole_encode(4.0, bitrate=64_000)))][2:]
    out = io.BytesIO()
    w = OggStreamWriter(out, serial=0x5EED)
    w.write_packet(OpusHead(channels=1, pre_skip=312, input_sample_rate=16_000).to_bytes(), 0)
    w.flush()
    w.write_packet(OpusTags().to_bytes(), 0)
    w.flush()
    granule, n = 0, 0
    while w.bytes_written < size:
        granule += packet_duration(packets[n % len(packets)])
        w.write_packet(packets[n % len(packets)], granule)
        n += 1
        if n % 50 == 0:
            w.flush()
    w.flush(eos=True)
    return out.getvalue()


def test_stitcher_streams_big_parts_in_bounded_memory(project: Project) -> None:
    """Issue 15: parts far above a chunk's usual size are streamed, never read whole: the
    Python heap's peak while verifying and remuxing two 24 MiB parts stays a few MiB."""
    import tracemalloc

    from tapedeck.background.stitch import ChunkRecord, verified_chunks
    from tapedeck.domain.objects import new_chunk_key
    from tapedeck.oggopus import remux

    part = big_opus_part(24 * 1024 * 1024)
    records = []
    for n in (1, 2):
        info = project.app.store.put(new_chunk_key("rec_big", n), io.BytesIO(part), len(part))
        records.append(ChunkRecord(n, info.size, info.etag, info.key))
    del info

    class Null:
        size = 0

        def write(self, data: bytes, /) -> int:
            self.size += len(data)
            return len(data)

    whole = hashlib.md5(part + part).hexdigest()
    del part
    sink = Null()
    tracemalloc.start()
    try:
        result = remux(verified_chunks(project.app.store, records, whole), sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.chunks == 2 and sink.size > 40 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
