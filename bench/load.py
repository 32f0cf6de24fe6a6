"""Load test: N simulated devices against one node, time compressed.

Run: ``.venv/bin/python bench/load.py [--devices 8,16,32] [--period 1.0] [--chunks 10]``

Starts a real ``weed mini`` and ``tapedeck api`` (gRPC + REST gateway, the usual child
process, as ``bench/ingest.py`` does; loopback only). For each N in ``--devices``, N device
threads (each with its own device token and gRPC channel, like the device agent) each
create a streaming recording, upload ``--chunks`` real Ogg Opus chunks through
``UploadChunk`` with ``size_bytes`` and MD5 (one every ``--period`` seconds: the device's
"5 minutes", time compressed; device starts are spread over one period) and finalize. Each
chunk is ``--chunk-s`` seconds of 24 kbps Opus (default 300 s ≈ 0.9 MB, a real 5-minute
chunk) and the server checks it (``check_chunks``). Per N it prints chunks/s, p50/p99 of
chunk upload and of finalize latency, errors, the CPU of each process (tapedeck, weed) as a
share of one core, and the bottleneck. Then the largest N that met the targets (finalize p99
≤ 50 ms, upload p99 ≤ 200 ms, 0 errors) and what it means at the real rate of one chunk per
device per 5 minutes: N x 300 s / period real devices. Bounded: every level runs
``--chunks`` periods plus the start spread; a level that misses the targets ends the sweep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test kit: child-process server, Opus chunks

from tapedeck.auth import create_project, issue_device_token  # noqa: E402
from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.infra.db import Database  # noqa: E402
from tapedeck.infra.weed import ManagedWeed  # noqa: E402
from tapedeck.v1 import chunk_pb2_grpc, recording_pb2, recording_pb2_grpc  # noqa: E402

from serverkit import ChildServer, auth, chunk_messages, make_settings, spawn_server  # noqa: E402
from stitchkit import continuous_chunks  # noqa: E402

REAL_PERIOD_S = 300.0
UPLOAD_P99_MS = 200.0
FINALIZE_P99_MS = 50.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    """What one sweep level measured."""

    devices: int
    uploads_ms: list[float] = field(default_factory=list)
    finalizes_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self) -> bool:
        return (not self.errors and p(self.uploads_ms, 99) <= UPLOAD_P99_MS
                and p(self.finalizes_ms, 99) <= FINALIZE_P99_MS)


def p(samples: list[float], q: int) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of ``pid`` and its live children (from /proc)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: ppid
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def device(target: str, token: str, chunks: list[bytes], period: float, delay: float,
           level: Level, duration_ms: int) -> None:
    """One device: create, a chunk every ``period`` s, finalize; latencies into ``level``."""
    time.sleep(delay)
    channel = grpc.insecure_channel(target)
    md = auth(token)
    try:
        recs = recording_pb2_grpc.RecordingServiceStub(channel)
        up = chunk_pb2_grpc.ChunkServiceStub(channel)
        rec_id = recs.CreateRecording(recording_pb2.CreateRecordingRequest(streaming=True),
                                      metadata=md, timeout=30).recording.id
        due = time.monotonic()
        for part, data in enumerate(chunks, start=1):
            due += period
            started = time.perf_counter()
            up.UploadChunk(chunk_messages(rec_id, part, data), metadata=md, timeout=30)
            took = (time.perf_counter() - started) * 1000
            with level.lock:
                level.uploads_ms.append(took)
            time.sleep(max(0.0, due - time.monotonic()))
        started = time.perf_counter()
        recs.FinalizeRecording(recording_pb2.FinalizeRecordingRequest(
            id=rec_id, total_chunks=len(chunks), final_duration_ms=duration_ms),
            metadata=md, timeout=30)
        with level.lock:
            level.finalizes_ms.append((time.perf_counter() - started) * 1000)
    except grpc.RpcError as exc:
        with level.lock:
            level.errors.append(f"{exc.code().name}: {exc.details()}")
    finally:
        channel.close()


def run_level(child: ChildServer, weed_pid: int, tokens: list[str], chunks: list[bytes],
              period: float, duration_ms: int) -> Level:
    level = Level(len(tokens))
    pids = {"tapedeck": child.proc.pid, "weed": weed_pid}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    threads = [threading.Thread(target=device, args=(child.grpc_target, t, chunks, period,
                                                     period * i / len(tokens), level,
                                                     duration_ms))
               for i, t in enumerate(tokens)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.wall_s = time.perf_counter() - started
    level.cpu = {name: (cpu_seconds(pid) - before[name]) / level.wall_s
                 for name, pid in pids.items()}
    return level


def bottleneck(level: Level) -> str:
    """The busiest process, and whether the machine's cores were the limit."""
    name, share = max(level.cpu.items(), key=lambda kv: kv[1])
    total = sum(level.cpu.values())
    cores = os.cpu_count() or 1
    if total >= 0.85 * cores:
        return f"CPU ({total:.1f} of {cores} cores; busiest: {name})"
    if share >= 0.85:
        return f"{name} (one core: the GIL / its single-threaded part)"
    return f"latency, not CPU (busiest {name} {share:.0%} of a core)"


