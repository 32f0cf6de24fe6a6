"""Presigned direct-to-store chunk URLs, and durability across a SIGKILL of the server."""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tapedeck.clock import ManualClock
from tapedeck.domain.objects import stored_parts
from tapedeck.grpc_api._errors import from_rpc_error
from tapedeck.v1 import chunk_pb2, chunk_pb2_grpc, recording_pb2, recording_pb2_grpc

from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, spawn_server


def http_put(url: str, data: bytes, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=data, method="PUT", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def new_recording(srv: RunningServer, token: str) -> str:
    return srv.recordings().CreateRecording(
        recording_pb2.CreateRecordingRequest(streaming=True), metadata=auth(token)).recording.id


def test_presigned_part_url_plain_http_put(server: RunningServer) -> None:
    _, token = server.device_token()
    rec_id = new_recording(server, token)
    data = b"opus chunk bytes" * 1000
    url = server.chunks().CreateChunkUploadUrl(
        chunk_pb2.CreateChunkUploadUrlRequest(recording_id=rec_id, part=1), metadata=auth(token))
    assert url.method == "PUT"
    assert http_put(url.upload_url, data, dict(url.headers)) == 200
    listed = server.chunks().ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec_id),
                                        metadata=auth(token))
    assert [(c.part, c.md5) for c in listed.chunks] == [(1, hashlib.md5(data).hexdigest())]


def test_the_store_not_the_ledger_decides_stored_or_replaced(server: RunningServer) -> None:
    """Presigned PUTs bypass the server's chunk ledger: an upload must still compare with
    what the store holds (ledger row says X but the store holds Y; no ledger row but the
    store holds the bytes)."""
    _, token = server.device_token()
    rec_id = new_recording(server, token)

    def put_direct(part: int, data: bytes) -> None:
        url = server.chunks().CreateChunkUploadUrl(
            chunk_pb2.CreateChunkUploadUrlRequest(recording_id=rec_id, part=part),
            metadata=auth(token))
        assert http_put(url.upload_url, data, dict(url.headers)) == 200

    def upload(part: int, data: bytes) -> chunk_pb2.UploadChunkResponse:
        return server.chunks().UploadChunk(chunk_messages(rec_id, part, data),
                                           metadata=auth(token))

    def stored(part: int) -> bytes:
        return server.app.store.open(stored_parts(server.app.store, rec_id)[part].key).read()

    first = upload(1, b"the device's bytes")
    assert not first.already_stored and not first.replaced
    put_direct(1, b"other bytes, put directly")
    again = upload(1, b"the device's bytes")
    assert again.replaced and not again.already_stored
    assert stored(1) == b"the device's bytes"
    put_direct(2, b"part two, put directly")
    same = upload(2, b"part two, put directly")
    assert same.already_stored and not same.replaced
    other = upload(2, b"part two, from the device")
    assert other.replaced and not other.already_stored
    assert stored(2) == b"part two, from the device"


def test_presigned_url_tampered_or_wrong_md5_refused(server: RunningServer) -> None:
    _, token = server.device_token()
    rec_id = new_recording(server, token)
    data = b"the real bytes"
    md5_b64 = base64.b64encode(hashlib.md5(data).digest()).decode()
    url = server.chunks().CreateChunkUploadUrl(
        chunk_pb2.CreateChunkUploadUrlRequest(recording_id=rec_id, part=2, content_md5=md5_b64),
        metadata=auth(token))
    tampered = url.upload_url.replace("chunk_2.", "chunk_3.")
    assert tampered != url.upload_url
    assert http_put(tampered, data, dict(url.headers)) == 403
    assert http_put(url.upload_url, b"other bytes!!!", dict(url.headers)) in (400, 403)
    assert list(server.app.store.list(f"recordings/{rec_id}/")) == []
    assert http_put(url.upload_url, data, dict(url.headers)) == 200


