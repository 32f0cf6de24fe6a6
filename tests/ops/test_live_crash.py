"""A worker process killed (SIGKILL) in the middle of a live piece: the job is reclaimed once its
lease expires, the piece is made exactly once, and the recording gets one terminal
transcription outcome. Real processes: `tapedeck worker` as a child, the API and the other
workers in this process, one SQLite file, a real SeaweedFS."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tapedeck.background.transcribe.models import ModelUnavailable, ensure_whisper_base
from tapedeck.v1 import recording_pb2

from opskit import opus_chunks, spawn, stop_all, wait_until
from serverkit import auth, chunk_messages, drop_bucket, make_settings, start_server

MODEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / "whisper-base"


def test_worker_killed_mid_piece(weed: Any, tmp_path: Path) -> None:
    try:
        model = ensure_whisper_base(MODEL_DIR)
    except ModelUnavailable as exc:
        pytest.fail(f"{exc} (run scripts/fetch-model)")
    base = make_settings(weed, tmp_path / "data", live_transcription=True, job_lease_s=2,
                         job_poll_ms=100, whisper_model=str(model), whisper_threads=2)
    srv = start_server(base, roles=("grpc", "http"))
    children = []
    try:
        doomed = spawn(base.replace(test_only_failpoints="live_transcribe.started",
                                    job_kinds="live_transcribe"), "worker", tmp_path / "logs")
        children.append(doomed)
        chunks = opus_chunks(2, chunk_ms=5000)
        rec_id = srv.recordings().CreateRecording(recording_pb2.CreateRecordingRequest(
            streaming=True, chunk_duration_ms=5000), metadata=auth(srv.api_key)).recording.id
        srv.chunks().UploadChunk(chunk_messages(rec_id, 1, chunks[0]),
                                 metadata=auth(srv.api_key))
        held = doomed.wait_failpoint("live_transcribe.started")
        assert held["part"] == 1
        doomed.kill()

        srv.app.start(["worker"])  # this process's workers take over after the lease
        srv.chunks().UploadChunk(chunk_messages(rec_id, 2, chunks[1]),
                                 metadata=auth(srv.api_key))
        db = srv.app.db.read()
        wait_until(lambda: db.execute("SELECT status FROM jobs WHERE id = ?", [held["job_id"]])
                   .fetchone()[0] == "succeeded", timeout=300, what="the reclaimed piece job")
        srv.recordings().FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
            id=rec_id, total_chunks=2, final_duration_ms=10_000,
            checksum_md5=hashlib.md5(b"".join(chunks)).hexdigest()), metadata=auth(srv.api_key))

        def done() -> bool:
            row = db.execute("SELECT transcription_status FROM recordings WHERE id = ?",
                             [rec_id]).fetchone()
            return row[0] in ("completed", "failed")

        wait_until(done, timeout=300, what="the live transcription")
        runs = db.execute("SELECT owner, outcome FROM job_runs WHERE job_id = ?"
                          " ORDER BY started_at, attempt", [held["job_id"]]).fetchall()
        assert [(f":{doomed.proc.pid}:" in o, outcome) for o, outcome in runs] == [
            (True, None), (False, "succeeded")]
        pieces = db.execute("SELECT part, status FROM live_pieces WHERE recording_id = ?",
                            [rec_id]).fetchall()
        assert sorted(pieces) == [(1, "done"), (2, "done")]
        terminal = db.execute("SELECT type FROM events WHERE recording_id = ? AND type IN"
                              " ('transcription.completed', 'transcription.failed')",
                              [rec_id]).fetchall()
        assert terminal == [("transcription.completed",)]
        txn = db.execute("SELECT t.status, t.live, t.text FROM transcriptions t JOIN recordings"
                         " r ON r.transcription_id = t.id WHERE r.id = ?", [rec_id]).fetchone()
        assert txn[:2] == ("completed", 1) and txn[2]
    finally:
        stop_all(children)
        srv.close()
        drop_bucket(weed, base.s3_bucket)