def report(level: Level, chunk_count: int) -> None:
    cpu = " ".join(f"{name} {share * 100:4.0f}%" for name, share in level.cpu.items())
    print(f"{level.devices:>7} {level.devices * chunk_count / level.wall_s:9.1f} "
          f"{p(level.uploads_ms, 50):8.1f} {p(level.uploads_ms, 99):8.1f} "
          f"{p(level.finalizes_ms, 50):8.1f} {p(level.finalizes_ms, 99):8.1f} "
          f"{len(level.errors):6d}  {cpu}  {bottleneck(level)}"
          + ("" if level.ok() else "  (misses the targets)"), flush=True)
    for err in sorted(set(level.errors))[:3]:
        print(f"        error: {err}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="4,8,16,32,64",
                    help="comma-separated N to sweep (ascending)")
    ap.add_argument("--period", type=float, default=1.0,
                    help="seconds between a device's chunks (its compressed 5 minutes)")
    ap.add_argument("--chunks", type=int, default=10, help="chunks per device and level")
    ap.add_argument("--chunk-s", type=float, default=300.0, help="audio seconds per chunk")
    args = ap.parse_args()
    levels = [int(n) for n in args.devices.split(",")]
    encoded = continuous_chunks(args.chunk_s * args.chunks, round(args.chunk_s * 1000))
    chunks = [c.data for c in encoded][:args.chunks]
    size = statistics.mean(map(len, chunks))
    with tempfile.TemporaryDirectory(prefix="tapedeck-load-") as tmp, \
            ManagedWeed(Path(tmp) / "weed") as weed:
        settings = make_settings(weed, Path(tmp) / "data", log_level="warning",
                                 check_chunks=True, max_chunks=max(100, args.chunks))
        db = Database(settings.db_path)
        project_id, _ = create_project(db, SystemClock())
        tokens = [issue_device_token(db, SystemClock(), project_id)[1]
                  for _ in range(max(levels))]
        db.close()
        child = spawn_server(settings, "api")
        best = 0
        try:
            print(f"{len(chunks)} chunks of {size / 1e6:.2f} MB ({args.chunk_s:.0f} s Opus) "
                  f"per device, one every {args.period} s; targets: upload p99 ≤ "
                  f"{UPLOAD_P99_MS:.0f} ms, finalize p99 ≤ {FINALIZE_P99_MS:.0f} ms, 0 errors")
            print(f"{'devices':>7} {'chunks/s':>9} {'up p50':>8} {'up p99':>8} "
                  f"{'fin p50':>8} {'fin p99':>8} {'errors':>6}  cpu (of one core)  bottleneck")
            run_level(child, weed.pid or 0, tokens[:2], chunks[:2], 0.1, 2000)  # warm up
            for n in levels:
                level = run_level(child, weed.pid or 0, tokens[:n], chunks, args.period,
                                  round(args.chunk_s * 1000 * len(chunks)))
                report(level, len(chunks))
                if not level.ok():
                    break
                best = n
        finally:
            child.terminate()
    real = best * REAL_PERIOD_S / args.period
    print(f"largest N within the targets: {best} devices at one chunk per {args.period} s "
          f"= {real:.0f} real devices at one chunk per 5 minutes on this node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
