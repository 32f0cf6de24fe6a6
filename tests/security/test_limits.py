"""Limits are on by default (issue 15 item 8): a per-credential request rate, a cap on open
streaming recordings per device, a per-project storage quota. Each refusal is typed, the
same over REST and gRPC, with ``Retry-After`` where waiting helps."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.clock import ManualClock
from tapedeck.errors import ERRORS, TapedeckError
from tapedeck.infra.weed import ManagedWeed
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.settings import Settings
from tapedeck.v1 import recording_pb2

from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server

DEFAULTS = Settings()


@pytest.fixture
def make(weed: ManagedWeed, tmp_path: Path) -> Iterator[Any]:
    servers: list[RunningServer] = []

    def start(clock: ManualClock | None = None, **overrides: Any) -> RunningServer:
        settings = make_settings(weed, tmp_path / f"d{len(servers)}", **overrides)
        srv = start_server(settings, roles=("grpc", "http"), clock=clock)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def _rest(srv: RunningServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def _refused(resp: httpx.Response, type_: str) -> dict[str, Any]:
    assert resp.status_code == ERRORS[type_].http_status, resp.text
    err = resp.json()["error"]
    assert err["type"] == type_
    return dict(err)


def _grpc_refused(call: Any, type_: str) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == ERRORS[type_].grpc_code
    typed = from_rpc_error(caught.value)
    assert typed.type == type_
    return typed


def test_the_defaults_are_limits() -> None:
    assert DEFAULTS.rate_limit_per_s > 0
    assert DEFAULTS.max_streaming_per_device > 0
    assert DEFAULTS.storage_quota_bytes > 0
    assert ERRORS["streaming_limit_exceeded"].http_status == 429
    assert ERRORS["storage_quota_exceeded"].http_status == 403


def test_default_rate_limit_throttles_one_credential(make: Any) -> None:
    clock = ManualClock()
    srv = make(clock, rate_limit_per_s=DEFAULTS.rate_limit_per_s)
    _, token = srv.device_token()
    burst = srv.app.domain.limiter.burst
    with _rest(srv, token) as c:
        for _ in range(burst):
            assert c.get("/v1/recordings").status_code == 200
        resp = c.get("/v1/recordings")
        err = _refused(resp, "rate_limit_exceeded")
        assert int(resp.headers["Retry-After"]) == err["retry_after_s"] >= 1
        _, other = srv.device_token()  # another credential has its own budget
        assert _rest(srv, other).get("/v1/recordings").status_code == 200
    _grpc_refused(lambda: srv.recordings().ListRecordings(
        recording_pb2.ListRecordingsRequest(), metadata=auth(token)), "rate_limit_exceeded")
    clock.advance(timedelta(seconds=2))
    with _rest(srv, token) as c:
        assert c.get("/v1/recordings").status_code == 200


def test_open_streaming_recordings_per_device_are_capped(make: Any) -> None:
    clock = ManualClock()
    cap = DEFAULTS.max_streaming_per_device
    srv = make(clock, max_streaming_per_device=cap)
    _, token = srv.device_token()
    with _rest(srv, token) as c:
        for _ in range(cap):
            assert c.post("/v1/recordings", json={"streaming": True}).status_code == 201
        assert c.post("/v1/recordings", json={}).status_code == 201  # single-file: not capped
        resp = c.post("/v1/recordings", json={"streaming": True})
        err = _refused(resp, "streaming_limit_exceeded")
        assert err["limit"] == cap
        # Waiting helps: the oldest open recording expires (streaming_ttl_s) and frees a slot.
        assert int(resp.headers["Retry-After"]) == err["retry_after_s"]
        assert 0 < err["retry_after_s"] <= DEFAULTS.streaming_ttl_s
    _grpc_refused(lambda: srv.recordings().CreateRecording(
        recording_pb2.CreateRecordingRequest(streaming=True), metadata=auth(token)),
        "streaming_limit_exceeded")
    _, other = srv.device_token()
    with _rest(srv, other) as c:
        assert c.post("/v1/recordings", json={"streaming": True}).status_code == 201
    clock.advance(timedelta(seconds=DEFAULTS.streaming_ttl_s + 1))
    with _rest(srv, token) as c:
        assert c.post("/v1/recordings", json={"streaming": True}).status_code == 201


def _chunk(srv: RunningServer, token: str, rec_id: str, part: int, data: bytes) -> Any:
    return srv.chunks().UploadChunk(chunk_messages(rec_id, part, data), metadata=auth(token))


def test_storage_quota_per_project(make: Any) -> None:
    quota = 300_000
    srv = make(storage_quota_bytes=quota)
    _, token = srv.device_token()
    data = os.urandom(200_000)
    with _rest(srv, token) as c:
        rec = c.post("/v1/recordings", json={"streaming": True}).json()
        _chunk(srv, token, rec["id"], 1, data)
        _chunk(srv, token, rec["id"], 2, data)  # 200 kB used < quota: accepted, now over
        _grpc_refused(lambda: _chunk(srv, token, rec["id"], 3, data), "storage_quota_exceeded")
        url = rec["chunk_upload_url_template"].replace("{part}", "3")
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        err = _refused(httpx.put(url, content=data, headers={"Content-MD5": md5}),
                       "storage_quota_exceeded")
        assert err["quota_bytes"] == quota and err["used_bytes"] == 2 * len(data)
        _refused(c.post(f"/v1/recordings/{rec['id']}/upload-url", json={"part": 3}),
                 "storage_quota_exceeded")
        _refused(c.post("/v1/recordings", json={}), "storage_quota_exceeded")
        _grpc_refused(lambda: srv.recordings().CreateRecording(
            recording_pb2.CreateRecordingRequest(), metadata=auth(token)),
            "storage_quota_exceeded")
        # Another project is not affected; deleting frees the space.
        from tapedeck.auth import create_project

        _, key2 = create_project(srv.app.db, srv.app.clock)
        assert _rest(srv, key2).post("/v1/recordings", json={}).status_code == 201
    with _rest(srv, srv.api_key) as admin:
        assert admin.delete(f"/v1/recordings/{rec['id']}").status_code in (200, 204)
    with _rest(srv, token) as c:
        assert c.post("/v1/recordings", json={"streaming": True}).status_code == 201


def test_the_storage_meter_reuses_a_measurement_only_within_its_bound(tmp_path: Path) -> None:
    """Far from the quota a measurement is reused (no query per chunk); bytes it did not see
    (another process) are caught once the allowance it handed out could reach the quota,
    or when the measurement is older than METER_TTL_S."""
    from tapedeck.domain.limits import METER_TTL_S, StorageMeter
    from tapedeck.infra.db import Database

    clock = ManualClock()
    db = Database(tmp_path / "t.db")
    settings = Settings(storage_quota_bytes=1000)
    now = "2026-01-01T00:00:00.000Z"
    with db.write() as tx:
        tx.execute("INSERT INTO projects VALUES ('prj_1', 'p', ?)", [now])

    def stored(size: int) -> None:  # bytes arriving behind the meter's back
        with db.write() as tx:
            tx.execute("INSERT INTO recordings (id, project_id, status, codec, streaming,"
                       " created_at, updated_at, file_size_bytes) VALUES"
                       " (?, 'prj_1', 'completed', 'opus', 0, ?, ?, ?)",
                       [f"rec_{os.urandom(6).hex()}", now, now, size])

    meter = StorageMeter(clock)
    meter.check(db.read(), settings, "prj_1", 100)  # measures 0
    stored(5000)
    passed = 0
    with pytest.raises(TapedeckError) as caught:
        for _ in range(20):
            meter.check(db.read(), settings, "prj_1", 100)
            passed += 1
    assert caught.value.type == "storage_quota_exceeded"
    assert 0 < passed <= 1000 // 100  # reused, but never past what could reach the quota

    fresh = StorageMeter(clock)
    fresh.check(db.read(), Settings(storage_quota_bytes=10**9), "prj_1", 100)
    stored(10**9)
    fresh.check(db.read(), Settings(storage_quota_bytes=10**9), "prj_1", 100)  # reused
    clock.advance(timedelta(seconds=METER_TTL_S + 1))
    with pytest.raises(TapedeckError,
                       match="The project stores 1000005000 bytes, its quota is 1000000000;"):
        fresh.check(db.read(), Settings(storage_quota_bytes=10**9), "prj_1", 100)
