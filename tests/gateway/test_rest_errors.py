"""Every error of api.md's table reached through REST with its HTTP status and ``type``, and
the same cases over gRPC giving the same ``type`` (one parameterised test, real servers)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.clock import ManualClock
from tapedeck.errors import ERRORS
from tapedeck.infra.weed import ManagedWeed
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import chunk_pb2, recording_pb2

from restkit import assert_error, client, create_streaming, md5_b64, put_chunk
from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server

# The error table of api.md (types a recordings client can meet; device and end-user errors
# belong to their own routes).
SPEC_TABLE = ("invalid_request", "unauthorized", "forbidden", "recording_not_found",
              "chunk_mismatch", "finalize_conflict", "recording_not_streaming",
              "idempotency_conflict", "checksum_mismatch", "idempotency_key_reused",
              "payload_too_large", "rate_limit_exceeded", "storage_unavailable",
              "internal_error")


@dataclass
class Kit:
    """A running server with a REST client (secret key) and a device token."""

    srv: RunningServer
    clock: ManualClock | None = None
    rest: httpx.Client = field(init=False)
    dtok: str = field(init=False)

    def __post_init__(self) -> None:
        self.rest = client(self.srv.http_url, self.srv.api_key)
        _, self.dtok = self.srv.device_token()

    def as_device(self, token: str | None = None) -> httpx.Client:
        return client(self.srv.http_url, token or self.dtok)

    def md(self, token: str | None = None) -> list[tuple[str, str]]:
        return list(auth(token or self.srv.api_key))

    def finalize_pb(self, rec_id: str, total: int, duration: int = 1000,
                    md5: str = "") -> Any:
        return self.srv.recordings().FinalizeRecording(
            recording_pb2.FinalizeRecordingRequest(id=rec_id, total_chunks=total,
                                                   final_duration_ms=duration,
                                                   checksum_md5=md5), metadata=self.md())

    def upload_pb(self, rec_id: str, part: int, data: bytes, token: str | None = None) -> Any:
        return self.srv.chunks().UploadChunk(chunk_messages(rec_id, part, data),
                                             metadata=self.md(token))


Calls = tuple[Callable[[], httpx.Response], Callable[[], Any]]


@dataclass(frozen=True)
class Case:
    """An error case: which server it needs and how to provoke it over both transports."""

    type: str
    prepare: Callable[[Kit], Calls]
    server: str = "default"
    label: str = ""

    @property
    def id(self) -> str:
        return self.label or self.type


def _invalid(k: Kit) -> Calls:
    rec = create_streaming(k.rest)
    return (lambda: k.rest.post(f"/v1/recordings/{rec['id']}/finalize",
                                json={"total_chunks": 0, "final_duration_ms": 1}),
            lambda: k.finalize_pb(rec["id"], 0))


def _unauthorized(k: Kit) -> Calls:
    bad = k.srv.api_key[:-1] + ("A" if k.srv.api_key[-1] != "A" else "B")
    return (lambda: client(k.srv.http_url, bad).get("/v1/recordings"),
            lambda: k.srv.recordings().ListRecordings(recording_pb2.ListRecordingsRequest(),
                                                      metadata=auth(bad)))


def _forbidden(k: Kit) -> Calls:
    rec = create_streaming(k.as_device())
    return (lambda: k.as_device().delete(f"/v1/recordings/{rec['id']}"),
            lambda: k.srv.recordings().DeleteRecording(
                recording_pb2.DeleteRecordingRequest(id=rec["id"]), metadata=k.md(k.dtok)))


def _not_found(k: Kit) -> Calls:
    other = create_streaming(k.as_device(k.srv.device_token()[1]))  # another device's
    return (lambda: k.as_device().get(f"/v1/recordings/{other['id']}"),
            lambda: k.srv.recordings().GetRecording(
                recording_pb2.GetRecordingRequest(id=other["id"]), metadata=k.md(k.dtok)))


def _chunk_mismatch(k: Kit) -> Calls:
    rec = create_streaming(k.rest)
    for part in (1, 3):
        put_chunk(rec["chunk_upload_url_template"], part, b"x%d" % part)
    return (lambda: k.rest.post(f"/v1/recordings/{rec['id']}/finalize",
                                json={"total_chunks": 2, "final_duration_ms": 1}),
            lambda: k.finalize_pb(rec["id"], 2))


def _finalized(k: Kit) -> dict[str, Any]:
    rec = create_streaming(k.rest)
    put_chunk(rec["chunk_upload_url_template"], 1, b"only")
    done = k.rest.post(f"/v1/recordings/{rec['id']}/finalize",
                       json={"total_chunks": 1, "final_duration_ms": 1000})
    assert done.status_code == 200, done.text
    return rec


def _finalize_conflict(k: Kit) -> Calls:
    rec = _finalized(k)
    return (lambda: k.rest.post(f"/v1/recordings/{rec['id']}/finalize",
                                json={"total_chunks": 1, "final_duration_ms": 999}),
            lambda: k.finalize_pb(rec["id"], 1, 999))


def _not_streaming(k: Kit) -> Calls:
    rec = _finalized(k)
    return (lambda: put_chunk(rec["chunk_upload_url_template"], 2, b"late"),
            lambda: k.upload_pb(rec["id"], 2, b"late"))


def _checksum(k: Kit) -> Calls:
    rec = create_streaming(k.rest)
    put_chunk(rec["chunk_upload_url_template"], 1, b"abc")
    wrong = hashlib.md5(b"abd").hexdigest()
    return (lambda: k.rest.post(f"/v1/recordings/{rec['id']}/finalize", json={
                "total_chunks": 1, "final_duration_ms": 1, "checksum_md5": wrong}),
            lambda: k.finalize_pb(rec["id"], 1, 1, wrong))


def _chunk_checksum(k: Kit) -> Calls:
    rec = create_streaming(k.rest)
    return (lambda: put_chunk(rec["chunk_upload_url_template"], 1, b"abc",
                              headers={"Content-MD5": md5_b64(b"abd")}),
            lambda: k.srv.chunks().UploadChunk(
                chunk_messages(rec["id"], 1, b"abc", md5=hashlib.md5(b"abd").hexdigest()),
                metadata=k.md()))


def _key_reused(k: Kit) -> Calls:
    first = k.rest.post("/v1/recordings", json={"name": "a"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    return (lambda: k.rest.post("/v1/recordings", json={"name": "b"},
                                headers={"Idempotency-Key": "k1"}),
            lambda: k.srv.recordings().CreateRecording(recording_pb2.CreateRecordingRequest(
                name="c", idempotency_key="k1"), metadata=k.md()))


def _too_large(k: Kit) -> Calls:
    rec = create_streaming(k.rest)
    big = bytes(4096)
    return (lambda: put_chunk(rec["chunk_upload_url_template"], 1, big, with_md5=False),
            lambda: k.upload_pb(rec["id"], 1, big))


def _rate_limited(k: Kit) -> Calls:
    def rest() -> httpx.Response:
        c = k.as_device(k.srv.device_token()[1])
        for _ in range(2):  # the burst (twice 1/s); the manual clock never refills it
            assert c.get("/v1/recordings").status_code == 200
        return c.get("/v1/recordings")

    def rpc() -> Any:
        md = k.md(k.srv.device_token()[1])
        for _ in range(2):
            k.srv.recordings().ListRecordings(recording_pb2.ListRecordingsRequest(), metadata=md)
        return k.srv.recordings().ListRecordings(recording_pb2.ListRecordingsRequest(),
                                                 metadata=md)

    return rest, rpc


def _storage_down(k: Kit) -> Calls:
    rec = create_streaming(k.rest)  # the server's store was stopped after it started
    return (lambda: k.rest.get(f"/v1/recordings/{rec['id']}/chunks"),
            lambda: k.srv.chunks().ListChunks(chunk_pb2.ListChunksRequest(
                recording_id=rec["id"]), metadata=k.md()))


def _internal(k: Kit) -> Calls:
    rec = create_streaming(k.rest)
    with k.srv.app.db.write() as tx:  # a corrupt row: a server bug
        tx.execute("UPDATE recordings SET metadata = '{not json' WHERE id = ?", [rec["id"]])
    return (lambda: k.rest.get(f"/v1/recordings/{rec['id']}"),
            lambda: k.srv.recordings().GetRecording(
                recording_pb2.GetRecordingRequest(id=rec["id"]), metadata=k.md()))


def _invalid_state(k: Kit) -> Calls:
    rec = k.rest.post("/v1/recordings", json={}).json()
    return (lambda: k.rest.post(f"/v1/recordings/{rec['id']}/download-url"),
            lambda: k.srv.recordings().CreateDownloadUrl(
                recording_pb2.CreateDownloadUrlRequest(id=rec["id"]), metadata=k.md()))


def _expired(k: Kit) -> Calls:
    rec = create_streaming(k.as_device())
    assert k.clock is not None
    k.clock.advance(timedelta(hours=5))  # past expires_at (4 h), never finalized
    url = rec["chunk_upload_url_template"].replace("{part}", "1").split("?")[0]
    return (lambda: k.as_device().put(url, content=b"late"),
            lambda: k.upload_pb(rec["id"], 1, b"late", token=k.dtok))


def _device_not_found(k: Kit) -> Calls:
    return (lambda: k.rest.post("/v1/recordings", json={"device_id": "dev_nope"}),
            lambda: k.srv.recordings().CreateRecording(recording_pb2.CreateRecordingRequest(
                device_id="dev_nope"), metadata=k.md()))


CASES = [
    Case("invalid_request", _invalid),
    Case("unauthorized", _unauthorized),
    Case("forbidden", _forbidden),
    Case("recording_not_found", _not_found),
    Case("device_not_found", _device_not_found),
    Case("chunk_mismatch", _chunk_mismatch),
    Case("finalize_conflict", _finalize_conflict),
    Case("recording_not_streaming", _not_streaming),
    Case("recording_expired", _expired, server="manual_clock"),
    Case("invalid_state", _invalid_state),
    Case("checksum_mismatch", _checksum, label="checksum_mismatch-finalize"),
    Case("checksum_mismatch", _chunk_checksum, label="checksum_mismatch-chunk"),
    Case("idempotency_key_reused", _key_reused),
    Case("payload_too_large", _too_large, server="tiny_chunks"),
    Case("rate_limit_exceeded", _rate_limited, server="rate_limited"),
    Case("storage_unavailable", _storage_down, server="dead_store"),
    Case("internal_error", _internal),
]


@pytest.fixture
def kits(weed: ManagedWeed, tmp_path: Path) -> Iterator[Callable[[str], Kit]]:
    """Starts a server of a named variant on demand; everything is torn down afterwards."""
    servers: list[RunningServer] = []
    private: list[ManagedWeed] = []

    def make(variant: str) -> Kit:
        clock = ManualClock() if variant in ("manual_clock", "rate_limited") else None
        store = weed
        if variant == "dead_store":
            store = ManagedWeed(tmp_path / "private-weed")
            store.start()
            private.append(store)
        overrides: dict[str, Any] = {
            "tiny_chunks": {"max_chunk_bytes": 1024},
            "rate_limited": {"rate_limit_per_s": 1},
        }.get(variant, {})
        srv = start_server(make_settings(store, tmp_path / f"data-{len(servers)}", **overrides),
                           roles=("grpc", "http"), clock=clock)
        servers.append(srv)
        kit = Kit(srv, clock)
        if variant == "dead_store":
            store.stop()
        return kit

    try:
        yield make
    finally:
        for srv in servers:
            srv.close()
            if srv.app.settings.s3_endpoint == weed.endpoint:
                drop_bucket(weed, srv.app.settings.s3_bucket)
        for w in private:
            w.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_error_over_rest_and_grpc(case: Case, kits: Callable[[str], Kit]) -> None:
    kit = kits(case.server)
    rest_call, grpc_call = case.prepare(kit)
    assert_error(rest_call(), case.type)
    with pytest.raises(grpc.RpcError) as info:
        grpc_call()
    assert from_rpc_error(info.value).type == case.type
    assert info.value.code() == ERRORS[case.type].grpc_code


def test_spec_table_is_covered() -> None:
    """Every type of api.md's error table is reached by a REST test in this package."""
    covered = {c.type for c in CASES} | {"idempotency_conflict"}  # see test_idempotency.py
    assert set(SPEC_TABLE) <= covered, set(SPEC_TABLE) - covered


