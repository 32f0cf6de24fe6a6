"""Fleet end to end (issue 22): the real ``tapedeck-agent`` (child processes) against a real
server with its sweeper and webhook dispatcher; events arrive at a real HTTP receiver and are
verified with ``standardwebhooks``.

- spool over the threshold → ``device.storage_low``; audio waiting past the threshold →
  ``device.backlog``; the agent killed → ``device.offline``
  (a 4 s offline threshold, swept every 0.2 s: no long sleeps); restarted →
  ``device.online``; each once per transition;
- settings pushed while an agent records reach it through its heartbeats and apply from its
  next recording, never inside one; an agent that ignores them keeps working.
"""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tapedeck.infra.weed import ManagedWeed
from tapedeck.oggopus import probe
from tapedeck_agent import health
from tapedeck_agent.spool import Spool

from agentkit import (
    RATE,
    Agents,
    agent_env,
    get_recording,
    list_chunks,
    opus_packets,
    run_agent,
    status,
    stored_chunk,
    wait_for,
)
from audio import low_noise_pcm, speech_pcm
from serverkit import RunningServer, drop_bucket, make_settings, start_server

OFFLINE_AFTER_S = 4
FLEET_EVENTS = ["device.offline", "device.online", "device.storage_low", "device.backlog"]


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()},
                                              body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Every delivered event, each verified with its Standard Webhooks signature."""
        with self._lock:
            requests = list(self.requests)
        hook = Webhook(secret)
        return [dict(hook.verify(body, headers)) for headers, body in requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fleet_server(weed: ManagedWeed, tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(weed, tmp_path / "data", device_offline_after_s=OFFLINE_AFTER_S,
                             sweep_interval_ms=200)
    srv = start_server(settings, roles=["grpc", "http", "sweeper", "dispatcher"])
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, settings.s3_bucket)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def rest(srv: RunningServer, method: str, path: str, body: Any = None) -> dict[str, Any]:
    resp = httpx.request(method, srv.http_url + path, json=body, timeout=60,
                         headers={"Authorization": f"Bearer {srv.api_key}"})
    assert resp.is_success, resp.text
    return dict(resp.json())


def write_wav(path: Path, pcm: bytes, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def device_events(receiver: Receiver, secret: str, device_id: str) -> list[dict[str, Any]]:
    return [e for e in receiver.events(secret) if e["data"]["device_id"] == device_id]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def _unreachable_server() -> str:
    """A loopback address nothing listens on: the device records while its server is
    unreachable (an agent with no server at all refuses to start: issue 16)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_storage_low_offline_online_once_per_transition_signed(
        fleet_server: RunningServer, receiver: Receiver, agents: Agents,
        tmp_path: Path) -> None:
    srv = fleet_server
    secret = rest(srv, "POST", "/v1/webhooks", {"url": receiver.url,
                                                "events": FLEET_EVENTS})["secret"]
    device_id, token = srv.device_token()
    spool_dir, home = tmp_path / "spool", tmp_path / "home"
    home.mkdir()
    # The device was offline and its spool filled: ~4.3 MiB of a 5 MB spool (full-band
    # noise, ~27 kB/s, is the quickest way to fill it), recorded with no server.
    noise = write_wav(tmp_path / "noise.wav", low_noise_pcm(165, 3000, 48_000), 48_000)
    offline = agent_env(home, spool_dir, _unreachable_server(), token, sample_rate=48_000,
                        bitrate=510_000, chunk_duration_ms=1000, max_spool_mb=5)
    assert run_agent(offline, "upload", str(noise), "--timeout", "1").returncode == 75
    used = Spool(spool_dir, 5 << 20).usage_bytes()
    assert 4 << 20 <= used < 5 << 20, used

    live = agent_env(home, spool_dir, srv.grpc_target, token, heartbeat_interval_s=0.5,
                     max_spool_mb=5, chunk_duration_ms=1000)
    speech = write_wav(tmp_path / "speech.wav", speech_pcm(120))
    first = agents.spawn(live, "record", "--input", str(speech), log=tmp_path / "a.log")
    wait_for(lambda: "device.storage_low" in types(device_events(receiver, secret, device_id)),
             60, "device.storage_low")
    # Uploads drain the spool (finalized chunk files are deleted): the flag clears silently.
    wait_for(lambda: not rest(srv, "GET", f"/v1/devices/{device_id}")["storage_low"], 60,
             "the spool to drain")
    assert device_id not in {d["id"] for d in rest(srv, "GET", "/v1/devices?state=offline")[
        "data"]}

    first.kill()  # kill -9: no goodbye; only the missing heartbeats tell
    first.wait(timeout=30)
    wait_for(lambda: "device.offline" in types(device_events(receiver, secret, device_id)),
             60, "device.offline")
    listed = rest(srv, "GET", "/v1/devices?state=offline")["data"]
    assert [d["id"] for d in listed] == [device_id] and listed[0]["offline"] is True

    second = agents.spawn(live, "sync", "--timeout", "60", log=tmp_path / "b.log")
    wait_for(lambda: "device.online" in types(device_events(receiver, secret, device_id)),
             60, "device.online")
    assert second.wait(timeout=90) == 0  # the killed recording recovered and finalized
    events = device_events(receiver, secret, device_id)
    assert types(events)[:3] == ["device.storage_low", "device.offline", "device.online"]
    low, gone, back = events[:3]
    assert low["data"]["storage_total_mb"] == 5 and low["data"]["storage_used_mb"] >= 4
    assert low["data"]["threshold_percent"] == 80
    assert gone["data"]["offline_after_s"] == OFFLINE_AFTER_S
    assert back["data"]["previous_heartbeat_at"] == gone["data"]["last_heartbeat_at"]
    # The agent exited: one more offline transition, and only one.
    wait_for(lambda: len(device_events(receiver, secret, device_id)) >= 4, 60,
             "the second device.offline")
    threading.Event().wait(1.5)  # several more sweeps: nothing new may arrive
    assert types(device_events(receiver, secret, device_id)) == [
        "device.storage_low", "device.offline", "device.online", "device.offline"]
    assert len({e["id"] for e in receiver.events(secret)}) == len(receiver.events(secret))


