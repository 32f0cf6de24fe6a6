"""Issue 15: SIGKILL of the server while presigned uploads race a finalize. The finalized
recording still completes, with exactly the audio finalize accepted (the objects it pinned),
whatever the racing PUTs did before, during or after it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tapedeck.auth import create_project, issue_device_token
from tapedeck.background.stitch import audio_key
from tapedeck.clock import SystemClock
from tapedeck.infra.db import open_database
from tapedeck.infra.store.s3 import S3Store
from tapedeck.oggopus import remux
from tapedeck.v1 import chunk_pb2, chunk_pb2_grpc, recording_pb2, recording_pb2_grpc

from serverkit import auth, drop_bucket, make_settings, spawn_server
from stitchkit import continuous_chunks


def http_put(url: str, data: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return -1


class Racer(threading.Thread):
    """PUTs other audio to every URL it is given, again and again, until stopped; records
    the status of each PUT by URL."""

    def __init__(self, urls: list[tuple[str, dict[str, str], bytes]]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stop = threading.Event()
        self.statuses: dict[str, list[int]] = {u: [] for u, _, _ in urls}

    def run(self) -> None:
        while not self.stop.is_set():
            for url, headers, data in self.urls:
                self.statuses[url].append(http_put(url, data, headers))


def stitched_md5(datas: list[bytes]) -> str:
    out = io.BytesIO()
    remux([io.BytesIO(d) for d in datas], out)
    return hashlib.md5(out.getvalue()).hexdigest()


@pytest.mark.parametrize("kill_when", ["after_finalize_returned", "while_finalizing"])
def test_kill_while_presigned_puts_race_finalize(weed: Any, tmp_path: Path,
                                                 kill_when: str) -> None:
    # chunks kept after stitching, so the test can check the pinned objects afterwards
    settings = make_settings(weed, tmp_path / "data", retention_chunks_s=3600)
    db = open_database(settings.database_target)
    project_id, _ = create_project(db, SystemClock())
    _, token = issue_device_token(db, SystemClock(), project_id)
    db.close()
    originals = [c.data for c in continuous_chunks(3.0, 1_000)]
    others = [c.data for c in continuous_chunks(3.0, 1_000, start=7)]
    by_md5 = {hashlib.md5(d).hexdigest(): d for d in originals + others}
    child = spawn_server(settings, "api")
    racer: Racer | None = None
    try:
        channel = grpc.insecure_channel(child.grpc_target)
        recs = recording_pb2_grpc.RecordingServiceStub(channel)
        chunks = chunk_pb2_grpc.ChunkServiceStub(channel)
        rec_id = recs.CreateRecording(recording_pb2.CreateRecordingRequest(streaming=True),
                                      metadata=auth(token)).recording.id

        def url(part: int) -> chunk_pb2.CreateChunkUploadUrlResponse:
            return chunks.CreateChunkUploadUrl(chunk_pb2.CreateChunkUploadUrlRequest(
                recording_id=rec_id, part=part), metadata=auth(token))

        used = []
        for part, data in enumerate(originals, start=1):
            u = url(part)
            assert http_put(u.upload_url, data, dict(u.headers)) == 200
            used.append(u)
        fresh = [url(part) for part in range(1, 4)]  # handed out before finalize, unused
        racer = Racer([(u.upload_url, dict(u.headers), others[i % 3])
                       for i, u in enumerate(used + fresh)])
        racer.start()
        body = recording_pb2.FinalizeRecordingRequest(id=rec_id, total_chunks=3,
                                                      final_duration_ms=3_000)
        with ThreadPoolExecutor(1) as pool:
            pending: Future[Any] = pool.submit(recs.FinalizeRecording, body,
                                               metadata=auth(token), timeout=30)
            if kill_when == "after_finalize_returned":
                assert pending.result().chunks_received == 3
            else:
                time.sleep(0.002)
            child.kill()
            with contextlib.suppress(grpc.RpcError):  # killed before it answered: the
                pending.result()                       # device finalizes again below
        channel.close()
        time.sleep(0.3)  # racing PUTs go on against the store while the server is down

        child = spawn_server(settings.replace(grpc_port=0, http_port=0), "serve")
        channel = grpc.insecure_channel(child.grpc_target)
        recs = recording_pb2_grpc.RecordingServiceStub(channel)
        fin = recs.FinalizeRecording(body, metadata=auth(token), timeout=30)  # idempotent
        assert fin.chunks_received == 3
        deadline = time.monotonic() + 120
        while True:
            rec = recs.GetRecording(recording_pb2.GetRecordingRequest(id=rec_id),
                                    metadata=auth(token)).recording
            if rec.status in (recording_pb2.RECORDING_STATUS_COMPLETED,
                              recording_pb2.RECORDING_STATUS_FAILED):
                break
            assert time.monotonic() < deadline, "the recording never finished"
            time.sleep(0.1)
        racer.stop.set()
        racer.join(timeout=30)
        assert rec.status == recording_pb2.RECORDING_STATUS_COMPLETED, rec
        # What finalize accepted: the pinned snapshot. The stitched audio is exactly it.
        db = open_database(settings.database_target)
        snapshot = db.read().execute(
            "SELECT part, md5, object_key FROM chunks WHERE recording_id = ? ORDER BY part",
            [rec_id]).fetchall()
        db.close()
        accepted = [by_md5[md5] for _, md5, _ in snapshot]
        store = S3Store(weed.endpoint, weed.access_key, weed.secret_key, settings.s3_bucket,
                        secure=False, region="us-east-1")
        for _, md5, key in snapshot:  # the pinned objects were never overwritten
            info = store.stat(key)
            assert info is not None and info.etag == md5
        audio = store.open(audio_key(rec_id)).read()
        assert hashlib.md5(audio).hexdigest() == stitched_md5(accepted)
        # No PUT to a URL that had been used ever succeeded again (create-only URLs).
        for u in used:
            assert 200 not in racer.statuses[u.upload_url], racer.statuses[u.upload_url][:5]
            assert racer.statuses[u.upload_url], "the racer never ran"
        store.close()
        channel.close()
    finally:
        if racer is not None:
            racer.stop.set()
        child.kill()
        drop_bucket(weed, settings.s3_bucket)
