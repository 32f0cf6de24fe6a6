"""Live transcription end to end with real parts: a real server (gRPC, REST, workers) with live
transcription on, real recorded speech encoded like the agent does, chunks uploaded one by one
while `WatchTranscription` (gRPC server streaming) and `GET /v1/transcriptions/{id}/events`
(SSE) follow the transcript; then finalize, stitching and the assembly. Plus replaced,
out-of-order, silent and failing chunks and a worker killed in the middle of a piece, each
with exactly one terminal transcription outcome and nothing doubled."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from tapedeck.v1 import recording_pb2 as rpb
from tapedeck.v1 import transcription_pb2 as tpb
from tapedeck.v1 import transcription_pb2_grpc

import asterisk_speech as speech
from serverkit import RunningServer, auth, chunk_messages, start_server
from txnkit import (
    device_chunks,
    drop_bucket,
    events,
    get_json,
    pcm16,
    pipeline_settings,
    rest,
    wait_for,
    wait_transcribed,
)

MAX_WER = 0.10  # as the whole-file pipeline test (measured 0 % on this track)
CHUNK_MS = 20_000
TERMINAL = ("transcription.completed", "transcription.failed")
LIVE_RUN = ["recording.created", "transcription.queued", "transcription.started",
            "recording.uploaded", "transcription.completed"]


@pytest.fixture(scope="module")
def track() -> tuple[list[bytes], int, str]:
    samples, reference = speech.speech_track(speech.PROMPTS, pause_s=0.6)
    chunks, duration = device_chunks(pcm16(samples), CHUNK_MS)
    return chunks, duration, reference


@pytest.fixture(scope="module")
def pipeline_overrides() -> dict[str, Any]:
    """This module's ``srv`` (tests/transcribe/conftest.py) transcribes live."""
    return {"live_transcription": True, "job_lease_s": 3, "job_retry_base_ms": 100}


def _create(srv: RunningServer, token: str) -> str:
    created = srv.recordings().CreateRecording(rpb.CreateRecordingRequest(
        streaming=True, codec=rpb.CODEC_OPUS, chunk_duration_ms=CHUNK_MS), metadata=auth(token))
    rec_id: str = created.recording.id
    return rec_id


def _upload(srv: RunningServer, token: str, rec_id: str, part: int, data: bytes) -> None:
    srv.chunks().UploadChunk(chunk_messages(rec_id, part, data), metadata=auth(token))


def _finalize(srv: RunningServer, token: str, rec_id: str, chunks: list[bytes],
              duration: int) -> None:
    srv.recordings().FinalizeRecording(rpb.FinalizeRecordingRequest(
        id=rec_id, total_chunks=len(chunks), final_duration_ms=duration,
        checksum_md5=hashlib.md5(b"".join(chunks)).hexdigest()), metadata=auth(token))


def _txn_id(srv: RunningServer, rec_id: str) -> str:
    return str(get_json(srv, f"/v1/recordings/{rec_id}")["transcription_id"])


