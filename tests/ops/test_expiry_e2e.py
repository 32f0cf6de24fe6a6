"""A device that dies mid-recording (issue 9): chunks 1-4 and 6 of a streaming recording
arrive, it is never finalized, it passes ``expires_at``. The sweeper (a real background loop)
auto-finalizes it from parts 1-4 with ``gaps`` naming part 5 onward, the real stitch worker
makes a playable file (opusinfo, ffmpeg), the dispatcher delivers ``recording.expired`` to a
real receiver, a late chunk is refused with a typed error, and retention then deletes the
stitched parts at once and the left-out part 6 only after ``retention_expired_s``.

Time is a ``ManualClock`` shared by every role, so nothing races the expiry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.background.stitch import audio_key
from tapedeck.clock import ManualClock
from tapedeck.domain.objects import CHUNK_KEY_RE, chunk_prefix
from tapedeck.grpc_api._errors import from_rpc_error
from tapedeck.oggopus.opus import GRANULE_RATE
from tapedeck_agent.encoder import EncodedChunk

from opskit import Receiver, assert_error, create_streaming, md5_b64, put_chunk, wait_until
from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server
from stitchkit import continuous_chunks, ffmpeg_samples, opusinfo

ROLES = ("grpc", "http", "worker", "dispatcher", "sweeper")


@pytest.fixture
def clocked(weed: Any, tmp_path: Path) -> Iterator[tuple[RunningServer, ManualClock]]:
    clock = ManualClock(datetime.now(UTC))  # the store checks presigned URLs in real time
    settings = make_settings(weed, tmp_path / "d", job_kinds="stitch", sweep_interval_ms=100,
                             job_poll_ms=50)
    srv = start_server(settings, roles=ROLES, clock=clock)
    try:
        yield srv, clock
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def _row(srv: RunningServer, rec_id: str) -> dict[str, Any]:
    cur = srv.app.db.read().execute("SELECT * FROM recordings WHERE id = ?", [rec_id])
    return dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))


def _stored(srv: RunningServer, rec_id: str) -> list[str]:
    return [f"chunk_{m.group(2)}.opus" for o in srv.app.store.list(chunk_prefix(rec_id))
            if (m := CHUNK_KEY_RE.match(o.key))]


def _late_chunk_refused(srv: RunningServer, rest: httpx.Client, template: str, rec_id: str,
                        token: str, data: bytes) -> None:
    """Part 5 arrives after expiry: the URL's upload token expired with the recording (401);
    the device token is authorized but the recording is expired (typed error, both wires)."""
    assert_error(put_chunk(template, 5, data), "unauthorized")
    resp = rest.put(f"/v1/recordings/{rec_id}/chunks/5", content=data,
                    headers={"Content-MD5": md5_b64(data)})
    assert_error(resp, "recording_expired")
    with pytest.raises(grpc.RpcError) as info:
        srv.chunks().UploadChunk(chunk_messages(rec_id, 5, data), metadata=auth(token))
    assert from_rpc_error(info.value).type == "recording_expired"
    assert "chunk_5.opus" not in _stored(srv, rec_id)


def _check_audio(srv: RunningServer, rest: httpx.Client, rec_id: str,
                 chunks: list[EncodedChunk], tmp: Path) -> None:
    """The stitched file is parts 1-4 exactly: opusinfo clean, every sample there."""
    url = rest.post(f"/v1/recordings/{rec_id}/download-url").json()["download_url"]
    path = tmp / "expired.opus"
    path.write_bytes(httpx.get(url, timeout=60.0).content)
    report = opusinfo(path)
    assert "WARNING" not in report and "ERROR" not in report, report
    samples = chunks[3].end_sample - chunks[0].start_sample
    assert ffmpeg_samples(path) == samples
    got = rest.get(f"/v1/recordings/{rec_id}").json()
    assert got["duration_ms"] == round(samples * 1000 / GRANULE_RATE)


def test_expired_recording_is_finalized_from_its_contiguous_chunks(
        clocked: tuple[RunningServer, ManualClock], tmp_path: Path) -> None:
    srv, clock = clocked
    receiver = Receiver()
    try:
        principal = srv.app.domain.auth.authenticate(f"Bearer {srv.api_key}")
        srv.app.domain.webhooks.create(principal, receiver.url, ["*"])
        _, token = srv.device_token()
        rest = httpx.Client(base_url=srv.http_url, timeout=60.0,
                            headers={"Authorization": f"Bearer {token}"})
        chunks = continuous_chunks(6.0, 1000)
        rec = create_streaming(rest, chunk_duration_ms=1000)
        orphan = create_streaming(rest, chunk_duration_ms=1000)  # only part 2 ever arrives
        for part in (1, 2, 3, 4, 6):
            assert put_chunk(rec["chunk_upload_url_template"], part,
                             chunks[part - 1].data).status_code == 201
        assert put_chunk(orphan["chunk_upload_url_template"], 2, chunks[1].data).status_code \
            == 201
        clock.advance(timedelta(seconds=srv.app.settings.streaming_ttl_s, milliseconds=1))

        wait_until(lambda: _row(srv, rec["id"])["status"] == "completed", what="stitch")
        got = rest.get(f"/v1/recordings/{rec['id']}").json()
        assert (got["finalized_by"], got["chunks_received"]) == ("expiry", 4)
        assert got["gaps"] == [{"first_part": 5, "last_part": None, "start_ms": 4000,
                                "end_ms": None, "missing_parts": [5], "discarded_parts": [6]}]
        _check_audio(srv, rest, rec["id"], chunks, tmp_path)
        wait_until(lambda: len(receiver.about(rec["id"])) >= 3, what="webhooks")
        assert receiver.about(rec["id"]) == ["recording.created", "recording.expired",
                                             "transcription.queued"]
        expired_event = next(e for e in receiver.events if e["type"] == "recording.expired"
                             and e["data"]["id"] == rec["id"])
        assert expired_event["data"]["gaps"] == got["gaps"]
        _late_chunk_refused(srv, rest, rec["chunk_upload_url_template"], rec["id"], token,
                            chunks[4].data)

        # The recording with no part 1 just expires (nothing to stitch), with its event.
        assert _row(srv, orphan["id"])["status"] == "expired"
        wait_until(lambda: "recording.expired" in receiver.about(orphan["id"]), what="event")

        # Retention: stitched parts go at once; part 6 and the orphan's part 2 are kept.
        wait_until(lambda: _row(srv, rec["id"])["chunks_retention"] == "stitched",
                   what="retention of the stitched parts")
        assert _stored(srv, rec["id"]) == ["chunk_6.opus"]
        assert _stored(srv, orphan["id"]) == ["chunk_2.opus"]
        clock.advance(timedelta(seconds=srv.app.settings.retention_expired_s, milliseconds=1))
        for rec_id in (str(rec["id"]), str(orphan["id"])):
            wait_until(lambda: _row(srv, rec_id)["chunks_retention"] == "purged",  # noqa: B023
                       what="retention of the left-out parts")
            assert _stored(srv, rec_id) == []
        audio = srv.app.store.stat(audio_key(rec["id"]))
        assert audio is not None and audio.size == got["file_size_bytes"]
        _sweeper_request_id_followed(srv, rec["id"])
    finally:
        receiver.close()


def _sweeper_request_id_followed(srv: RunningServer, rec_id: str) -> None:
    """The sweep that expired the recording gave it a request id; its stitch job and the
    events it caused carry it."""
    db = srv.app.db.read()
    (job_rid,) = db.execute("SELECT request_id FROM jobs WHERE recording_id = ? AND"
                            " kind = 'stitch'", [rec_id]).fetchone()
    event_rids = dict(db.execute("SELECT type, request_id FROM events WHERE recording_id = ?",
                                 [rec_id]).fetchall())
    assert job_rid.startswith("req_")
    assert event_rids["recording.expired"] == event_rids["transcription.queued"] == job_rid
    assert event_rids["recording.created"] != job_rid

