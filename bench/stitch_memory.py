"""Benchmark: the stitcher's memory with big parts, streaming vs whole-chunk reads.

Run: ``.venv/bin/python bench/stitch_memory.py [--parts 3] [--mib 100]``

Starts its own SeaweedFS and SQLite file in a temporary directory, builds one valid Ogg Opus
part of ``--mib`` MiB (real Opus packets of speech, repeated with continuous granules), and
finalizes two recordings of ``--parts`` such parts. Each recording's ``stitch`` job then runs
in a fresh child process (a real ``Worker``):

* baseline: the stitcher as it was before issue 15 — every chunk read whole into memory,
  with two more prefetched (``verified_chunks`` swapped for that implementation);
* streaming: today's ``tapedeck.background.stitch`` (chunks streamed from the pinned objects).

Prints, for each, the peak RSS growth during the job (VmHWM - VmRSS before it) and the job
time, and the ratios streaming / baseline (memory target: a constant, far below one part).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent

from tapedeck.app import App  # noqa: E402
from tapedeck.auth import create_project  # noqa: E402
from tapedeck.domain.objects import new_chunk_key  # noqa: E402
from tapedeck.domain.recordings import NewRecording  # noqa: E402
from tapedeck.oggopus import OggStreamWriter, iter_packets  # noqa: E402
from tapedeck.oggopus.opus import OpusHead, OpusTags, packet_duration  # noqa: E402
from tapedeck.settings import Settings  # noqa: E402

MiB = 1024 * 1024


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def speech_packets() -> list[bytes]:
    """Real Opus packets: 10 s of speech from the agent's encoder (one continuous stream)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from stitchkit import whole_encode

    data = whole_encode(10.0, bitrate=64_000)
    return [p.data for p in iter_packets(io.BytesIO(data))][2:]  # skip OpusHead/OpusTags


def big_part(path: Path, size: int) -> int:
    """A valid Ogg Opus file of about ``size`` bytes (packets repeated, granules continuous);
    returns its duration in ms."""
    packets = speech_packets()
    with path.open("wb") as f:
        w = OggStreamWriter(f, serial=0x5EED)
        w.write_packet(OpusHead(channels=1, pre_skip=312, input_sample_rate=16_000).to_bytes(), 0)
        w.flush()
        w.write_packet(OpusTags().to_bytes(), 0)
        w.flush()
        granule, n = 0, 0
        while w.bytes_written + sum(len(p) for p in packets[:50]) < size:
            packet = packets[n % len(packets)]
            granule += packet_duration(packet)
            w.write_packet(packet, granule)
            n += 1
            if n % 50 == 0:
                w.flush()
        w.flush(eos=True)
    return (granule - 312) * 1000 // 48_000


# -- the baseline: the stitcher's chunk reader before issue 15 ----------------------------------

def whole_chunks(store: Any, chunks: list[Any], checksum_md5: str | None,
                 before_each: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """Every chunk read whole (``read()``), two more prefetched by a thread, as before."""
    from tapedeck.infra.jobs import JobFailed

    def fetch(key: str) -> bytes:
        stream = store.open(key)
        try:
            return bytes(stream.read())
        finally:
            stream.close()

    whole = hashlib.md5()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future[bytes]] = deque()
        for index in range(len(chunks)):
            while len(pending) <= 2 and index + len(pending) < len(chunks):
                pending.append(pool.submit(fetch, chunks[index + len(pending)].key))
            if before_each is not None:
                before_each()
            data = pending.popleft().result()
            whole.update(data)
            yield io.BytesIO(data)
    if checksum_md5 is not None and whole.hexdigest() != checksum_md5:
        raise JobFailed("checksum_mismatch", "baseline checksum")


def settings_of(fields: dict[str, Any]) -> Settings:
    return Settings(**{**fields, "data_dir": Path(fields["data_dir"])})


def child(mode: str, env: dict[str, str]) -> None:
    """Run one stitch job in this process; print its RSS growth and time as JSON."""
    import tapedeck.background.stitch.handler as stitch_handler
    from tapedeck.background.worker import Worker, queue_for

    if mode == "baseline":  # the handler's own reference is what its stitch reads through
        stitch_handler.verified_chunks = whole_chunks  # type: ignore[assignment]
    app = App.open(settings_of(json.loads(env["settings"])))
    worker = Worker(queue_for(app.runtime), {"stitch": stitch_handler.build_handler(app.runtime)},
                    f"bench-{mode}")
    before = status_kib("VmRSS")
    start = time.perf_counter()
    outcome = worker.run_once()
    seconds = time.perf_counter() - start
    print(json.dumps({"outcome": outcome, "growth_kib": status_kib("VmHWM") - before,
                      "seconds": seconds}))
    app.close(grace=1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, {"settings": sys.stdin.read()})
        return
    from tapedeck.infra.weed import ManagedWeed

    with tempfile.TemporaryDirectory() as tmp, ManagedWeed(Path(tmp) / "weed") as weed:
        part = Path(tmp) / "part.opus"
        part_ms = big_part(part, args.mib * MiB)
        fields = {"data_dir": str(Path(tmp) / "data"), "grpc_port": 0, "http_port": 0,
                  "s3_endpoint": weed.endpoint, "s3_access_key": weed.access_key,
                  "s3_secret_key": weed.secret_key, "s3_bucket": "bench-memory",
                  "max_chunk_bytes": 2 * args.mib * MiB}
        app = App.open(settings_of(fields))
        _, key = create_project(app.db, app.clock)
        p = app.domain.auth.authenticate(f"Bearer {key}")
        for _ in ("baseline", "streaming"):
            rec = app.domain.recordings.create(p, NewRecording(streaming=True)).recording.id
            for n in range(1, args.parts + 1):  # as a presigned PUT would: straight to the store
                with part.open("rb") as f:
                    app.store.put(new_chunk_key(rec, n), f, -1, content_type="audio/ogg")
            app.domain.recordings.finalize(p, rec, args.parts, args.parts * part_ms, None)
        app.close(grace=1.0)
        results = {}
        for mode in ("baseline", "streaming"):
            out = subprocess.run([sys.executable, __file__, "--child", mode],
                                 input=json.dumps(fields), capture_output=True, text=True,
                                 check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.parts} parts of {args.mib} MiB each (valid Ogg Opus), one stitch job each:")
    for mode, r in results.items():
        print(f"  {mode:9s} {r['outcome']:9s} peak RSS growth {r['growth_kib'] / 1024:8.1f} MiB"
              f"   {r['seconds']:6.2f} s")
    base, new = results["baseline"], results["streaming"]
    print(f"  ratio streaming/baseline: memory {new['growth_kib'] / base['growth_kib']:.3f}, "
          f"time {new['seconds'] / base['seconds']:.2f}")


if __name__ == "__main__":
    main()