def _recordings(srv: RunningServer, device_id: str) -> list[dict[str, Any]]:
    """The device's recordings on the server, in capture order, with the
    ``chunk_duration_ms`` each was created with (gRPC)."""
    rows = rest(srv, "GET", "/v1/recordings?limit=100")["data"]
    mine = sorted((r for r in rows if r["device_id"] == device_id),
                  key=lambda r: (r["started_at"], r["id"]))
    return [{**r, "chunk_duration_ms": get_recording(srv, r["id"]).chunk_duration_ms}
            for r in mine]


def _chunk_samples(srv: RunningServer, rec_id: str) -> tuple[list[int], int]:
    """Playable 48 kHz samples of each stored chunk of a recording (its chunk files as
    the server holds them), and how many of its packets are DTX (1-2 bytes)."""
    samples, dtx = [], 0
    for part in sorted(list_chunks(srv, rec_id)):
        data = stored_chunk(srv, rec_id, part)
        samples.append(probe(io.BytesIO(data)).samples)
        dtx += sum(len(p) <= 2 for p in opus_packets(data))
    return samples, dtx


def test_pushed_settings_apply_from_the_next_recording(fleet_server: RunningServer,
                                                       agents: Agents, tmp_path: Path) -> None:
    srv = fleet_server
    device_id, token = srv.device_token()
    home = tmp_path / "home"
    home.mkdir()
    # 24 s: two seconds of speech then two of near-silence, over and over (DTX shows).
    pcm = b"".join(speech_pcm(2, start=i) + low_noise_pcm(2, 3, seed=i) for i in range(6))
    wav = write_wav(tmp_path / "talk.wav", pcm)
    env = agent_env(home, tmp_path / "spool", srv.grpc_target, token, heartbeat_interval_s=0.3,
                    chunk_duration_ms=1000, max_chunks=4)
    proc = agents.spawn(env, "record", "--input", str(wav), log=tmp_path / "agent.log")
    wait_for(lambda: _recordings(srv, device_id), 60, "the first recording")
    pushed = rest(srv, "PUT", f"/v1/devices/{device_id}/settings",
                  {"chunk_duration_ms": 2000, "dtx": False, "bitrate": 16_000})
    assert pushed["version"] == 1
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "uploaded"

    recs = _recordings(srv, device_id)
    durations = [r["chunk_duration_ms"] for r in recs]
    assert durations[0] == 1000 and durations[-1] == 2000, durations
    switch = durations.index(2000)
    assert set(durations[:switch]) == {1000} and set(durations[switch:]) == {2000}
    assert sum(r["duration_ms"] for r in recs) == 24_000
    for rec in recs:
        samples, dtx = _chunk_samples(srv, rec["id"])
        step = rec["chunk_duration_ms"] * 48
        # Within a recording every chunk but the last has the recording's own length (the
        # first one less the encoder's 312-sample lookahead): settings never change in the
        # middle of one.
        assert samples[0] in (step - 312, sum(samples)), (rec["id"], samples)
        assert all(s == step for s in samples[1:-1]), (rec["id"], samples)
        assert (dtx > 0) == (rec["chunk_duration_ms"] == 1000), (rec["id"], dtx)
    # The device reports the version it runs; status shows it too.
    wait_for(lambda: rest(srv, "GET", f"/v1/devices/{device_id}")["settings_version"] == 1,
             30, "settings_version 1 reported")
    shown = status(env)["settings"]
    assert shown["running_version"] == 1 and shown["pushed"]["chunk_duration_ms"] == 2000