def test_presigned_url_expired_refused(weed: Any, tmp_path: Path) -> None:
    from serverkit import start_server

    # The store checks a signature's expiry against its own (real) clock; the server signs
    # with its injectable one. A server clock 3 minutes behind signs URLs already past their
    # 2-minute lifetime when they reach the store; 30 s behind, still valid. No waiting.
    clock = ManualClock(datetime.now(UTC) - timedelta(minutes=3))
    srv = start_server(make_settings(weed, tmp_path / "d", upload_url_ttl_s=120), clock=clock)
    try:
        _, token = srv.device_token()
        rec_id = new_recording(srv, token)

        def url_for(part: int) -> chunk_pb2.CreateChunkUploadUrlResponse:
            return srv.chunks().CreateChunkUploadUrl(
                chunk_pb2.CreateChunkUploadUrlRequest(recording_id=rec_id, part=part),
                metadata=auth(token))

        late = url_for(1)
        assert http_put(late.upload_url, b"late", dict(late.headers)) == 403
        assert list(srv.app.store.list(f"recordings/{rec_id}/")) == []
        clock.advance(timedelta(seconds=150))
        fresh = url_for(2)
        assert http_put(fresh.upload_url, b"in time", dict(fresh.headers)) == 200
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_sigkill_after_ack_keeps_every_chunk(weed: Any, tmp_path: Path) -> None:
    from tapedeck.auth import create_project, issue_device_token
    from tapedeck.clock import SystemClock
    from tapedeck.infra.db import open_database

    settings = make_settings(weed, tmp_path / "data")
    db = open_database(settings.database_target)
    project_id, _ = create_project(db, SystemClock())
    _, token = issue_device_token(db, SystemClock(), project_id)
    db.close()
    child = spawn_server(settings, "api")
    try:
        channel = grpc.insecure_channel(child.grpc_target)
        recs = recording_pb2_grpc.RecordingServiceStub(channel)
        rec_id = recs.CreateRecording(recording_pb2.CreateRecordingRequest(streaming=True),
                                      metadata=auth(token)).recording.id
        chunks = chunk_pb2_grpc.ChunkServiceStub(channel)
        parts = {p: hashlib.sha256(b"%d" % p).digest() * 2000 for p in range(1, 6)}
        for part, data in parts.items():
            chunks.UploadChunk(chunk_messages(rec_id, part, data), metadata=auth(token))
        child.kill()
        channel.close()
        child = spawn_server(settings.replace(grpc_port=0), "api")
        channel = grpc.insecure_channel(child.grpc_target)
        chunks = chunk_pb2_grpc.ChunkServiceStub(channel)
        listed = chunks.ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec_id),
                                   metadata=auth(token))
        assert {c.part: c.md5 for c in listed.chunks} == {
            p: hashlib.md5(d).hexdigest() for p, d in parts.items()}
        md5 = hashlib.md5(b"".join(parts[p] for p in sorted(parts))).hexdigest()
        fin = recording_pb2_grpc.RecordingServiceStub(channel).FinalizeRecording(
            recording_pb2.FinalizeRecordingRequest(id=rec_id, total_chunks=5,
                                                   final_duration_ms=5000, checksum_md5=md5),
            metadata=auth(token))
        assert fin.chunks_received == 5
        channel.close()
    finally:
        child.kill()
        drop_bucket(weed, settings.s3_bucket)


def test_unknown_bad_requests_are_typed(server: RunningServer) -> None:
    _, token = server.device_token()
    rec_id = new_recording(server, token)
    with pytest.raises(grpc.RpcError) as info:
        server.chunks().UploadChunk(chunk_messages(rec_id, 101, b"x"), metadata=auth(token))
    exc = from_rpc_error(info.value)
    assert (exc.type, exc.details.get("field")) == ("invalid_request", "part")
    with pytest.raises(grpc.RpcError) as info:
        server.chunks().UploadChunk(iter([chunk_pb2.UploadChunkRequest(data=b"no header")]),
                                    metadata=auth(token))
    assert from_rpc_error(info.value).type == "invalid_request"
    with pytest.raises(grpc.RpcError) as info:
        server.recordings().GetRecording(recording_pb2.GetRecordingRequest(id="rec_nope"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
