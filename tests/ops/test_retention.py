"""Chunk retention with real stitching: chunk objects go only once the stitched file that
replaces them is complete and verified, the stitched object stays intact, the policy's
delays hold, a tampered stitched file blocks deletion, failed recordings keep their chunks
for ``retention_failed_s``, and a worker killed between stitch and cleanup (or in the middle
of the cleanup) loses nothing: a later worker completes the cleanup."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tapedeck.background.stitch import audio_key, read_object
from tapedeck.background.worker import Worker, load_handlers, queue_for
from tapedeck.clock import ManualClock
from tapedeck.domain.objects import CHUNK_KEY_RE, chunk_prefix, recording_prefix
from tapedeck.domain.retention import Retention, RetentionPolicy
from tapedeck.settings import Settings

from opskit import spawn, stop_all, wait_until
from serverkit import drop_bucket, make_settings
from stitchkit import (
    Project,
    continuous_chunks,
    duration_ms,
    open_project,
    opusinfo,
    recording_row,
    streaming_recording,
)

SECONDS = 3.0


@pytest.fixture
def make_project(weed: Any, tmp_path: Path) -> Iterator[Any]:
    """Opens projects (apps without roles) on fresh buckets; closes them afterwards."""
    opened: list[Project] = []

    def make(clock: ManualClock | None = None, **overrides: Any) -> Project:
        settings = make_settings(weed, tmp_path / f"d{len(opened)}", job_kinds="stitch",
                                 **overrides)
        project = open_project(settings, clock)
        opened.append(project)
        return project

    yield make
    for project in opened:
        project.app.close(grace=1.0)
        drop_bucket(weed, project.app.settings.s3_bucket)


def _chunks() -> list[bytes]:
    return [c.data for c in continuous_chunks(SECONDS, 1000)]


def _record(project: Project, chunks: list[bytes] | None = None) -> str:
    return str(streaming_recording(project, chunks or _chunks(), duration_ms(SECONDS)))


def _stitch(project: Project) -> str | None:
    runtime = project.app.runtime
    worker = Worker(queue_for(runtime), load_handlers(runtime, kinds=["stitch"]), "t")
    try:
        return worker.run_once()
    finally:
        worker.close()


def _retention(project: Project) -> Retention:
    return Retention(project.app.domain.ctx,
                     RetentionPolicy.from_settings(project.app.settings))


def unversioned(key: str) -> str:
    """``chunk_{part}.opus`` for any object of the part (its upload version dropped)."""
    m = CHUNK_KEY_RE.match(key)
    assert m, key
    return f"chunk_{m.group(2)}.opus"


def _parts(project: Project, rec_id: str) -> list[str]:
    return [unversioned(o.key) for o in project.app.store.list(chunk_prefix(rec_id))]


def _audio_intact(project: Project, rec_id: str, tmp: Path) -> None:
    """The stitched object has the MD5 and size recorded when it was verified, and plays."""
    size, md5 = project.app.db.read().execute(
        "SELECT file_size_bytes, md5 FROM media WHERE recording_id = ? AND status = 'ready'",
        [rec_id]).fetchone()
    data = read_object(project.app.store, audio_key(rec_id))
    assert (len(data), hashlib.md5(data).hexdigest()) == (size, md5)
    path = tmp / f"{rec_id}.opus"
    path.write_bytes(data)
    assert "WARNING" not in opusinfo(path)


def test_default_retention_deletes_chunks_once_the_stitch_is_verified(
        make_project: Any, tmp_path: Path) -> None:
    project = make_project()
    retention = _retention(project)
    rec_id = _record(project)
    assert retention.sweep() == {}  # finalized, not stitched: nothing may go
    assert _parts(project, rec_id) == ["chunk_1.opus", "chunk_2.opus", "chunk_3.opus"]
    assert _stitch(project) == "succeeded"
    assert retention.sweep() == {rec_id: "purged"}
    assert _parts(project, rec_id) == []
    _audio_intact(project, rec_id, tmp_path)
    assert recording_row(project, rec_id)["chunks_retention"] == "purged"
    assert project.app.domain.recordings.get(project.principal, rec_id).chunks_received == 3
    assert retention.sweep() == {}  # done once
    # Deleting the recording removes every object it owns, stitched audio included.
    project.app.domain.recordings.delete(project.principal, rec_id)
    assert list(project.app.store.list(recording_prefix(rec_id))) == []


def test_sweep_aborts_uploads_a_dead_worker_left_unfinished(make_project: Any) -> None:
    project = make_project()
    rec_id = _record(project)
    assert _stitch(project) == "succeeded"
    # What a worker killed mid-stitch leaves: a multipart upload of the audio, never completed.
    store = project.app.store.inner
    upload_id = store._client._create_multipart_upload(store.bucket, audio_key(rec_id), {})
    store._client._upload_part(store.bucket, audio_key(rec_id), b"x" * 1024, {}, upload_id, 1)
    assert _retention(project).sweep() == {rec_id: "purged"}
    assert project.app.store.abort_incomplete_uploads(recording_prefix(rec_id)) == 0
    assert read_object(project.app.store, audio_key(rec_id))  # the finished audio stays


def test_retention_delays_and_keep_forever(make_project: Any) -> None:
    clock = ManualClock()
    hour = make_project(clock, retention_chunks_s=3600)
    forever = make_project(clock, retention_chunks_s=-1)
    rec_hour, rec_forever = _record(hour), _record(forever)
    assert _stitch(hour) == _stitch(forever) == "succeeded"
    clock.advance(timedelta(seconds=3599))
    assert _retention(hour).sweep() == {} and _retention(forever).sweep() == {}
    clock.advance(timedelta(seconds=2))
    assert _retention(hour).sweep() == {rec_hour: "purged"}
    clock.advance(timedelta(days=3650))
    assert _retention(forever).sweep() == {}
    assert len(_parts(forever, rec_forever)) == 3


def test_a_changed_stitched_file_blocks_deletion(make_project: Any) -> None:
    project = make_project()
    rec_id = _record(project)
    assert _stitch(project) == "succeeded"
    tampered = b"not the verified audio"
    project.app.store.put(audio_key(rec_id), io.BytesIO(tampered), len(tampered))
    retention = _retention(project)
    assert retention.sweep() == {rec_id: "blocked"}
    assert len(_parts(project, rec_id)) == 3
    assert retention.sweep() == {}  # an operator must look: not retried every sweep


def test_failed_recordings_keep_their_chunks_for_retention_failed_s(make_project: Any) -> None:
    clock = ManualClock()
    project = make_project(clock)
    rec_id = _record(project, [b"not ogg opus %d" % i for i in range(3)])
    assert _stitch(project) == "failed"
    assert recording_row(project, rec_id)["status"] == "failed"
    retention = _retention(project)
    clock.advance(timedelta(seconds=project.app.settings.retention_failed_s - 1))
    assert retention.sweep() == {}
    clock.advance(timedelta(seconds=2))
    assert retention.sweep() == {rec_id: "purged"}
    assert _parts(project, rec_id) == []


@pytest.mark.parametrize("failpoint", ["retention.cleanup", "retention.deleting"])
def test_crash_between_stitch_and_cleanup_loses_nothing(
        make_project: Any, tmp_path: Path, failpoint: str) -> None:
    """A real ``tapedeck worker`` stitches, then is killed -9 just before its sweeper deletes
    the chunks (or after the first deletion); a second worker completes the cleanup."""
    project = make_project()
    rec_id = _record(project)
    base: Settings = project.app.settings.replace(sweep_interval_ms=100, job_poll_ms=50,
                                                  log_format="json")
    children = [spawn(base.replace(test_only_failpoints=failpoint), "worker", tmp_path, "crashing")]
    try:
        hit = children[0].wait_failpoint(failpoint)
        assert hit["recording_id"] == rec_id
        children[0].kill()
        row = recording_row(project, rec_id)
        assert (row["status"], row["chunks_retention"]) == ("completed", None)
        _audio_intact(project, rec_id, tmp_path)
        left = _parts(project, rec_id)
        assert len(left) == (3 if failpoint == "retention.cleanup" else 2)
        children.append(spawn(base, "worker", tmp_path, "second"))
        wait_until(lambda: recording_row(project, rec_id)["chunks_retention"] == "purged",
                   what="cleanup by the second worker")
        assert _parts(project, rec_id) == []
        _audio_intact(project, rec_id, tmp_path)
        assert children[1].terminate() == 0
    finally:
        stop_all(children)
