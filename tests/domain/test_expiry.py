"""Expiry of streaming recordings that were never finalized (domain level, real store/db)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tapedeck.clock import ManualClock
from tapedeck.domain.expiry import Expiry, contiguous_prefix
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import TapedeckError

from serverkit import RunningServer, drop_bucket, make_settings, start_server


@pytest.fixture
def clocked(weed: Any, tmp_path: Path) -> Iterator[tuple[RunningServer, ManualClock]]:
    clock = ManualClock()
    srv = start_server(make_settings(weed, tmp_path / "d"), roles=(), clock=clock)
    try:
        yield srv, clock
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_contiguous_prefix() -> None:
    assert contiguous_prefix(set()) == 0
    assert contiguous_prefix({2, 3}) == 0
    assert contiguous_prefix({1, 2, 3, 4, 6}) == 4


def test_expired_recording_auto_finalizes_contiguous_chunks(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d = srv.app.domain
    _, token = srv.device_token()
    p = d.auth.authenticate(f"Bearer {token}")
    rec = d.recordings.create(p, NewRecording(streaming=True, chunk_duration_ms=60_000)).recording
    for part in (1, 2, 3, 4, 6):
        d.chunks.upload(p, rec.id, part, [b"part %d" % part])
    expiry = Expiry(d.ctx)
    assert expiry.sweep() == {}
    clock.advance(timedelta(seconds=srv.app.settings.streaming_ttl_s + 1))
    assert expiry.sweep() == {rec.id: "finalized"}
    got = d.recordings.get(p, rec.id)
    assert (got.status, got.finalized_by, got.chunks_received) == ("uploaded", "expiry", 4)
    assert got.gaps == [{"first_part": 5, "last_part": None, "start_ms": 240_000,
                         "end_ms": None, "missing_parts": [5], "discarded_parts": [6]}]
    assert got.stitching_job_id and got.transcription_status == "queued"
    events = [r[0] for r in srv.app.db.read().execute(
        "SELECT type FROM events WHERE recording_id = ? ORDER BY rowid", [rec.id])]
    assert events == ["recording.created", "recording.expired", "transcription.queued"]
    with pytest.raises(TapedeckError) as info:
        d.chunks.upload(p, rec.id, 5, [b"late part 5"])
    assert info.value.type == "recording_expired"
    assert expiry.sweep() == {}  # exactly once


def test_expired_without_chunks_or_auto_finalize(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d = srv.app.domain
    p = d.auth.authenticate(f"Bearer {srv.api_key}")
    empty = d.recordings.create(p, NewRecording(streaming=True)).recording
    not_first = d.recordings.create(p, NewRecording(streaming=True)).recording
    d.chunks.upload(p, not_first.id, 2, [b"only part two"])
    before_due = d.recordings.create(p, NewRecording(streaming=True)).recording
    clock.advance(timedelta(seconds=srv.app.settings.streaming_ttl_s - 10))
    late = d.recordings.create(p, NewRecording(streaming=True)).recording
    clock.advance(timedelta(seconds=20))
    outcome = Expiry(d.ctx).sweep()
    assert outcome == {empty.id: "expired", not_first.id: "expired", before_due.id: "expired"}
    assert d.recordings.get(p, late.id).status == "streaming"
    got = d.recordings.get(p, empty.id)
    assert got.status == "expired" and got.stitching_job_id is None
    data = json.loads(srv.app.db.read().execute(
        "SELECT data FROM events WHERE recording_id = ? AND type = 'recording.expired'",
        [empty.id]).fetchone()[0])
    assert data["status"] == "expired"
    with pytest.raises(TapedeckError) as info:
        d.recordings.finalize(p, empty.id, 1, 1000, None)
    assert info.value.type == "recording_expired"


def test_auto_finalize_off(weed: Any, tmp_path: Path) -> None:
    clock = ManualClock()
    srv = start_server(make_settings(weed, tmp_path / "d", expiry_auto_finalize=False),
                       roles=(), clock=clock)
    try:
        d = srv.app.domain
        p = d.auth.authenticate(f"Bearer {srv.api_key}")
        rec = d.recordings.create(p, NewRecording(streaming=True)).recording
        d.chunks.upload(p, rec.id, 1, [b"one"])
        clock.advance(timedelta(days=1))
        assert Expiry(d.ctx).sweep() == {rec.id: "expired"}
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_part_upload_url_refused_once_due_even_before_the_sweep(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d = srv.app.domain
    p = d.auth.authenticate(f"Bearer {srv.api_key}")
    rec = d.recordings.create(p, NewRecording(streaming=True)).recording
    assert d.recordings.create_upload_url(p, rec.id, part=1).method == "PUT"
    clock.advance(timedelta(seconds=srv.app.settings.streaming_ttl_s + 1))
    for call in (lambda: d.recordings.create_upload_url(p, rec.id, part=1),
                 lambda: d.chunks.create_upload_url(p, rec.id, 1)):
        with pytest.raises(TapedeckError) as info:
            call()
        assert info.value.type == "recording_expired"
