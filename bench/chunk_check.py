"""Benchmark: what checking chunks on arrival (Ogg pages, CRCs, Opus headers) costs ingest.

Run: ``.venv/bin/python bench/chunk_check.py [--seconds 600] [--chunk-ms 60000] [--rounds 5]``

Encodes SECONDS of real speech into chunk files the way the agent does (16 kHz mono, 24 kbps,
CHUNK_MS per chunk) and receives each one block by block (64 KiB, like the REST gateway's
body pump) through the domain's chunk receiver (``_Received``: size limit, MD5, spool to a
temporary file) with the check off (the baseline, measured in the same run) and on. Prints
MB/s of both, the ratio, and the check's cost per chunk; the median of ROUNDS rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # test kits: real speech audio

from tapedeck.domain.chunks import _Received  # noqa: E402
from tapedeck_agent.encoder import OpusChunker  # noqa: E402

from audio import speech_pcm  # noqa: E402

BLOCK = 64 * 1024


def _blocks(data: bytes) -> list[bytes]:
    return [data[i:i + BLOCK] for i in range(0, len(data), BLOCK)]


def _receive_all(chunks: list[list[bytes]], check: bool) -> float:
    started = time.perf_counter()
    for blocks in chunks:
        received = _Received(blocks, 1 << 30, want_sha256=False, check_audio=check)
        received.file.close()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--chunk-ms", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    chunker = OpusChunker(chunk_duration_ms=args.chunk_ms, bitrate=24_000, complexity=5)
    encoded = chunker.feed(speech_pcm(args.seconds, 16_000)) + chunker.finish()
    chunks = [_blocks(c.data) for c in encoded]
    total = sum(len(c.data) for c in encoded)
    off, on = [], []
    for _ in range(args.rounds):
        off.append(_receive_all(chunks, check=False))
        on.append(_receive_all(chunks, check=True))
    t_off, t_on = statistics.median(off), statistics.median(on)
    mb = total / 1e6
    print(f"{len(encoded)} chunks, {mb:.2f} MB of Ogg Opus ({args.seconds:.0f} s of speech)")
    print(f"receive, check off (baseline): {mb / t_off:8.1f} MB/s")
    print(f"receive, check on:             {mb / t_on:8.1f} MB/s")
    print(f"ratio on/off time: {t_on / t_off:.2f}x; check cost "
          f"{(t_on - t_off) / len(encoded) * 1000:.2f} ms per chunk")


if __name__ == "__main__":
    main()
