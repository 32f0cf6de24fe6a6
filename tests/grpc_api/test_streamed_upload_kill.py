"""Issue 17: SIGKILL of the server in the middle of a streamed chunk upload (the chunk is
on its way to the store while it arrives). Afterwards no object of the interrupted part is
visible in the store, every acknowledged chunk is intact, and the device carries on."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from tapedeck.auth import create_project, issue_device_token
from tapedeck.clock import SystemClock
from tapedeck.infra.db import open_database
from tapedeck.infra.store.s3 import S3Store
from tapedeck.v1 import chunk_pb2, chunk_pb2_grpc, recording_pb2, recording_pb2_grpc

from serverkit import auth, chunk_messages, drop_bucket, make_settings, spawn_server

CHUNK = 1024 * 1024


def stalled_upload(rec_id: str, data: bytes, sent_half: threading.Event,
                   release: threading.Event) -> Iterator[chunk_pb2.UploadChunkRequest]:
    """The UploadChunk stream of ``data`` that stops after half of it until ``release``."""
    for n, msg in enumerate(chunk_messages(rec_id, 4, data)):
        if n == 1 + len(data) // (2 * 64 * 1024):
            sent_half.set()
            release.wait(60)
        yield msg


def test_kill_mid_streamed_upload_loses_nothing_acknowledged(weed: Any, tmp_path: Path) -> None:
    settings = make_settings(weed, tmp_path / "data")
    db = open_database(settings.database_target)
    project_id, _ = create_project(db, SystemClock())
    _, token = issue_device_token(db, SystemClock(), project_id)
    db.close()
    datas = [bytes([i]) * CHUNK for i in range(1, 5)]
    store = S3Store(weed.endpoint, weed.access_key, weed.secret_key, settings.s3_bucket)
    child = spawn_server(settings, "api")
    release = threading.Event()
    try:
        channel = grpc.insecure_channel(child.grpc_target)
        recs = recording_pb2_grpc.RecordingServiceStub(channel)
        chunks = chunk_pb2_grpc.ChunkServiceStub(channel)
        rec_id = recs.CreateRecording(recording_pb2.CreateRecordingRequest(streaming=True),
                                      metadata=auth(token)).recording.id
        for part, data in enumerate(datas[:3], start=1):  # acknowledged
            resp = chunks.UploadChunk(chunk_messages(rec_id, part, data), metadata=auth(token))
            assert resp.chunk.md5 == hashlib.md5(data).hexdigest()
        sent_half = threading.Event()
        failed: list[BaseException] = []

        def upload_part_4() -> None:
            try:
                chunks.UploadChunk(stalled_upload(rec_id, datas[3], sent_half, release),
                                   metadata=auth(token), timeout=60)
            except grpc.RpcError as exc:
                failed.append(exc)

        uploader = threading.Thread(target=upload_part_4, daemon=True)
        uploader.start()
        assert sent_half.wait(30)
        time.sleep(0.5)  # let the server pass the first half on to the store
        child.kill()
        release.set()
        uploader.join(30)
        assert failed, "the interrupted upload must not be acknowledged"
        channel.close()

        def part_objects() -> dict[int, list[str]]:
            found: dict[int, list[str]] = {}
            for obj in store.list(f"recordings/{rec_id}/chunks/"):
                part = int(obj.key.rsplit("/", 1)[1].split(".")[0].removeprefix("chunk_"))
                found.setdefault(part, []).append(obj.etag)
            return found

        expected = {part: [hashlib.md5(d).hexdigest()] for part, d in enumerate(datas[:3], 1)}
        assert part_objects() == expected  # nothing of part 4, parts 1..3 intact

        child = spawn_server(settings.replace(grpc_port=0, http_port=0), "api")
        channel = grpc.insecure_channel(child.grpc_target)
        recs = recording_pb2_grpc.RecordingServiceStub(channel)
        chunks = chunk_pb2_grpc.ChunkServiceStub(channel)
        listing = chunks.ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec_id),
                                    metadata=auth(token))
        assert [c.part for c in listing.chunks] == [1, 2, 3]
        assert list(listing.missing_chunks) == []
        resp = chunks.UploadChunk(chunk_messages(rec_id, 4, datas[3]), metadata=auth(token))
        assert not resp.already_stored and not resp.replaced
        fin = recs.FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
            id=rec_id, total_chunks=4, final_duration_ms=4_000,
            checksum_md5=hashlib.md5(b"".join(datas)).hexdigest()), metadata=auth(token))
        assert fin.chunks_received == 4
        channel.close()
    finally:
        release.set()
        child.terminate()
        store.close()
        drop_bucket(weed, settings.s3_bucket)
