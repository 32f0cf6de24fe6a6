"""Recording lifecycle rules on the in-process domain (MemoryStore + ManualClock): create
checks, finalize (chunk set, checksum, idempotent repeat, conflict), delete, expiry."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tapedeck.domain.expiry import Expiry
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import TapedeckError

from domainkit import World


def _fails(call: object, type_: str, match: str | None = None) -> TapedeckError:
    assert callable(call)
    with pytest.raises(TapedeckError, match=match) as info:
        call()
    assert info.value.type == type_
    return info.value


@pytest.mark.parametrize(("fields", "field", "match"), [
    ({"codec": "aiff"}, "codec", "codec must be one of"),
    ({"streaming": True, "codec": "wav"}, "codec", "must use the opus codec"),
    ({"chunk_duration_ms": 999}, "chunk_duration_ms", "at least 1000"),
    ({"estimated_duration_ms": -1}, "estimated_duration_ms", "between 0 and"),
    ({"name": "x" * 501}, "name", "at most 500"),
    ({"metadata": {"k" * 41: "v"}}, "metadata", "50 keys"),
    ({"started_at": datetime(2026, 1, 2, tzinfo=UTC),
      "ended_at": datetime(2026, 1, 1, tzinfo=UTC)}, "ended_at", "before started_at"),
    ({"started_at": datetime(1969, 12, 31, tzinfo=UTC)}, "started_at", "between 1970"),
])
def test_create_refuses_bad_fields_and_stores_nothing(
        domain_world: World, fields: dict[str, object], field: str, match: str) -> None:
    p = domain_world.principal()
    err = _fails(lambda: domain_world.domain.recordings.create(p, NewRecording(**fields)),
                 "invalid_request", match)
    assert err.details["field"] == field
    assert domain_world.domain.recordings.list(p).data == []


def test_streaming_create_sets_expiry_and_upload_template(domain_world: World) -> None:
    w = domain_world
    created = w.domain.recordings.create(
        w.principal(), NewRecording(streaming=True, estimated_duration_ms=10_000))
    rec = created.recording
    assert (rec.status, rec.streaming, rec.max_chunks) == ("streaming", True,
                                                          w.settings.max_chunks)
    assert rec.expires_at == w.clock.now() + timedelta(seconds=w.settings.streaming_ttl_s)
    assert created.chunk_upload_url_template is not None
    assert f"/v1/recordings/{rec.id}/chunks/{{part}}?token=up_" in created.chunk_upload_url_template
    assert w.event_types(rec.id) == ["recording.created"]


def test_finalize_happy_path_queues_stitch_and_transcription(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    checksum = w.put_chunks(p, rec.id, b"one", b"two", b"three")
    done = w.domain.recordings.finalize(p, rec.id, 3, 9_000, checksum.upper())
    assert (done.status, done.transcription_status, done.chunks_received) == (
        "uploaded", "queued", 3)
    assert done.stitching_job_id
    job = w.db.read().execute("SELECT kind, status FROM jobs WHERE id = ?",
                              [done.stitching_job_id]).fetchone()
    assert tuple(job) == ("stitch", "queued")
    got = w.domain.recordings.get(p, rec.id)
    assert (got.duration_ms, got.finalized_by) == (9_000, "device")
    assert w.event_types(rec.id) == ["recording.created", "recording.uploaded",
                                     "transcription.queued"]


def test_finalize_repeat_is_idempotent_and_a_different_body_conflicts(
        domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    checksum = w.put_chunks(p, rec.id, b"a", b"b")
    first = w.domain.recordings.finalize(p, rec.id, 2, 2_000, checksum)
    again = w.domain.recordings.finalize(p, rec.id, 2, 2_000, checksum)
    assert again == first
    err = _fails(lambda: w.domain.recordings.finalize(p, rec.id, 2, 3_000, checksum),
                 "finalize_conflict", "already finalized with a different body")
    assert err.details["finalized_with"]["final_duration_ms"] == 2_000
    assert w.event_types(rec.id).count("recording.uploaded") == 1


def test_finalize_names_missing_and_unexpected_parts(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    for part in (1, 3, 5):
        w.domain.chunks.upload(p, rec.id, part, [b"part %d" % part])
    err = _fails(lambda: w.domain.recordings.finalize(p, rec.id, 4, 1_000, None),
                 "chunk_mismatch", "expected parts 1..4, 2 missing, 1 unexpected")
    assert (err.details["missing_chunks"], err.details["unexpected_chunks"]) == ([2, 4], [5])
    assert w.domain.recordings.get(p, rec.id).status == "streaming"  # nothing changed


def test_finalize_checksum_is_over_chunks_in_part_order(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    w.put_chunks(p, rec.id, b"first", b"second")
    wrong_order = hashlib.md5(b"second" + b"first").hexdigest()
    err = _fails(lambda: w.domain.recordings.finalize(p, rec.id, 2, 1_000, wrong_order),
                 "checksum_mismatch", "MD5 of the chunks in part order")
    assert err.details["actual"] == hashlib.md5(b"firstsecond").hexdigest()
    _fails(lambda: w.domain.recordings.finalize(p, rec.id, 2, 1_000, "xyz"),
           "invalid_request", "32 hexadecimal")
    assert w.domain.recordings.get(p, rec.id).status == "streaming"


def test_finalize_refuses_oversize_parts(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    w.put_chunks(p, rec.id, b"x" * 64)
    w.domain.ctx.settings = w.settings.replace(max_chunk_bytes=32)  # the limit was lowered
    err = _fails(lambda: w.domain.recordings.finalize(p, rec.id, 1, 1_000, None),
                 "chunk_too_large", "exceed max_chunk_bytes")
    assert err.details["oversize_chunks"] == [1]


def test_delete_removes_every_object_and_emits(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    other = w.streaming(p)
    w.put_chunks(p, rec.id, b"a", b"b")
    w.put_chunks(p, other.id, b"c")
    w.domain.recordings.delete(p, rec.id)
    keys = [o.key for o in w.store.list("recordings/")]
    assert keys and all(rec.id not in k and other.id in k for k in keys)
    _fails(lambda: w.domain.recordings.get(p, rec.id), "recording_not_found")
    assert "recording.deleted" in w.event_types(rec.id)


def test_device_cannot_delete(domain_world: World) -> None:
    w = domain_world
    _, dev = w.device()
    rec = w.streaming(dev)
    _fails(lambda: w.domain.recordings.delete(dev, rec.id), "forbidden", "Device tokens")
    assert w.domain.recordings.get(dev, rec.id).id == rec.id


def test_expiry_by_the_manual_clock(domain_world: World) -> None:
    """Due exactly at ``expires_at``: chunks after it are refused as expired; the sweep
    finalizes the contiguous prefix once."""
    w = domain_world
    p = w.principal()
    rec = w.streaming(p, chunk_duration_ms=5_000)
    w.put_chunks(p, rec.id, b"one", b"two")
    w.clock.advance(timedelta(seconds=w.settings.streaming_ttl_s) - timedelta(milliseconds=1))
    assert Expiry(w.domain.ctx).sweep() == {}
    w.domain.chunks.upload(p, rec.id, 3, [b"three"])  # still in time
    w.clock.advance(timedelta(milliseconds=1))
    _fails(lambda: w.domain.chunks.upload(p, rec.id, 4, [b"late"]), "recording_expired",
           "expired before it was finalized")
    assert Expiry(w.domain.ctx).sweep() == {rec.id: "finalized"}
    assert Expiry(w.domain.ctx).sweep() == {}
    got = w.domain.recordings.get(p, rec.id)
    assert (got.status, got.finalized_by, got.chunks_received) == ("uploaded", "expiry", 3)
    _fails(lambda: w.domain.recordings.finalize(p, rec.id, 3, 1, None), "finalize_conflict")
