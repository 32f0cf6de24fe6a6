"""The documented REST flows over real HTTP (curl and httpx) against a running server with a
real SeaweedFS and SQLite file: the seed document's streaming example as written, recording
shapes exactly as ``api.md`` lists them, and the single-file upload flow."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tapedeck.gateway import schemas
from tapedeck_agent.encoder import OpusChunker

from audio import speech_pcm
from restkit import assert_error, chunk_url, client, create_streaming, put_chunk
from serverkit import RunningServer

RECORDING_FIELDS = {
    "id", "device_id", "end_user_id", "name", "status", "codec", "streaming", "duration_ms",
    "file_size_bytes", "mime_type", "started_at", "ended_at", "created_at", "uploaded_at",
    "chunks_received", "max_chunks", "expires_at", "transcription_status", "transcription_id",
    "stitching_job_id", "media", "metadata",
}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SEED_CREATE = {"device_id": "dev_xyz789", "started_at": "2025-01-13T10:00:00Z",
               "estimated_duration_ms": 3600000, "codec": "opus", "streaming": True,
               "chunk_duration_ms": 300000}
SEED_FINALIZE = ('{\n    "total_chunks": 12,\n    "final_duration_ms": 3595420,\n'
                 '    "checksum_md5": "5d41402abc4b2a76b9719d911017c592"\n  }')

# Part of the API contract subset that runs on both databases (issue 19).
pytestmark = pytest.mark.both_backends


def curl(*args: str) -> tuple[int, Any]:
    """Run curl; return (HTTP status, parsed JSON body)."""
    out = subprocess.run(["curl", "-sS", "-g", "-w", "\n%{http_code}", *args],
                         check=True, capture_output=True, text=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def opus_chunks(count: int) -> list[bytes]:
    """``count`` one-second Ogg Opus chunk files of real speech (one continuous encoder)."""
    chunker = OpusChunker(chunk_duration_ms=1000)
    files = [c.data for c in chunker.feed(speech_pcm(count - 0.1))]
    files += [c.data for c in chunker.finish()]
    assert len(files) == count
    return files


def test_seed_document_streaming_flow_with_curl(server: RunningServer, tmp_path: Path) -> None:
    _, dtok = server.device_token()
    base, auth = server.http_url, f"Authorization: Bearer {dtok}"
    status, rec = curl("-X", "POST", f"{base}/v1/recordings", "-H", auth,
                       "-H", "Content-Type: application/json", "-d", json.dumps(SEED_CREATE))
    assert status == 201, rec
    assert rec["status"] == "streaming" and rec["max_chunks"] == 100
    assert "{part}" in rec["chunk_upload_url_template"] and ISO_Z.match(rec["expires_at"])
    chunks = opus_chunks(12)
    for part, data in enumerate(chunks, start=1):
        path = tmp_path / f"chunk_{part}.opus"
        path.write_bytes(data)
        status, got = curl("-T", str(path), chunk_url(rec["chunk_upload_url_template"], part))
        assert status == 201, got
        assert (got["part"], got["size_bytes"]) == (part, len(data))
        assert got["md5"] == hashlib.md5(data).hexdigest()
    finalize_url = f"{base}/v1/recordings/{rec['id']}/finalize"
    # Exactly as written in the seed document: its checksum is not ours → 422, still streaming.
    status, err = curl("-X", "POST", finalize_url, "-H", auth,
                       "-H", "Content-Type: application/json", "-d", SEED_FINALIZE)
    assert status == 422 and err["error"]["type"] == "checksum_mismatch", err
    assert err["error"]["expected"] == "5d41402abc4b2a76b9719d911017c592"
    assert err["error"]["actual"] == hashlib.md5(b"".join(chunks)).hexdigest()
    body = SEED_FINALIZE.replace("5d41402abc4b2a76b9719d911017c592", err["error"]["actual"])
    status, fin = curl("-X", "POST", finalize_url, "-H", auth,
                       "-H", "Content-Type: application/json", "-d", body)
    assert status == 200, fin
    assert set(fin) == {"id", "status", "transcription_status", "chunks_received",
                        "stitching_job_id"}
    assert (fin["id"], fin["status"], fin["transcription_status"], fin["chunks_received"]) == (
        rec["id"], "uploaded", "queued", 12)
    assert fin["stitching_job_id"].startswith("job_stitcher_")
    # Repeating it is safe: the same response, no new job.
    assert curl("-X", "POST", finalize_url, "-H", auth, "-d", body) == (200, fin)


def test_curl_large_chunk_with_expect_100_continue(server: RunningServer,
                                                   tmp_path: Path) -> None:
    """curl sends ``Expect: 100-continue`` for bodies over 1 MiB; the gateway must answer."""
    rec = create_streaming(client(server.http_url, server.api_key))
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "big.opus"
    path.write_bytes(data)
    status, got = curl("-v", "-T", str(path),
                       chunk_url(rec["chunk_upload_url_template"], 1))
    assert status == 201 and got["size_bytes"] == len(data), got


def check_recording(rec: dict[str, Any],
                    model: type[schemas.RecordingOut] = schemas.RecordingOut) -> None:
    """Every field of api.md's recording object, snake_case, lowercase enums, ISO Z times,
    and exactly the documented shape (the response model forbids extra fields)."""
    assert set(rec) >= RECORDING_FIELDS, RECORDING_FIELDS - set(rec)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in rec)
    assert rec["status"] == rec["status"].lower() and rec["codec"] == rec["codec"].lower()
    for name in ("started_at", "ended_at", "created_at", "uploaded_at", "expires_at"):
        assert rec[name] is None or ISO_Z.match(rec[name]), (name, rec[name])
    model.model_validate(rec)


def test_recording_shapes(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    created = c.post("/v1/recordings", json={
        "name": "standup", "started_at": "2025-01-13T10:00:00+02:00",
        "ended_at": "2025-01-13T11:00:00Z", "codec": "wav", "metadata": {"room": "4b"}})
    assert created.status_code == 201, created.text
    rec = created.json()
    check_recording(rec, schemas.CreatedRecordingOut)
    assert "chunk_upload_url_template" not in rec
    assert (rec["status"], rec["codec"], rec["streaming"], rec["mime_type"]) == (
        "pending", "wav", False, "audio/wav")
    assert rec["started_at"] == "2025-01-13T08:00:00.000Z"
    assert rec["transcription_status"] == "none" and rec["metadata"] == {"room": "4b"}
    got = c.get(f"/v1/recordings/{rec['id']}")
    assert got.status_code == 200 and got.json() == rec
    streaming = create_streaming(c)
    check_recording(streaming, schemas.CreatedRecordingOut)
    page = c.get("/v1/recordings", params={"limit": 1})
    assert page.status_code == 200
    schemas.RecordingPageOut.model_validate(page.json())
    assert [r["id"] for r in page.json()["data"]] == [streaming["id"]]
    assert page.json()["has_more"] is True
    rest = c.get("/v1/recordings", params={"limit": 1, "cursor": page.json()["next_cursor"]})
    assert [r["id"] for r in rest.json()["data"]] == [rec["id"]]
    assert rest.json() | {"data": []} == {"data": [], "has_more": False, "next_cursor": None}
    only = c.get("/v1/recordings", params={"status": "streaming"}).json()["data"]
    assert [r["id"] for r in only] == [streaming["id"]]


def test_chunk_listing_and_reput_semantics(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    tpl = rec["chunk_upload_url_template"]
    for part in (1, 2, 4):
        assert put_chunk(tpl, part, b"chunk %d" % part).status_code == 201
    again = put_chunk(tpl, 2, b"chunk 2")
    assert again.status_code == 200 and again.json()["already_stored"] is True
    replaced = put_chunk(tpl, 2, b"chunk 2, repaired")
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["replaced"] is True and replaced.json()["size_bytes"] == 17
    assert replaced.headers["etag"] == f'"{hashlib.md5(b"chunk 2, repaired").hexdigest()}"'
    schemas.ChunkUploadOut.model_validate(replaced.json())
    listing = c.get(f"/v1/recordings/{rec['id']}/chunks")
    assert listing.status_code == 200
    schemas.ChunkListOut.model_validate(listing.json())
    assert [ch["part"] for ch in listing.json()["data"]] == [1, 2, 4]
    assert listing.json()["missing_chunks"] == [3]
    assert listing.json()["data"][1]["md5"] == hashlib.md5(b"chunk 2, repaired").hexdigest()
    # Authorization header instead of the URL token works too.
    url = chunk_url(tpl, 3).split("?")[0]
    resp = httpx.put(url, content=b"chunk 3", headers={"Authorization": f"Bearer {server.api_key}"})
    assert resp.status_code == 201, resp.text
    fin = c.post(f"/v1/recordings/{rec['id']}/finalize",
                 json={"total_chunks": 4, "final_duration_ms": 4000})
    assert fin.status_code == 200, fin.text
    assert_error(put_chunk(tpl, 1, b"chunk 1"), "recording_not_streaming")


def test_single_file_upload_flow(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = c.post("/v1/recordings", json={"codec": "opus", "name": "memo"}).json()
    assert rec["status"] == "pending"
    data = b"".join(opus_chunks(1))
    url = c.post(f"/v1/recordings/{rec['id']}/upload-url",
                 json={"type": "audio", "content_type": "audio/ogg"})
    assert url.status_code == 200, url.text
    schemas.UploadUrlOut.model_validate(url.json())
    put = httpx.put(url.json()["upload_url"], content=data, headers=url.json()["headers"])
    assert put.status_code == 200, put.text
    assert_error(c.post(f"/v1/recordings/{rec['id']}/download-url"), "invalid_state")
    done = c.post(f"/v1/recordings/{rec['id']}/upload-complete")
    assert done.status_code == 200, done.text
    check_recording(done.json())
    assert (done.json()["status"], done.json()["file_size_bytes"]) == ("uploaded", len(data))
    dl = c.post(f"/v1/recordings/{rec['id']}/download-url", json={})
    assert dl.status_code == 200, dl.text
    schemas.DownloadUrlOut.model_validate(dl.json())
    assert httpx.get(dl.json()["download_url"]).content == data
    gone = c.delete(f"/v1/recordings/{rec['id']}")
    assert gone.status_code == 200 and gone.json() == {"id": rec["id"], "deleted": True}
    assert_error(c.get(f"/v1/recordings/{rec['id']}"), "recording_not_found")


def test_presigned_part_url_for_streaming(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    data = b"direct to store"
    url = c.post(f"/v1/recordings/{rec['id']}/upload-url", json={"part": 1})
    assert url.status_code == 200 and url.json()["method"] == "PUT", url.text
    assert httpx.put(url.json()["upload_url"], content=data,
                     headers=url.json()["headers"]).status_code == 200
    listing = c.get(f"/v1/recordings/{rec['id']}/chunks").json()
    assert [(ch["part"], ch["size_bytes"]) for ch in listing["data"]] == [(1, len(data))]


@pytest.mark.parametrize("body", [b"", b"{}", b"   "])
def test_bodyless_posts_accept_empty_or_empty_object(server: RunningServer,
                                                    body: bytes) -> None:
    c = client(server.http_url, server.api_key)
    rec = c.post("/v1/recordings", content=body)
    assert rec.status_code == 201 and rec.json()["status"] == "pending", rec.text
    resp = c.post(f"/v1/recordings/{rec.json()['id']}/upload-complete", content=body)
    assert_error(resp, "invalid_state")


def test_finalize_errors_carry_their_details(server: RunningServer) -> None:
    """The troubleshooting section of the seed document: ``missing_chunks`` to re-upload."""
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    for part in (1, 2, 3, 5, 6, 8, 13):
        put_chunk(rec["chunk_upload_url_template"], part, b"part %d" % part)
    url = f"/v1/recordings/{rec['id']}/finalize"
    err = assert_error(c.post(url, json={"total_chunks": 12, "final_duration_ms": 1000}),
                       "chunk_mismatch")
    assert err["missing_chunks"] == [4, 7, 9, 10, 11, 12] and err["unexpected_chunks"] == [13]
    assert c.get(f"/v1/recordings/{rec['id']}").json()["status"] == "streaming"
    for part in err["missing_chunks"]:  # re-upload exactly what the error named
        put_chunk(rec["chunk_upload_url_template"], part, b"part %d" % part)
    done = c.post(url, json={"total_chunks": 13, "final_duration_ms": 1000})
    assert done.status_code == 200 and done.json()["chunks_received"] == 13, done.text
    assert c.delete(f"/v1/recordings/{rec['id']}").status_code == 200
    assert_error(c.post(url, json={"total_chunks": 13, "final_duration_ms": 1000}),
                 "recording_not_found")
