"""Test kit for the device agent: the real ``tapedeck-agent`` as a child process, real
PortAudio capture (an ALSA ``file`` PCM in a temporary HOME, or a PulseAudio null sink), and
checks of what the server stored (ListChunks, the object store, opusdec decoding)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tapedeck.domain.objects import stored_parts
from tapedeck.oggopus.stream import OpusStreamReader
from tapedeck.v1 import chunk_pb2, recording_pb2
from tapedeck_agent.encoder import OpusChunker

import waitkit
from serverkit import RunningServer, auth, make_settings, start_server

RATE = 16_000
ALSA_DEVICE = "tdcapture"


# -- the agent process ----------------------------------------------------------------------
def agent_env(home: Path, spool: Path, server: str = "", token: str = "",
              **settings: Any) -> dict[str, str]:
    """Environment for an agent child: its own HOME (ALSA/Pulse config), spool, server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPEDECK_AGENT_")}
    env.update(HOME=str(home), TAPEDECK_AGENT_SPOOL_DIR=str(spool),
               TAPEDECK_AGENT_SERVER=server, TAPEDECK_AGENT_TOKEN=token,
               TAPEDECK_AGENT_BACKOFF_INITIAL_S="0.2", TAPEDECK_AGENT_BACKOFF_MAX_S="2")
    for key, value in settings.items():
        env["TAPEDECK_AGENT_" + key.upper()] = str(value)
    return env


@dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The JSON object on the last line of standard output."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no stdout; stderr:\n{self.stderr}"
        return dict(json.loads(lines[-1]))


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tapedeck_agent", *args]


def run_agent(env: dict[str, str], *args: str, timeout: float = 180) -> AgentRun:
    proc = subprocess.run(agent_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=timeout)
    return AgentRun(proc.returncode, proc.stdout, proc.stderr)


def spawn_agent(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[str]:
    """The agent in the background, stderr to ``log`` (so a pipe never fills up)."""
    with log.open("a") as err:
        return subprocess.Popen(agent_cmd(*args), env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True)


def status(env: dict[str, str]) -> dict[str, Any]:
    """``tapedeck-agent status --json --all``."""
    run = run_agent(env, "status", "--json", "--all")
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout))


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate()`` until truthy; fail with ``what`` after ``timeout`` seconds
    (``waitkit.wait_for``)."""
    return waitkit.wait_for(predicate, timeout, what, interval=interval)


def spooled_chunks(spool: Path) -> int:
    """Complete chunk files in the spool (renamed into place), counted from the disk."""
    return len(list((spool / "recordings").glob("*/chunk_*.opus")))


# -- real capture devices -----------------------------------------------------------------------
def alsa_file_home(home: Path, pcm: bytes, name: str = ALSA_DEVICE) -> None:
    """An ALSA ``file`` PCM named ``name`` in ``home/.asoundrc`` whose capture side reads
    ``pcm`` (raw S16_LE). PortAudio lists it like a sound card; it delivers the samples
    bit-exactly, as fast as they are read."""
    home.mkdir(parents=True, exist_ok=True)
    raw = home / f"{name}.raw"
    raw.write_bytes(pcm)
    (home / ".asoundrc").write_text(
        f'pcm.{name} {{ type file; slave.pcm null; file "/dev/null"; '
        f'infile "{raw}"; format raw }}\n')


@dataclass
class Pulse:
    """A private PulseAudio daemon with a 16 kHz mono null sink as default source monitor."""

    home: Path
    env: dict[str, str]

    def play(self, wav: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["paplay", "--device=tdsink", str(wav)], env=self.env)

    def wait_for_capture(self, timeout: float) -> None:
        """Until some client records from this daemon (a source output exists): on a loaded
        machine a capturing process may take seconds to open its stream."""
        wait_for(lambda: subprocess.run(
            ["pactl", "list", "short", "source-outputs"], env=self.env, capture_output=True,
            text=True).stdout.strip() != "", timeout, "a client to capture from pulseaudio")

    def stop(self) -> None:
        pid_file = self.home / "run" / "pulse" / "pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "pulseaudio to exit")


def start_pulse(home: Path) -> Pulse:
    """Start ``pulseaudio`` for ``home``; raises RuntimeError with the reason if it cannot."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        raise RuntimeError("pulseaudio/pactl not installed")
    (home / "run").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"),
               PULSE_RUNTIME_PATH=str(home / "run" / "pulse"))
    proc = subprocess.run(
        ["pulseaudio", "-n", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit",
         "--use-pid-file=yes", "-L", "module-native-protocol-unix",
         "-L", "module-null-sink sink_name=tdsink rate=16000 channels=1",
         f"--log-target=file:{home / 'pulse.log'}"],
        env=env, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"pulseaudio failed to start: {proc.stderr.strip()}")
    pulse = Pulse(home, env)
    try:
        wait_for(lambda: subprocess.run(["pactl", "info"], env=env,
                                        capture_output=True).returncode == 0, 10,
                 "pulseaudio to answer")
        subprocess.run(["pactl", "set-default-source", "tdsink.monitor"], env=env, check=True,
                       capture_output=True)
    except BaseException:
        pulse.stop()
        raise
    return pulse


