"""Benchmark: decoding options A vs B on the same real speech, measured in the same run.

Run: ``.venv/bin/python bench/transcribe_options.py [--minutes 3] [--variants accurate fast]
[--paths whole pieces] [--audio speech mix]``

Audio (real human speech: the Asterisk prompts, all different, with their reference texts;
encoded once with opusenc at 24 kbit/s, cached under ``.cache/bench/``):

* ``speech``: ``--minutes`` of continuous speech (prompts back to back, 0.6 s apart);
* ``mix``: a day-like mix, ``2.5 x --minutes`` long: every minute ~12 s of speech (20 %),
  then microphone self-noise and quiet-room noise (as ``tests/audio.day_mix_pcm``).

Paths: ``whole`` = ``transcribe_ogg_opus`` (the whole-file job: 20-30 s windows of the
stitched file, VAD inside each engine call); ``pieces`` = ``transcribe_piece`` on the same
file as one chunk (the live lane: Silero VAD first, speech packed into 30 s windows, a
batching engine gets them in groups). Variants are ``WhisperOptions`` + CPU threads; the
FIRST variant is the baseline every ratio is measured against.

Printed per (audio, path, variant): wall and CPU seconds (``getrusage``: all threads of this
process), real-time factors (audio s per wall s; audio s per CPU s = what a fleet pays),
the same over speech only (the audio Silero VAD keeps), the WER against the reference, and
the speed-up in CPU time against the baseline. The machine is shared: CPU-time ratios are the
steady numbers; ``uptime`` load is printed with them.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "transcribe"))

import numpy as np  # noqa: E402

from tapedeck.background.transcribe import TranscriptionEngine, transcribe_ogg_opus  # noqa: E402
from tapedeck.background.transcribe.decode import SAMPLE_RATE  # noqa: E402
from tapedeck.background.transcribe.live import decode, speech_spans, transcribe_piece  # noqa: E402
from tapedeck.background.transcribe.whisper import PROFILES, WhisperEngine, WhisperOptions  # noqa: E402

import asterisk_speech as speech  # noqa: E402

#: name -> (CPU threads, options). ``accurate`` is the former default, ``fast`` the new one
#: (``whisper_decoding``); the others are the steps between them.
VARIANTS: dict[str, tuple[int, WhisperOptions]] = {
    "accurate": (2, PROFILES["accurate"]),
    "beam1": (2, replace(PROFILES["accurate"], beam_size=1)),
    "greedy": (2, WhisperOptions(batch_size=0, batch_timestamps=True)),
    "batch8-ts": (2, WhisperOptions(batch_timestamps=True)),
    "batch4": (2, WhisperOptions(batch_size=4)),
    "fast": (2, PROFILES["fast"]),
    "greedy-1t": (1, WhisperOptions(batch_size=0, batch_timestamps=True)),
    "fast-1t": (1, PROFILES["fast"]),
}


@dataclass(frozen=True)
class Audio:
    name: str
    data: bytes
    reference: str
    seconds: float
    speech_seconds: float


def _prompts() -> list[tuple[str, str]]:
    """Every prompt whose reference is plain words (no digits or markup), in name order."""
    refs = speech.reference_texts()
    ok = [(n, t) for n, t in sorted(refs.items())
          if t and all(c.isalpha() or c in " .,'?!-" for c in t)]
    return [(n, t) for n, t in ok if (speech.sounds_dir() / f"{n}.wav").is_file()]


def _noise(seconds: float, level: float, seed: int) -> speech.Samples:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, level / 32768, round(seconds * SAMPLE_RATE))).astype(np.float32)


def build_audio(kind: str, minutes: float, cache: Path) -> Audio:
    """The ``speech`` or ``mix`` recording (module docstring), cached with its reference."""
    gap = np.zeros(int(0.6 * SAMPLE_RATE), dtype=np.float32)
    prompts = iter(_prompts())
    blocks: list[speech.Samples] = []
    texts: list[str] = []
    total = round(minutes * (2.5 if kind == "mix" else 1.0)) * 60 * SAMPLE_RATE
    size, period = 0, 0
    while size < total:  # whole prompts only, so the reference is exactly what is heard
        budget = 12 * SAMPLE_RATE if kind == "mix" else total
        used = 0
        for name, text in prompts:
            pcm = speech.read_prompt(name)
            if used + len(pcm) + len(gap) > budget:
                break
            blocks += [pcm, gap]
            texts.append(text)
            used += len(pcm) + len(gap)
            if used >= budget:
                break
        if kind != "mix":
            break
        # the rest of the minute: half microphone self-noise, half a quiet room
        quiet = (60 * SAMPLE_RATE - used) / 2 / SAMPLE_RATE
        blocks += [_noise(quiet, 3, 2 * period), _noise(quiet, 25, 2 * period + 1)]
        size += 60 * SAMPLE_RATE
        period += 1
    samples = np.concatenate(blocks)
    path = cache / f"options2-{kind}-{minutes:g}min.opus"
    if not path.exists():
        speech.encode_ogg_opus([samples], path)
    data = path.read_bytes()
    pcm = decode(data)
    voiced = sum(e - s for s, e in speech_spans(pcm)) / SAMPLE_RATE
    return Audio(kind, data, " ".join(texts), len(pcm) / SAMPLE_RATE, voiced)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(path: str, engine: TranscriptionEngine, audio: Audio) -> tuple[float, float, str]:
    """(wall s, CPU s, text) of one transcription."""
    wall0, cpu0 = time.perf_counter(), cpu_s()
    if path == "whole":
        text = transcribe_ogg_opus(io.BytesIO(audio.data), engine).text
    else:
        piece = transcribe_piece(engine, audio.data, None, None)
        text = " ".join(s.text for s in piece.segments)
    return time.perf_counter() - wall0, cpu_s() - cpu0, text


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--variants", nargs="+", default=["accurate", "greedy", "fast"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--paths", nargs="+", default=["whole", "pieces"],
                        choices=["whole", "pieces"])
    parser.add_argument("--audio", nargs="+", default=["speech", "mix"],
                        choices=["speech", "mix"])
    parser.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "whisper-base")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    if not (args.model / "model.bin").is_file():
        raise SystemExit(f"no model in {args.model}: run scripts/fetch-model")
    args.cache.mkdir(parents=True, exist_ok=True)
    engines = {name: WhisperEngine(str(args.model), "whisper-base", *VARIANTS[name])
               for name in args.variants}
    print(f"whisper-base int8; load average at start {os.getloadavg()[0]:.2f} (2 cores, shared)")
    for kind in args.audio:
        audio = build_audio(kind, args.minutes, args.cache)
        print(f"== {kind}: {audio.seconds:.0f} s of audio, {audio.speech_seconds:.0f} s of it "
              f"speech by Silero VAD ({audio.speech_seconds / audio.seconds:.0%}), "
              f"{len(audio.reference.split())} reference words")
        for path in args.paths:
            base_cpu: float | None = None
            for name in args.variants:
                wall, cpu, text = run(path, engines[name], audio)
                base_cpu = base_cpu or cpu
                threads, _ = VARIANTS[name]
                print(f"  {path:6} {name:10} wall {wall:7.1f} s  CPU {cpu:7.1f} s  "
                      f"RTF {audio.seconds / wall:5.1f}x wall, {audio.seconds / cpu:5.1f}x CPU"
                      f" ({audio.speech_seconds / cpu:4.1f}x CPU over speech)  "
                      f"WER {speech.wer(audio.reference, text):6.2%}  "
                      f"CPU speed-up vs {args.variants[0]} {base_cpu / cpu:4.2f}x  "
                      f"[{threads}t, load {os.getloadavg()[0]:.1f}]", flush=True)


if __name__ == "__main__":
    main()
