"""The uploader's error paths against a real server (gRPC, SQLite, SeaweedFS): repairs after
chunk_mismatch and checksum_mismatch, parking on permanent errors, the refused token, and a
create whose response was lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapedeck.domain.objects import chunk_objects
from tapedeck.v1 import device_pb2, device_pb2_grpc, recording_pb2
from tapedeck_agent.client import AgentClient
from tapedeck_agent.config import AgentConfig
from tapedeck_agent.encoder import OpusChunker
from tapedeck_agent.spool import Spool
from tapedeck_agent.uploader import Uploader

from agentkit import RATE, list_chunks, stored_chunk, wait_for
from audio import speech_pcm
from serverkit import RunningServer, auth, chunk_messages


class Rig:
    """A spool with one recorded (not yet closed) recording, and an uploader for it."""

    def __init__(self, server: RunningServer, tmp_path: Path, token: str | None = None,
                 upload_via: str = "grpc") -> None:
        self.device_id = ""
        if token is None:
            self.device_id, token = server.device_token()
        self.server = server
        self.cfg = AgentConfig(server=server.grpc_target, token=token, chunk_duration_ms=1000,
                               complexity=0, spool_dir=tmp_path / "spool",
                               upload_via=upload_via)
        self.spool = Spool(self.cfg.spool_dir, self.cfg.max_spool_bytes)
        self.client = AgentClient(self.cfg.server, self.cfg.token, timeout_s=10)
        self.uploader = Uploader(self.cfg, self.spool, self.client)
        # Three chunks spooled; the recording stays "capturing" until close().
        owner, self._lock = self.spool.new_owner()
        self.local_id = self.spool.new_recording(
            source="test", name="t", sample_rate=RATE, channels=1, chunk_duration_ms=1000,
            estimated_duration_ms=None, owner=owner)
        chunker = OpusChunker(chunk_duration_ms=1000, complexity=0)
        for chunk in chunker.feed(speech_pcm(3.0)) + chunker.finish():
            self.spool.write_chunk(self.local_id, chunk.part, chunk.data, chunk.samples)

    def close(self) -> None:
        self.spool.close_recording(self.local_id)

    def drain(self, limit: int = 50) -> int:
        """Run steps until there is no work; returns how many ran."""
        for n in range(limit):
            if not self.uploader.step():
                return n
        raise AssertionError("uploader never ran out of work")

    @property
    def rec(self):  # type: ignore[no-untyped-def]
        return self.spool.recording(self.local_id)

    def shutdown(self) -> None:
        self.client.close()
        self._lock.release()
        self.spool.close()


@pytest.fixture
def rig(server: RunningServer, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(server, tmp_path)
    yield r
    r.shutdown()


def test_happy_path_uploads_then_finalizes_with_checksum(rig: Rig) -> None:
    rig.drain()
    assert rig.rec.state == "capturing" and len(list_chunks(rig.server, rig.rec.server_id)) == 3
    rig.close()
    rig.drain()
    assert rig.rec.state == "finalized" and rig.rec.server_status == "uploaded"
    assert [c.uploads for c in rig.spool.chunks(rig.local_id)] == [1, 1, 1]


def test_chunk_mismatch_on_finalize_resends_the_missing_part(rig: Rig) -> None:
    rig.drain()
    for obj in chunk_objects(rig.server.app.store, rig.rec.server_id, 2)[2]:
        rig.server.app.store.delete(obj.key)  # the server lost part 2
    rig.close()
    rig.drain()
    assert rig.rec.state == "finalized"
    assert [c.uploads for c in rig.spool.chunks(rig.local_id)] == [1, 2, 1]


def test_checksum_mismatch_on_finalize_replaces_the_differing_part(rig: Rig) -> None:
    rig.drain()
    server_id = rig.rec.server_id
    good = stored_chunk(rig.server, server_id, 2)
    # Different bytes for part 2 arrive (e.g. a buggy second uploader); S3 semantics replace.
    rig.server.chunks().UploadChunk(chunk_messages(server_id, 2, b"not the audio"),
                                    metadata=tuple(auth(rig.server.api_key)))
    rig.close()
    rig.drain()
    assert rig.rec.state == "finalized"
    assert stored_chunk(rig.server, server_id, 2) == good
    assert [c.uploads for c in rig.spool.chunks(rig.local_id)] == [1, 2, 1]


def test_recording_not_found_parks_and_retry_recreate_recovers(rig: Rig) -> None:
    rig.uploader.step()  # create
    first = rig.rec.server_id
    rig.server.recordings().DeleteRecording(recording_pb2.DeleteRecordingRequest(id=first),
                                            metadata=tuple(auth(rig.server.api_key)))
    rig.drain()
    assert rig.rec.state == "parked" and "recording_not_found" in str(rig.rec.parked_reason)
    rig.close()
    assert rig.rec.state == "parked"  # files kept, nothing retried
    assert rig.uploader.step() is False
    rig.spool.unpark(rig.local_id, recreate=True)  # `tapedeck-agent retry --recreate`
    rig.drain()
    assert rig.rec.state == "finalized" and rig.rec.server_id != first


def test_refused_token_blocks_uploads_but_keeps_everything(server: RunningServer,
                                                          tmp_path: Path) -> None:
    _, token = server.device_token()
    bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    r = Rig(server, tmp_path, token=bad)
    try:
        r.close()
        assert r.uploader.step() is True  # the create attempt
        assert r.uploader.blocked is not None and "unauthorized" in r.uploader.blocked
        assert r.uploader.step() is False
        assert r.rec.state == "closed" and r.rec.server_id is None
        assert "blocked" in r.spool.states()["uploader"][0]
    finally:
        r.shutdown()


def test_lost_create_response_does_not_duplicate_the_recording(rig: Rig) -> None:
    # The crash window: the create reached the server, the agent died before saving the id.
    rig.spool.mark_create_attempted(rig.local_id)
    rec = rig.rec
    remote = rig.client.create_recording(
        key=rec.create_key, name=rec.name, started_at=rec.started_at,
        chunk_duration_ms=rec.chunk_duration_ms, estimated_duration_ms=None)
    rig.close()
    rig.drain()
    assert rig.rec.state == "finalized" and rig.rec.server_id == remote.id
    count = rig.server.app.db.read().execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
    assert count == 1


def test_run_sends_heartbeats_with_the_spool_state(rig: Rig) -> None:
    stub = device_pb2_grpc.DeviceServiceStub(rig.server.channel())

    def device() -> device_pb2.Device:
        return stub.GetDevice(device_pb2.GetDeviceRequest(id=rig.device_id),
                              metadata=tuple(auth(rig.server.api_key))).device

    thread = threading.Thread(target=rig.uploader.run)
    thread.start()
    try:
        dev = wait_for(lambda: (d := device()).HasField("last_heartbeat_time") and d, 30,
                       "a heartbeat")
    finally:
        rig.uploader.stop()
        thread.join(timeout=30)
    assert dev.pending_recordings == 1 and dev.storage_total_mb == 2048
    assert dev.device_state in (device_pb2.DEVICE_STATE_RECORDING,
                                device_pb2.DEVICE_STATE_UPLOADING)


def _requests(server: RunningServer, transport: str, method_part: str) -> float:
    """Requests the server counted (its Prometheus registry) for matching methods."""
    total = 0.0
    for metric in server.app.metrics.registry.collect():
        for sample in metric.samples:
            labels = sample.labels
            if sample.name == "tapedeck_requests_total" and labels.get("transport") == \
                    transport and method_part in labels.get("method", ""):
                total += sample.value
    return total


def test_rest_upload_via_the_chunk_url_template(server: RunningServer, tmp_path: Path) -> None:
    r = Rig(server, tmp_path, upload_via="rest")
    try:
        r.close()
        r.drain()
        assert r.rec.state == "finalized" and r.rec.chunk_url_template
        assert [c.uploads for c in r.spool.chunks(r.local_id)] == [1, 1, 1]
        assert _requests(server, "http", "PUT /v1/recordings/{recording_id}/chunks/") == 3
        assert _requests(server, "grpc", "UploadChunk") == 0
    finally:
        r.shutdown()
