"""Benchmark: remux (stitch) 60 minutes of Opus chunks vs a plain byte copy of them.

Run: ``.venv/bin/python bench/stitch.py [--runs N] [--minutes M]``

Makes M minutes (default 60) of real speech (Asterisk prompts, looped) at 16 kHz, encodes it
with ONE continuous encoder into 5-minute chunk files at 24 kbps (``OpusChunker``), caches them
under ``.cache/bench/`` (encoding an hour takes ~40 s), then times, median of N runs:

* baseline: read every chunk file, concatenate, write one file (a chained Ogg stream);
* remux: ``tapedeck.oggopus.remux`` from the chunk files into one file (one logical stream);
* probe: ``tapedeck.oggopus.probe`` of the stitched file (full validation, every CRC).

Prints both times and the ratio. Both write to a temporary file without fsync, so the
numbers compare the CPU and page-cache work of the two; the output of remux is checked with
``probe`` once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test audio helper (real speech via sox)

from tapedeck.oggopus import probe, remux  # noqa: E402
from tapedeck_agent.encoder import OpusChunker  # noqa: E402

from audio import iter_speech_pcm  # noqa: E402

CHUNK_MS = 300_000
BITRATE = 24_000
SERIAL = 0x7A9EDEC


def make_chunks(minutes: int, cache: Path) -> list[Path]:
    """The chunk files for ``minutes`` of speech, encoded once and cached."""
    directory = cache / f"stitch-{minutes}min-{BITRATE}bps-{CHUNK_MS}ms"
    manifest = directory / "manifest.json"
    if manifest.exists():
        names = json.loads(manifest.read_text())["chunks"]
        paths = [directory / name for name in names]
        if all(p.exists() for p in paths):
            return paths
    directory.mkdir(parents=True, exist_ok=True)
    print(f"encoding {minutes} min of speech into {directory} (cached for next runs) ...",
          flush=True)
    started = time.perf_counter()
    chunker = OpusChunker(chunk_duration_ms=CHUNK_MS, bitrate=BITRATE, serial=SERIAL)
    paths = []
    for pcm in iter_speech_pcm(minutes * 60.0, block_seconds=60.0):
        for chunk in chunker.feed(pcm):
            paths.append(_save(directory, chunk.part, chunk.data))
    for chunk in chunker.finish():
        paths.append(_save(directory, chunk.part, chunk.data))
    manifest.write_text(json.dumps({"chunks": [p.name for p in paths]}))
    print(f"encoded in {time.perf_counter() - started:.1f} s", flush=True)
    return paths


def _save(directory: Path, part: int, data: bytes) -> Path:
    path = directory / f"chunk_{part}.opus"
    path.write_bytes(data)
    return path


def byte_copy(chunks: list[Path], out: Path) -> None:
    """Baseline: read + concatenate + write."""
    with out.open("wb") as sink:
        sink.write(b"".join(p.read_bytes() for p in chunks))


def remux_files(chunks: list[Path], out: Path) -> None:
    """The stitcher, streaming from the chunk files to ``out``."""
    def streams() -> Iterator[BinaryIO]:
        for path in chunks:
            with path.open("rb") as stream:
                yield stream

    with out.open("wb") as sink:
        remux(streams(), sink)


def probe_file(path: Path) -> None:
    """Parse and validate a whole file (CRC of every page, packet durations, granules)."""
    with path.open("rb") as stream:
        probe(stream)


def median_time(fn: Callable[[], None], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    chunks = make_chunks(args.minutes, args.cache)
    size = sum(p.stat().st_size for p in chunks)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.opus"
        remux_files(chunks, out)  # warm the page cache and check the result once
        with out.open("rb") as stream:
            info = probe(stream)
        copy_s = median_time(lambda: byte_copy(chunks, out), args.runs)
        remux_s = median_time(lambda: remux_files(chunks, out), args.runs)
        probe_s = median_time(lambda: probe_file(out), args.runs)
        stitched_mb = out.stat().st_size / 1e6
    print(f"input: {len(chunks)} chunks, {size / 1e6:.2f} MB, {args.minutes} min")
    print(f"stitched: {info.duration_ms} ms, {info.packets} packets, {info.pages} pages")
    print(f"byte copy (read+concat+write): {copy_s * 1000:8.1f} ms (median of {args.runs})")
    print(f"remux (one logical stream):    {remux_s * 1000:8.1f} ms (median of {args.runs})")
    print(f"ratio remux / byte copy:       {remux_s / copy_s:8.1f}x")
    print(f"probe (validate) the {stitched_mb:.1f} MB result: {probe_s * 1000:8.1f} ms "
          f"({probe_s / copy_s:.1f}x byte copy)")


if __name__ == "__main__":
    main()