def test_an_agent_ignoring_pushed_settings_keeps_working(fleet_server: RunningServer,
                                                         tmp_path: Path) -> None:
    srv = fleet_server
    rest(srv, "PUT", "/v1/device-settings", {"chunk_duration_ms": 3000, "dtx": False})
    device_id, token = srv.device_token()
    home = tmp_path / "home"
    home.mkdir()
    wav = write_wav(tmp_path / "talk.wav", speech_pcm(3))
    env = agent_env(home, tmp_path / "spool", srv.grpc_target, token, heartbeat_interval_s=0.2,
                    chunk_duration_ms=1000, apply_server_settings=0)
    run = run_agent(env, "upload", str(wav), "--timeout", "60")
    assert run.returncode == 0, run.stderr
    (rec,) = _recordings(srv, device_id)
    assert rec["chunk_duration_ms"] == 1000 and rec["status"] in ("uploaded", "completed")
    assert status(env)["settings"]["running_version"] == 0
    assert rest(srv, "GET", f"/v1/devices/{device_id}")["settings_version"] in (None, 0)


@pytest.fixture
def backlog_server(weed: ManagedWeed, tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(weed, tmp_path / "data", device_backlog_alert_s=2,
                             sweep_interval_ms=200)
    srv = start_server(settings, roles=["grpc", "http", "sweeper", "dispatcher"])
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, settings.s3_bucket)


def test_audio_waiting_on_the_device_raises_device_backlog_once(
        backlog_server: RunningServer, receiver: Receiver, tmp_path: Path) -> None:
    srv = backlog_server
    secret = rest(srv, "POST", "/v1/webhooks", {"url": receiver.url,
                                                "events": ["device.backlog"]})["secret"]
    device_id, token = srv.device_token()
    home, spool_dir = tmp_path / "home", tmp_path / "spool"
    home.mkdir()
    wav = write_wav(tmp_path / "talk.wav", speech_pcm(6))
    offline = agent_env(home, spool_dir, _unreachable_server(), token, chunk_duration_ms=1000)
    assert run_agent(offline, "upload", str(wav), "--timeout", "0").returncode == 75
    # The audio waits on the device well past the server's 2 s threshold (a chunk's time is
    # the recording's start plus the audio up to its end).
    spool = Spool(spool_dir, 1 << 30)
    wait_for(lambda: (health.spool_backlog(spool).oldest_age_s or 0) >= 8, 30,
             "the spooled audio to be 8 s old")
    spool.close()
    online = agent_env(home, spool_dir, srv.grpc_target, token, heartbeat_interval_s=0.2)
    assert run_agent(online, "sync", "--timeout", "60").returncode == 0
    wait_for(lambda: receiver.events(secret), 30, "device.backlog")
    (event,) = receiver.events(secret)
    assert event["type"] == "device.backlog" and event["data"]["device_id"] == device_id
    assert event["data"]["backlog_recordings"] == 1 and event["data"]["backlog_chunks"] == 6
    assert event["data"]["backlog_oldest_age_s"] >= 8 and event["data"]["threshold_s"] == 2
    # Once everything is acknowledged the next heartbeat clears it, without an event.
    final = agent_env(home, spool_dir, srv.grpc_target, token, heartbeat_interval_s=0.2)
    assert run_agent(final, "sync", "--timeout", "10").returncode == 0
    shown = rest(srv, "GET", f"/v1/devices/{device_id}")
    assert shown["backlog_overdue"] is False and shown["backlog_chunks"] == 0
    assert len(receiver.events(secret)) == 1
