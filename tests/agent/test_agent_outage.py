"""The server goes down (twice) while the agent records: chunks pile up in the spool, all
arrive afterwards oldest first, nothing lost, nothing duplicated (issue 7, "must show" 4).
The recording itself starts offline, so it gets its server id only later."""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

from agentkit import (
    RATE,
    Agents,
    RestartableServer,
    agent_env,
    list_chunks,
    opus_packets,
    reference_packets,
    spooled_chunks,
    status,
    stored_chunk,
    wait_for,
)
from audio import speech_pcm

CHUNK_MS = 1000
SECONDS = 14


def server_parts(srv: RestartableServer) -> int:
    if not srv.running:
        return 0
    return int(srv.server.app.db.read().execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


def test_server_outages_while_recording(restartable: RestartableServer, tmp_path: Path,
                                        agents: Agents) -> None:
    _, token = restartable.server.device_token()
    restartable.stop()
    pcm = speech_pcm(SECONDS)
    wav = tmp_path / "in.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    spool = tmp_path / "spool"
    env = agent_env(tmp_path / "home", spool, restartable.target, token,
                    chunk_duration_ms=CHUNK_MS)
    agent = agents.spawn(env, "record", "--input", str(wav), "--wait", "60",
                        log=tmp_path / "agent.log")

    # Outage 1: the recording starts offline; chunks pile up without a server id.
    wait_for(lambda: spooled_chunks(spool) >= 4, 30, "4 chunks spooled offline")
    (rec,) = status(env)["recordings"]
    assert rec["recording_id"] is None and rec["chunks_uploaded"] == 0
    restartable.start()
    wait_for(lambda: server_parts(restartable) >= 5, 30, "the backlog to arrive")

    # Outage 2, mid-recording: more chunks pile up, then arrive.
    restartable.stop()
    spooled_at_stop = spooled_chunks(spool)
    wait_for(lambda: spooled_chunks(spool) >= spooled_at_stop + 3, 30, "chunks spooled offline")
    assert status(env)["recordings"][0]["chunks_uploaded"] < spooled_chunks(spool)
    server = restartable.start()

    out, _ = agent.communicate(timeout=120)
    log = (tmp_path / "agent.log").read_text()
    assert agent.returncode == 0, log
    assert "retry" in log  # it backed off while the server was down
    (rec,) = status(env)["recordings"]
    assert rec["state"] == "finalized" and rec["chunks"] == SECONDS
    assert rec["uploads"] == SECONDS and rec["duplicate_uploads"] == 0

    # Nothing lost: the server holds every part, and they are the continuous encode of the
    # whole input; nothing duplicated: one upload per part (above), one recording.
    rec_id = rec["recording_id"]
    stored = [stored_chunk(server, rec_id, p) for p in range(1, SECONDS + 1)]
    assert list_chunks(server, rec_id) == {p: hashlib.md5(d).hexdigest()
                                           for p, d in enumerate(stored, start=1)}
    assert [opus_packets(d) for d in stored] == reference_packets(pcm, CHUNK_MS)
    count = server.app.db.read().execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
    assert count == 1
    assert out.strip().splitlines()[-1].startswith('{"recording_id": "rec_')
