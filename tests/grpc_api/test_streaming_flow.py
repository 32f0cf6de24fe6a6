"""The streaming flow over real gRPC against a real SeaweedFS and SQLite file (issue 2)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tapedeck.grpc_api._errors import from_rpc_error
from tapedeck.v1 import chunk_pb2, recording_pb2

from serverkit import RunningServer, auth, chunk_messages

RS = recording_pb2.RecordingStatus
TS = recording_pb2.TranscriptionStatus

# Part of the API contract subset that runs on both databases (issue 19).
pytestmark = pytest.mark.both_backends


def create_streaming(srv: RunningServer, token: str) -> recording_pb2.Recording:
    resp = srv.recordings().CreateRecording(
        recording_pb2.CreateRecordingRequest(streaming=True, chunk_duration_ms=300_000,
                                             estimated_duration_ms=3_600_000),
        metadata=auth(token))
    return resp.recording


def upload(srv: RunningServer, token: str, rec_id: str, part: int,
           data: bytes, **kw: str) -> chunk_pb2.UploadChunkResponse:
    return srv.chunks().UploadChunk(chunk_messages(rec_id, part, data, **kw),
                                    metadata=auth(token))


def err_type(call: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return from_rpc_error(info.value).type


def test_full_flow_12_chunks(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    assert rec.status == RS.RECORDING_STATUS_STREAMING
    assert "{part}" in rec.chunk_upload_url_template
    assert rec.max_chunks == 100 and rec.HasField("expire_time")
    chunks = [os.urandom(50_000 + i) for i in range(12)]
    for part, data in enumerate(chunks, start=1):
        resp = upload(server, token, rec.id, part, data)
        assert (resp.chunk.part, resp.chunk.size_bytes) == (part, len(data))
        assert not resp.already_stored and not resp.replaced
    listed = server.chunks().ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec.id),
                                        metadata=auth(token))
    assert [c.part for c in listed.chunks] == list(range(1, 13)) and not listed.missing_chunks
    md5 = hashlib.md5(b"".join(chunks)).hexdigest()
    fin = server.recordings().FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
        id=rec.id, total_chunks=12, final_duration_ms=3_595_420, checksum_md5=md5),
        metadata=auth(token))
    assert fin.id == rec.id
    assert fin.status == RS.RECORDING_STATUS_UPLOADED
    assert fin.transcription_status == TS.TRANSCRIPTION_STATUS_QUEUED
    assert fin.chunks_received == 12
    assert fin.stitching_job_id.startswith("job_stitcher_")


def test_chunk_mismatch_lists_missing_and_unexpected(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    for part in (1, 2, 3, 5, 6, 8, 13):
        upload(server, token, rec.id, part, b"x%d" % part)
    with pytest.raises(grpc.RpcError) as info:
        server.recordings().FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
            id=rec.id, total_chunks=12, final_duration_ms=1000), metadata=auth(token))
    exc = from_rpc_error(info.value)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.type == "chunk_mismatch"
    assert exc.details["missing_chunks"] == [4, 7, 9, 10, 11, 12]
    assert exc.details["unexpected_chunks"] == [13]


def test_checksum_mismatch_then_repair(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    good = [b"alpha" * 100, b"bravo" * 100, b"charlie" * 100]
    upload(server, token, rec.id, 1, good[0])
    upload(server, token, rec.id, 2, b"corrupted on the device")  # wrong bytes, right md5
    upload(server, token, rec.id, 3, good[2])
    expected = hashlib.md5(b"".join(good)).hexdigest()
    req = recording_pb2.FinalizeRecordingRequest(id=rec.id, total_chunks=3,
                                                 final_duration_ms=900, checksum_md5=expected)
    with pytest.raises(grpc.RpcError) as info:
        server.recordings().FinalizeRecording(req, metadata=auth(token))
    exc = from_rpc_error(info.value)
    assert exc.type == "checksum_mismatch" and exc.details["expected"] == expected
    got = server.recordings().GetRecording(recording_pb2.GetRecordingRequest(id=rec.id),
                                           metadata=auth(token)).recording
    assert got.status == RS.RECORDING_STATUS_STREAMING
    resp = upload(server, token, rec.id, 2, good[1])
    assert resp.replaced and not resp.already_stored
    fin = server.recordings().FinalizeRecording(req, metadata=auth(token))
    assert fin.status == RS.RECORDING_STATUS_UPLOADED


def test_identical_reupload_is_idempotent(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    first = upload(server, token, rec.id, 1, b"same bytes")
    again = upload(server, token, rec.id, 1, b"same bytes")
    assert not first.already_stored and again.already_stored and not again.replaced


def test_corrupted_chunk_rejected_and_not_stored(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    wrong = hashlib.md5(b"what the device meant to send").hexdigest()
    assert err_type(lambda: upload(server, token, rec.id, 1, b"bit-flipped", md5=wrong)) \
        == "checksum_mismatch"
    sha_wrong = hashlib.sha256(b"other").hexdigest()
    assert err_type(lambda: upload(server, token, rec.id, 2, b"data", sha256=sha_wrong)) \
        == "checksum_mismatch"
    listed = server.chunks().ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec.id),
                                        metadata=auth(token))
    assert list(listed.chunks) == []
    assert list(server.app.store.list(f"recordings/{rec.id}/")) == []


def test_finalize_idempotent_under_concurrency_one_job(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    for part in (1, 2):
        upload(server, token, rec.id, part, b"part %d" % part)
    req = recording_pb2.FinalizeRecordingRequest(id=rec.id, total_chunks=2,
                                                 final_duration_ms=2000)
    stub = server.recordings()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: stub.FinalizeRecording(req, metadata=auth(token)),
                                range(20)))
    assert len({r.stitching_job_id for r in results}) == 1
    db = server.app.db.read()
    assert db.execute("SELECT count(*) FROM jobs WHERE recording_id = ? AND kind = 'stitch'",
                      [rec.id]).fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM events WHERE recording_id = ?"
                      " AND type = 'recording.uploaded'", [rec.id]).fetchone()[0] == 1


def test_finalize_conflict_and_not_streaming(server: RunningServer) -> None:
    _, token = server.device_token()
    rec = create_streaming(server, token)
    upload(server, token, rec.id, 1, b"only part")
    stub = server.recordings()
    stub.FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
        id=rec.id, total_chunks=1, final_duration_ms=1000), metadata=auth(token))
    assert err_type(lambda: stub.FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
        id=rec.id, total_chunks=1, final_duration_ms=999), metadata=auth(token))) \
        == "finalize_conflict"
    assert err_type(lambda: upload(server, token, rec.id, 1, b"late change")) \
        == "recording_not_streaming"
    assert err_type(lambda: upload(server, token, rec.id, 2, b"late part")) \
        == "recording_not_streaming"


def test_device_token_cannot_touch_another_devices_recording(server: RunningServer) -> None:
    _, mine = server.device_token()
    _, other = server.device_token()
    rec = create_streaming(server, mine)
    upload(server, mine, rec.id, 1, b"mine")
    stub = server.recordings()
    for call in (
        lambda: stub.GetRecording(recording_pb2.GetRecordingRequest(id=rec.id),
                                  metadata=auth(other)),
        lambda: upload(server, other, rec.id, 2, b"theirs"),
        lambda: stub.FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
            id=rec.id, total_chunks=1, final_duration_ms=1), metadata=auth(other)),
        lambda: server.chunks().ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec.id),
                                           metadata=auth(other)),
    ):
        assert err_type(call) == "recording_not_found"
    listing = stub.ListRecordings(recording_pb2.ListRecordingsRequest(), metadata=auth(other))
    assert list(listing.recordings) == []
    # The secret key of the project sees it.
    assert stub.GetRecording(recording_pb2.GetRecordingRequest(id=rec.id),
                             metadata=auth(server.api_key)).recording.id == rec.id


def test_mistyped_token_fails_before_the_database(server: RunningServer) -> None:
    if server.app.db.dialect != "sqlite":
        pytest.skip("traces sqlite3 connections")
    _, token = server.device_token()
    typo = token[:-7] + ("A" if token[-7] != "A" else "B") + token[-6:]
    statements: list[str] = []
    # gRPC handler threads have their own connections: close them all so that the next
    # query on any thread opens a new, traced one.
    server.app.db.close()
    original = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        c = original(*args, **kwargs)  # type: ignore[arg-type]
        c.set_trace_callback(statements.append)
        return c

    sqlite3.connect = traced  # type: ignore[assignment]
    try:
        assert err_type(lambda: server.recordings().ListRecordings(
            recording_pb2.ListRecordingsRequest(), metadata=auth(typo))) == "unauthorized"
        assert statements == []
        # Control: the same call with the real token does reach the (traced) database.
        server.recordings().ListRecordings(recording_pb2.ListRecordingsRequest(),
                                           metadata=auth(token))
        assert any("device_tokens" in s for s in statements)
    finally:
        sqlite3.connect = original  # type: ignore[assignment]


def test_no_plaintext_secret_in_sqlite(server: RunningServer) -> None:
    if server.app.db.dialect != "sqlite":
        pytest.skip("reads the SQLite file")
    _, token = server.device_token()
    rec = create_streaming(server, token)
    upload(server, token, rec.id, 1, b"x")
    server.app.db.close()
    raw = server.app.settings.db_path.read_bytes()
    for wal in server.app.settings.data_dir.glob("*.db-wal"):
        raw += wal.read_bytes()
    template_token = rec.chunk_upload_url_template.split("token=")[1]
    for secret in (server.api_key, token, template_token):
        assert secret.encode() not in raw
    for prefix in (b"sk_test_", b"dtok_test_", b"up_"):
        idx = raw.find(prefix)
        while idx != -1:  # only hints like "sk_test_…abcd" may appear
            assert raw[idx + len(prefix):idx + len(prefix) + 3] == "…".encode()
            idx = raw.find(prefix, idx + 1)
