"""The agent's health report (backlog from a real spool, battery from a power-supply class
directory laid out like the kernel's) and pushed settings applied per recording."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tapedeck.v1 import device_pb2, device_pb2_grpc
from tapedeck_agent import health
from tapedeck_agent.cli import main
from tapedeck_agent.client import AgentClient
from tapedeck_agent.config import AgentConfig
from tapedeck_agent.encoder import OpusChunker
from tapedeck_agent.spool import Spool
from tapedeck_agent.uploader import Uploader

from agentkit import wait_for
from audio import speech_pcm
from serverkit import RunningServer, auth

RATE = 16_000


def spooled(tmp_path: Path, seconds: float = 3.0) -> tuple[Spool, str, list[int]]:
    """A spool with one closed 3-chunk recording; returns it, the local id, chunk sizes."""
    spool = Spool(tmp_path / "spool", 1 << 30)
    owner, lock = spool.new_owner()
    local_id = spool.new_recording(source="test", name="t", sample_rate=RATE, channels=1,
                                   chunk_duration_ms=1000, estimated_duration_ms=None,
                                   owner=owner)
    chunker = OpusChunker(chunk_duration_ms=1000, complexity=0, dtx=True)
    sizes = []
    for part, c in enumerate(chunker.feed(speech_pcm(seconds)) + chunker.finish(), start=1):
        sizes.append(spool.write_chunk(local_id, part, c.data, c.samples).size)
    spool.close_recording(local_id)
    lock.release()
    return spool, local_id, sizes


def test_backlog_counts_unacknowledged_audio_and_its_age(tmp_path: Path) -> None:
    spool, local_id, sizes = spooled(tmp_path)
    started = health._parse(spool.recording(local_id).started_at)
    # Nothing uploaded: the oldest waiting audio is chunk 1, spooled 1 s after the start.
    at = started + timedelta(seconds=61)
    assert health.spool_backlog(spool, at) == health.Backlog(1, 3, sum(sizes), 60)
    spool.set_uploaded(local_id, 1, True)
    assert health.spool_backlog(spool, at) == health.Backlog(1, 2, sum(sizes[1:]), 59)
    spool.set_uploaded(local_id, 2, True)
    spool.set_uploaded(local_id, 3, True)
    # All chunks up but not finalized: it waits since its end (3 s after the start).
    assert health.spool_backlog(spool, at) == health.Backlog(1, 0, 0, 58)
    spool.mark_finalized(local_id, "uploaded")
    assert health.spool_backlog(spool, at) == health.Backlog(0, 0, 0, None)
    assert health.Backlog(0, 0, 0, None).heartbeat_fields()["backlog_oldest_age_s"] == 0


def test_parked_audio_is_backlog_too(tmp_path: Path) -> None:
    spool, local_id, sizes = spooled(tmp_path)
    spool.park(local_id, "recording_expired: too late")
    backlog = health.spool_backlog(spool)
    assert (backlog.recordings, backlog.chunks, backlog.bytes) == (1, 3, sum(sizes))


def test_battery_from_the_power_supply_class(tmp_path: Path) -> None:
    root = tmp_path / "power_supply"
    assert health.battery_percent(root) is None  # no such directory: not reported
    (root / "AC").mkdir(parents=True)
    (root / "AC" / "type").write_text("Mains\n")
    assert health.battery_percent(root) is None
    (root / "BAT0").mkdir()
    (root / "BAT0" / "type").write_text("Battery\n")
    (root / "BAT0" / "capacity").write_text("57\n")
    assert health.battery_percent(root) == 57
    (root / "BAT0" / "capacity").write_text("garbage\n")
    assert health.battery_percent(root) is None


def test_pushed_settings_apply_to_the_next_recording_only_when_allowed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 30)
    cfg = AgentConfig(spool_dir=tmp_path / "spool")
    assert health.config_for_next_recording(cfg, spool) == (cfg, 0)
    pushed = health.PushedSettings(4, chunk_duration_ms=2000, bitrate=16_000, dtx=False,
                                   heartbeat_interval_s=15)
    assert health.store_pushed(spool, pushed) and not health.store_pushed(spool, pushed)
    applied, version = health.config_for_next_recording(cfg, spool)
    assert version == 4 and health.running_version(spool) == 4
    assert (applied.chunk_duration_ms, applied.bitrate, applied.dtx) == (2000, 16_000, False)
    assert applied.heartbeat_interval_s == cfg.heartbeat_interval_s  # applied by the uploader
    ignoring = cfg.replace(apply_server_settings=False)
    assert health.config_for_next_recording(ignoring, spool) == (ignoring, 0)
    # A value this agent cannot use is skipped as a whole, with the previous version kept.
    health.store_pushed(spool, health.PushedSettings(5, chunk_duration_ms=500))
    assert health.config_for_next_recording(cfg, spool) == (cfg, 4)


def test_status_shows_health_and_settings(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    spool, _, sizes = spooled(tmp_path)
    health.store_pushed(spool, health.PushedSettings(7, bitrate=20_000))
    spool.close()
    args = ["status", "--spool-dir", str(tmp_path / "spool")]
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["health"]["backlog"]["chunks"] == 3
    assert data["health"]["backlog"]["bytes"] == sum(sizes)
    assert data["settings"]["pushed"]["version"] == 7
    assert data["settings"]["running_version"] == 0  # no recording started since
    assert data["settings"]["configured"]["dtx"] is True
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "backlog 1 recording(s), 3 chunk(s)" in text
    assert 'from server version 7 {"bitrate": 20000}' in text


def test_a_state_change_sends_a_heartbeat_at_once_and_settings_are_kept(
        server: RunningServer, tmp_path: Path) -> None:
    device_id, token = server.device_token()
    stub = device_pb2_grpc.DeviceServiceStub(server.channel())
    key = tuple(auth(server.api_key))
    stub.UpdateDeviceSettings(device_pb2.UpdateDeviceSettingsRequest(
        device_id=device_id, settings=device_pb2.DeviceSettings(heartbeat_interval_s=5,
                                                                bitrate=20_000)), metadata=key)
    cfg = AgentConfig(server=server.grpc_target, token=token, spool_dir=tmp_path / "spool",
                      heartbeat_interval_s=3600)
    spool = Spool(cfg.spool_dir, cfg.max_spool_bytes)
    client = AgentClient(cfg.server, cfg.token, timeout_s=10)
    uploader = Uploader(cfg, spool, client)

    def state() -> int:
        return stub.GetDevice(device_pb2.GetDeviceRequest(id=device_id),
                              metadata=key).device.device_state

    thread = threading.Thread(target=uploader.run)
    thread.start()
    try:
        wait_for(lambda: state() == device_pb2.DEVICE_STATE_IDLE, 30, "the first heartbeat")
        assert uploader.heartbeat_interval_s() == 5.0  # pushed: applies at once
        pushed = health.load_pushed(spool)
        assert pushed is not None and (pushed.version, pushed.bitrate) == (1, 20_000)
        spool.set_state("capture", "recording rec-x")  # what the recorder does
        uploader.notify()
        # Well before the 5 s interval: the change itself triggered the heartbeat.
        wait_for(lambda: state() == device_pb2.DEVICE_STATE_RECORDING, 4, "a state heartbeat")
    finally:
        uploader.stop()
        thread.join(timeout=30)
        client.close()
    device = stub.GetDevice(device_pb2.GetDeviceRequest(id=device_id), metadata=key).device
    assert device.firmware_version.startswith("tapedeck-agent ")
    assert device.HasField("backlog_oldest_age_s") and device.backlog_chunks == 0
    assert "sent (recording" in spool.states()["heartbeat"][0]
