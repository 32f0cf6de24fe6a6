"""Issue 15 item 2: presigned parts and ``max_chunk_bytes`` (refused at finalize, bound into the
URL when the size is announced), and deleting a part while streaming (REST and gRPC)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.grpc_api._errors import from_rpc_error
from tapedeck.infra.weed import ManagedWeed
from tapedeck.v1 import chunk_pb2

from restkit import assert_error, client, create_streaming
from serverkit import RunningServer, auth, drop_bucket, make_settings, start_server

LIMIT = 64 * 1024


@pytest.fixture
def small(weed: ManagedWeed, tmp_path: Path) -> Iterator[RunningServer]:
    """A server whose chunks may be at most ``LIMIT`` bytes."""
    srv = start_server(make_settings(weed, tmp_path / "data", max_chunk_bytes=LIMIT),
                       roles=["grpc", "http"])
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def upload_url(c: httpx.Client, rec_id: str, **body: Any) -> httpx.Response:
    return c.post(f"/v1/recordings/{rec_id}/upload-url", json=body)


def put(url: dict[str, Any], data: bytes) -> int:
    return httpx.put(url["upload_url"], content=data, headers=url["headers"],
                     timeout=30).status_code


def finalize(c: httpx.Client, rec_id: str, datas: list[bytes]) -> httpx.Response:
    return c.post(f"/v1/recordings/{rec_id}/finalize", json={
        "total_chunks": len(datas), "final_duration_ms": 1_000,
        "checksum_md5": hashlib.md5(b"".join(datas)).hexdigest()})


def test_oversize_presigned_part_is_refused_at_finalize_then_deleted(
        small: RunningServer) -> None:
    c = client(small.http_url, small.api_key)
    rec = create_streaming(c)
    datas = [b"a" * 1000, b"b" * (LIMIT + 1)]
    for part, data in enumerate(datas, start=1):
        url = upload_url(c, rec["id"], part=part)
        assert url.status_code == 200, url.text
        assert put(url.json(), data) == 200  # the store cannot bound an unannounced size
    err = assert_error(finalize(c, rec["id"], datas), "chunk_too_large")
    assert err["oversize_chunks"] == [2] and err["max_bytes"] == LIMIT
    assert c.get(f"/v1/recordings/{rec['id']}").json()["status"] == "streaming"
    left = c.delete(f"/v1/recordings/{rec['id']}/chunks/2")
    assert left.status_code == 200, left.text
    assert [ch["part"] for ch in left.json()["data"]] == [1]
    datas[1] = b"b" * LIMIT
    assert put(upload_url(c, rec["id"], part=2).json(), datas[1]) == 200
    fin = finalize(c, rec["id"], datas)
    assert fin.status_code == 200, fin.text


def test_announced_size_is_bound_into_the_url(small: RunningServer) -> None:
    c = client(small.http_url, small.api_key)
    rec = create_streaming(c)
    assert_error(upload_url(c, rec["id"], part=1, size_bytes=LIMIT + 1), "payload_too_large")
    url = upload_url(c, rec["id"], part=1, size_bytes=1000)
    assert url.status_code == 200, url.text
    assert url.json()["headers"]["Content-Length"] == "1000"
    headers = {k: v for k, v in url.json()["headers"].items() if k != "Content-Length"}
    other = httpx.put(url.json()["upload_url"], content=b"x" * 2000, headers=headers)
    assert other.status_code == 403  # another size breaks the signature
    assert c.get(f"/v1/recordings/{rec['id']}/chunks").json()["data"] == []
    assert put(url.json(), b"x" * 1000) == 200


def test_stray_part_above_total_is_deleted_over_rest(small: RunningServer) -> None:
    """A stray part made finalize answer chunk_mismatch forever; deleting it unblocks it.
    Errors: nothing stored, a bad part, after finalize, another project's key."""
    c = client(small.http_url, small.api_key)
    rec = create_streaming(c)
    datas = [b"one", b"two"]
    tpl = rec["chunk_upload_url_template"]
    for part, data in [(1, datas[0]), (2, datas[1]), (5, b"stray")]:
        assert httpx.put(tpl.replace("{part}", str(part)), content=data).status_code == 201
    err = assert_error(finalize(c, rec["id"], datas), "chunk_mismatch")
    assert err["unexpected_chunks"] == [5]
    assert_error(c.delete(f"/v1/recordings/{rec['id']}/chunks/4"), "chunk_not_found")
    assert_error(c.delete(f"/v1/recordings/{rec['id']}/chunks/0"), "invalid_request")
    # the upload token of the template may delete too, like it may PUT
    by_token = httpx.delete(tpl.replace("{part}", "5"))
    assert by_token.status_code == 200, by_token.text
    assert by_token.json()["missing_chunks"] == []
    assert finalize(c, rec["id"], datas).status_code == 200
    assert_error(c.delete(f"/v1/recordings/{rec['id']}/chunks/1"), "recording_not_streaming")
    assert c.get(f"/v1/recordings/{rec['id']}/chunks").json()["data"][0]["part"] == 1


def test_delete_chunk_over_grpc_with_device_tokens(small: RunningServer) -> None:
    _, token = small.device_token()
    _, other = small.device_token()
    c = client(small.http_url, token)
    rec = create_streaming(c)
    stub = small.chunks()
    tpl = rec["chunk_upload_url_template"]
    assert httpx.put(tpl.replace("{part}", "3"), content=b"stray").status_code == 201

    def delete(part: int, tok: str) -> chunk_pb2.DeleteChunkResponse:
        return stub.DeleteChunk(chunk_pb2.DeleteChunkRequest(recording_id=rec["id"], part=part),
                                metadata=auth(tok))

    def error_of(part: int, tok: str) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            delete(part, tok)
        return info.value.code(), from_rpc_error(info.value).type

    assert error_of(3, other) == (grpc.StatusCode.NOT_FOUND, "recording_not_found")
    assert error_of(2, token) == (grpc.StatusCode.NOT_FOUND, "chunk_not_found")
    assert error_of(0, token)[1] == "invalid_request"
    assert list(delete(3, token).chunks) == []
    assert error_of(3, token) == (grpc.StatusCode.NOT_FOUND, "chunk_not_found")
