"""Benchmark: serving a byte range of a stored recording — a ranged store read
(``ObjectStore.open(key, offset, length)``, one S3 ``Range`` GET) vs the old way (open the
whole object, read and discard the prefix, then read the range).

Run: ``.venv/bin/python bench/ranged_read.py [--runs N] [--mib M]``

Starts its own SeaweedFS (``weed mini``) in a temporary directory, stores one M MiB object
(default 64: about 6 h of 24 kbps Opus) and, for N runs (default 7; median reported),
interleaved, reads 256 KiB ranges the way a browser's ``<audio>`` seeks: at the start, the
middle and the end of the object. Prints both times per position and their ratio
(discard / ranged); the ranged read should stay flat while the discard grows with the offset.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tapedeck.infra.store import ObjectStore
from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.weed import ManagedWeed

RANGE = 256 * 1024
BLOCK = 256 * 1024


def discard_then_read(store: ObjectStore, key: str, first: int, length: int) -> bytes:
    """The old audio route: read and drop ``first`` bytes, then read the range."""
    stream = store.open(key)
    try:
        skip = first
        while skip:
            skip -= len(stream.read(min(BLOCK, skip))) or skip
        return stream.read(length)
    finally:
        stream.close()


def ranged(store: ObjectStore, key: str, first: int, length: int) -> bytes:
    stream = store.open(key, first, length)
    try:
        return stream.read()
    finally:
        stream.close()


def timed(fn: Callable[[], bytes]) -> tuple[float, bytes]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    data = os.urandom(args.mib * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp, ManagedWeed(Path(tmp) / "weed") as weed:
        store = S3Store(weed.endpoint, weed.access_key, weed.secret_key, "bench-ranged",
                        secure=False, region="us-east-1")
        store.ensure_bucket()
        store.put("audio.opus", io.BytesIO(data), -1)  # multipart, as the stitcher writes
        ranged(store, "audio.opus", 0, RANGE)  # warm the connection pool
        positions = {"start": 0, "middle": len(data) // 2, "end": len(data) - RANGE}
        print(f"object {args.mib} MiB, range {RANGE // 1024} KiB, {args.runs} runs (median)")
        print(f"{'position':>8} {'discard ms':>11} {'ranged ms':>10} {'ratio':>7}")
        for name, first in positions.items():
            old, new = [], []
            for _ in range(args.runs):
                t_old, a = timed(lambda f=first: discard_then_read(store, "audio.opus", f, RANGE))
                t_new, b = timed(lambda f=first: ranged(store, "audio.opus", f, RANGE))
                assert a == b == data[first:first + RANGE]
                old.append(t_old)
                new.append(t_new)
            o, n = statistics.median(old), statistics.median(new)
            print(f"{name:>8} {o * 1000:>11.1f} {n * 1000:>10.1f} {o / n:>6.1f}x")
        store.close()


if __name__ == "__main__":
    main()
