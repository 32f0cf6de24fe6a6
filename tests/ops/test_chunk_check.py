"""Chunks are checked as they arrive (issue 16, item 5): garbage gets 422 ``invalid_audio``,
nothing is stored, the device can send the right bytes again; a repeated finalize of a
failed recording answers like every other write to it."""

from __future__ import annotations

import hashlib
import io
import os
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.errors import ERRORS, TapedeckError
from tapedeck.oggopus import InvalidAudio
from tapedeck.oggopus.check import check_stream

from opskit import md5_b64
from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server
from stitchkit import continuous_chunks, open_project, pcm, streaming_recording


def assert_error(resp: httpx.Response, type_: str) -> dict[str, Any]:
    """``resp`` is the error envelope of ``type_`` with the table's status; its error object."""
    assert resp.status_code == ERRORS[type_].http_status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["type"] == type_, resp.text
    return err


def _wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm(seconds))
    return out.getvalue()


GOOD = continuous_chunks(6.0, 2_000)
BAD: dict[str, Callable[[bytes], bytes]] = {
    "text": lambda data: b"hello, this is not audio\n" * 40,
    "random_bytes": lambda data: os.urandom(len(data)),
    "wav": lambda data: _wav(1.0),
    "truncated": lambda data: data[: len(data) * 2 // 3],
    "flipped_byte": lambda data: data[:3000] + bytes([data[3000] ^ 0x40]) + data[3001:],
    "no_opus_head": lambda data: data[data.index(b"OggS", 4):],
    "two_streams": lambda data: data + data,
}


@pytest.fixture
def server(weed: Any, tmp_path: Path) -> Iterator[RunningServer]:
    srv = start_server(make_settings(weed, tmp_path / "data", check_chunks=True),
                       roles=("grpc", "http"))
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def _streaming(srv: RunningServer) -> dict[str, Any]:
    resp = httpx.post(f"{srv.http_url}/v1/recordings", json={"streaming": True},
                      headers={"Authorization": f"Bearer {srv.api_key}"})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _put(template: str, part: int, data: bytes) -> httpx.Response:
    return httpx.put(template.replace("{part}", str(part)), content=data,
                     headers={"Content-MD5": md5_b64(data)}, timeout=60.0)


def _stored(srv: RunningServer, rec_id: str) -> list[int]:
    resp = httpx.get(f"{srv.http_url}/v1/recordings/{rec_id}/chunks",
                     headers={"Authorization": f"Bearer {srv.api_key}"})
    assert resp.status_code == 200, resp.text
    return [c["part"] for c in resp.json()["data"]]


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_chunk_is_refused_and_the_good_one_accepted_after(server: RunningServer,
                                                              kind: str) -> None:
    rec = _streaming(server)
    tpl = rec["chunk_upload_url_template"]
    err = assert_error(_put(tpl, 1, BAD[kind](GOOD[0].data)), "invalid_audio")
    assert "nothing was stored" in err["message"] and err["reason"]
    assert _stored(server, rec["id"]) == []
    assert server.app.metrics.chunks._value.get() == 0  # not counted as ingested
    assert _put(tpl, 1, GOOD[0].data).status_code == 201
    assert _stored(server, rec["id"]) == [1]


def test_bad_chunk_does_not_replace_a_good_one(server: RunningServer) -> None:
    rec = _streaming(server)
    tpl = rec["chunk_upload_url_template"]
    assert _put(tpl, 1, GOOD[0].data).status_code == 201
    assert_error(_put(tpl, 1, b"garbage" * 100), "invalid_audio")
    listing = httpx.get(f"{server.http_url}/v1/recordings/{rec['id']}/chunks",
                        headers={"Authorization": f"Bearer {server.api_key}"}).json()
    assert listing["data"][0]["md5"] == hashlib.md5(GOOD[0].data).hexdigest()


def test_good_chunks_pass_and_finalize(server: RunningServer) -> None:
    rec = _streaming(server)
    for part, chunk in enumerate(GOOD, start=1):
        assert _put(rec["chunk_upload_url_template"], part, chunk.data).status_code == 201
    resp = httpx.post(f"{server.http_url}/v1/recordings/{rec['id']}/finalize",
                      json={"total_chunks": len(GOOD), "final_duration_ms": 6_000},
                      headers={"Authorization": f"Bearer {server.api_key}"})
    assert resp.status_code == 200, resp.text


def test_grpc_upload_of_garbage_is_invalid_argument(server: RunningServer) -> None:
    rec = _streaming(server)
    with pytest.raises(grpc.RpcError) as exc:
        server.chunks().UploadChunk(chunk_messages(rec["id"], 1, _wav(0.5)),
                                    metadata=auth(server.api_key))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Ogg Opus" in (exc.value.details() or "")
    assert _stored(server, rec["id"]) == []


def test_check_stops_pulling_at_the_first_bad_page() -> None:
    """Streaming: the bytes after a bad page are never pulled from the network."""
    pulled: list[bytes] = []

    def body() -> Iterator[bytes]:
        yield b"RIFF....WAVEfmt " + bytes(200)
        raise AssertionError("pulled a block after the bad one")

    with pytest.raises(InvalidAudio, match=r"^no Ogg page at byte 0 "):
        check_stream(body(), pulled.append)
    assert len(pulled) == 1


def test_check_consumes_every_block_of_a_good_stream() -> None:
    data = GOOD[1].data
    blocks = [data[i:i + 777] for i in range(0, len(data), 777)]
    pulled: list[bytes] = []
    info = check_stream(blocks, pulled.append)
    assert b"".join(pulled) == data and info.size_bytes == len(data)


def test_repeated_finalize_of_a_failed_recording_agrees_with_its_state(
        weed: Any, tmp_path: Path) -> None:
    """A chunk that skipped the check (here: checks off) fails the stitch; the same finalize
    again used to answer 200 although the recording refuses every write."""
    project = open_project(make_settings(weed, tmp_path / "data"))
    try:
        chunks = [c.data for c in GOOD]
        chunks[1] = b"not audio" * 100
        rec_id = streaming_recording(project, chunks, 6_000, checksum=False)
        runtime = project.app.runtime
        worker = Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test")
        assert worker.run_once() == "failed"
        d, p = project.app.domain, project.principal
        with pytest.raises(TapedeckError) as again:
            d.recordings.finalize(p, rec_id, len(chunks), 6_000, None)
        with pytest.raises(TapedeckError) as chunk:
            d.chunks.upload(p, rec_id, 1, [chunks[0]])
        assert again.value.type == chunk.value.type == "recording_not_streaming"
        assert again.value.details == chunk.value.details == {"status": "failed"}
    finally:
        project.app.close(grace=1.0)
        drop_bucket(weed, project.app.settings.s3_bucket)
