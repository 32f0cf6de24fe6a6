"""Issue 15 item 1: acknowledged audio cannot be replaced after finalize (or upload-complete),
by anyone, including through presigned URLs handed out before. Real gateway, real SeaweedFS,
real Opus; the stitch job runs in a real worker claim loop."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import httpx

from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.oggopus import remux

from restkit import assert_error, client, create_streaming
from serverkit import RunningServer
from stitchkit import continuous_chunks


def chunks(seconds: float = 3.0) -> list[bytes]:
    return [c.data for c in continuous_chunks(seconds, 1_000)]


def stitched_md5(datas: list[bytes]) -> str:
    """The MD5 of the stitcher's output for ``datas`` (the remux is deterministic)."""
    out = io.BytesIO()
    remux([io.BytesIO(d) for d in datas], out)
    return hashlib.md5(out.getvalue()).hexdigest()


def upload_url(c: httpx.Client, rec_id: str, **body: Any) -> dict[str, Any]:
    resp = c.post(f"/v1/recordings/{rec_id}/upload-url", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def put(url: dict[str, Any], data: bytes) -> int:
    return httpx.put(url["upload_url"], content=data, headers=url["headers"],
                     timeout=30).status_code


def run_stitch(server: RunningServer) -> str | None:
    runtime = server.app.runtime
    worker = Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test")
    return worker.run_once()


def audio_md5(c: httpx.Client, rec_id: str) -> str:
    url = c.post(f"/v1/recordings/{rec_id}/download-url")
    assert url.status_code == 200, url.text
    return hashlib.md5(httpx.get(url.json()["download_url"], timeout=30).content).hexdigest()


def test_presigned_put_after_finalize_cannot_replace_a_chunk(server: RunningServer) -> None:
    """The issue's reproduction: upload-url without content_md5, PUT, finalize, PUT other
    bytes to the same URL. The late PUT is refused and the recording completes with what
    finalize accepted."""
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    datas = chunks()
    urls = [upload_url(c, rec["id"], part=part) for part in range(1, len(datas) + 1)]
    for url, data in zip(urls, datas, strict=True):
        assert put(url, data) == 200
    fin = c.post(f"/v1/recordings/{rec['id']}/finalize", json={
        "total_chunks": len(datas), "final_duration_ms": 3_000,
        "checksum_md5": hashlib.md5(b"".join(datas)).hexdigest()})
    assert fin.status_code == 200, fin.text
    for url, data in zip(urls, datas, strict=True):
        assert put(url, data[::-1]) == 412  # create-only: the key is taken
    assert run_stitch(server) == "succeeded"
    got = c.get(f"/v1/recordings/{rec['id']}").json()
    assert got["status"] == "completed", got
    assert audio_md5(c, rec["id"]) == stitched_md5(datas)


def test_unused_url_issued_before_finalize_changes_nothing(server: RunningServer) -> None:
    """A URL handed out before finalize but first used after it writes only garbage that
    nothing reads: the stitcher reads the objects finalize pinned."""
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    datas = chunks()
    for part, data in enumerate(datas, start=1):
        assert put(upload_url(c, rec["id"], part=part), data) == 200
    spare = upload_url(c, rec["id"], part=2)
    fin = c.post(f"/v1/recordings/{rec['id']}/finalize", json={
        "total_chunks": len(datas), "final_duration_ms": 3_000})
    assert fin.status_code == 200, fin.text
    assert put(spare, datas[0]) == 200  # the store takes it under a key no one reads
    listing = c.get(f"/v1/recordings/{rec['id']}/chunks").json()
    assert [ch["md5"] for ch in listing["data"]] == [hashlib.md5(d).hexdigest() for d in datas]
    assert run_stitch(server) == "succeeded"
    assert audio_md5(c, rec["id"]) == stitched_md5(datas)


def test_replacing_a_part_through_a_new_url_while_streaming(server: RunningServer) -> None:
    """Replace-while-streaming still works for presigned parts: the part of the latest URL
    that was used is the part; the gateway then reports it ``already_stored``."""
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    datas = chunks()
    for part, data in enumerate(datas, start=1):
        assert put(upload_url(c, rec["id"], part=part), data) == 200
    repaired = [datas[0], datas[1], chunks(4.0)[2]]
    assert put(upload_url(c, rec["id"], part=3), repaired[2]) == 200
    listing = c.get(f"/v1/recordings/{rec['id']}/chunks").json()
    assert [ch["md5"] for ch in listing["data"]] == [
        hashlib.md5(d).hexdigest() for d in repaired]
    template = rec["chunk_upload_url_template"].replace("{part}", "3")
    again = httpx.put(template, content=repaired[2], timeout=30)
    assert again.status_code == 200 and again.json()["already_stored"] is True, again.text
    fin = c.post(f"/v1/recordings/{rec['id']}/finalize", json={
        "total_chunks": 3, "final_duration_ms": 3_000,
        "checksum_md5": hashlib.md5(b"".join(repaired)).hexdigest()})
    assert fin.status_code == 200, fin.text
    assert run_stitch(server) == "succeeded"
    assert audio_md5(c, rec["id"]) == stitched_md5(repaired)


def test_single_file_cannot_be_replaced_after_upload_complete(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    resp = c.post("/v1/recordings", json={"streaming": False, "codec": "opus"})
    assert resp.status_code == 201, resp.text
    rec_id = resp.json()["id"]
    file = b"".join(chunks()[:1])
    url = upload_url(c, rec_id, content_type="audio/ogg")
    assert put(url, file) == 200
    done = c.post(f"/v1/recordings/{rec_id}/upload-complete")
    assert done.status_code == 200, done.text
    assert put(url, b"not the file that was accepted") == 412
    assert_error(c.post(f"/v1/recordings/{rec_id}/upload-url", json={}), "invalid_state")
    assert run_stitch(server) == "succeeded"
    assert c.get(f"/v1/recordings/{rec_id}").json()["status"] == "completed"
    assert audio_md5(c, rec_id) == hashlib.md5(file).hexdigest()


def test_single_file_replaced_before_upload_complete(server: RunningServer) -> None:
    """Before upload-complete a new URL replaces the file; upload-complete pins the latest."""
    c = client(server.http_url, server.api_key)
    rec_id = c.post("/v1/recordings", json={"streaming": False, "codec": "opus"}).json()["id"]
    first, second = chunks()[0], chunks()[1]
    assert put(upload_url(c, rec_id), first) == 200
    assert put(upload_url(c, rec_id), second) == 200
    assert c.post(f"/v1/recordings/{rec_id}/upload-complete").status_code == 200
    assert run_stitch(server) == "succeeded"
    assert audio_md5(c, rec_id) == hashlib.md5(second).hexdigest()
