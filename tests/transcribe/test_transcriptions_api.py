"""The transcription API over REST and gRPC, and the job's once-only guarantees.

A real server (grpc, http and a worker that only stitches) on real SQLite and SeaweedFS; the
``transcribe`` jobs are run one at a time by an in-process worker with the real handler (the
real model, loaded once for the module), so the queued state can be observed and each job's
outcome is deterministic. Recordings are short stretches of real speech or silence encoded
like the device agent does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tapedeck.auth import create_project
from tapedeck.background.transcribe.job import build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.infra.weed import ManagedWeed, free_port
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import recording_pb2 as rpb
from tapedeck.v1 import transcription_pb2 as tpb
from tapedeck.v1 import transcription_pb2_grpc

import asterisk_speech as speech
from serverkit import RunningServer, auth, spawn_server, start_server
from txnkit import (
    device_chunks,
    drop_bucket,
    events,
    get_json,
    pcm16,
    pipeline_settings,
    rest,
    silence,
    upload_grpc,
    wait_for,
)

TXN_KEYS = {"id", "recording_id", "status", "language", "provider", "model", "duration_ms",
            "text", "segments", "word_count", "error", "created_at", "completed_at",
            "paragraphs", "speakers"}
TERMINAL = ("transcription.completed", "transcription.failed")


@pytest.fixture(scope="module")
def settings(weed: Any, whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return pipeline_settings(weed, tmp_path_factory.mktemp("txnapi") / "data", whisper_dir,
                             job_kinds="stitch")


@pytest.fixture(scope="module")
def srv(weed: Any, settings: Any) -> Iterator[RunningServer]:
    """Stitches by itself; transcribe jobs wait for ``transcriber``."""
    server = start_server(settings, roles=("grpc", "http", "worker"))
    try:
        yield server
    finally:
        server.close()
        drop_bucket(weed, settings.s3_bucket)


@pytest.fixture(scope="module")
def transcriber(srv: RunningServer) -> Iterator[Worker]:
    """A claim loop for transcribe jobs only, run by hand (one model for the module)."""
    handler = build_handler(srv.app.runtime)
    assert handler is not None
    worker = Worker(queue_for(srv.app.runtime), {"transcribe": handler}, "test-transcriber")
    yield worker
    worker.close()


def _stub(srv: RunningServer) -> transcription_pb2_grpc.TranscriptionServiceStub:
    stub: transcription_pb2_grpc.TranscriptionServiceStub = \
        transcription_pb2_grpc.TranscriptionServiceStub(srv.channel())
    return stub


def _completed(srv: RunningServer, token: str, pcm: bytes) -> dict[str, Any]:
    """Upload over gRPC with ``token``, wait for the stitch; the recording (REST JSON)."""
    chunks, duration = device_chunks(pcm, 20_000)
    rec_id = upload_grpc(srv, token, chunks, duration)

    def stitched() -> dict[str, Any] | None:
        rec = get_json(srv, f"/v1/recordings/{rec_id}")
        return rec if rec["status"] == "completed" else None

    return wait_for(stitched, 120, "stitching")


def _drain(transcriber: Worker) -> list[str]:
    """Run every due transcribe job; their outcomes."""
    return list(iter(transcriber.run_once, None))


def _settled(outcome: str | None) -> str | None:
    """A run's outcome, or None while the job is not due or was retried."""
    return None if outcome in (None, "retry") else outcome


def _terminal_ids(srv: RunningServer, rec_id: str) -> list[str]:
    return [d["id"] for t, d in events(srv, rec_id) if t in TERMINAL]


