"""The ``tapedeck-agent`` command line as an operator uses it: SIGTERM, a full spool (live
and file sources), ``upload FILE`` through ffmpeg, rollover, ``status`` and ``retry``."""

from __future__ import annotations

import json
import signal
import subprocess
import wave
from pathlib import Path

import numpy as np

from agentkit import (
    RATE,
    Agents,
    RestartableServer,
    agent_env,
    list_chunks,
    opus_packets,
    reference_packets,
    run_agent,
    spooled_chunks,
    status,
    stored_chunk,
    wait_for,
)
from audio import speech_pcm
from serverkit import RunningServer


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return path


def stored_packets(server: RunningServer, rec_id: str, parts: int) -> list[list[bytes]]:
    return [opus_packets(stored_chunk(server, rec_id, p)) for p in range(1, parts + 1)]


def test_sigterm_finishes_the_current_chunk_and_finalizes(server: RunningServer,
                                                          tmp_path: Path, agents: Agents) -> None:
    pcm = speech_pcm(30.0)
    wav = write_wav(tmp_path / "in.wav", pcm)
    _, token = server.device_token()
    spool = tmp_path / "spool"
    env = agent_env(tmp_path / "home", spool, server.grpc_target, token,
                    chunk_duration_ms=2000)
    agent = agents.spawn(env, "record", "--input", str(wav), log=tmp_path / "agent.log")
    wait_for(lambda: spooled_chunks(spool) >= 2, 30, "two chunks")
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=60)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "uploaded" and result["ended_by"] == "stop"
    # The last chunk is the part of a chunk captured before SIGTERM, closed properly: the
    # recording is exactly the first duration_ms of the input, encoded continuously.
    duration_ms, chunks = result["duration_ms"], result["chunks"]
    assert 4000 <= duration_ms < 30_000 and chunks == -(-duration_ms // 2000)
    captured = pcm[: duration_ms * RATE // 1000 * 2]
    assert stored_packets(server, result["recording_id"], chunks) == \
        reference_packets(captured, 2000)


def test_full_spool_pauses_live_capture_and_keeps_what_was_captured(
        restartable: RestartableServer, tmp_path: Path) -> None:
    _, token = restartable.server.device_token()
    restartable.stop()  # nothing can leave the spool
    pcm = speech_pcm(10.0)
    wav = write_wav(tmp_path / "in.wav", pcm)
    spool = tmp_path / "spool"
    # 1 s chunks are ~3 KB (estimated 7.4 KB); a 25 KB spool holds a few.
    env = agent_env(tmp_path / "home", spool, restartable.target, token,
                    chunk_duration_ms=1000, max_spool_mb=0.025)
    run = run_agent(env, "record", "--input", str(wav), "--wait", "1")
    assert run.returncode == 75, run.stderr  # safe in the spool, not finalized yet
    assert "spool full" in run.stderr and "NOT recorded" in run.stderr
    result = run.result
    assert result["status"] == "spooled" and result["recording_id"] is None
    kept_ms = result["duration_ms"]
    assert 1000 <= kept_ms < 10_000 and result["not_recorded_ms"] == 10_000 - kept_ms
    st = status(env)
    assert st["agent"]["capture"]["value"] == "idle"

    # Back online: what was captured arrives whole, and is exactly the start of the input.
    server = restartable.start()
    sync = run_agent(env, "sync", "--timeout", "60")
    assert sync.returncode == 0, sync.stderr
    (rec,) = status(env)["recordings"]
    assert rec["state"] == "finalized" and rec["duration_ms"] == kept_ms
    captured = pcm[: kept_ms * RATE // 1000 * 2]
    assert stored_packets(server, rec["recording_id"], rec["chunks"]) == \
        reference_packets(captured, 1000)


def test_full_spool_makes_a_file_upload_wait_then_resume(restartable: RestartableServer,
                                                        tmp_path: Path, agents: Agents) -> None:
    _, token = restartable.server.device_token()
    restartable.stop()
    pcm = speech_pcm(12.0)
    wav = write_wav(tmp_path / "in.wav", pcm)
    spool = tmp_path / "spool"
    env = agent_env(tmp_path / "home", spool, restartable.target, token,
                    chunk_duration_ms=1000, max_spool_mb=0.025)
    agent = agents.spawn(env, "upload", str(wav), "--timeout", "120", log=tmp_path / "a.log")
    wait_for(lambda: "spool full" in (tmp_path / "a.log").read_text(), 30, "the pause")
    paused_at = spooled_chunks(spool)
    assert paused_at < 12
    server = restartable.start()  # uploads free space (acknowledged chunks are evicted)
    agent.communicate(timeout=120)
    log = (tmp_path / "a.log").read_text()
    assert agent.returncode == 0, log
    assert "already holds" in log  # eviction of acknowledged chunk files
    # A file source loses nothing: the whole input arrived, in order.
    (rec,) = status(env)["recordings"]
    assert rec["state"] == "finalized" and rec["duration_ms"] == 12_000
    assert stored_packets(server, rec["recording_id"], 12) == reference_packets(pcm, 1000)


def test_upload_any_file_via_ffmpeg_with_rollover(server: RunningServer, tmp_path: Path) -> None:
    pcm = speech_pcm(5.5)
    src = write_wav(tmp_path / "src.wav", pcm)
    mp3 = tmp_path / "talk.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-ar", "44100", "-ac", "2",
                    "-b:a", "128k", str(mp3)], check=True)
    # What the agent will read: ffmpeg's decode of the MP3 at 16 kHz mono.
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp3), "-f", "s16le", "-ac",
                              "1", "-ar", str(RATE), "-"], check=True, capture_output=True).stdout
    _, token = server.device_token()
    env = agent_env(tmp_path / "home", tmp_path / "spool", server.grpc_target, token,
                    chunk_duration_ms=1000, max_chunks=2)
    run = run_agent(env, "upload", str(mp3))
    assert run.returncode == 0, run.stderr
    rows = run.result["recordings"]
    frames = len(decoded) // 2
    assert [r["chunks"] for r in rows] == [2, 2, -(-(frames - 4 * RATE) // RATE)]
    assert all(r["status"] == "uploaded" and r["recording_id"] for r in rows)
    # Rolled over at exactly 2 s and 4 s: each recording is its slice, encoded continuously.
    slices = [decoded[: 2 * RATE * 2], decoded[2 * RATE * 2 : 4 * RATE * 2],
              decoded[4 * RATE * 2 :]]
    for row, part in zip(rows, slices, strict=True):
        assert stored_packets(server, row["recording_id"], row["chunks"]) == \
            reference_packets(part, 1000)
    assert sum(r["duration_ms"] for r in rows) == round(frames * 1000 / RATE)
    corr = np.corrcoef(np.frombuffer(decoded[: len(pcm)], "<i2"),
                       np.frombuffer(pcm[: len(decoded)], "<i2"))[0, 1]
    assert corr > 0.5  # sanity: the MP3 is the speech (encoder delay shifts it a little)


def test_status_and_retry_commands(server: RunningServer, tmp_path: Path) -> None:
    _, token = server.device_token()
    wav = write_wav(tmp_path / "in.wav", speech_pcm(2.0))
    env = agent_env(tmp_path / "home", tmp_path / "spool", server.grpc_target,
                    token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
                    chunk_duration_ms=1000)
    run = run_agent(env, "upload", str(wav), "--timeout", "30")
    assert run.returncode == 3, run.stderr  # the token was refused: an operator is needed
    assert "unauthorized" in run.stderr
    text = run_agent(env, "status")
    assert text.returncode == 0
    assert "uploader: blocked: unauthorized" in text.stdout
    local_id = run.result["local_id"]
    assert local_id in text.stdout and " closed " in text.stdout

    retry = run_agent(env, "retry", local_id)
    assert retry.returncode == 1 and "not parked" in retry.stderr
    # With the right token the spooled recording goes up.
    env["TAPEDECK_AGENT_TOKEN"] = token
    sync = run_agent(env, "sync", "--timeout", "60")
    assert sync.returncode == 0, sync.stderr
    (rec,) = status(env)["recordings"]
    assert rec["state"] == "finalized" and len(list_chunks(server, rec["recording_id"])) == 2
