"""Test kit for the transcription pipeline: real servers with the worker role and the real
whisper-base model, recordings encoded like a device does (``OpusChunker``: one encoder,
continuous chunks) and uploaded over gRPC or REST, and helpers to wait for and read the
outcome (REST/gRPC answers, the event outbox)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from minio import Minio

from tapedeck.settings import Settings
from tapedeck.v1 import recording_pb2 as rpb
from tapedeck_agent.encoder import OpusChunker

import asterisk_speech as speech
import waitkit
from serverkit import RunningServer, auth, chunk_messages, make_settings

RATE = 16_000
TERMINAL_TXN = ("completed", "failed")
T = TypeVar("T")


def pipeline_settings(weed: Any, data_dir: Path, model_dir: Path, **overrides: Any) -> Settings:
    """Test settings whose worker loads the verified model directory (no copy per server)."""
    settings: Settings = make_settings(weed, data_dir, whisper_model=str(model_dir),
                                       whisper_threads=2, job_poll_ms=50, **overrides)
    return settings


def drop_bucket(weed: Any, bucket: str) -> None:
    """Remove a test bucket and its objects (weed mini allows removing a non-empty one)."""
    client = Minio(weed.endpoint, weed.access_key, weed.secret_key, secure=False,
                   region="us-east-1")
    if client.bucket_exists(bucket):
        client.remove_bucket(bucket)


# -- audio -------------------------------------------------------------------------------------

def pcm16(samples: speech.Samples) -> bytes:
    """float32 [-1, 1] → int16 little-endian PCM, as a device's capture delivers it."""
    return speech.to_int16(samples)


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def device_chunks(pcm: bytes, chunk_ms: int) -> tuple[list[bytes], int]:
    """Encode like the device agent: ONE encoder over the whole recording, cut into chunk
    files with the 80 ms overlap. Returns the chunk files and the duration in ms."""
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, bitrate=24_000, complexity=10)
    chunks = chunker.feed(pcm) + chunker.finish()
    return [c.data for c in chunks], round(chunks[-1].end_sample / 48)


# -- uploads -----------------------------------------------------------------------------------

def upload_grpc(srv: RunningServer, token: str, chunks: list[bytes], duration_ms: int,
                before_finalize: Callable[[str], None] | None = None) -> str:
    """Create a streaming recording, upload the chunks (client streaming) and finalize with
    the overall MD5, all over gRPC with ``token`` (``before_finalize(recording_id)`` runs in
    between). Returns the recording id."""
    md = auth(token)
    created = srv.recordings().CreateRecording(rpb.CreateRecordingRequest(
        streaming=True, codec=rpb.CODEC_OPUS, chunk_duration_ms=20_000), metadata=md)
    rec_id: str = created.recording.id
    stub = srv.chunks()
    for part, data in enumerate(chunks, start=1):
        stub.UploadChunk(chunk_messages(rec_id, part, data), metadata=md)
    if before_finalize is not None:
        before_finalize(rec_id)
    srv.recordings().FinalizeRecording(rpb.FinalizeRecordingRequest(
        id=rec_id, total_chunks=len(chunks), final_duration_ms=duration_ms,
        checksum_md5=hashlib.md5(b"".join(chunks)).hexdigest()), metadata=md)
    return rec_id


def rest(srv: RunningServer, token: str | None = None) -> httpx.Client:
    """An httpx client for the server's REST gateway (bearer ``token``, default the key)."""
    return httpx.Client(base_url=srv.http_url, timeout=60.0,
                        headers={"Authorization": f"Bearer {token or srv.api_key}"})


def upload_rest(srv: RunningServer, token: str, chunks: list[bytes], duration_ms: int) -> str:
    """The same flow over REST: create, PUT each chunk to ``chunk_upload_url_template`` (its
    upload token, no Authorization header), finalize. Returns the recording id."""
    with rest(srv, token) as c:
        resp = c.post("/v1/recordings", json={"streaming": True, "chunk_duration_ms": 20_000})
        assert resp.status_code == 201, resp.text
        created = resp.json()
        for part, data in enumerate(chunks, start=1):
            url = created["chunk_upload_url_template"].replace("{part}", str(part))
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            put = httpx.put(url, content=data, headers={"Content-MD5": md5}, timeout=60.0)
            assert put.status_code == 201, put.text
        resp = c.post(f"/v1/recordings/{created['id']}/finalize", json={
            "total_chunks": len(chunks), "final_duration_ms": duration_ms,
            "checksum_md5": hashlib.md5(b"".join(chunks)).hexdigest()})
        assert resp.status_code == 200, resp.text
    rec_id: str = created["id"]
    return rec_id


def upload_file_rest(srv: RunningServer, token: str, data: bytes, codec: str) -> str:
    """A single-file recording over REST: create (``codec``), PUT the file to the presigned
    ``upload_url`` (straight to the store), ``upload-complete``. Returns the recording id."""
    with rest(srv, token) as c:
        resp = c.post("/v1/recordings", json={"codec": codec})
        assert resp.status_code == 201, resp.text
        rec_id: str = resp.json()["id"]
        url = c.post(f"/v1/recordings/{rec_id}/upload-url", json={}).json()
        put = httpx.put(url["upload_url"], content=data, headers=url["headers"], timeout=60.0)
        assert put.status_code == 200, put.text
        resp = c.post(f"/v1/recordings/{rec_id}/upload-complete", json={})
        assert resp.status_code == 200, resp.text
    return rec_id


def to_file(samples: speech.Samples, path: Path, *ffmpeg_args: str) -> bytes:
    """Real speech written by ffmpeg to ``path`` (format from the suffix, e.g. 44.1 kHz
    stereo WAV or MP3), as a phone or desktop app would upload it."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "s16le", "-ar", str(RATE), "-ac", "1",
           "-i", "-", *ffmpeg_args, str(path)]
    subprocess.run(cmd, input=pcm16(samples), check=True)
    return path.read_bytes()


# -- waiting and reading -----------------------------------------------------------------------

def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``probe`` until it returns a value (a hang guard, not a timing assertion)."""
    value = waitkit.wait_for(probe, timeout_s, what, done=waitkit.not_none)
    assert value is not None
    return value


def get_json(srv: RunningServer, path: str, token: str | None = None) -> dict[str, Any]:
    with rest(srv, token) as c:
        resp = c.get(path)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_transcribed(srv: RunningServer, rec_id: str,
                     timeout_s: float = 600) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until the recording's current transcription is terminal (or the recording
    failed); returns (recording, transcription) as REST JSON."""

    def done() -> dict[str, Any] | None:
        rec = get_json(srv, f"/v1/recordings/{rec_id}")
        return rec if rec["transcription_status"] in TERMINAL_TXN else None

    rec = wait_for(done, timeout_s, f"the transcription of {rec_id}")
    return rec, get_json(srv, f"/v1/transcriptions/{rec['transcription_id']}")


def events(srv: RunningServer, rec_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The outbox events about a recording, in commit order."""
    rows = srv.app.db.read().execute(
        "SELECT type, data FROM events WHERE recording_id = ? ORDER BY rowid",
        [rec_id]).fetchall()
    return [(t, json.loads(d)) for t, d in rows]


def words(transcription: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for s in transcription["segments"] for w in s["words"]]


def garbage(n: int, seed: int = 5) -> bytes:
    """Random bytes: not Ogg, not Opus."""
    return bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8))
