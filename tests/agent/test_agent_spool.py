"""The spool (real files, real SQLite manifest, real Opus chunks) and the configuration."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import wave
from pathlib import Path

import pytest

from tapedeck_agent.capture import WavSource
from tapedeck_agent.config import AgentConfig, ConfigError, load_config
from tapedeck_agent.encoder import OpusChunker
from tapedeck_agent.recorder import Recorder
from tapedeck_agent.spool import Spool, write_durably

from audio import speech_pcm

RATE = 16_000


def make_spool(tmp_path: Path, max_bytes: int = 1 << 30) -> Spool:
    return Spool(tmp_path / "spool", max_bytes)


def chunk_files(seconds: float, chunk_ms: int = 1000) -> list[tuple[bytes, int]]:
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, complexity=0)
    chunks = chunker.feed(speech_pcm(seconds)) + chunker.finish()
    return [(c.data, c.samples) for c in chunks]


def new_recording(spool: Spool, owner: str) -> str:
    return spool.new_recording(source="test", name="t", sample_rate=RATE, channels=1,
                               chunk_duration_ms=1000, estimated_duration_ms=None, owner=owner)


def test_write_durably_leaves_only_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    write_durably(target, b"abc" * 1000)
    write_durably(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_chunks_are_recorded_and_closed_with_exact_duration(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    owner, lock = spool.new_owner()
    local_id = new_recording(spool, owner)
    files = chunk_files(2.5)
    for part, (data, samples) in enumerate(files, start=1):
        row = spool.write_chunk(local_id, part, data, samples)
        assert (row.md5, row.size) == (hashlib.md5(data).hexdigest(), len(data))
        assert spool.read_chunk(local_id, part) == data
    rec = spool.close_recording(local_id)
    assert (rec.state, rec.total_chunks, rec.duration_ms) == ("closed", 3, 2500)
    assert spool.usage_bytes() == sum(len(d) for d, _ in files)
    lock.release()


def test_recover_after_a_crash(tmp_path: Path) -> None:
    """A .tmp leftover is removed, a chunk file without a manifest row is registered (md5
    and duration from the file), and a recording whose owner died is closed; a recording
    whose owner lives is left alone."""
    spool = make_spool(tmp_path)
    files = chunk_files(3.0)
    dead_owner, dead_lock = spool.new_owner()
    crashed = new_recording(spool, dead_owner)
    spool.write_chunk(crashed, 1, *files[0])
    spool.write_chunk(crashed, 2, *files[1])
    # The crash: chunk 3 renamed into place but not in the manifest; chunk 4 half-written.
    spool.chunk_path(crashed, 3).write_bytes(files[2][0])
    spool.chunk_path(crashed, 4).with_suffix(".opus.tmp").write_bytes(b"half")
    dead_lock.release()  # the process is gone
    live_owner, live_lock = spool.new_owner()
    live = new_recording(spool, live_owner)

    done = spool.recover()
    assert any("removed incomplete" in d for d in done)
    assert any("registered chunk 3" in d for d in done)
    rec = spool.recording(crashed)
    assert (rec.state, rec.total_chunks, rec.duration_ms) == ("closed", 3, 3000)
    assert spool.chunk(crashed, 3).md5 == hashlib.md5(files[2][0]).hexdigest()
    assert spool.chunk(crashed, 3).samples == files[2][1]
    assert not list(spool.recording_dir(crashed).glob("*.tmp"))
    assert spool.recording(live).state == "capturing"
    assert spool.recover() == []  # idempotent
    live_lock.release()


def test_owner_lock_is_seen_from_another_process(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    owner, lock = spool.new_owner()
    code = ("import sys; from pathlib import Path; from tapedeck_agent.spool import Spool; "
            f"s = Spool(Path({str(spool.root)!r}), 1 << 30); "
            f"sys.exit(0 if s.owner_alive({owner!r}) else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    lock.release()
    assert subprocess.run([sys.executable, "-c", code]).returncode == 1


def test_empty_recording_is_removed(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    owner, lock = spool.new_owner()
    local_id = new_recording(spool, owner)
    assert spool.close_recording(local_id).state == "empty"
    assert not spool.recording_dir(local_id).exists()
    lock.release()


def test_evict_only_uploaded_chunks_oldest_first(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    owner, lock = spool.new_owner()
    local_id = new_recording(spool, owner)
    files = chunk_files(4.0)
    for part, (data, samples) in enumerate(files, start=1):
        spool.write_chunk(local_id, part, data, samples)
    for part in (1, 2, 3):
        spool.record_upload(local_id, part, already_stored=False)
    total = spool.usage_bytes()
    freed = spool.evict_uploaded(total - 1)
    assert freed == len(files[0][0])
    assert not spool.chunk_path(local_id, 1).exists() and spool.chunk(local_id, 1).deleted
    spool.evict_uploaded(0)
    assert spool.usage_bytes() == len(files[3][0])  # the un-uploaded chunk is never evicted
    assert spool.chunk_path(local_id, 4).exists()
    lock.release()


def test_park_keeps_a_parked_recording_parked_when_capture_closes(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    owner, lock = spool.new_owner()
    local_id = new_recording(spool, owner)
    spool.write_chunk(local_id, 1, *chunk_files(1.0)[0])
    spool.park(local_id, "recording_not_found: gone")
    assert spool.close_recording(local_id).state == "parked"
    spool.unpark(local_id)
    assert spool.recording(local_id).state == "closed"
    with pytest.raises(ValueError, match=f"{local_id} is closed, not parked"):
        spool.unpark(local_id)
    lock.release()


def test_recorder_rolls_over_at_max_chunks_without_losing_a_sample(tmp_path: Path) -> None:
    pcm = speech_pcm(5.5)
    wav = tmp_path / "in.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    cfg = AgentConfig(chunk_duration_ms=1000, max_chunks=2, complexity=0,
                      spool_dir=tmp_path / "spool")
    spool = Spool(cfg.spool_dir, cfg.max_spool_bytes)
    result = Recorder(cfg, spool, lambda: None).record(WavSource(wav), threading.Event(),
                                                        origin="test")
    assert result.ended_by == "end_of_file" and result.frames_read == len(pcm) // 2
    recs = [spool.recording(i) for i in result.local_ids]
    assert [(r.total_chunks, r.duration_ms) for r in recs] == [(2, 2000), (2, 2000), (2, 1500)]


# -- configuration -------------------------------------------------------------------------------
def test_config_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('[agent]\nserver = "file:1"\ntoken = "file-token"\nbitrate = 16000\n'
                    'chunk_duration_ms = 30000\n')
    env = {"TAPEDECK_AGENT_TOKEN": "env-token", "TAPEDECK_AGENT_BITRATE": "20000"}
    cfg = load_config({"bitrate": 32000, "server": None}, env, conf)
    assert (cfg.server, cfg.token, cfg.bitrate, cfg.chunk_duration_ms) == \
        ("file:1", "env-token", 32000, 30000)
    assert cfg.sample_rate == 16000 and cfg.channels == 1  # defaults
    env["TAPEDECK_AGENT_CONFIG"] = str(conf)
    assert load_config({}, env).server == "file:1"


@pytest.mark.parametrize(("env", "word"), [
    ({"TAPEDECK_AGENT_SAMPLE_RATE": "44100"}, "sample_rate"),
    ({"TAPEDECK_AGENT_CHUNK_DURATION_MS": "999"}, "chunk_duration_ms"),
    ({"TAPEDECK_AGENT_TLS": "maybe"}, "tls"),
    ({"TAPEDECK_AGENT_BITRATE": "fast"}, "bitrate"),
])
def test_config_errors_name_the_setting(env: dict[str, str], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        load_config({}, env, None)


def test_config_file_unknown_key(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('sever = "typo:1"\n')
    with pytest.raises(ConfigError, match="sever"):
        load_config({}, {}, conf)


def test_the_agent_imports_no_server_dependency() -> None:
    """The agent installs as ``tapedeck[agent]``: nothing of the server may be imported."""
    code = ("import sys, tapedeck_agent.cli, tapedeck_agent.uploader, tapedeck_agent.recorder\n"
            "import tapedeck_agent.spool as s; s.ogg_opus_samples(b'')\n"
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    server_only = {"sqlite_utils", "minio", "fastapi", "uvicorn", "httpx", "numpy",
                   "faster_whisper", "tapedeck.app", "tapedeck.domain", "tapedeck.infra.db",
                   "tapedeck.grpc_api", "tapedeck.infra.store", "tapedeck.settings"}
    assert not server_only & set(out)
    assert {"tapedeck.v1.chunk_pb2", "tapedeck.oggopus", "grpc"} <= set(out)