# -- REST-only errors: framework-level and body validation -----------------------------------
def test_unknown_route_and_wrong_method(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    assert_error(c.get("/v1/nothing-here"), "route_not_found")
    assert_error(c.get("/v1/recordings/"), "route_not_found")
    resp = c.patch("/v1/recordings")
    err = assert_error(resp, "method_not_allowed")
    assert resp.headers["allow"] == "GET, POST" and err["allowed"] == ["GET", "POST"]
    assert resp.status_code == 405


LONG = "x" * 501
VALIDATION = [
    # (route, body, field)
    ("create", b'{"streaming": tru', "body"),
    ("create", b"[1, 2]", "body"),
    ("create", b'"streaming"', "body"),
    ("create", b'{"streaming": "true"}', "streaming"),
    ("create", b'{"streaming": 1}', "streaming"),
    ("create", b'{"codec": "OPUS"}', "codec"),
    ("create", b'{"codec": "aac"}', "codec"),
    ("create", b'{"estimated_duration_ms": -1}', "estimated_duration_ms"),
    ("create", b'{"estimated_duration_ms": 1e30}', "estimated_duration_ms"),
    ("create", b'{"estimated_duration_ms": 99999999999999999999999}', "estimated_duration_ms"),
    ("create", b'{"chunk_duration_ms": 10}', "chunk_duration_ms"),
    ("create", b'{"started_at": "yesterday"}', "started_at"),
    ("create", b'{"started_at": "2025-01-13T10:00:00"}', "started_at"),
    ("create", b'{"started_at": 1736762400}', "started_at"),
    ("create", b'{"started_at": "0108-09-05T10:22:00.120303-11:54"}', "started_at"),
    ("create", b'{"ended_at": "9999-12-31T23:59:59Z"}', "ended_at"),
    ("create", b'{"metadata": {"k": 1}}', "metadata.k"),
    ("create", f'{{"name": "{LONG}"}}'.encode(), "name"),
    ("create", b'{"streaming": true, "codec": "wav"}', "codec"),
    ("create", b'{"ended_at": "2025-01-01T00:00:00Z", "started_at": "2025-01-02T00:00:00Z"}',
     "ended_at"),
    ("create", b'{"stream": true}', "stream"),
    ("finalize", b'{"final_duration_ms": 1}', "total_chunks"),
    ("finalize", b'{"total_chunks": "12", "final_duration_ms": 1}', "total_chunks"),
    ("finalize", b'{"total_chunks": 12.0, "final_duration_ms": 1}', "total_chunks"),
    ("finalize", b'{"total_chunks": -3, "final_duration_ms": 1}', "total_chunks"),
    ("finalize", b'{"total_chunks": 3, "final_duration_ms": -1}', "final_duration_ms"),
    ("finalize", b'{"total_chunks": 3, "final_duration_ms": 1, "checksum_md5": "xyz"}',
     "checksum_md5"),
    ("finalize", b'{"total_chunks": 3, "final_duration_ms": 1, "checksum_md": "ab"}',
     "checksum_md"),
    ("upload-url", b'{"type": "video"}', "type"),
    ("upload-url", b'{"part": 0}', "part"),
    ("upload-url", b'{"content_md5": "not base64"}', "content_md5"),
    ("upload-complete", b'{"force": true}', "force"),
]


@pytest.mark.parametrize(("route", "body", "field_name"), VALIDATION)
def test_invalid_bodies_name_the_field(server: RunningServer, route: str, body: bytes,
                                       field_name: str) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    path = "/v1/recordings" if route == "create" else f"/v1/recordings/{rec['id']}/{route}"
    err = assert_error(c.post(path, content=body,
                              headers={"Content-Type": "application/json"}), "invalid_request")
    assert err["field"] == field_name, err


@pytest.mark.parametrize(("query", "field_name"), [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"status": "STREAMING"}, "status"), ({"status": "done"}, "status"),
    ({"cursor": "garbage"}, "cursor"),
])
def test_invalid_query_names_the_field(server: RunningServer, query: dict[str, str],
                                       field_name: str) -> None:
    c = client(server.http_url, server.api_key)
    err = assert_error(c.get("/v1/recordings", params=query), "invalid_request")
    assert err["field"] == field_name


def test_invalid_chunk_requests(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    tpl = create_streaming(c)["chunk_upload_url_template"]
    for part, fld in (("0", "part"), ("101", "part"), ("x", "part")):
        err = assert_error(httpx.put(tpl.replace("{part}", part), content=b"x"),
                           "invalid_request")
        assert err["field"] == fld
    err = assert_error(put_chunk(tpl, 1, b"x", headers={"Content-MD5": "abc"}),
                       "invalid_request")
    assert err["field"] == "Content-MD5"
    err = assert_error(put_chunk(tpl, 1, b"", with_md5=False), "invalid_request")
    assert err["field"] == "body"


def test_json_body_limit(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    limit = server.app.settings.max_json_bytes
    padded = b'{"name": "x"' + b" " * limit + b"}"
    err = assert_error(c.post("/v1/recordings", content=padded), "payload_too_large")
    assert err["max_bytes"] == limit

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"name": "x"'
        for _ in range(limit // 1024 + 1):
            yield b" " * 1024
        yield b"}"

    assert_error(c.post("/v1/recordings", content=chunked()), "payload_too_large")
    assert c.get("/v1/recordings").json()["data"] == []
