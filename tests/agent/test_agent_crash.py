"""kill -9 the agent mid-recording and mid-upload, restart it: every chunk written before the
kill is uploaded exactly once and the recording finalizes with the right count and checksum
(issue 7, "must show" 3)."""

from __future__ import annotations

import hashlib
import json
import signal
import wave
from pathlib import Path

from agentkit import (
    RATE,
    Agents,
    RestartableServer,
    agent_env,
    get_recording,
    list_chunks,
    opus_packets,
    reference_packets,
    run_agent,
    spooled_chunks,
    status,
    status_name,
    stored_chunk,
    wait_for,
)
from audio import speech_pcm
from serverkit import RunningServer

CHUNK_MS = 1000


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return path


def spool_md5s(spool: Path, local_id: str) -> list[str]:
    """MD5 of each chunk file of ``local_id`` in part order (straight from the disk)."""
    files = sorted((spool / "recordings" / local_id).glob("chunk_*.opus"))
    return [hashlib.md5(f.read_bytes()).hexdigest() for f in files]


def check_finalized_exactly_once(server: RunningServer, env: dict[str, str], local_id: str,
                                 md5s: list[str]) -> str:
    """The recording holds exactly the chunks the spool had at the kill, each sent once,
    and was finalized with their count and checksum."""
    st = status(env)
    (rec,) = [r for r in st["recordings"] if r["local_id"] == local_id]
    assert rec["state"] == "finalized", rec
    assert rec["chunks"] == len(md5s) and rec["duplicate_uploads"] == 0
    assert rec["uploads"] <= len(md5s)  # a kill between store and ack is settled by ListChunks
    rec_id = str(rec["recording_id"])
    assert list_chunks(server, rec_id) == dict(enumerate(md5s, start=1))
    row = server.app.db.read().execute(
        "SELECT finalize_request, status FROM recordings WHERE id = ?", [rec_id]).fetchone()
    body = json.loads(row[0])
    joined = hashlib.md5(b"".join(stored_chunk(server, rec_id, p)
                                  for p in range(1, len(md5s) + 1))).hexdigest()
    assert body["total_chunks"] == len(md5s) and body["checksum_md5"] == joined
    assert body["final_duration_ms"] == rec["duration_ms"]
    assert status_name(get_recording(server, rec_id)) in ("uploaded", "stitching", "completed")
    return rec_id


def test_kill_9_mid_recording_then_restart(server: RunningServer, tmp_path: Path,
                                           agents: Agents) -> None:
    pcm = speech_pcm(20.0)
    wav = write_wav(tmp_path / "in.wav", pcm)
    _, token = server.device_token()
    spool = tmp_path / "spool"
    env = agent_env(tmp_path / "home", spool, server.grpc_target, token,
                    chunk_duration_ms=CHUNK_MS)
    agent = agents.spawn(env, "record", "--input", str(wav), "--wait", "60",
                        log=tmp_path / "agent1.log")
    # Mid-recording: at least 4 chunks captured, some already on the server.
    wait_for(lambda: spooled_chunks(spool) >= 4 and _server_chunk_count(server) >= 2, 60,
             "chunks to be captured and uploaded")
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=30)
    (local_id,) = [p.name for p in (spool / "recordings").iterdir()]
    md5s = spool_md5s(spool, local_id)  # what was written (renamed into place) before the kill
    assert 4 <= len(md5s) < 20
    before = status(env)["recordings"][0]
    assert before["state"] == "capturing"  # the manifest still says so: nobody closed it

    sync = run_agent(env, "sync", "--timeout", "60")
    assert sync.returncode == 0, sync.stderr
    assert "closed interrupted recording" in sync.stderr
    check_finalized_exactly_once(server, env, local_id, md5s)
    # The chunks are exactly the first chunks of a continuous encode of the input.
    expected = reference_packets(pcm, CHUNK_MS)[: len(md5s)]
    got = [opus_packets(stored_chunk(server, before["recording_id"], p))
           for p in range(1, len(md5s) + 1)]
    assert got == expected


def _server_chunk_count(server: RunningServer) -> int:
    return int(server.app.db.read().execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


def test_kill_9_mid_upload_then_restart(restartable: RestartableServer,
                                        tmp_path: Path, agents: Agents) -> None:
    _, token = restartable.server.device_token()
    restartable.stop()  # offline: the agent spools everything first
    pcm = speech_pcm(90.0)
    wav = write_wav(tmp_path / "in.wav", pcm)
    spool = tmp_path / "spool"
    env = agent_env(tmp_path / "home", spool, restartable.target, token,
                    chunk_duration_ms=CHUNK_MS)
    agent = agents.spawn(env, "upload", str(wav), "--timeout", "120", log=tmp_path / "a1.log")
    wait_for(lambda: spooled_chunks(spool) == 90, 60, "the file to be spooled")
    (local_id,) = [p.name for p in (spool / "recordings").iterdir()]
    md5s = spool_md5s(spool, local_id)

    server = restartable.start()
    # Mid-upload: the backlog is going up, oldest first; kill with most of it still to go.
    wait_for(lambda: _server_chunk_count(server) >= 10, 60, "the backlog upload to start",
             interval=0.005)
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=30)
    rec_id = status(env)["recordings"][0]["recording_id"]
    # Uploads go one at a time, oldest first: the store holds a prefix 1..n, no holes
    # (n may still grow by the one upload the server had fully received at the kill).
    parts = sorted(list_chunks(server, rec_id))
    assert 10 <= len(parts) < 90, parts
    assert parts == list(range(1, len(parts) + 1))

    sync = run_agent(env, "sync", "--timeout", "60")
    assert sync.returncode == 0, sync.stderr
    check_finalized_exactly_once(server, env, local_id, md5s)
