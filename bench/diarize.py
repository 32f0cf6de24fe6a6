"""Benchmark: diarization CPU time as a ratio of transcription CPU time, and its peak memory.

Run: ``.venv/bin/python bench/diarize.py [--minutes 5 30] [--threads 2] [--der]``

For each length N (minutes) it builds an N-minute conversation of three real voices
(``tests/voicekit.py``: Asterisk prompts of Allison, June and Carlo, turns of 2-30 s),
encodes it once with opusenc at 24 kbit/s (cached under ``.cache/bench/``), then in fresh
subprocesses (so each peak RSS, ``VmHWM``, is its own):

* baseline (same run): the transcription job's engine, ``transcribe_ogg_opus`` with
  whisper-base (``--threads``), its CPU time;
* diarization: ``Diarizer.diarize`` over the same file decoded window by window, as the job
  does it (its CPU time, peak RSS after loading the encoder and at the end, DER against the
  reference with a 250 ms collar, speakers found).

Prints CPU times and the ratio diarization / transcription (target <= 0.20) and memory.
``--der`` also runs the 13-conversation DER set (1-3 speakers) and prints DER and counts;
``--der-extended`` runs the harder generated set (all voice pairs and triples, 2-4 s turns,
60-120 s monologues, one-voice recordings) in two halves of disjoint seeds: ``tune`` (the
half thresholds may be chosen on) and ``heldout`` (report it separately, never tune on it).
Shared, noisy 2-core machine: compare the ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "transcribe")]

import asterisk_speech as speech  # noqa: E402
import voicekit as vk  # noqa: E402

_COMMON = r"""
import json, re, resource, sys, time
from pathlib import Path

def hwm_kib():
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
"""

_TRANSCRIBE = _COMMON + r"""
from tapedeck.background.transcribe import transcribe_ogg_opus
from tapedeck.background.transcribe.whisper import load_engine

path, cache, threads = sys.argv[1:4]
engine = load_engine("", Path(cache), int(threads))
cpu0 = cpu_s()
with open(path, "rb") as f:
    t = transcribe_ogg_opus(f, engine, None)
print(json.dumps({"cpu_s": cpu_s() - cpu0, "words": t.word_count, "hwm_kib": hwm_kib()}))
"""

_DIARIZE = _COMMON + r"""
from tapedeck.diarize import Diarizer
from tapedeck.background.transcribe.decode import iter_pcm, iter_windows

path = sys.argv[1]
d = Diarizer()
after_load = hwm_kib()
cpu0 = cpu_s()
with open(path, "rb") as f:
    r = d.diarize((w.start, w.samples) for w in iter_windows(iter_pcm(f)))
print(json.dumps({"cpu_s": cpu_s() - cpu0, "hwm_after_load_kib": after_load,
                  "hwm_kib": hwm_kib(), "speakers": len(r.speakers),
                  "turns": [(t.start_ms / 1000, t.end_ms / 1000, t.label) for t in r.turns]}))
