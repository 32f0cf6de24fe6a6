"""Benchmark: what Opus DTX saves on a wearable's day, in bytes and in agent CPU.

Run: ``.venv/bin/python bench/dtx.py [--minutes 10] [--repeat 3] [--period 60]``

The audio is a day-like mix (``tests/audio.day_mix_pcm``): every minute 20 % real human
speech (the Asterisk prompts), 40 % near-silence (microphone self-noise) and 40 % low
background noise, 16 kHz mono. The real ``tapedeck-agent upload`` (default settings: 24 kbit/s,
complexity 5, 60 s chunks) encodes it into a spool with no server, once with ``dtx`` off (the
encoder before DTX) and once with it on; the baseline is measured in the same run. Printed:
spool bytes per hour of audio and the agent process's CPU seconds per hour of audio (user +
system, the median of ``--repeat`` runs, process start included), plus the Opus encoding
alone in this process, each as a ratio DTX / no DTX.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # test kits: real speech audio

from tapedeck_agent.encoder import OpusChunker  # noqa: E402
from tapedeck_agent.spool import Spool  # noqa: E402

from audio import day_mix_pcm, speech_pcm  # noqa: E402

RATE = 16_000


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return path


def agent_run(wav: Path, spool: Path, dtx: bool) -> tuple[float, int]:
    """CPU seconds of one ``tapedeck-agent upload`` (no server: it only spools) and the
    bytes it spooled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPEDECK_AGENT_")}
    env.update(TAPEDECK_AGENT_SPOOL_DIR=str(spool), TAPEDECK_AGENT_DTX="1" if dtx else "0")
    proc = subprocess.Popen([sys.executable, "-m", "tapedeck_agent", "upload", str(wav),
                             "--timeout", "0", "-q"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 75:  # 75: safe in the spool, not uploaded (there is no server)
        raise SystemExit(f"agent exited {proc.returncode}: {stderr.strip()}")
    spooled = Spool(spool, 1 << 40).usage_bytes()
    return usage.ru_utime + usage.ru_stime, spooled


def encode(pcm: bytes, dtx: bool) -> tuple[float, int]:
    """CPU seconds of the agent's encoder alone on ``pcm`` (in this process), and bytes."""
    start = time.process_time()
    chunker = OpusChunker(chunk_duration_ms=60_000, complexity=5, bitrate=24_000, dtx=dtx)
    chunks = chunker.feed(pcm) + chunker.finish()
    return time.process_time() - start, sum(len(c.data) for c in chunks)


def kbps(size: int, pcm: bytes) -> float:
    return size * 8 / (len(pcm) / 2 / RATE) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="audio per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting")
    parser.add_argument("--period", type=float, default=60.0,
                        help="seconds of one speech/silence/noise cycle (libopus's VAD takes "
                             "some seconds to settle after each change of the background)")
    args = parser.parse_args()
    seconds = args.minutes * 60
    pcm = day_mix_pcm(seconds, period_s=args.period)
    per_hour = 3600 / seconds
    results: dict[bool, tuple[float, int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dtx-") as tmp:
        wav = write_wav(Path(tmp) / "day.wav", pcm)
        for dtx in (False, True):
            cpus, sizes, encs = [], [], []
            for i in range(args.repeat):
                cpu, size = agent_run(wav, Path(tmp) / f"spool-{dtx}-{i}", dtx)
                cpus.append(cpu)
                sizes.append(size)
                encs.append(encode(pcm, dtx)[0])
            results[dtx] = (statistics.median(cpus), int(statistics.median(sizes)),
                            statistics.median(encs))
    print(f"day-like mix: {args.minutes:g} min in {args.period:g} s cycles (20 % speech, 40 % "
          f"near-silence, 40 % low noise), 16 kHz mono, 24 kbit/s, complexity 5; median of "
          f"{args.repeat}")
    print(f"{'':10} {'MB per hour':>12} {'kbit/s':>8} {'agent CPU s/h':>14} "
          f"{'encoder CPU s/h':>16}")
    for dtx in (False, True):
        cpu, size, enc = results[dtx]
        print(f"{'DTX on' if dtx else 'DTX off':10} {size * per_hour / 1e6:12.2f} "
              f"{size * 8 / seconds / 1000:8.2f} {cpu * per_hour:14.1f} {enc * per_hour:16.1f}")
    talk = speech_pcm(seconds * 0.2)
    quiet = day_mix_pcm(seconds * 0.8, speech_share=0.0, period_s=args.period * 0.8)
    parts = {dtx: (kbps(encode(talk, dtx)[1], talk), kbps(encode(quiet, dtx)[1], quiet))
             for dtx in (False, True)}
    print(f"by part (encoder alone), kbit/s: speech {parts[False][0]:.2f} off, "
          f"{parts[True][0]:.2f} on; near-silence + low noise {parts[False][1]:.2f} off, "
          f"{parts[True][1]:.2f} on ({parts[True][1] / parts[True][0]:.2f}x of speech)")
    (c0, s0, e0), (c1, s1, e1) = results[False], results[True]
    print(f"ratio DTX on / off: bytes {s1 / s0:.2f}x, agent CPU {c1 / c0:.2f}x, "
          f"encoder CPU {e1 / e0:.2f}x")


if __name__ == "__main__":
    main()
