"""``Idempotency-Key`` over REST (and gRPC CreateRecording, same store): replay, reuse with a
different body, a key still running, per-credential scope, failures freeing the key, 24 h."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tapedeck.clock import ManualClock
from tapedeck.infra.db import Database
from tapedeck.infra.weed import ManagedWeed
from tapedeck.v1 import recording_pb2

from restkit import assert_error, client, create_streaming, put_chunk
from serverkit import RunningServer, auth, drop_bucket, make_settings, start_server


def key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


def count(c: httpx.Client) -> int:
    return len(c.get("/v1/recordings", params={"limit": 100}).json()["data"])


def test_replay_returns_the_first_response(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    first = c.post("/v1/recordings", json={"streaming": True, "name": "a"}, headers=key("K-1"))
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # Same request, other JSON spelling (key order, whitespace): the stored response.
    again = c.post("/v1/recordings", content=b'{ "name" : "a",  "streaming" : true }',
                   headers=key("K-1"))
    assert again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert count(c) == 1
    # Still the FIRST response after the recording changed.
    put_chunk(first.json()["chunk_upload_url_template"], 1, b"x")
    c.post(f"/v1/recordings/{first.json()['id']}/finalize",
           json={"total_chunks": 1, "final_duration_ms": 10})
    assert c.post("/v1/recordings", json={"streaming": True, "name": "a"},
                  headers=key("K-1")).json()["status"] == "streaming"


def test_reuse_with_another_body_is_422_and_creates_nothing(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    assert c.post("/v1/recordings", json={"name": "a"}, headers=key("K-2")).status_code == 201
    assert_error(c.post("/v1/recordings", json={"name": "b"}, headers=key("K-2")),
                 "idempotency_key_reused")
    rec = create_streaming(c)
    assert_error(c.post(f"/v1/recordings/{rec['id']}/upload-url", json={"part": 1},
                        headers=key("K-2")), "idempotency_key_reused")
    assert count(c) == 2


def test_keys_are_scoped_per_credential(server: RunningServer) -> None:
    a, b = (client(server.http_url, server.device_token()[1]) for _ in range(2))
    ra = a.post("/v1/recordings", json={}, headers=key("shared"))
    rb = b.post("/v1/recordings", json={}, headers=key("shared"))
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["id"] != rb.json()["id"] and "idempotent-replayed" not in rb.headers


def test_failed_request_frees_its_key(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    body = {"total_chunks": 2, "final_duration_ms": 2000}
    url = f"/v1/recordings/{rec['id']}/finalize"
    put_chunk(rec["chunk_upload_url_template"], 1, b"one")
    assert_error(c.post(url, json=body, headers=key("fin")), "chunk_mismatch")
    put_chunk(rec["chunk_upload_url_template"], 2, b"two")
    done = c.post(url, json=body, headers=key("fin"))
    assert done.status_code == 200 and done.json()["chunks_received"] == 2, done.text
    replay = c.post(url, json=body, headers=key("fin"))
    assert replay.json() == done.json() and replay.headers["idempotent-replayed"] == "true"


def _running_keys(db: Database) -> int:
    return int(db.read().execute("SELECT count(*) FROM idempotency_keys"
                                 " WHERE state = 'running'").fetchone()[0])


def test_same_key_while_running_is_409(server: RunningServer) -> None:
    """The first finalize is held inside the domain (the test holds the recording's real
    lock), so the second request deterministically meets a running key."""
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    put_chunk(rec["chunk_upload_url_template"], 1, b"one")
    url, body = f"/v1/recordings/{rec['id']}/finalize", {"total_chunks": 1,
                                                          "final_duration_ms": 10}
    results: list[httpx.Response] = []
    with server.app.domain.ctx.locks.hold(rec["id"]):
        first = threading.Thread(target=lambda: results.append(
            c.post(url, json=body, headers=key("slow"))))
        first.start()
        deadline = time.monotonic() + 30
        while _running_keys(server.app.db) == 0:
            assert time.monotonic() < deadline, "the first request never claimed its key"
            time.sleep(0.01)
        assert_error(client(server.http_url, server.api_key).post(
            url, json=body, headers=key("slow")), "idempotency_conflict")
        assert_error(client(server.http_url, server.api_key).post(
            url, json={**body, "final_duration_ms": 11}, headers=key("slow")),
            "idempotency_key_reused")
    first.join(30)
    assert results[0].status_code == 200, results[0].text
    replay = c.post(url, json=body, headers=key("slow"))
    assert replay.status_code == 200 and replay.json() == results[0].json()


@pytest.fixture
def clocked(weed: ManagedWeed, tmp_path: Path) -> Iterator[tuple[RunningServer, ManualClock]]:
    clock = ManualClock()
    srv = start_server(make_settings(weed, tmp_path / "data"), roles=("grpc", "http"),
                       clock=clock)
    try:
        yield srv, clock
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_keys_live_24_hours(clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    c = client(srv.http_url, srv.api_key)
    first = c.post("/v1/recordings", json={"name": "a"}, headers=key("day"))
    clock.advance(timedelta(hours=23, minutes=59))
    assert c.post("/v1/recordings", json={"name": "a"},
                  headers=key("day")).json() == first.json()
    clock.advance(timedelta(minutes=2))
    fresh = c.post("/v1/recordings", json={"name": "b"}, headers=key("day"))
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]


def test_grpc_create_shares_the_store(server: RunningServer) -> None:
    stub, md = server.recordings(), auth(server.api_key)
    req = recording_pb2.CreateRecordingRequest(streaming=True, name="g", idempotency_key="G")
    one = stub.CreateRecording(req, metadata=md).recording
    two = stub.CreateRecording(req, metadata=md).recording
    assert one == two and one.chunk_upload_url_template
    # First over REST, then the same request over gRPC: a replay, not a reuse.
    c = client(server.http_url, server.api_key)
    rest = c.post("/v1/recordings", json={"streaming": True, "name": "r"}, headers=key("X"))
    rpc = stub.CreateRecording(recording_pb2.CreateRecordingRequest(
        streaming=True, name="r", idempotency_key="X"), metadata=md).recording
    assert rpc.id == rest.json()["id"]
    assert rpc.chunk_upload_url_template == rest.json()["chunk_upload_url_template"]
    assert count(c) == 2


@pytest.mark.parametrize("bad", [b"", b"x" * 256, b"with space", "é".encode()])
def test_malformed_keys_are_invalid(server: RunningServer, bad: bytes) -> None:
    c = client(server.http_url, server.api_key)
    resp = c.post("/v1/recordings", json={}, headers=[(b"Idempotency-Key", bad)])
    err = assert_error(resp, "invalid_request")
    assert err["field"] == "Idempotency-Key"
