"""Voice profiles at the domain level (real db, store, encoder): retention and cascades."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tapedeck.clock import ManualClock
from tapedeck.domain.end_users import NewEndUser
from tapedeck.domain.voice_profiles import ProfileRetention
from tapedeck.errors import TapedeckError

import voicekit as vk
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


def _wav(x: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(vk.RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    buf.seek(0)
    return buf


def _count(srv: RunningServer) -> int:
    return int(srv.app.db.read().execute("SELECT COUNT(*) FROM voice_profiles").fetchone()[0])


def test_retention_and_end_user_deletion_remove_embeddings(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d = srv.app.domain
    p = d.auth.authenticate(f"Bearer {srv.api_key}")
    sample = vk.conversation(["irina"], 1, 41, min_turn=5, max_turn=7).pcm
    alice = d.end_users.create(p, NewEndUser(name="alice"))
    bob = d.end_users.create(p, NewEndUser(name="bob"))
    old = d.voice_profiles.create_from_sample(p, alice.id, _wav(sample))
    assert old.speech_ms >= 3000 and old.source == "upload"
    emb = srv.app.db.read().execute("SELECT embedding FROM voice_profiles WHERE id = ?",
                                    [old.id]).fetchone()[0]
    vec = np.frombuffer(emb, np.float32)
    assert vec.shape == (256,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-4

    clock.advance(timedelta(hours=2))
    young = d.voice_profiles.create_from_sample(p, alice.id, _wav(sample))
    d.voice_profiles.create_from_sample(p, bob.id, _wav(sample))
    assert ProfileRetention(d.ctx, -1).run() == 0
    assert ProfileRetention(d.ctx, 3600).run() == 1
    assert [v.id for v in d.voice_profiles.list(p, alice.id).data] == [young.id]

    # Deleting an end user deletes their embeddings (foreign key cascade), not others'.
    with srv.app.db.write() as tx:
        tx.execute("DELETE FROM end_users WHERE id = ?", [alice.id])
    assert _count(srv) == 1 and len(d.voice_profiles.list(p, bob.id).data) == 1


def test_profiles_are_listed_by_pages_oldest_first(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    d = srv.app.domain
    p = d.auth.authenticate(f"Bearer {srv.api_key}")
    sample = _wav(vk.conversation(["june"], 1, 42, min_turn=5, max_turn=7).pcm).getvalue()
    user = d.end_users.create(p, NewEndUser(name="dana"))
    made = []
    for i in range(5):
        made.append(d.voice_profiles.create_from_sample(p, user.id, io.BytesIO(sample)).id)
        if i != 2:  # two profiles share a created_at: the id breaks the tie
            clock.advance(timedelta(seconds=1))
    pages, cursor = [], None
    while True:
        page = d.voice_profiles.list(p, user.id, limit=2, cursor=cursor)
        pages.append([v.id for v in page.data])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    tied = sorted(made[2:4])
    assert [len(x) for x in pages] == [2, 2, 1]
    assert [v for page_ in pages for v in page_] == made[:2] + tied + made[4:]
    assert page.to_json()["has_more"] is False
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "garbage!"}):
        with pytest.raises(TapedeckError) as info:
            d.voice_profiles.list(p, user.id, **bad)  # type: ignore[arg-type]
        assert info.value.type == "invalid_request"


def test_a_span_must_be_valid_and_the_recording_complete(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, _ = clocked
    d = srv.app.domain
    p = d.auth.authenticate(f"Bearer {srv.api_key}")
    user = d.end_users.create(p, NewEndUser(name="carol"))
    for start, end, field in [(-1, 10, "start_ms"), (5000, 5000, "end_ms")]:
        with pytest.raises(TapedeckError) as info:
            d.voice_profiles.create_from_recording(p, user.id, "rec_nope", start, end)
        assert info.value.details["field"] == field
    with pytest.raises(TapedeckError) as info:
        d.voice_profiles.create_from_recording(p, user.id, "rec_nope", 0, 5000)
    assert info.value.type == "recording_not_found"
    with pytest.raises(TapedeckError) as info:
        d.voice_profiles.create_from_sample(p, "eu_nope", _wav(np.zeros(16000, np.float32)))
    assert info.value.type == "end_user_not_found"
    assert _count(srv) == 0
