"""Issue 21 part B over HTTP: the recordings list's date filter and live rows, the recording
page's timeline, live JSON and re-run stitching (console button and
``POST /v1/recordings/{id}/stitch``). Real gateway, real SeaweedFS, real Opus stitched by the
real stitch job (run by hand here: the module's server has no worker)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from test_console_http import (  # noqa: F401  # the module's fixtures and helpers
    EVIL,
    client,
    create_streaming,
    csrf_of,
    put_chunk,
    signed_in,
    srv,
    stitched,
)

from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for

from serverkit import RunningServer
from stitchkit import continuous_chunks


def run_stitch(srv: RunningServer) -> str | None:  # noqa: F811
    runtime = srv.app.runtime
    return Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test").run_once()


def lost_chunk_recording(srv: RunningServer) -> tuple[str, str, bytes]:  # noqa: F811
    """A finalized recording whose chunk 2 vanished from the store, failed by the stitch job
    (chunk_missing): its id, the chunk's key and bytes."""
    c = client(srv.http_url, srv.api_key)
    rec = create_streaming(c, name="lost-chunk", metadata={"note": EVIL})
    datas = [ch.data for ch in continuous_chunks(3.0, 1_000)]
    for i, data in enumerate(datas, 1):
        assert put_chunk(rec["chunk_upload_url_template"], i, data).status_code == 201
    assert c.post(f"/v1/recordings/{rec['id']}/finalize",
                  json={"total_chunks": 3, "final_duration_ms": 3000}).status_code == 200
    key = srv.app.db.read().execute("SELECT object_key FROM chunks WHERE recording_id = ?"
                                    " AND part = 2", [rec["id"]]).fetchone()[0]
    srv.app.domain.ctx.store.delete(key)
    assert run_stitch(srv) == "failed"
    assert c.get(f"/v1/recordings/{rec['id']}").json()["status"] == "failed"
    return rec["id"], key, datas[1]


def day(delta: int = 0) -> str:
    return (datetime.now(UTC) + timedelta(days=delta)).date().isoformat()


def test_date_filter(srv: RunningServer, stitched: dict[str, Any]) -> None:  # noqa: F811
    c = signed_in(srv)
    today = c.get("/console/recordings", params={"created_from": day(-1), "created_to": day(1)})
    assert today.status_code == 200 and stitched["id"] in today.text
    assert f'value="{day(-1)}"' in today.text  # the filter stays filled in
    before = c.get("/console/recordings", params={"created_to": day(-2)})
    assert stitched["id"] not in before.text and "No recordings." in before.text
    after = c.get("/console/recordings", params={"created_from": day(2)})
    assert stitched["id"] not in after.text
    bad = c.get("/console/recordings", params={"created_from": "yesterday"})
    assert bad.status_code == 400 and "created_from must be a date" in bad.text
    reversed_ = c.get("/console/recordings", params={"created_from": day(1),
                                                     "created_to": day(-1)})
    assert reversed_.status_code == 400


def test_live_rows_json(srv: RunningServer, stitched: dict[str, Any]) -> None:  # noqa: F811
    api = client(srv.http_url, srv.api_key)
    rec = create_streaming(api, name="live-rows")
    data = continuous_chunks(2.0, 1_000)[0].data
    assert put_chunk(rec["chunk_upload_url_template"], 1, data).status_code == 201
    c = signed_in(srv)
    page = c.get("/console/recordings").text
    assert f'data-id="{rec["id"]}" data-status="streaming"' in page
    got = c.get("/console/live/recordings",
                params=[("id", rec["id"]), ("id", stitched["id"]), ("id", "rec_gone")]).json()
    rows = {r["id"]: r for r in got["data"]}
    assert set(rows) == {rec["id"], stitched["id"]}  # an unknown id is dropped
    assert rows[rec["id"]]["status"] == "streaming" and rows[rec["id"]]["chunks_received"] == 1
    assert rows[stitched["id"]]["duration"] == "3.0 s"
    assert httpx.get(f"{srv.http_url}/console/live/recordings?id={rec['id']}").status_code == 401
    live = c.get(f"/console/live/recordings/{rec['id']}").json()
    assert (live["status"], live["chunks_received"], live["words"]) == ("streaming", 1, [])
    assert c.get("/console/live/recordings/rec_gone").json()["error"]["type"] == (
        "recording_not_found")


def test_failed_recording_page_and_rerun_stitching(srv: RunningServer) -> None:  # noqa: F811
    rec_id, key, data = lost_chunk_recording(srv)
    c = signed_in(srv)
    page = c.get(f"/console/recordings/{rec_id}")
    assert 'id="failure"' in page.text and "chunk_missing" in page.text
    assert 'id="restitch"' in page.text and "Stitching failed" in page.text
    assert "<script>alert" not in page.text
    url = f"/console/recordings/{rec_id}/restitch"
    assert c.post(url, data={}).status_code == 403  # no CSRF token
    assert httpx.post(srv.http_url + url, data={}).status_code == 303  # no session
    srv.app.domain.ctx.store.put(key, io.BytesIO(data), len(data))
    back = c.post(url, data={"csrf": csrf_of(page.text)})
    assert back.status_code == 303 and back.headers["location"] == f"/console/recordings/{rec_id}"
    requeued = c.get(f"/console/recordings/{rec_id}").text
    assert 'data-live="1"' in requeued and "Re-run stitching" not in requeued
    assert run_stitch(srv) == "succeeded"
    done = c.get(f"/console/recordings/{rec_id}").text
    assert 'id="player"' in done and "<strong>Stitched</strong>" in done
    again = c.post(url, data={"csrf": csrf_of(done)})
    assert again.status_code == 409 and "only a failed recording" in again.text


def test_rest_stitch_route(srv: RunningServer, stitched: dict[str, Any]) -> None:  # noqa: F811
    api = client(srv.http_url, srv.api_key)
    rec_id, _, _ = lost_chunk_recording(srv)
    refused = api.post(f"/v1/recordings/{stitched['id']}/stitch")
    assert refused.status_code == 409 and refused.json()["error"]["type"] == "invalid_state"
    ok = api.post(f"/v1/recordings/{rec_id}/stitch", headers={"Idempotency-Key": "rs-1"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["status"] == "uploaded" and body["transcription_status"] == "queued"
    assert body.get("failure") in (None, {})
    replay = api.post(f"/v1/recordings/{rec_id}/stitch", headers={"Idempotency-Key": "rs-1"})
    assert replay.json() == body and replay.headers.get("idempotent-replayed") == "true"
    assert api.post(f"/v1/recordings/{rec_id}/stitch").status_code == 409  # queued already
    assert run_stitch(srv) == "failed"  # the chunk is still lost: it fails again, typed
    assert api.get(f"/v1/recordings/{rec_id}").json()["failure"]["type"] == "chunk_missing"
    assert httpx.post(f"{srv.http_url}/v1/recordings/{rec_id}/stitch").status_code == 401