def _grpc_error(call: Any) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    """The status code, error type and details of a failing gRPC call."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = from_rpc_error(info.value)
    return info.value.code(), err.type, err.details


def _post(srv: RunningServer, rec_id: str, body: Any, token: str | None = None,
          key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    with rest(srv, token) as c:
        return c.post(f"/v1/recordings/{rec_id}/transcribe", json=body, headers=headers)


# -- reading ------------------------------------------------------------------------------------

def test_queued_transcription_object(srv: RunningServer) -> None:
    rec = _completed(srv, srv.api_key, silence(3.0))
    assert rec["transcription_status"] == "queued"
    txn = get_json(srv, f"/v1/transcriptions/{rec['transcription_id']}")
    assert set(txn) == TXN_KEYS
    assert {k: txn[k] for k in TXN_KEYS - {"created_at"}} == {
        "id": rec["transcription_id"], "recording_id": rec["id"], "status": "queued",
        "language": None, "provider": "whisper", "model": None, "duration_ms": None,
        "text": None, "segments": [], "word_count": None, "error": None, "completed_at": None,
        "paragraphs": [], "speakers": None}
    got = _stub(srv).GetTranscription(tpb.GetTranscriptionRequest(id=txn["id"]),
                                      metadata=auth(srv.api_key)).transcription
    assert (got.id, got.recording_id, got.status, got.provider) == (
        txn["id"], rec["id"], rpb.TRANSCRIPTION_STATUS_QUEUED, "whisper")
    assert not got.HasField("duration_ms") and not got.HasField("word_count")
    assert not got.HasField("error") and not got.HasField("complete_time")


def test_visibility_follows_the_recording(srv: RunningServer) -> None:
    _, own_token = srv.device_token()
    _, other_device = srv.device_token()
    rec = _completed(srv, own_token, silence(3.0))
    path = f"/v1/transcriptions/{rec['transcription_id']}"
    assert get_json(srv, path, own_token)["id"] == rec["transcription_id"]

    _, other_project_key = create_project(srv.app.db, srv.app.clock)
    admin = srv.app.domain.auth.authenticate(f"Bearer {srv.api_key}")
    no_scope = srv.app.domain.keys.create(admin, scopes=["recordings:read"]).secret
    reader = srv.app.domain.keys.create(admin, scopes=["transcriptions:read"]).secret
    assert get_json(srv, path, reader)["id"] == rec["transcription_id"]
    for token, status, type_ in [(other_device, 404, "transcription_not_found"),
                                 (other_project_key, 404, "transcription_not_found"),
                                 (no_scope, 403, "forbidden")]:
        with rest(srv, token) as c:
            resp = c.get(path)
        assert (resp.status_code, resp.json()["error"]["type"]) == (status, type_)
    with rest(srv) as c:
        resp = c.get("/v1/transcriptions/txn_doesnotexist")
    assert (resp.status_code, resp.json()["error"]["type"]) == (404, "transcription_not_found")

    code, type_, _ = _grpc_error(lambda: _stub(srv).GetTranscription(
        tpb.GetTranscriptionRequest(id=rec["transcription_id"]), metadata=auth(other_device)))
    assert (code, type_) == (grpc.StatusCode.NOT_FOUND, "transcription_not_found")


# -- requesting ---------------------------------------------------------------------------------

def test_request_rules(srv: RunningServer) -> None:
    _, device_token = srv.device_token()
    rec = _completed(srv, device_token, silence(3.0))
    rec_id = rec["id"]
    cases = [
        ({"provider": "deepgram"}, None, 400, "invalid_request", "provider"),
        ({"language": "English"}, None, 400, "invalid_request", "language"),
        ({"languages": "en"}, None, 400, "invalid_request", "languages"),
        ({}, device_token, 403, "forbidden", None),  # devices lack transcriptions:write
        ({}, None, 409, "invalid_state", None),  # the automatic one is still queued
    ]
    for body, token, status, type_, field in cases:
        resp = _post(srv, rec_id, body, token)
        err = resp.json()["error"]
        assert (resp.status_code, err["type"], err.get("field")) == (status, type_, field), err
    assert _post(srv, rec_id, {}).json()["error"]["transcription_id"] == rec[
        "transcription_id"]

    _, other_project_key = create_project(srv.app.db, srv.app.clock)
    resp = _post(srv, rec_id, {}, other_project_key)
    assert (resp.status_code, resp.json()["error"]["type"]) == (404, "recording_not_found")
    with rest(srv) as c:
        streaming = c.post("/v1/recordings", json={"streaming": True}).json()
    resp = _post(srv, streaming["id"], {})
    assert (resp.status_code, resp.json()["error"]["type"]) == (409, "invalid_state")
    assert resp.json()["error"]["status"] == "streaming"

    code, type_, details = _grpc_error(lambda: _stub(srv).CreateTranscription(
        tpb.CreateTranscriptionRequest(recording_id=rec_id, provider="deepgram"),
        metadata=auth(srv.api_key)))
    assert (code, type_, details) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request",
                                      {"field": "provider"})
    code, type_, details = _grpc_error(lambda: _stub(srv).CreateTranscription(
        tpb.CreateTranscriptionRequest(recording_id=rec_id), metadata=auth(srv.api_key)))
    assert (code, type_) == (grpc.StatusCode.FAILED_PRECONDITION, "invalid_state")
    assert details["transcription_id"] == rec["transcription_id"]


def test_on_demand_transcriptions_with_idempotency(srv: RunningServer,
                                                   transcriber: Worker) -> None:
    _drain(transcriber)  # jobs other tests left queued
    samples, reference = speech.speech_track(["conf-now-recording"])
    rec = _completed(srv, srv.api_key, pcm16(samples))
    rec_id, first = rec["id"], rec["transcription_id"]
    assert _drain(transcriber) == ["succeeded"]
    auto = get_json(srv, f"/v1/transcriptions/{first}")
    assert (auto["status"], auto["language"]) == ("completed", "en")
    assert speech.wer(reference, auto["text"]) <= 0.2, auto["text"]

    # REST, with an Idempotency-Key: one new transcription, replayed on retry.
    resp = _post(srv, rec_id, {"language": "en"}, key="again-1")
    assert resp.status_code == 201, resp.text
    second = resp.json()
    assert set(second) == TXN_KEYS and second["id"] != first
    assert (second["status"], second["language"], second["text"]) == ("queued", "en", None)
    replay = _post(srv, rec_id, {"language": "en", "provider": "whisper"}, key="again-1")
    assert (replay.status_code, replay.json(), replay.headers["Idempotent-Replayed"]) == (
        201, second, "true")
    reused = _post(srv, rec_id, {"language": "de"}, key="again-1")
    assert (reused.status_code, reused.json()["error"]["type"]) == (422,
                                                                    "idempotency_key_reused")
    after = get_json(srv, f"/v1/recordings/{rec_id}")
    assert (after["transcription_id"], after["transcription_status"]) == (second["id"], "queued")
    assert _drain(transcriber) == ["succeeded"]
    done = get_json(srv, f"/v1/transcriptions/{second['id']}")
    assert (done["status"], done["language"], done["text"]) == ("completed", "en", auto["text"])

    # gRPC, with an idempotency key: the replay rebuilds the first answer.
    def create() -> tpb.Transcription:
        return _stub(srv).CreateTranscription(tpb.CreateTranscriptionRequest(
            recording_id=rec_id, idempotency_key="again-2"),
            metadata=auth(srv.api_key)).transcription

    third, third_again = create(), create()
    assert third == third_again and third.status == rpb.TRANSCRIPTION_STATUS_QUEUED
    assert third.id not in (first, second["id"]) and third.language == ""
    assert _drain(transcriber) == ["succeeded"]

    types = [t for t, _ in events(srv, rec_id) if t.startswith("transcription.")]
    assert types == ["transcription.queued", "transcription.started",
                     "transcription.completed"] * 3
    assert _terminal_ids(srv, rec_id) == [first, second["id"], third.id]
    assert get_json(srv, f"/v1/recordings/{rec_id}")["transcription_status"] == "completed"


# -- the job runs its transcription at most once -----------------------------------------------

def test_a_finished_job_run_again_changes_nothing(srv: RunningServer,
                                                  transcriber: Worker) -> None:
    _drain(transcriber)  # jobs other tests left queued
    rec = _completed(srv, srv.api_key, silence(3.0))
    assert _drain(transcriber) == ["succeeded"]
    before = events(srv, rec["id"])
    with srv.app.db.write() as tx:  # as if the job had been handed out again
        tx.execute("UPDATE jobs SET status = 'queued' WHERE recording_id = ? AND"
                   " kind = 'transcribe'", [rec["id"]])
    assert _drain(transcriber) == ["succeeded"]
    assert events(srv, rec["id"]) == before
    assert _terminal_ids(srv, rec["id"]) == [rec["transcription_id"]]


def test_worker_killed_mid_transcription_is_taken_over_without_repeating_events(
        srv: RunningServer, transcriber: Worker, settings: Any) -> None:
    """A ``tapedeck worker`` child claims the job, marks it processing (started event), and
    is killed -9 there; once its 1 s lease expires, another worker takes the job over and
    completes it: one started and one completed event."""
    _drain(transcriber)  # jobs other tests left queued: the child must claim ours
    rec = _completed(srv, srv.api_key, silence(3.0))
    child = spawn_server(settings.replace(job_kinds="transcribe", job_lease_s=1,
                                          test_only_failpoints="transcribe.started"), "worker")
    try:
        assert child.proc.stdout is not None
        line = next(ln for ln in child.proc.stdout if ln.startswith('{"failpoint"'))
        assert rec["transcription_id"] in line
        child.kill()
    finally:
        if child.proc.poll() is None:
            child.kill()
    assert get_json(srv, f"/v1/transcriptions/{rec['transcription_id']}")["status"] == \
        "processing"
    outcome = wait_for(transcriber.run_once, 60, "the lease to expire")
    assert outcome == "succeeded"
    types = [t for t, _ in events(srv, rec["id"])]
    assert types == ["recording.created", "recording.uploaded", "transcription.queued",
                     "transcription.started", "transcription.completed"]
    runs = srv.app.db.read().execute(
        "SELECT attempt, outcome FROM job_runs r JOIN jobs j ON j.id = r.job_id"
        " WHERE j.recording_id = ? AND j.kind = 'transcribe' ORDER BY attempt",
        [rec["id"]]).fetchall()
    assert runs == [(1, None), (2, "succeeded")]


def test_unsupported_language_fails_once_with_its_reason(srv: RunningServer,
                                                         transcriber: Worker) -> None:
    _drain(transcriber)  # jobs other tests left queued
    samples, _ = speech.speech_track(["conf-now-recording"])
    rec = _completed(srv, srv.api_key, pcm16(samples))
    assert _drain(transcriber) == ["succeeded"]
    resp = _post(srv, rec["id"], {"language": "xx"})  # well-formed, but no such language
    assert resp.status_code == 201, resp.text
    assert _drain(transcriber) == ["failed"]  # permanent: not retried
    txn = get_json(srv, f"/v1/transcriptions/{resp.json()['id']}")
    assert (txn["status"], txn["error"]["type"], txn["error"]["reason"]) == (
        "failed", "transcription_failed", "unsupported_language")
    assert get_json(srv, f"/v1/recordings/{rec['id']}")["transcription_status"] == "failed"
    assert _terminal_ids(srv, rec["id"]) == [rec["transcription_id"], txn["id"]]


def test_store_outage_is_retried_and_the_transcription_completes_once(
        whisper_dir: Path, tmp_path: Path) -> None:
    """The server's own SeaweedFS is stopped while the job runs (download fails: transient,
    retried with backoff) and started again: the job completes on its second attempt with one
    started and one completed event."""
    with ManagedWeed(tmp_path / "weed", s3_port=free_port(), memory_limit="256MiB",
                     volume_size_limit_mb=64, max_volumes=8) as weed:
        settings = pipeline_settings(weed, tmp_path / "data", whisper_dir, job_kinds="stitch",
                                     job_retry_base_ms=100)
        server = start_server(settings, roles=("grpc", "http", "worker"))
        handler = build_handler(server.app.runtime)
        assert handler is not None
        worker = Worker(queue_for(server.app.runtime), {"transcribe": handler}, "outage")
        try:
            rec = _completed(server, server.api_key, silence(3.0))
            weed.stop()
            assert worker.run_once() == "retry"
            weed.start()
            # The restarted store may still answer 5xx for a moment: more retries, fine.
            assert wait_for(lambda: _settled(worker.run_once()), 120, "a retry") == "succeeded"
            txn = get_json(server, f"/v1/transcriptions/{rec['transcription_id']}")
            assert (txn["status"], txn["text"]) == ("completed", "")
            assert [t for t, _ in events(server, rec["id"])] == [
                "recording.created", "recording.uploaded", "transcription.queued",
                "transcription.started", "transcription.completed"]
            runs = server.app.db.read().execute(
                "SELECT r.outcome, r.error FROM job_runs r JOIN jobs j ON j.id = r.job_id"
                " WHERE j.kind = 'transcribe' ORDER BY r.attempt").fetchall()
            assert [o for o, _ in runs] == ["retry"] * (len(runs) - 1) + ["succeeded"]
            assert all('"storage_unavailable"' in e for _, e in runs[:-1])
        finally:
            worker.close()
            server.close()