"""


def make_conversation(minutes: int, cache: Path) -> tuple[Path, vk.Conversation]:
    """An N-minute three-voice conversation (cached file and its reference)."""
    cache.mkdir(parents=True, exist_ok=True)
    path, ref = cache / f"diarize-{minutes}min.opus", cache / f"diarize-{minutes}min.pkl"
    if path.exists() and ref.exists():
        return path, pickle.loads(ref.read_bytes())
    turns = max(3, minutes * 60 // 14)
    conv = vk.conversation(["allison", "june", "carlo"], turns, 1000 + minutes)
    speech.encode_ogg_opus([conv.pcm], path)
    ref.write_bytes(pickle.dumps(conv))
    return path, conv


def child(script: str, *args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", script, *args], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def report(minutes: int, args: argparse.Namespace) -> None:
    path, conv = make_conversation(minutes, args.cache)
    audio_s = len(conv.pcm) / vk.RATE
    t = child(_TRANSCRIBE, str(path), str(args.model_cache), str(args.threads))
    d = child(_DIARIZE, str(path))
    t_cpu, d_cpu = float(str(t["cpu_s"])), float(str(d["cpu_s"]))
    turns = [(float(a), float(b), str(c)) for a, b, c in d["turns"]]  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        der = vk.der(conv, turns)
    print(f"== {minutes} min conversation: {audio_s:.1f} s of audio, 3 voices, "
          f"{len(conv.turns)} turns")
    print(f"  baseline transcription CPU: {t_cpu:8.2f} s  (whisper-base, {args.threads} threads,"
          f" {t['words']} words)")
    print(f"  diarization CPU:            {d_cpu:8.2f} s  ({audio_s / d_cpu:.0f} audio s per CPU s)")
    print(f"  ratio diarization / transcription CPU: {d_cpu / t_cpu:.3f}  (target <= 0.20)")
    print(f"  diarization peak RSS: {int(str(d['hwm_kib'])) / 1024:.0f} MiB "
          f"(after loading the encoder: {int(str(d['hwm_after_load_kib'])) / 1024:.0f} MiB)")
    print(f"  speakers found: {d['speakers']} (true 3), DER {der:.3f}")


CASES = [(["allison", "carlo"], 8, 1), (["june", "menardi", "irina"], 10, 2),
         (["allison", "june"], 8, 3), (["carlo", "irina", "allison"], 9, 4),
         (["menardi", "june"], 8, 5), (["allison"], 3, 6), (["irina"], 3, 7),
         (["june", "irina"], 6, 8), (["allison", "june", "irina"], 9, 9),
         (["menardi", "carlo", "allison"], 8, 10), (["menardi"], 3, 11), (["carlo"], 3, 12),
         (["june"], 3, 13)]


Case = tuple[str, list[str], int, int, float, float]  # kind, voices, turns, seed, min, max s


def extended_cases(half: str) -> list[Case]:
    """The harder set; ``half`` "tune" (seeds 100-170) or "heldout" (seeds 200-270)."""
    import itertools
    import random

    voices = list(vk.VOICES)
    base = 100 if half == "tune" else 200
    rng = random.Random(base)
    out: list[Case] = []
    for i, pair in enumerate(itertools.combinations(voices, 2)):
        p = list(pair)
        rng.shuffle(p)
        out.append(("pair", p, 8, base + i, 2.0, 30.0))
    for i, tri in enumerate(itertools.combinations(voices, 3)):
        p = list(tri)
        rng.shuffle(p)
        out.append(("triple", p, 9, base + 20 + i, 2.0, 30.0))
    for i in range(6):
        out.append(("short", rng.sample(voices, 2 if i < 3 else 3), 30, base + 40 + i, 2.0, 4.0))
    for i in range(3):
        out.append(("monologue", rng.sample(voices, 2), 3, base + 50 + i, 60.0, 120.0))
    out += [("single", [v], 4, base + 60 + i, 10.0, 30.0) for i, v in enumerate(voices)]
    out.append(("single-long", [rng.choice(voices)], 10, base + 70, 25.0, 30.0))
    return out


def der_set(cases: list[Case] | None = None) -> None:
    """DER and speaker count on ``cases`` (default: the 13 conversations, 1-3 voices,
    turns 2-30 s)."""
    from tapedeck.diarize import Diarizer, pcm_blocks

    d = Diarizer()
    good = 0
    todo = cases or [("base", v, t, s, 2.0, 30.0) for v, t, s in CASES]
    for kind, voices, turns, seed, lo, hi in todo:
        conv = vk.conversation(voices, turns, seed, min_turn=lo, max_turn=hi)
        r = d.diarize(pcm_blocks(conv.pcm))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            der = vk.der(conv, [(t.start_ms / 1000, t.end_ms / 1000, t.label) for t in r.turns])
        ok = len(r.speakers) == len(voices) and der <= 0.15
        good += ok
        print(f"  {kind:11s} {'+'.join(voices):28s} {len(conv.pcm) / vk.RATE:6.1f} s  found "
              f"{len(r.speakers)}/{len(voices)}  DER {der:.3f}{'' if ok else '  <- miss'}")
    print(f"  {good}/{len(todo)} with the count right and DER <= 0.15")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, nargs="+", default=[5, 30])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--der", action="store_true", help="also run the DER set")
    ap.add_argument("--der-extended", choices=["tune", "heldout"], nargs="+", default=[],
                    help="also run the harder generated set's halves")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--model-cache", type=Path, default=ROOT / ".cache")
    args = ap.parse_args()
    for minutes in args.minutes:
        report(minutes, args)
    if args.der:
        print("== DER set")
        der_set()
    for half in args.der_extended:
        print(f"== extended DER set, {half} half")
        der_set(extended_cases(half))


if __name__ == "__main__":
    main()
