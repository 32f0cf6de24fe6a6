"""Benchmark: real-time factor and peak memory of transcribing long Ogg Opus recordings.

Run: ``.venv/bin/python bench/transcribe.py [--minutes 5 30] [--threads 2] [--decoding fast]
[--model SETTING]`` (decoding options A vs B on the same audio: bench/transcribe_options.py)

For each length N (minutes) it makes an N-minute recording of real speech (twelve Asterisk
prompts, 153 words, padded to exactly 60 s, encoded once with opusenc at 24 kbit/s, its
packets repeated N times into one logical stream; cached under ``.cache/bench/``), then:

* baseline (same run): streaming decode + windowing of the file alone (no model);
* transcription: ``transcribe_ogg_opus`` with the default engine, in a fresh subprocess so
  its peak RSS (``VmHWM``) is its own; RSS right after loading the model and as the audio
  advances is reported too, so growth during transcription is visible. Its CPU time is
  printed as well: on a shared machine, audio seconds per CPU second is the steadier number.

Prints audio length, wall times, real-time factors (audio seconds per wall second), the
ratio transcription / decode, word error rate against the repeated reference text, and
memory. Shared, noisy 2-core machine: compare the ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "transcribe"))

import numpy as np  # noqa: E402

from tapedeck.background.transcribe.decode import SAMPLE_RATE, iter_pcm, iter_windows  # noqa: E402

import asterisk_speech as speech  # noqa: E402

_CHILD = r"""
import json, re, resource, sys, time
from pathlib import Path

def hwm_kib():
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

from tapedeck.background.transcribe import transcribe_ogg_opus
from tapedeck.background.transcribe.whisper import decoding_options, load_engine

path, model, cache, threads, decoding = sys.argv[1:6]
started = time.perf_counter()
engine = load_engine(model, Path(cache), int(threads), decoding_options(decoding))
load_s = time.perf_counter() - started
after_load = hwm_kib()
timeline = []  # (audio ms processed, peak RSS so far): shows whether memory plateaus
started, cpu0 = time.perf_counter(), cpu_s()
with open(path, "rb") as f:
    t = transcribe_ogg_opus(f, engine, None, lambda ms: timeline.append((ms, hwm_kib())))
print(json.dumps({"load_s": load_s, "transcribe_s": time.perf_counter() - started,
                  "cpu_s": cpu_s() - cpu0, "duration_ms": t.duration_ms, "text": t.text,
                  "language": t.language, "words": t.word_count,
                  "hwm_after_load_kib": after_load, "hwm_kib": hwm_kib(),
                  "timeline": timeline}))
"""


def make_recording(minutes: int, cache: Path) -> tuple[Path, str]:
    """An N-minute speech recording (cached) and its reference text."""
    track, text = speech.speech_track()
    minute = SAMPLE_RATE * 60
    assert len(track) <= minute
    one = cache / "transcribe-1min.opus"
    if not one.exists():
        padded = np.concatenate([track, np.zeros(minute - len(track), dtype=np.float32)])
        speech.encode_ogg_opus([padded], one)
    path = cache / f"transcribe-{minutes}min.opus"
    if not path.exists():
        speech.repeat_packets(one, minutes * 60, path)
    return path, " ".join([text] * minutes)


def decode_only(path: Path) -> tuple[float, int]:
    """Baseline: wall seconds to decode + window the file, and the samples seen."""
    started = time.perf_counter()
    n = 0
    with path.open("rb") as f:
        for window in iter_windows(iter_pcm(f)):
            n += len(window.samples)
    return time.perf_counter() - started, n


def transcribe_child(path: Path, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, "-c", _CHILD, str(path), args.model, str(args.model_cache),
           str(args.threads), args.decoding]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def report(minutes: int, args: argparse.Namespace) -> None:
    path, reference = make_recording(minutes, args.cache)
    decode_s, n = decode_only(path)
    audio_s = n / SAMPLE_RATE
    r = transcribe_child(path, args)
    transcribe_s = float(str(r["transcribe_s"]))
    hwm, after_load = int(str(r["hwm_kib"])), int(str(r["hwm_after_load_kib"]))
    error = speech.wer(reference, str(r["text"]))
    print(f"== {minutes} min recording: {audio_s:.1f} s of audio, "
          f"{path.stat().st_size / 1e6:.2f} MB Ogg Opus")
    print(f"  baseline decode+window: {decode_s:7.2f} s   RTF {audio_s / decode_s:8.1f}x")
    print(f"  transcription:          {transcribe_s:7.2f} s   RTF {audio_s / transcribe_s:8.1f}x"
          f"   (model load {float(str(r['load_s'])):.2f} s, threads {args.threads}, "
          f"decoding {args.decoding})")
    cpu_s = float(str(r["cpu_s"]))
    print(f"  transcription CPU time: {cpu_s:7.2f} s   = {audio_s / cpu_s:.1f} audio s per CPU s"
          f" (robust to other load on the machine)")
    print(f"  ratio transcription / decode (wall): {transcribe_s / decode_s:.0f}x")
    print(f"  WER {error:.2%} over {len(reference.split())} words; language {r['language']}")
    print(f"  peak RSS {hwm / 1024:.0f} MiB (after model load {after_load / 1024:.0f} MiB, "
          f"growth {(hwm - after_load) / 1024:.0f} MiB)")
    timeline = r["timeline"]
    assert isinstance(timeline, list)
    marks = [timeline[max(0, round(len(timeline) * q) - 1)] for q in (0.1, 0.25, 0.5, 0.75, 1.0)]
    print("  peak RSS as the audio advances: " + ", ".join(
        f"{ms / 60000:.1f} min {kib / 1024:.0f} MiB" for ms, kib in marks), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[5, 30])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoding", default="fast", choices=["fast", "accurate"],
                        help="whisper_decoding profile")
    parser.add_argument("--model", default="", help="whisper_model setting (empty = bundled)")
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".cache")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    for minutes in args.minutes:
        report(minutes, args)


if __name__ == "__main__":
    main()
