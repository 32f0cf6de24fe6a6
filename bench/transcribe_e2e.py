"""Benchmark: end-to-end time from finalize to ``transcription.completed``, against the engine
alone on the same audio, measured in the same run.

Run: ``.venv/bin/python bench/transcribe_e2e.py [--minutes 5] [--threads 2] [--runs 1]``

Starts a real Tapedeck in this process (gRPC + worker roles, its own SeaweedFS and SQLite in a
temporary directory, the bundled whisper-base from ``.cache/models``; run
``scripts/fetch-model`` first), and makes an N-minute recording of real speech (the twelve
Asterisk prompts padded to 60 s, repeated) encoded like the device agent does (one
``OpusChunker``, 1-minute chunks, 24 kbit/s; not timed). Then:

* warm-up: one 10 s recording through the whole pipeline, so the worker has loaded its model
  (a server loads it once, on its first job; that first end-to-end time is printed too);
* end to end: chunks uploaded over gRPC (not timed), then the clock starts right before the
  FinalizeRecording call and stops when the ``transcription.completed`` event is committed
  (polled every 20 ms). The server-side split comes from the database: finalize → stitch job
  done, stitch done → ``transcription.started``, started → completed;
* baseline (engine only, same run, server idle, right after each end-to-end run):
  ``transcribe_ogg_opus`` on that stitched file read from a local file, with an engine built
  the same way (model load not timed).

Prints the audio length, both times, real-time factors (audio seconds per wall second), the
ratio end-to-end / engine-only and the word error rate of both transcripts. Shared, noisy
2-core machine: compare the ratio, not absolute times.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "transcribe"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from tapedeck.app import App  # noqa: E402
from tapedeck.auth import create_project, issue_device_token  # noqa: E402
from tapedeck.background.transcribe import TranscriptionEngine, transcribe_ogg_opus  # noqa: E402
from tapedeck.background.transcribe.whisper import load_engine  # noqa: E402
from tapedeck.clock import parse_iso  # noqa: E402
from tapedeck.settings import Settings  # noqa: E402
from tapedeck.v1 import chunk_pb2_grpc, recording_pb2_grpc  # noqa: E402
from tapedeck.v1 import recording_pb2 as rpb  # noqa: E402
from tapedeck_agent.encoder import OpusChunker  # noqa: E402

import asterisk_speech as speech  # noqa: E402
from serverkit import auth, chunk_messages  # noqa: E402

RATE = 16_000


def speech_minutes(minutes: int) -> tuple[bytes, str]:
    """N minutes of int16 PCM: the prompts padded to 60 s, repeated; and the reference."""
    track, text = speech.speech_track()
    minute = np.concatenate([track, np.zeros(RATE * 60 - len(track), dtype=np.float32)])
    return speech.to_int16(np.tile(minute, minutes)), " ".join([text] * minutes)


def device_chunks(pcm: bytes, chunk_ms: int = 60_000) -> tuple[list[bytes], int]:
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, bitrate=24_000, complexity=10)
    chunks = chunker.feed(pcm) + chunker.finish()
    return [c.data for c in chunks], round(chunks[-1].end_sample / 48)


@dataclass
class Client:
    """gRPC stubs of the in-process server, as one device."""

    recordings: recording_pb2_grpc.RecordingServiceStub
    chunks: chunk_pb2_grpc.ChunkServiceStub
    token: str

    def upload(self, chunks: list[bytes]) -> str:
        md = auth(self.token)
        rec_id: str = self.recordings.CreateRecording(rpb.CreateRecordingRequest(
            streaming=True, codec=rpb.CODEC_OPUS, chunk_duration_ms=60_000),
            metadata=md).recording.id
        for part, data in enumerate(chunks, start=1):
            self.chunks.UploadChunk(chunk_messages(rec_id, part, data), metadata=md)
        return rec_id

    def finalize(self, rec_id: str, chunks: list[bytes], duration_ms: int) -> None:
        self.recordings.FinalizeRecording(rpb.FinalizeRecordingRequest(
            id=rec_id, total_chunks=len(chunks), final_duration_ms=duration_ms,
            checksum_md5=hashlib.md5(b"".join(chunks)).hexdigest()), metadata=auth(self.token))


def wait_event(app: App, rec_id: str, types: tuple[str, ...]) -> str:
    """Poll the outbox every 20 ms until one of ``types`` exists for the recording."""
    marks = ", ".join("?" * len(types))
    while True:
        row = app.db.read().execute(
            f"SELECT type FROM events WHERE recording_id = ? AND type IN ({marks})",
            [rec_id, *types]).fetchone()
        if row is not None:
            return str(row[0])
        time.sleep(0.02)


def _at(app: App, sql: str, args: list[str]) -> datetime:
    t = parse_iso(app.db.read().execute(sql, args).fetchone()[0])
    assert t is not None
    return t


def server_split(app: App, rec_id: str) -> tuple[float, float, float]:
    """Seconds from finalize (``recording.uploaded``) to stitch job done, stitch done to
    ``transcription.started``, and started to ``transcription.completed`` (server clock)."""
    def event(kind: str) -> datetime:
        return _at(app, "SELECT created_at FROM events WHERE recording_id = ? AND type = ?",
                   [rec_id, kind])

    uploaded = event("recording.uploaded")
    stitched = _at(app, "SELECT finished_at FROM jobs WHERE recording_id = ? AND kind = ?",
                   [rec_id, "stitch"])
    started, completed = event("transcription.started"), event("transcription.completed")
    return ((stitched - uploaded).total_seconds(), (started - stitched).total_seconds(),
            (completed - started).total_seconds())


def run_e2e(app: App, client: Client, chunks: list[bytes], duration_ms: int) -> tuple[str, float]:
    """Upload (untimed), then time finalize → ``transcription.completed``."""
    rec_id = client.upload(chunks)
    started = time.perf_counter()
    client.finalize(rec_id, chunks, duration_ms)
    outcome = wait_event(app, rec_id, ("transcription.completed", "transcription.failed"))
    elapsed = time.perf_counter() - started
    if outcome != "transcription.completed":
        raise SystemExit(f"recording {rec_id}: {outcome}")
    return rec_id, elapsed


def engine_only(app: App, rec_id: str, engine: TranscriptionEngine,
                scratch: Path) -> tuple[float, str]:
    """Baseline: the stitched file of ``rec_id`` transcribed by ``engine``, from disk."""
    key = app.db.read().execute("SELECT audio_key FROM recordings WHERE id = ?",
                                [rec_id]).fetchone()[0]
    stream = app.store.open(key)
    local = scratch / "stitched.opus"
    local.write_bytes(stream.read())
    stream.close()
    started = time.perf_counter()
    with local.open("rb") as f:
        transcript = transcribe_ogg_opus(f, engine, None)
    return time.perf_counter() - started, transcript.text


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "whisper-base")
    args = parser.parse_args()
    if not (args.model / "model.bin").is_file():
        raise SystemExit(f"no model in {args.model}: run scripts/fetch-model")

    pcm, reference = speech_minutes(args.minutes)
    chunks, duration_ms = device_chunks(pcm)
    warm_chunks, warm_ms = device_chunks(pcm[: RATE * 2 * 10])
    with tempfile.TemporaryDirectory(prefix="tapedeck-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", grpc_port=0, http_port=0,
                            whisper_model=str(args.model), whisper_threads=args.threads,
                            job_poll_ms=50)
        app = App.open(settings)
        try:
            app.start(["grpc", "worker"])
            project_id, _ = create_project(app.db, app.clock)
            _, token = issue_device_token(app.db, app.clock, project_id, None)
            channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
            client = Client(recordings=recording_pb2_grpc.RecordingServiceStub(channel),
                            chunks=chunk_pb2_grpc.ChunkServiceStub(channel), token=token)
            _, warm_s = run_e2e(app, client, warm_chunks, warm_ms)
            engine = load_engine(str(args.model), Path(tmp), args.threads)  # not timed
            e2e: list[float] = []
            baseline: list[float] = []
            splits: list[tuple[float, float, float]] = []
            for _ in range(args.runs):  # interleaved: e2e, then the engine on the same audio
                rec_id, elapsed = run_e2e(app, client, chunks, duration_ms)
                e2e.append(elapsed)
                splits.append(server_split(app, rec_id))
                seconds, baseline_text = engine_only(app, rec_id, engine, Path(tmp))
                baseline.append(seconds)
            text = app.db.read().execute(
                "SELECT t.text FROM transcriptions t JOIN recordings r"
                " ON r.transcription_id = t.id WHERE r.id = ?", [rec_id]).fetchone()[0]
            channel.close()
        finally:
            app.close(grace=5)
    report(args, duration_ms, warm_s, e2e, splits, baseline,
           speech.wer(reference, text), speech.wer(reference, baseline_text))


def report(args: argparse.Namespace, duration_ms: int, warm_s: float, e2e: list[float],
           splits: list[tuple[float, float, float]], baseline: list[float], wer_e2e: float,
           wer_engine: float) -> None:
    audio_s = duration_ms / 1000
    median, baseline_s = statistics.median(e2e), statistics.median(baseline)
    stitch, wait, transcribe = (statistics.median(s[i] for s in splits) for i in range(3))
    print(f"== {args.minutes} min recording: {audio_s:.1f} s of real speech, "
          f"{args.threads} threads, whisper-base int8, decoding fast ({args.runs} run(s), median)")
    print(f"  first job of a fresh worker (10 s recording, includes model load): {warm_s:.2f} s")
    print(f"  engine only (baseline):       {baseline_s:7.2f} s   RTF {audio_s / baseline_s:6.1f}x"
          f"   WER {wer_engine:.2%}")
    print(f"  finalize -> completed (e2e):  {median:7.2f} s   RTF {audio_s / median:6.1f}x"
          f"   WER {wer_e2e:.2%}")
    print(f"    server split: finalize->stitched {stitch:.2f} s, stitched->started {wait:.2f} s,"
          f" started->completed {transcribe:.2f} s")
    print(f"  ratio e2e / engine only: {median / baseline_s:.3f} "
          f"(overhead {median - baseline_s:+.2f} s)", flush=True)


if __name__ == "__main__":
    main()
