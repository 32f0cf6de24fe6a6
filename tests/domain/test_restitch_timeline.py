"""Domain rules behind the console's recordings pages, on a real store and database with a
ManualClock: the created_from/created_to window of the list, re-running stitching of a
failed recording (``domain.restitch``) and the recording's timeline (``domain.timeline``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tapedeck.auth import Principal
from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.clock import ManualClock
from tapedeck.domain.recordings import NewRecording
from tapedeck.domain.restitch import restitch
from tapedeck.domain.timeline import timeline
from tapedeck.errors import TapedeckError

from serverkit import RunningServer, drop_bucket, make_settings, start_server
from stitchkit import continuous_chunks


@pytest.fixture
def clocked(weed: Any, tmp_path: Path) -> Iterator[tuple[RunningServer, ManualClock]]:
    clock = ManualClock()
    srv = start_server(make_settings(weed, tmp_path / "d"), roles=(), clock=clock)
    try:
        yield srv, clock
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def secret(srv: RunningServer) -> Principal:
    return srv.app.domain.auth.authenticate(f"Bearer {srv.api_key}")


def code_of(call: Any) -> str:
    with pytest.raises(TapedeckError) as exc:
        call()
    return str(exc.value.type)


def test_list_window_is_from_inclusive_to_exclusive(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d, p = srv.app.domain, secret(srv)
    t0 = clock.now()
    made = []
    for _ in range(3):  # at t0, t0 + 1 day, t0 + 2 days
        made.append(d.recordings.create(p, NewRecording(name="r")).recording.id)
        clock.advance(timedelta(days=1))

    def ids(**window: Any) -> list[str]:
        return [r.id for r in d.recordings.list(p, **window).data]

    assert ids(created_from=t0 + timedelta(days=1)) == [made[2], made[1]]
    assert ids(created_to=t0 + timedelta(days=1)) == [made[0]]
    assert ids(created_from=t0, created_to=t0 + timedelta(days=2)) == [made[1], made[0]]
    assert ids(created_from=t0 + timedelta(days=3)) == []
    assert code_of(lambda: d.recordings.list(p, created_from=t0, created_to=t0)) == (
        "invalid_request")
    page = d.recordings.list(p, limit=1, created_from=t0 + timedelta(seconds=1))
    assert [r.id for r in page.data] == [made[2]] and page.next_cursor  # window + cursor
    rest = d.recordings.list(p, limit=5, cursor=page.next_cursor,
                             created_from=t0 + timedelta(seconds=1))
    assert [r.id for r in rest.data] == [made[1]]


def _failed_by_a_lost_chunk(srv: RunningServer, clock: ManualClock) -> tuple[str, str, bytes]:
    """A finalized 3-chunk recording whose chunk 2 object vanished before stitching: the
    stitch job fails it with chunk_missing. Returns its id, the chunk key and its bytes."""
    d, p = srv.app.domain, secret(srv)
    rec = d.recordings.create(p, NewRecording(streaming=True, name="lost")).recording
    datas = [c.data for c in continuous_chunks(3.0, 1_000)]
    for part, data in enumerate(datas, 1):
        d.chunks.upload(p, rec.id, part, [data])
        clock.advance(timedelta(seconds=1))
    d.recordings.finalize(p, rec.id, len(datas), 3000, None)
    key = srv.app.db.read().execute("SELECT object_key FROM chunks WHERE recording_id = ?"
                                    " AND part = 2", [rec.id]).fetchone()[0]
    d.ctx.store.delete(key)
    clock.advance(timedelta(seconds=1))
    assert run_stitch(srv) == "failed"
    got = d.recordings.get(p, rec.id)
    assert (got.status, got.failure_type, got.transcription_status) == (
        "failed", "chunk_missing", "failed")
    return rec.id, key, datas[1]


def run_stitch(srv: RunningServer) -> str | None:
    runtime = srv.app.runtime
    return Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test").run_once()


def test_restitch_recovers_a_failed_recording_once_its_cause_is_fixed(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d, p = srv.app.domain, secret(srv)
    rec_id, key, data = _failed_by_a_lost_chunk(srv, clock)
    first = d.recordings.get(p, rec_id)
    d.ctx.store.put(key, io.BytesIO(data), len(data))  # restored from a backup
    clock.advance(timedelta(seconds=1))
    again = restitch(d.ctx, p, rec_id)
    assert (again.status, again.failure_type, again.transcription_status) == (
        "uploaded", None, "queued")
    assert again.stitching_job_id != first.stitching_job_id
    assert again.transcription_id != first.transcription_id
    assert code_of(lambda: restitch(d.ctx, p, rec_id)) == "invalid_state"  # not failed now
    assert run_stitch(srv) == "succeeded"
    done = d.recordings.get(p, rec_id)
    assert done.status == "completed" and done.duration_ms and abs(done.duration_ms - 3000) < 100
    kinds = srv.app.db.read().execute(
        "SELECT kind FROM jobs WHERE recording_id = ? AND status = 'queued'", [rec_id]).fetchall()
    assert kinds == [("transcribe",)]  # the new transcription follows the stitched audio
    assert code_of(lambda: restitch(d.ctx, p, rec_id)) == "invalid_state"  # completed


def test_restitch_is_refused_when_there_is_nothing_to_stitch_or_no_right(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d, p = srv.app.domain, secret(srv)
    streaming = d.recordings.create(p, NewRecording(streaming=True)).recording.id
    assert code_of(lambda: restitch(d.ctx, p, streaming)) == "invalid_state"
    assert code_of(lambda: restitch(d.ctx, p, "rec_missing")) == "recording_not_found"
    rec_id, _, _ = _failed_by_a_lost_chunk(srv, clock)
    _, token = srv.device_token()
    device = d.auth.authenticate(f"Bearer {token}")
    assert code_of(lambda: restitch(d.ctx, device, rec_id)) == "forbidden"
    reader_key = d.keys.create(p, scopes=["recordings:read"]).secret
    reader = d.auth.authenticate(f"Bearer {reader_key}")
    assert code_of(lambda: restitch(d.ctx, reader, rec_id)) == "forbidden"
    again = restitch(d.ctx, p, rec_id)  # the chunk is still lost: it fails the same way
    assert again.status == "uploaded"
    assert run_stitch(srv) == "failed"
    assert d.recordings.get(p, rec_id).failure_type == "chunk_missing"


def test_timeline_tells_the_story_in_order(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d, p = srv.app.domain, secret(srv)
    rec_id, key, data = _failed_by_a_lost_chunk(srv, clock)
    d.ctx.store.put(key, io.BytesIO(data), len(data))
    restitch(d.ctx, p, rec_id)
    clock.advance(timedelta(seconds=1))
    assert run_stitch(srv) == "succeeded"
    steps = timeline(d.ctx, p, rec_id)
    assert [e.at for e in steps] == sorted(e.at for e in steps)
    titles = [e.title for e in steps]
    assert titles[0] == "Recording created"
    chunk_steps = [e for e in steps if e.kind == "chunk"]
    assert [e.title for e in chunk_steps] == [f"Chunk {n} received" for n in (1, 2, 3)]
    assert chunk_steps[0].detail.endswith(" bytes")
    for title in ("Audio complete (finalized / uploaded)", "Stitching failed",
                  "Recording failed", "Transcription failed", "Stitched"):
        assert title in titles, (title, titles)
    assert titles.count("Stitching queued") == 2 and titles.count("Transcription queued") == 2
    assert titles.index("Stitching failed") < titles.index("Stitched")
    failed = next(e for e in steps if e.title == "Recording failed")
    assert "chunk_missing" in failed.detail
    assert code_of(lambda: timeline(d.ctx, p, "rec_missing")) == "recording_not_found"
