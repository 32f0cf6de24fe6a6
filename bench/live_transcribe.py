"""Benchmark: live transcription. Finalize → ``transcription.completed`` of a recording whose
chunks were transcribed while it streamed, next to the whole-file transcription time of the
same stitched recording, measured in the same run.

Run: ``.venv/bin/python bench/live_transcribe.py [--minutes 60] [--speech 0.5] [--beam 1]
[--decoding fast]``

Starts a real Tapedeck in this process (gRPC + worker roles, live transcription on, its own
SeaweedFS and SQLite in a temporary directory, the bundled whisper-base; run
``scripts/fetch-model`` first). The recording is ``--minutes`` long, cut into 12 chunks by the
agent's encoder (``OpusChunker``, 24 kbit/s; not timed): minutes of real speech (the Asterisk
prompts padded to 60 s) and minutes of quiet room noise (-60 dBFS) so that ``--speech`` of the
minutes hold speech, spread evenly. Then:

* warm-up: a 10 s recording through the whole live pipeline (both lanes load their model);
* chunks 1..11 uploaded over gRPC one by one; the bench waits until the live lane has caught
  up (no ``live_transcribe`` job left), then uploads chunk 12, and the clock starts right
  before FinalizeRecording and stops at ``transcription.completed`` (polled every 20 ms);
* live throughput: audio seconds of the pieces / seconds their jobs ran (``job_runs``), with
  the audio skipped as non-speech (VAD) and the real-time factor over speech only;
* baseline (same run, server idle): the whole stitched file transcribed by the whole-file
  path (``transcribe_ogg_opus`` with the same ``--decoding`` profile as the server, an
  engine built the same way; load not timed).

Also timed: the server's own whole-file path on the same stitched recording (a new
transcription requested as ``POST /v1/recordings/{id}/transcribe`` does: transcription,
speakers over the whole file and the search index, what a user waits for without live), and
where finalize -> completed went (the recording's job runs after finalize).

Prints both times, their ratio (target <= 0.15, and < 60 s for an hour), real-time factors,
skipped audio and the word error rate of both transcripts against the reference text.
Shared, noisy 2-core machine: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "transcribe"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from transcribe_e2e import Client, device_chunks, engine_only, wait_event  # noqa: E402

from tapedeck.app import App  # noqa: E402
from tapedeck.auth import create_project, issue_device_token  # noqa: E402
from tapedeck.background.transcribe.whisper import PROFILES, load_engine  # noqa: E402
from tapedeck.clock import parse_iso  # noqa: E402
from tapedeck.settings import Settings  # noqa: E402
from tapedeck.v1 import chunk_pb2_grpc, recording_pb2_grpc  # noqa: E402
from tapedeck.v1 import recording_pb2 as rpb  # noqa: E402

import asterisk_speech as speech  # noqa: E402
from serverkit import auth, chunk_messages  # noqa: E402

RATE = 16_000
CHUNKS = 12


def mixed_minutes(minutes: int, fraction: float) -> tuple[bytes, str]:
    """``minutes`` of int16 PCM, ``fraction`` of them speech (spread evenly), the rest quiet
    noise; and the reference text of the speech minutes."""
    track, text = speech.speech_track()
    talk = np.concatenate([track, np.zeros(RATE * 60 - len(track), dtype=np.float32)])
    rng = np.random.default_rng(7)
    blocks, texts, owed = [], [], 0.0
    for _ in range(minutes):
        owed += fraction
        if owed >= 1.0 - 1e-9:
            owed -= 1.0
            blocks.append(talk)
            texts.append(text)
        else:
            blocks.append((rng.standard_normal(RATE * 60) * 1e-3).astype(np.float32))
    return speech.to_int16(np.concatenate(blocks)), " ".join(texts)


def live_backlog(app: App) -> int:
    (n,) = app.db.read().execute("SELECT count(*) FROM jobs WHERE kind = 'live_transcribe'"
                                 " AND status IN ('queued', 'running')").fetchone()
    return int(n)


def upload_live(app: App, client: Client, chunks: list[bytes]) -> str:
    """Chunks 1..n-1, wait until the live lane caught up, then chunk n (not timed)."""
    md = auth(client.token)
    rec_id: str = client.recordings.CreateRecording(rpb.CreateRecordingRequest(
        streaming=True, codec=rpb.CODEC_OPUS), metadata=md).recording.id
    for part, data in enumerate(chunks, start=1):
        if part == len(chunks):
            while live_backlog(app):
                time.sleep(0.05)
        client.chunks.UploadChunk(chunk_messages(rec_id, part, data), metadata=md)
    return rec_id


def piece_stats(app: App, rec_id: str) -> tuple[float, float, float]:
    """(seconds the live jobs ran, audio ms skipped, audio ms of the pieces)."""
    db = app.db.read()
    busy = 0.0
    for start, end in db.execute(
            "SELECT r.started_at, r.finished_at FROM job_runs r JOIN jobs j ON j.id = r.job_id"
            " WHERE j.recording_id = ? AND j.kind = 'live_transcribe'"
            " AND r.outcome = 'succeeded'", [rec_id]):
        a, b = parse_iso(start), parse_iso(end)
        assert a is not None and b is not None
        busy += (b - a).total_seconds()
    skipped, samples = db.execute("SELECT sum(skipped_ms), sum(samples48) FROM live_pieces"
                                  " WHERE recording_id = ?", [rec_id]).fetchone()
    return busy, float(skipped or 0), float(samples or 0) / 48


def phases(app: App, rec_id: str, since: datetime) -> list[tuple[str, float, float]]:
    """``(kind, start s, end s)`` relative to ``since`` of the recording's job runs that
    ended after it (what finalize -> completed spent its time on; a live piece that was
    still running at finalize starts at a negative time)."""
    out = []
    for kind, start, end in app.db.read().execute(
            "SELECT j.kind, r.started_at, r.finished_at FROM job_runs r JOIN jobs j"
            " ON j.id = r.job_id WHERE j.recording_id = ? ORDER BY r.started_at", [rec_id]):
        a, b = parse_iso(start), parse_iso(end)
        if a is not None and b is not None and b >= since:
            out.append((str(kind), (a - since).total_seconds(), (b - since).total_seconds()))
    return out


def server_whole_file(app: App, api_key: str, rec_id: str) -> float:
    """Seconds from requesting a new transcription of the stitched recording (the server's
    whole-file path: transcription, diarization, search index, as ``POST /v1/recordings/{id}/
    transcribe`` runs it) to its ``transcription.completed``."""
    def completed() -> int:
        return int(app.db.read().execute(
            "SELECT count(*) FROM events WHERE recording_id = ? AND type IN"
            " ('transcription.completed', 'transcription.failed')", [rec_id]).fetchone()[0])

    before = completed()
    p = app.domain.auth.authenticate(f"Bearer {api_key}")
    started = time.perf_counter()
    app.domain.transcriptions.request(p, rec_id)
    while completed() == before:
        time.sleep(0.02)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60, help="multiple of 12")
    parser.add_argument("--speech", type=float, default=0.5, help="fraction of minutes")
    parser.add_argument("--beam", type=int, default=1, help="beam size of the live lane")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoding", default="fast", choices=sorted(PROFILES),
                        help="whisper_decoding profile of the server and the baseline")
    parser.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "whisper-base")
    args = parser.parse_args()
    if not (args.model / "model.bin").is_file():
        raise SystemExit(f"no model in {args.model}: run scripts/fetch-model")
    if args.minutes % CHUNKS:
        raise SystemExit(f"--minutes must be a multiple of {CHUNKS}")

    pcm, reference = mixed_minutes(args.minutes, args.speech)
    chunks, duration_ms = device_chunks(pcm, args.minutes * 60_000 // CHUNKS)
    warm, warm_ms = device_chunks(pcm[: RATE * 2 * 10], 5_000)
    with tempfile.TemporaryDirectory(prefix="tapedeck-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", grpc_port=0, http_port=0,
                            whisper_model=str(args.model), whisper_threads=args.threads,
                            job_poll_ms=50, live_transcription=True, live_beam_size=args.beam,
                            whisper_decoding=args.decoding)
        app = App.open(settings)
        try:
            app.start(["grpc", "worker"])
            project_id, api_key = create_project(app.db, app.clock)
            _, token = issue_device_token(app.db, app.clock, project_id, None)
            channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
            client = Client(recordings=recording_pb2_grpc.RecordingServiceStub(channel),
                            chunks=chunk_pb2_grpc.ChunkServiceStub(channel), token=token)
            warm_id = upload_live(app, client, warm)
            client.finalize(warm_id, warm, warm_ms)
            wait_event(app, warm_id, ("transcription.completed", "transcription.failed"))

            cpu0 = time.process_time()
            rec_id = upload_live(app, client, chunks)
            started, since = time.perf_counter(), app.clock.now()
            client.finalize(rec_id, chunks, duration_ms)
            outcome = wait_event(app, rec_id, ("transcription.completed",
                                               "transcription.failed"))
            live_s = time.perf_counter() - started
            live_cpu = time.process_time() - cpu0  # every thread of this process
            if outcome != "transcription.completed":
                raise SystemExit(f"recording {rec_id}: {outcome}")
            text, skipped_ms = app.db.read().execute(
                "SELECT t.text, t.skipped_ms FROM transcriptions t JOIN recordings r"
                " ON r.transcription_id = t.id WHERE r.id = ?", [rec_id]).fetchone()
            busy, _, piece_ms = piece_stats(app, rec_id)
            after_finalize = phases(app, rec_id, since)
            server_s = server_whole_file(app, api_key, rec_id)
            engine = load_engine(str(args.model), Path(tmp), args.threads,  # not timed
                                 PROFILES[args.decoding])
            cpu0 = time.process_time()
            whole_s, whole_text = engine_only(app, rec_id, engine, Path(tmp))
            whole_cpu = time.process_time() - cpu0
            channel.close()
        finally:
            app.close(grace=5)
    audio_s = duration_ms / 1000
    speech_s = audio_s - (skipped_ms or 0) / 1000
    print(f"== {args.minutes} min recording in {CHUNKS} chunks, {args.speech:.0%} of minutes "
          f"speech, whisper-base int8, {args.threads} threads, decoding {args.decoding}, "
          f"live beam {args.beam}")
    print(f"  whole-file transcription (baseline): {whole_s:8.2f} s   RTF {audio_s / whole_s:6.1f}x"
          f"   WER {speech.wer(reference, whole_text):.2%}")
    print(f"  live: finalize -> completed:         {live_s:8.2f} s   "
          f"WER {speech.wer(reference, text):.2%}")
    print(f"  ratio live / whole-file: {live_s / whole_s:.3f}  (target <= 0.15; last chunk "
          f"alone is {1 / CHUNKS:.3f})")
    print(f"  the server's whole-file path (request -> completed: transcription + speakers +"
          f" index): {server_s:8.2f} s; ratio live / it: {live_s / server_s:.3f}")
    print("  after finalize: " + ", ".join(f"{k} {a:.1f}-{b:.1f} s" for k, a, b in after_finalize))
    print(f"  live pieces: {piece_ms / 1000:.1f} s of audio in {busy:.1f} s of job time: "
          f"RTF {piece_ms / 1000 / busy:6.1f}x (with VAD skipping), "
          f"{speech_s / busy:6.1f}x over the speech only")
    print(f"  CPU cost (audio s per CPU s, all threads; what a fleet pays): live "
          f"{audio_s / live_cpu:.1f}x, whole-file {audio_s / whole_cpu:.1f}x, "
          f"ratio {whole_cpu / live_cpu:.2f}")
    print(f"  skipped as non-speech: {(skipped_ms or 0) / 1000:.1f} s "
          f"({(skipped_ms or 0) / duration_ms:.0%} of the audio)")
    print(f"  load average (1, 5, 15 min) at the end: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on 2 shared cores", flush=True)


if __name__ == "__main__":
    main()
