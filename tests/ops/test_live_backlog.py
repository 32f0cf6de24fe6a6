"""Live transcription rules without a model: which chunks queue a piece job, the backlog gauge
on ``/metrics``, and the setting that turns live transcription off (a real server with the
gRPC and HTTP roles but no workers, so the queue only grows)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapedeck.v1 import recording_pb2

from opskit import opus_chunks, scrape, value, wait_until
from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server

GAUGE = "tapedeck_live_transcription_backlog"


def _server(weed: Any, tmp: Path, live: bool) -> RunningServer:
    return start_server(make_settings(weed, tmp / "data", live_transcription=live),
                        roles=("grpc", "http"))


@pytest.fixture
def live_srv(weed: Any, tmp_path: Path) -> Iterator[RunningServer]:
    srv = _server(weed, tmp_path, True)
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def _recording(srv: RunningServer) -> str:
    rec = srv.recordings().CreateRecording(recording_pb2.CreateRecordingRequest(
        streaming=True, chunk_duration_ms=1000), metadata=auth(srv.api_key)).recording
    return str(rec.id)


def _put(srv: RunningServer, rec_id: str, part: int, data: bytes) -> None:
    srv.chunks().UploadChunk(chunk_messages(rec_id, part, data), metadata=auth(srv.api_key))


def _queued_parts(srv: RunningServer, rec_id: str) -> list[int]:
    rows = srv.app.db.read().execute(
        "SELECT payload FROM jobs WHERE kind = 'live_transcribe'"
        " AND recording_id = ? AND status = 'queued' ORDER BY rowid", [rec_id]).fetchall()
    return [json.loads(r[0])["part"] for r in rows]


def test_each_new_chunk_queues_its_piece_and_the_backlog_is_a_gauge(
        live_srv: RunningServer) -> None:
    chunks = opus_chunks(3)
    rec_id = _recording(live_srv)
    assert value(scrape(f"{live_srv.http_url}/metrics"), GAUGE) == 0
    _put(live_srv, rec_id, 2, chunks[1])
    _put(live_srv, rec_id, 1, chunks[0])  # out of order: part 2's context changed too
    _put(live_srv, rec_id, 1, chunks[0])  # identical bytes again: nothing new
    assert _queued_parts(live_srv, rec_id) == [2, 1]  # one queued job per part at a time
    _put(live_srv, rec_id, 3, chunks[2])
    assert _queued_parts(live_srv, rec_id) == [2, 1, 3]
    assert value(scrape(f"{live_srv.http_url}/metrics"), GAUGE) == 3
    # the first chunk made the live transcription, processing, announced once
    rec = live_srv.app.db.read().execute(
        "SELECT transcription_status, transcription_id FROM recordings WHERE id = ?",
        [rec_id]).fetchone()
    txn = live_srv.app.db.read().execute("SELECT status, live FROM transcriptions WHERE id = ?",
                                         [rec[1]]).fetchone()
    assert (rec[0], *txn) == ("processing", "processing", 1)
    types = [r[0] for r in live_srv.app.db.read().execute(
        "SELECT type FROM events WHERE recording_id = ? ORDER BY rowid", [rec_id])]
    assert types == ["recording.created", "transcription.queued", "transcription.started"]


def test_off_means_no_live_jobs_and_no_transcription_before_finalize(
        weed: Any, tmp_path: Path) -> None:
    srv = _server(weed, tmp_path, False)
    try:
        rec_id = _recording(srv)
        for part, data in enumerate(opus_chunks(2), start=1):
            _put(srv, rec_id, part, data)
        assert _queued_parts(srv, rec_id) == []
        row = srv.app.db.read().execute(
            "SELECT transcription_status, transcription_id FROM recordings WHERE id = ?",
            [rec_id]).fetchone()
        assert row == ("none", None)
        assert value(scrape(f"{srv.http_url}/metrics"), GAUGE) == 0
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_a_recording_that_cannot_be_stitched_fails_its_live_transcription_once(
        weed: Any, tmp_path: Path) -> None:
    """Stitching only (no transcription lanes): a chunk that is not Ogg Opus fails the
    recording, and the live transcription made at its first chunk fails with it, once."""
    srv = start_server(make_settings(weed, tmp_path / "data", live_transcription=True,
                                     job_kinds="stitch", job_poll_ms=50),
                       roles=("grpc", "http", "worker"))
    try:
        rec_id = _recording(srv)
        good = opus_chunks(1)[0]
        _put(srv, rec_id, 1, good)
        _put(srv, rec_id, 2, b"not an ogg opus file" * 50)
        srv.recordings().FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
            id=rec_id, total_chunks=2, final_duration_ms=2000), metadata=auth(srv.api_key))
        db = srv.app.db.read()
        wait_until(lambda: db.execute("SELECT status FROM recordings WHERE id = ?",
                                      [rec_id]).fetchone()[0] == "failed", 60, "the failure")
        types = [r[0] for r in db.execute(
            "SELECT type FROM events WHERE recording_id = ? ORDER BY rowid", [rec_id])]
        assert types == ["recording.created", "transcription.queued", "transcription.started",
                         "recording.uploaded", "recording.failed", "transcription.failed"]
        uploaded = db.execute("SELECT data FROM events WHERE recording_id = ? AND type ="
                              " 'recording.uploaded'", [rec_id]).fetchone()[0]
        assert json.loads(uploaded)["transcription_status"] == "processing"
        row = db.execute("SELECT r.transcription_status, t.status, t.error_type FROM recordings"
                         " r JOIN transcriptions t ON t.id = r.transcription_id WHERE r.id = ?",
                         [rec_id]).fetchone()
        assert row == ("failed", "failed", "invalid_audio")
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_watch_yields_keepalives_and_stops_when_told(live_srv: RunningServer) -> None:
    """No worker: the live transcription stays processing with nothing new; with
    ``keepalive_polls`` the watch still yields (empty) updates, and ``stop`` ends it."""
    rec_id = _recording(live_srv)
    _put(live_srv, rec_id, 1, opus_chunks(1)[0])
    domain = live_srv.app.domain
    txn_id = live_srv.app.db.read().execute(
        "SELECT transcription_id FROM recordings WHERE id = ?", [rec_id]).fetchone()[0]
    p = domain.authenticate(f"Bearer {live_srv.api_key}")
    stop = threading.Event()
    updates = domain.transcriptions.watch(p, txn_id, poll_s=0.01, stop=stop, keepalive_polls=3)
    first, second = next(updates), next(updates)
    assert (first.segments, first.covered_ms, first.transcription) == ([], 0, None)
    assert (second.segments, second.transcription) == ([], None)  # a keepalive
    stop.set()
    assert list(updates) == []
    quiet = domain.transcriptions.watch(p, txn_id, poll_s=0.01, stop=stop)
    assert [u.transcription for u in quiet] == [None]  # stopped after its first update


def _piece(words: list[tuple[str, int, int]], delta48: int | None) -> Any:
    from tapedeck.background.transcribe import Segment, Word
    from tapedeck.background.transcribe.live import Piece

    ws = tuple(Word(w, a, b, 0.9) for w, a, b in words)
    seg = Segment(ws[0].start_ms, ws[-1].end_ms, " ".join(w for w, _, _ in words), 0.9,
                  words=ws)
    return Piece(delta48, 10_000 * 48, 4000 if delta48 else 0, "en", (seg,), 9000, 1000)


def test_watchers_read_only_what_changed(live_srv: RunningServer) -> None:
    """Pieces stored by the job's own upsert; the follower re-reads and re-merges only when
    a piece's version changed, and then only that piece's segments; its view equals the full
    recompute (``live_view``) every time."""
    from tapedeck.background.transcribe.live_job import _Inputs, store_piece
    from tapedeck.domain.live import LiveFollower, live_view

    if live_srv.app.db.dialect != "sqlite":
        pytest.skip("traces sqlite3 statements")
    rec_id = _recording(live_srv)
    db = live_srv.app.db
    clock = live_srv.app.clock
    seen: list[str] = []
    conn = db.read().conn
    follower = LiveFollower(rec_id)

    def poll() -> tuple[Any, bool]:
        seen.clear()
        conn.set_trace_callback(seen.append)
        try:
            return follower.poll(db.read())
        finally:
            conn.set_trace_callback(None)

    def put(part: int, md5: str, prev: str | None, words: list[tuple[str, int, int]]) -> None:
        with db.write() as tx:
            store_piece(tx, clock, rec_id, part, _Inputs(b"", None, md5, prev),
                        _piece(words, None if part == 1 else 10_000 * 48))

    assert poll()[0].segments == [] and not [q for q in seen if "segments" in q]
    put(1, "a", None, [("one", 500, 900), ("two", 1000, 1400)])
    view, changed = poll()
    assert changed and [s["text"] for s in view.segments] == ["one two"]
    assert view == live_view(db.read(), rec_id)
    assert poll()[1] is False and len(seen) == 1 and "segments" not in seen[0]  # quiet poll

    put(2, "b", "a", [("three", 1000, 1500), ("four", 2000, 2500)])
    view, changed = poll()
    reads = [q for q in seen if "segments" in q]
    assert changed and len(reads) == 1 and "IN (2)" in reads[0]  # part 1 not read again
    assert view == live_view(db.read(), rec_id) and view.covered_ms == 20_000
    assert [s["text"] for s in view.segments] == ["one two", "three four"]

    put(1, "a2", None, [("uno", 500, 900)])  # replaced chunk 1: part 2 no longer chains
    view, changed = poll()
    assert changed and "IN (1)" in next(q for q in seen if "segments" in q)
    assert view == live_view(db.read(), rec_id)
    assert [s["text"] for s in view.segments] == ["uno"] and view.covered_ms == 10_000


def test_a_presigned_chunk_queues_its_piece_when_the_device_reconciles(
        live_srv: RunningServer) -> None:
    """A presigned PUT bypasses the server; the device's ListChunks (its reconcile step)
    records the part in the ledger through the one hook, which queues the live piece; a
    second listing queues nothing more, a replacement through a new URL queues it again."""
    import urllib.request

    from tapedeck.v1 import chunk_pb2

    def presigned_put(part: int, data: bytes) -> None:
        url = live_srv.chunks().CreateChunkUploadUrl(chunk_pb2.CreateChunkUploadUrlRequest(
            recording_id=rec_id, part=part), metadata=auth(live_srv.api_key))
        req = urllib.request.Request(url.upload_url, data=data, method="PUT",
                                     headers=dict(url.headers))
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 200

    def reconcile() -> list[int]:
        live_srv.chunks().ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec_id),
                                     metadata=auth(live_srv.api_key))
        return _queued_parts(live_srv, rec_id)

    chunks = opus_chunks(2)
    rec_id = _recording(live_srv)
    presigned_put(1, chunks[0])
    assert _queued_parts(live_srv, rec_id) == []  # the server has not seen it yet
    assert reconcile() == [1]
    assert reconcile() == [1]
    txn = live_srv.app.db.read().execute(
        "SELECT transcription_status FROM recordings WHERE id = ?", [rec_id]).fetchone()[0]
    assert txn == "processing"  # the live transcription started with the first piece
    with live_srv.app.db.write() as tx:  # a worker took the job
        tx.execute("UPDATE jobs SET status = 'succeeded' WHERE recording_id = ?", [rec_id])
    presigned_put(1, chunks[1])  # different bytes for part 1
    assert reconcile() == [1]
