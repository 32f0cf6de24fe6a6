"""Tapedeck (SQLite state) against the real SeaweedFS cluster of ``scripts/cluster``: it
ingests, finalizes and stitches, and a SIGKILLed volume server loses no acknowledged chunk
(every object has a second copy on another volume server)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tapedeck.background.stitch import read_object
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import TapedeckError
from tapedeck.infra.weed_cluster import WeedCluster

from serverkit import make_settings, start_server
from stitchkit import continuous_chunks, ffprobe_duration_s, project_principal

T = TypeVar("T")
RECORDINGS, SECONDS, CHUNK_MS = 3, 12.0, 2000


def retried(call: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """``call()`` until it succeeds: a request the store refused was not acknowledged, so a
    device sends it again (as the agent does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except TapedeckError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} kept failing: {exc.type}: {exc.message}") from exc
            time.sleep(0.25)


def test_ingest_and_stitch_survive_a_killed_volume_server(cluster: WeedCluster,
                                                          tmp_path: Path) -> None:
    settings = make_settings(cluster, tmp_path / "data", retention_chunks_s=-1)
    srv = start_server(settings, roles=("worker",))
    try:
        app = srv.app
        p = project_principal(app)
        chunks = [c.data for c in continuous_chunks(SECONDS, CHUNK_MS)]
        acked: dict[tuple[str, int], str] = {}  # (recording, part) -> md5 acknowledged
        recs = [app.domain.recordings.create(p, NewRecording(
            streaming=True, codec="opus", chunk_duration_ms=CHUNK_MS)).recording.id
            for _ in range(RECORDINGS)]

        def upload(rec_id: str, part: int) -> None:
            data = chunks[part - 1]
            md5 = hashlib.md5(data).hexdigest()
            retried(lambda: app.domain.chunks.upload(p, rec_id, part, [data], md5=md5),
                    f"chunk {part} of {rec_id}")
            acked[(rec_id, part)] = md5

        half = len(chunks) // 2
        for rec_id in recs:
            for part in range(1, half + 1):
                upload(rec_id, part)
        assert cluster.data_nodes() == 3
        on_victim = [f for f in cluster.nodes["volume-2"].workdir.glob(f"{settings.s3_bucket}_*.dat")
                     if f.stat().st_size > 8]  # beyond the 8-byte superblock: chunks there
        assert on_victim, "no chunk was stored on the volume server about to be killed"
        cluster.kill("volume-2")  # SIGKILL, in the middle of the recordings
        for rec_id in recs:
            for part in range(half + 1, len(chunks) + 1):
                upload(rec_id, part)
        whole = hashlib.md5(b"".join(chunks)).hexdigest()
        for rec_id in recs:
            retried(lambda r=rec_id: app.domain.recordings.finalize(  # type: ignore[misc]
                p, r, len(chunks), round(SECONDS * 1000), whole), f"finalize {rec_id}")

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            states = {app.domain.recordings.get(p, r).status for r in recs}
            if states <= {"completed", "failed"}:
                break
            time.sleep(0.2)
        assert states == {"completed"}, states

        stored: dict[tuple[str, int], list[str]] = {}
        for rec_id in recs:
            for obj in app.store.list(f"recordings/{rec_id}/chunks/"):
                part = int(obj.key.rsplit("_", 1)[1].split(".")[0])
                stored.setdefault((rec_id, part), []).append(
                    hashlib.md5(read_object(app.store, obj.key)).hexdigest())
        lost = [key for key, md5 in acked.items() if stored.get(key) != [md5]]
        assert len(acked) == RECORDINGS * len(chunks) and lost == []
        for rec_id in recs:
            (key, size, md5), = app.db.read().execute(
                "SELECT object_key, file_size_bytes, md5 FROM media WHERE recording_id = ?"
                " AND type = 'audio'", [rec_id]).fetchall()
            audio = read_object(app.store, key)
            assert len(audio) == size and hashlib.md5(audio).hexdigest() == md5
            out = tmp_path / f"{rec_id}.opus"
            out.write_bytes(audio)
            assert abs(ffprobe_duration_s(out) - SECONDS) < 0.1
        print(f"cluster: {len(acked)} chunks acknowledged, 0 lost after SIGKILL of volume-2; "
              f"{len(recs)} recordings stitched")
    finally:
        srv.close()
        cluster.restart("volume-2")