def _pieces(srv: RunningServer, rec_id: str) -> dict[int, tuple[str, str, str | None]]:
    rows = srv.app.db.read().execute(
        "SELECT part, status, md5, prev_md5 FROM live_pieces WHERE recording_id = ?",
        [rec_id]).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _one_terminal(srv: RunningServer, rec_id: str) -> list[str]:
    evs = events(srv, rec_id)
    terminal = [d["id"] for t, d in evs if t in TERMINAL]
    queued = [d["id"] for t, d in evs if t == "transcription.queued"]
    assert len(terminal) == 1 and terminal == queued, evs
    return [t for t, _ in evs]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Watchers:
    """A gRPC WatchTranscription and an SSE client following one transcription."""

    def __init__(self, srv: RunningServer, txn_id: str) -> None:
        self.grpc: list[tpb.WatchTranscriptionResponse] = []
        self.sse: list[tuple[str, Any]] = []
        stub = transcription_pb2_grpc.TranscriptionServiceStub(srv.channel())
        self._call = stub.WatchTranscription(tpb.WatchTranscriptionRequest(id=txn_id),
                                             metadata=auth(srv.api_key), timeout=600)
        self._threads = [threading.Thread(target=self._read_grpc, daemon=True),
                         threading.Thread(target=self._read_sse, args=(srv, txn_id),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _read_grpc(self) -> None:
        for msg in self._call:
            self.grpc.append(msg)

    def _read_sse(self, srv: RunningServer, txn_id: str) -> None:
        headers = {"Authorization": f"Bearer {srv.api_key}"}
        with httpx.stream("GET", f"{srv.http_url}/v1/transcriptions/{txn_id}/events",
                          headers=headers, timeout=600) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.sse.append((str(event), json.loads(line[6:])))

    def grpc_segments(self) -> list[str]:
        return [s.text for m in self.grpc for s in m.segments]

    def sse_segments(self) -> list[str]:
        return [d["text"] for e, d in self.sse if e == "segment"]

    def join(self) -> None:
        for t in self._threads:
            t.join(120)


def test_live_transcript_is_watched_while_streaming_and_done_at_finalize(
        srv: RunningServer, track: tuple[list[bytes], int, str]) -> None:
    chunks, duration, reference = track
    _, token = srv.device_token()
    rec_id = _create(srv, token)
    _upload(srv, token, rec_id, 1, chunks[0])
    txn_id = _txn_id(srv, rec_id)
    watch = _Watchers(srv, txn_id)
    _upload(srv, token, rec_id, 2, chunks[1])

    # Before finalize: the transcript so far, over REST (processing) and both streams.
    def so_far() -> dict[str, Any] | None:
        txn = get_json(srv, f"/v1/transcriptions/{txn_id}", token)
        return txn if txn["covered_ms"] >= 2 * CHUNK_MS - 100 and txn["segments"] else None

    live = wait_for(so_far, 300, "the first two pieces")
    assert live["status"] == "processing" and live["live"] is True and live["text"] is None
    wait_for(lambda: (watch.grpc_segments() and watch.sse_segments()) or None, 30,
             "segments pushed to the watchers")
    before = list(watch.grpc_segments())
    assert before == [s["text"] for s in live["segments"]][:len(before)]
    assert [m.transcription.id for m in watch.grpc if m.HasField("transcription")] == []
    assert live["segments"][0]["start_ms"] < 5_000  # the recording's start, not chunk 2's

    _upload(srv, token, rec_id, 3, chunks[2])
    _finalize(srv, token, rec_id, chunks, duration)
    rec, txn = wait_transcribed(srv, rec_id)
    assert (rec["status"], txn["status"]) == ("completed", "completed"), txn["error"]
    assert txn["id"] == txn_id and txn["live"] is True and txn["covered_ms"] == duration
    assert speech.wer(reference, txn["text"]) <= MAX_WER, txn["text"]
    assert txn["duration_ms"] == rec["duration_ms"] == duration
    ws = [w for s in txn["segments"] for w in s["words"]]
    assert [w["start_ms"] for w in ws] == sorted(w["start_ms"] for w in ws)
    assert all(0 <= w["start_ms"] <= w["end_ms"] <= duration for w in ws)
    assert isinstance(txn["skipped_ms"], int) and 0 <= txn["skipped_ms"] < duration
    assert _one_terminal(srv, rec_id) == LIVE_RUN
    assert set(_pieces(srv, rec_id)) == {1, 2, 3}

    watch.join()
    final = [m for m in watch.grpc if m.HasField("transcription")]
    assert len(final) == 1 and final[0] is watch.grpc[-1]
    assert final[0].transcription.status == rpb.TRANSCRIPTION_STATUS_COMPLETED
    assert final[0].transcription.text == txn["text"] and final[0].transcription.live
    # what was pushed while streaming is the final transcript's beginning, nothing doubled
    texts = [s["text"] for s in txn["segments"]]
    assert watch.grpc_segments() == texts[:len(watch.grpc_segments())]
    assert watch.sse_segments() == texts[:len(watch.sse_segments())]
    assert watch.sse[-1][0] == "completed" and watch.sse[-1][1]["text"] == txn["text"]


def test_watch_needs_the_same_authorization_as_the_transcript(
        srv: RunningServer, track: tuple[list[bytes], int, str]) -> None:
    chunks, _, _ = track
    _, token = srv.device_token()
    rec_id = _create(srv, token)
    _upload(srv, token, rec_id, 1, chunks[0])
    txn_id = _txn_id(srv, rec_id)
    _, other = srv.device_token()  # another device: the transcription does not exist for it
    stub = transcription_pb2_grpc.TranscriptionServiceStub(srv.channel())
    with pytest.raises(grpc.RpcError) as err:
        next(iter(stub.WatchTranscription(tpb.WatchTranscriptionRequest(id=txn_id),
                                          metadata=auth(other), timeout=30)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    resp = httpx.get(f"{srv.http_url}/v1/transcriptions/{txn_id}/events",
                     headers={"Authorization": f"Bearer {other}"}, timeout=30)
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "transcription_not_found"
    resp = httpx.get(f"{srv.http_url}/v1/transcriptions/{txn_id}/events", timeout=30)
    assert resp.status_code == 401


def test_out_of_order_and_replaced_chunks(srv: RunningServer, weed: Any, tmp_path: Path,
                                          track: tuple[list[bytes], int, str]) -> None:
    """Parts 3, 1, then 2 as other bytes (silence), then 2 replaced by the real chunk: the
    transcript has part 2's words once, pieces 2 and 3 were redone for the final bytes."""
    chunks, duration, reference = track
    quiet = speech.encode_ogg_opus([np.zeros(CHUNK_MS * 16, np.float32)],
                                   tmp_path / "quiet.opus").read_bytes()
    with rest(srv) as c:
        created = c.post("/v1/recordings", json={"streaming": True,
                                                 "chunk_duration_ms": CHUNK_MS}).json()
    template = created["chunk_upload_url_template"]

    def put(part: int, data: bytes) -> dict[str, Any]:
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        resp = httpx.put(template.replace("{part}", str(part)), content=data,
                         headers={"Content-MD5": md5}, timeout=60)
        assert resp.status_code in (200, 201), resp.text  # 200: replaced
        return dict(resp.json())

    rec_id = created["id"]
    put(3, chunks[2])
    put(1, chunks[0])
    put(2, quiet)
    wait_for(lambda: _pieces(srv, rec_id).get(3, (None, None, None))[2] == _md5(quiet) or None,
             300, "piece 3 made with the first part 2")
    assert put(2, chunks[1])["replaced"] is True
    with rest(srv) as c:
        resp = c.post(f"/v1/recordings/{rec_id}/finalize", json={
            "total_chunks": 3, "final_duration_ms": duration,
            "checksum_md5": hashlib.md5(b"".join(chunks)).hexdigest()})
        assert resp.status_code == 200, resp.text
    _rec, txn = wait_transcribed(srv, rec_id)
    assert txn["status"] == "completed" and txn["live"] is True, txn["error"]
    assert speech.wer(reference, txn["text"]) <= MAX_WER, txn["text"]
    pieces = _pieces(srv, rec_id)
    assert pieces[2][1:] == (_md5(chunks[1]), _md5(chunks[0]))
    assert pieces[3][1:] == (_md5(chunks[2]), _md5(chunks[1]))
    assert _one_terminal(srv, rec_id)[-1] == "transcription.completed"


def test_silent_recording_completes_empty_with_the_silence_reported(
        srv: RunningServer) -> None:
    chunks, duration = device_chunks(bytes(2 * 16_000 * 30), CHUNK_MS)
    _, token = srv.device_token()
    rec_id = _create(srv, token)
    for part, data in enumerate(chunks, start=1):
        _upload(srv, token, rec_id, part, data)
    _finalize(srv, token, rec_id, chunks, duration)
    _, txn = wait_transcribed(srv, rec_id)
    assert (txn["status"], txn["text"], txn["segments"]) == ("completed", "", [])
    assert txn["live"] is True and txn["skipped_ms"] >= duration - 50
    assert _one_terminal(srv, rec_id) == LIVE_RUN


def test_failing_pieces_fall_back_to_the_whole_file(
        weed: Any, whisper_dir: Path, tmp_path: Path,
        track: tuple[list[bytes], int, str]) -> None:
    """The live lane's model cannot be loaded: its pieces fail after the last attempt, and
    the transcript is made from the stitched file instead — one terminal outcome."""
    chunks, duration, reference = track
    settings = pipeline_settings(weed, tmp_path / "data", whisper_dir, live_transcription=True,
                                 live_whisper_model=str(tmp_path / "no-such-model"),
                                 job_max_attempts=2, job_retry_base_ms=50)
    server = start_server(settings, roles=("grpc", "http", "worker"))
    try:
        _, token = server.device_token()
        rec_id = _create(server, token)
        for part, data in enumerate(chunks, start=1):
            _upload(server, token, rec_id, part, data)
        wait_for(lambda: len([p for p in _pieces(server, rec_id).values()
                              if p[0] == "failed"]) == 3 or None, 120, "failed pieces")
        _finalize(server, token, rec_id, chunks, duration)
        _, txn = wait_transcribed(server, rec_id)
        assert txn["status"] == "completed" and txn["live"] is True, txn["error"]
        assert txn["skipped_ms"] is None  # the whole-file path made it
        assert speech.wer(reference, txn["text"]) <= MAX_WER
        assert _one_terminal(server, rec_id) == LIVE_RUN
    finally:
        server.close()
        drop_bucket(weed, settings.s3_bucket)
