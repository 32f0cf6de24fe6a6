"""``/metrics`` during a full recording run (gRPC create + chunks, REST finalize, stitch
worker, webhook dispatcher, sweeper retention): every counter moves by exactly what the run
did, the page parses with prometheus_client's own parser, and request ids go in and out."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.errors import TapedeckError
from tapedeck.grpc_api._errors import from_rpc_error
from tapedeck.infra.metrics import MeteredStore, Metrics
from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.weed import free_port
from tapedeck.v1 import recording_pb2

from opskit import Receiver, Series, delta, opus_chunks, scrape, value, wait_until
from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server

ROLES = ("grpc", "http", "worker", "dispatcher", "sweeper")
RECORDINGS = "/tapedeck.v1.RecordingService/"
CHUNKS = "/tapedeck.v1.ChunkService/"


@pytest.fixture
def full(weed: Any, tmp_path: Path) -> Iterator[RunningServer]:
    """Every role in one process; stitch jobs only (transcription stays queued)."""
    srv = start_server(make_settings(weed, tmp_path / "d", job_kinds="stitch",
                                     sweep_interval_ms=100, job_poll_ms=50), roles=ROLES)
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def _record(srv: RunningServer, token: str, chunks: list[bytes]) -> str:
    """gRPC: create (with a client request id) and upload every part, part 1 twice."""
    created, call = srv.recordings().CreateRecording.with_call(
        recording_pb2.CreateRecordingRequest(streaming=True, chunk_duration_ms=1000),
        metadata=[*auth(token), ("x-request-id", "client-create-1")])
    assert ("x-request-id", "client-create-1") in call.trailing_metadata()
    rec_id = created.recording.id
    for part, data in enumerate(chunks, start=1):
        srv.chunks().UploadChunk(chunk_messages(rec_id, part, data), metadata=auth(token))
    again = srv.chunks().UploadChunk(chunk_messages(rec_id, 1, chunks[0]), metadata=auth(token))
    assert again.already_stored  # counted as a request, not as an ingested chunk
    return str(rec_id)


def _errors(srv: RunningServer, rest: httpx.Client) -> None:
    """One typed error on each transport."""
    assert rest.get("/v1/recordings/rec_0000000000000000000000").status_code == 404
    with pytest.raises(grpc.RpcError) as exc:
        srv.recordings().GetRecording(recording_pb2.GetRecordingRequest(
            id="rec_0000000000000000000000"), metadata=auth(srv.api_key))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def _finished(srv: RunningServer, rec_id: str, receiver: Receiver) -> bool:
    row = srv.app.db.read().execute("SELECT status, chunks_retention FROM recordings"
                                    " WHERE id = ?", [rec_id]).fetchone()
    return tuple(row) == ("completed", "purged") and len(receiver.about(rec_id)) == 3


def test_counters_move_by_what_a_full_run_did(full: RunningServer) -> None:
    srv, receiver = full, Receiver()
    try:
        principal = srv.app.domain.auth.authenticate(f"Bearer {srv.api_key}")
        srv.app.domain.webhooks.create(principal, receiver.url, ["*"])
        _, token = srv.device_token()
        rest = httpx.Client(base_url=srv.http_url, timeout=60.0,
                            headers={"Authorization": f"Bearer {token}"})
        chunks = opus_chunks(3)
        before = scrape(srv.http_url + "/metrics")
        rec_id = _record(srv, token, chunks)
        fin = rest.post(f"/v1/recordings/{rec_id}/finalize", headers={"x-request-id": "fin-42"},
                        json={"total_chunks": 3, "final_duration_ms": 3000,
                              "checksum_md5": hashlib.md5(b"".join(chunks)).hexdigest()})
        assert fin.status_code == 200, fin.text
        assert fin.headers["x-request-id"] == "fin-42"
        _errors(srv, rest)
        wait_until(lambda: _finished(srv, rec_id, receiver), what="stitch, retention, webhooks")
        after = scrape(srv.http_url + "/metrics")
    finally:
        receiver.close()
    _check_requests(before, after)
    _check_work(before, after, chunks)
    _check_gauges(after)
    _check_request_id_followed(srv, rec_id)


def _check_requests(before: Series, after: Series) -> None:
    def requests(transport: str, method: str, outcome: str = "ok") -> float:
        return delta(before, after, "tapedeck_requests_total", transport=transport,
                     method=method, outcome=outcome)

    assert requests("grpc", RECORDINGS + "CreateRecording") == 1
    assert requests("grpc", CHUNKS + "UploadChunk") == 4
    assert requests("http", "POST /v1/recordings/{recording_id}/finalize") == 1
    assert requests("http", "GET /v1/recordings/{recording_id}", "recording_not_found") == 1
    assert requests("grpc", RECORDINGS + "GetRecording", "recording_not_found") == 1
    assert delta(before, after, "tapedeck_request_duration_seconds_count", transport="grpc",
                 method=CHUNKS + "UploadChunk") == 4
    assert delta(before, after, "tapedeck_request_duration_seconds_bucket", transport="grpc",
                 method=CHUNKS + "UploadChunk", le="+Inf") == 4
    total = sum(v for (name, _), v in after.items() if name == "tapedeck_requests_total")
    assert total - sum(v for (name, _), v in before.items()
                       if name == "tapedeck_requests_total") == 8  # /metrics is not counted


def _check_work(before: Series, after: Series, chunks: list[bytes]) -> None:
    assert delta(before, after, "tapedeck_chunks_ingested_total") == 3
    assert delta(before, after, "tapedeck_chunk_bytes_ingested_total") == sum(map(len, chunks))
    assert delta(before, after, "tapedeck_job_runs_total", kind="stitch",
                 outcome="succeeded") == 1
    assert delta(before, after, "tapedeck_job_duration_seconds_count", kind="stitch") == 1
    assert delta(before, after, "tapedeck_webhook_attempts_total", outcome="succeeded") == 3
    assert delta(before, after, "tapedeck_webhook_deliveries_total", outcome="succeeded") == 3
    assert delta(before, after, "tapedeck_retention_objects_deleted_total",
                 reason="stitched") == 3
    assert not any(name == "tapedeck_store_errors_total" for name, _ in after)
    assert value(after, "tapedeck_sweeps_total", outcome="ok") >= 1
    assert value(after, "tapedeck_sweeps_total", outcome="error") == 0


def _check_gauges(after: Series) -> None:
    # Read from SQLite at scrape time: the transcription job waits (no transcribe worker).
    assert value(after, "tapedeck_jobs", kind="transcribe", status="queued") == 1
    assert value(after, "tapedeck_jobs", kind="stitch", status="queued") == 0
    assert value(after, "tapedeck_job_queue_oldest_age_seconds", kind="transcribe") >= 0
    assert ("tapedeck_job_queue_oldest_age_seconds", (("kind", "transcribe"),)) in after
    assert value(after, "tapedeck_recordings", status="streaming") == 0
    assert value(after, "tapedeck_recordings_overdue") == 0
    assert value(after, "tapedeck_webhook_deliveries_by_status", status="pending") == 0


def _check_request_id_followed(srv: RunningServer, rec_id: str) -> None:
    db = srv.app.db.read()
    jobs = dict(db.execute("SELECT kind, request_id FROM jobs WHERE recording_id = ?",
                           [rec_id]).fetchall())
    events = dict(db.execute("SELECT type, request_id FROM events WHERE recording_id = ?",
                             [rec_id]).fetchall())
    # The stitch job and the events of the finalize carry its id; the transcription job was
    # queued by the stitch worker, under the stitch job's id.
    assert jobs == {"stitch": "fin-42", "transcribe": "fin-42"}
    assert events == {"recording.created": "client-create-1", "recording.uploaded": "fin-42",
                      "transcription.queued": "fin-42"}


def test_a_fresh_request_id_when_the_caller_sends_none(full: RunningServer) -> None:
    resp = httpx.get(full.http_url + "/v1/recordings", timeout=30.0,
                     headers={"Authorization": f"Bearer {full.api_key}",
                              "x-request-id": "bad id with spaces"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"].startswith("req_")
    _, call = full.recordings().ListRecordings.with_call(
        recording_pb2.ListRecordingsRequest(), metadata=auth(full.api_key))
    assert dict(call.trailing_metadata())["x-request-id"].startswith("req_")
    with pytest.raises(grpc.RpcError) as info:  # errors carry it too, beside the details
        full.recordings().GetRecording(recording_pb2.GetRecordingRequest(id="rec_x"),
                                       metadata=[*auth(full.api_key), ("x-request-id", "e-1")])
    err: Any = info.value
    trailing = dict(err.trailing_metadata())
    assert trailing["x-request-id"] == "e-1" and "grpc-status-details-bin" in trailing
    assert from_rpc_error(info.value).type == "recording_not_found"


def test_store_errors_are_counted() -> None:
    """A real S3 client against a port where nothing listens."""
    metrics = Metrics()
    store = MeteredStore(S3Store(f"127.0.0.1:{free_port()}", "k", "s", "no-bucket", retries=0,
                                 connect_timeout=0.5), metrics)
    for call in (lambda: store.stat("x"), lambda: list(store.list("p/")),
                 lambda: store.delete("x")):
        with pytest.raises(TapedeckError) as info:
            call()
        assert info.value.type == "storage_unavailable"
    text = metrics.render().decode()
    for op in ("stat", "list", "delete"):
        assert f'tapedeck_store_errors_total{{operation="{op}"}} 1.0' in text