# -- what the server holds -------------------------------------------------------------------------
def list_chunks(server: RunningServer, rec_id: str) -> dict[int, str]:
    resp = server.chunks().ListChunks(chunk_pb2.ListChunksRequest(recording_id=rec_id),
                                      metadata=tuple(auth(server.api_key)))
    return {c.part: c.md5 for c in resp.chunks}


def get_recording(server: RunningServer, rec_id: str) -> recording_pb2.Recording:
    return server.recordings().GetRecording(recording_pb2.GetRecordingRequest(id=rec_id),
                                            metadata=tuple(auth(server.api_key))).recording


def status_name(rec: recording_pb2.Recording) -> str:
    return recording_pb2.RecordingStatus.Name(rec.status).removeprefix("RECORDING_STATUS_").lower()


def stored_chunk(server: RunningServer, rec_id: str, part: int) -> bytes:
    """The bytes the object store holds for chunk ``part``."""
    stream = server.app.store.open(stored_parts(server.app.store, rec_id)[part].key)
    try:
        return stream.read()
    finally:
        stream.close()


def stored_object(server: RunningServer, key: str) -> bytes:
    stream = server.app.store.open(key)
    try:
        return stream.read()
    finally:
        stream.close()


# -- audio checks ----------------------------------------------------------------------------------
def opusdec(data: bytes, tmp: Path, rate: int = RATE) -> np.ndarray:
    """Decode one Ogg Opus stream with opusdec (pre-skip and end trim applied) to int16."""
    tmp.mkdir(parents=True, exist_ok=True)
    src, out = tmp / "in.opus", tmp / "out.wav"
    src.write_bytes(data)
    subprocess.run(["opusdec", "--quiet", "--rate", str(rate), str(src), str(out)],
                   check=True, capture_output=True)
    with wave.open(str(out)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def similarity(reference: bytes | np.ndarray, decoded: np.ndarray) -> tuple[float, float]:
    """(correlation, SNR in dB) of ``decoded`` against the int16 ``reference``."""
    ref = np.frombuffer(reference, "<i2") if isinstance(reference, bytes) else reference
    a, b = ref.astype(np.float64), decoded.astype(np.float64)
    assert len(a) == len(b), f"length {len(b)} != reference {len(a)}"
    corr = float(np.corrcoef(a, b)[0, 1])
    snr = float(10 * np.log10((a ** 2).sum() / max(((a - b) ** 2).sum(), 1e-9)))
    return corr, snr


def opus_packets(data: bytes) -> list[bytes]:
    """The Opus packets of one Ogg Opus stream, in order."""
    reader = OpusStreamReader(io.BytesIO(data))
    packets: list[bytes] = []
    while (page := reader.next_audio_page()) is not None:
        packets += page.packets()
    return packets


def reference_packets(pcm: bytes, chunk_ms: int, complexity: int = 5,
                      bitrate: int = 24_000, dtx: bool = True) -> list[list[bytes]]:
    """Per chunk, the packets the agent's encoder makes from exactly ``pcm`` (DTX on, the
    agent's default)."""
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, complexity=complexity, bitrate=bitrate,
                          dtx=dtx)
    return [opus_packets(c.data) for c in chunker.feed(pcm) + chunker.finish()]


def iter_lines(path: Path) -> Iterator[str]:
    yield from path.read_text().splitlines() if path.exists() else []


def find_in(recording: np.ndarray, reference: bytes) -> tuple[int, float]:
    """Where ``reference`` (int16 PCM) best matches inside ``recording`` (FFT cross-
    correlation), and the correlation coefficient of the aligned samples there."""
    ref = np.frombuffer(reference, "<i2").astype(np.float64)
    rec = recording.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(rec) + len(ref))))
    xcorr = np.fft.irfft(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(xcorr[: len(rec) - len(ref) + 1]))
    window = rec[lag : lag + len(ref)]
    return lag, float(np.corrcoef(window, ref)[0, 1])


class RestartableServer:
    """An in-process server that can be stopped and started again on the same data
    directory, bucket and gRPC port (an outage as the agent sees it)."""

    def __init__(self, weed: Any, data_dir: Path) -> None:
        settings = make_settings(weed, data_dir)
        self.server = start_server(settings)
        self.settings = settings.replace(grpc_port=self.server.app.grpc_port)
        self.target = self.server.grpc_target
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.close()
            self.running = False

    def start(self) -> RunningServer:
        if not self.running:
            fresh = start_server(self.settings)
            # Keep the first project (its devices, recordings and key) for the test.
            self.server = RunningServer(fresh.app, self.server.project_id, self.server.api_key,
                                        fresh.channels)
            self.running = True
        return self.server


class Agents:
    """Agent child processes of one test; whatever still runs at teardown is killed."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[str]:
        proc = spawn_agent(env, *args, log=log)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()
