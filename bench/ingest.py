"""Benchmark: chunk ingest through each upload path, against a same-run baseline.

Run: ``.venv/bin/python bench/ingest.py [--sizes 64x1024,256x64] [--runs R]``

Starts a real ``weed mini`` and ``tapedeck api`` (gRPC + REST gateway) as a child process on
it and, for each ``NxK`` of ``--sizes`` (default both 64 chunks of 1024 KiB and 256 chunks of
64 KiB; compressed audio does not compress, so random bytes are fair), uploads the same N
chunks of K KiB, one at a time as a device does, through:

* grpc      — ``ChunkService.UploadChunk`` (client streaming, 64 KiB messages, MD5 and
  ``size_bytes`` in the header as the device agent sends them: the chunk streams to the
  store while it arrives);
* rest      — ``PUT`` to ``chunk_upload_url_template`` through the gateway (``Content-MD5``);
* presigned — ``POST …/upload-url {parts: [...]}`` (32 parts), then one ``PUT`` each straight
  to the store
  (the requests for the URLs are counted: a device pays one per 32 chunks);
* baseline  — ``put_object`` of the same bytes straight to the same SeaweedFS with the minio
  SDK (what the store alone costs).

Each run uploads every path once (fresh recording, parts 1..N), in rotating order; the
median over R runs is printed as MiB/s and chunks/s with the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from minio import Minio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test kit: child-process server, gRPC helpers

from tapedeck.auth import create_project  # noqa: E402
from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.infra.db import Database  # noqa: E402
from tapedeck.infra.weed import ManagedWeed  # noqa: E402
from tapedeck.v1 import chunk_pb2_grpc  # noqa: E402

from serverkit import ChildServer, auth, chunk_messages, make_settings, spawn_server  # noqa: E402

MiB = 1024 * 1024
Uploader = Callable[[list[bytes]], None]


@dataclass
class Target:
    """The running server and the clients every path uses."""

    rest: httpx.Client
    chunks: chunk_pb2_grpc.ChunkServiceStub
    key: str
    minio: Minio
    bucket: str

    def new_recording(self) -> dict[str, str]:
        resp = self.rest.post("/v1/recordings", json={"streaming": True})
        resp.raise_for_status()
        return dict(resp.json())


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def via_grpc(t: Target) -> Uploader:
    def run(chunks: list[bytes]) -> None:
        rec = t.new_recording()
        for part, data in enumerate(chunks, start=1):
            t.chunks.UploadChunk(chunk_messages(rec["id"], part, data), metadata=auth(t.key))
    return run


def via_rest(t: Target) -> Uploader:
    def run(chunks: list[bytes]) -> None:
        template = t.new_recording()["chunk_upload_url_template"]
        for part, data in enumerate(chunks, start=1):
            resp = t.rest.put(template.replace("{part}", str(part)), content=data,
                              headers={"Content-MD5": md5_b64(data)})
            if resp.status_code != 201:
                raise RuntimeError(resp.text)
    return run


URL_BATCH = 32  # presigned URLs per upload-url call


def via_presigned(t: Target) -> Uploader:
    def run(chunks: list[bytes]) -> None:
        rec_id = t.new_recording()["id"]
        for first in range(1, len(chunks) + 1, URL_BATCH):  # as a device: N URLs, N PUTs
            parts = list(range(first, min(first + URL_BATCH, len(chunks) + 1)))
            resp = t.rest.post(f"/v1/recordings/{rec_id}/upload-url", json={"parts": parts})
            resp.raise_for_status()
            for url in resp.json()["data"]:
                put = t.rest.put(url["upload_url"], content=chunks[url["part"] - 1],
                                 headers=url["headers"])
                put.raise_for_status()
    return run


def via_minio(t: Target) -> Uploader:
    def run(chunks: list[bytes]) -> None:
        prefix = f"baseline/{time.time_ns()}/"
        for part, data in enumerate(chunks, start=1):
            t.minio.put_object(t.bucket, f"{prefix}chunk_{part}.opus", io.BytesIO(data),
                               len(data), content_type="audio/ogg")
    return run


def start(weed: ManagedWeed, data_dir: Path, chunks: int) -> tuple[ChildServer, Target]:
    settings = make_settings(weed, data_dir, max_chunks=max(100, chunks), log_level="warning")
    db = Database(settings.db_path)
    _, key = create_project(db, SystemClock())
    db.close()
    child = spawn_server(settings, "api")
    minio = Minio(weed.endpoint, weed.access_key, weed.secret_key, secure=False,
                  region="us-east-1")
    rest = httpx.Client(base_url=str(child.listening["http"]),
                        headers={"Authorization": f"Bearer {key}"}, timeout=120)
    stub = chunk_pb2_grpc.ChunkServiceStub(grpc.insecure_channel(child.grpc_target))
    return child, Target(rest, stub, key, minio, settings.s3_bucket)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64x1024,256x64",
                    help="comma-separated CHUNKSxKIB (default: 64 x 1 MiB and 256 x 64 KiB)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for size in args.sizes.split(","):
        count, kib = (int(v) for v in size.lower().split("x"))
        measure(count, kib, args.runs)
    return 0


def measure(count: int, kib: int, runs: int) -> None:
    """Median time of every path for ``count`` chunks of ``kib`` KiB; prints the table."""
    chunks = [os.urandom(kib * 1024) for _ in range(count)]
    total_mib = sum(map(len, chunks)) / MiB
    with tempfile.TemporaryDirectory(prefix="tapedeck-bench-") as tmp, \
            ManagedWeed(Path(tmp) / "weed") as weed:
        child, target = start(weed, Path(tmp) / "data", count)
        try:
            paths = {"grpc": via_grpc(target), "rest": via_rest(target),
                     "presigned": via_presigned(target), "baseline": via_minio(target)}
            for upload in paths.values():  # warm up connections and code paths
                upload(chunks[:2])
            times: dict[str, list[float]] = {name: [] for name in paths}
            names = list(paths)
            for run in range(runs):
                for name in names[run % len(names):] + names[:run % len(names)]:
                    started = time.perf_counter()
                    paths[name](chunks)
                    times[name].append(time.perf_counter() - started)
        finally:
            child.terminate()
    report(times, count, total_mib)


def report(times: dict[str, list[float]], count: int, total_mib: float) -> None:
    base = statistics.median(times["baseline"])
    print(f"{count} chunks, {total_mib:.1f} MiB per path, median of {len(times['baseline'])} "
          "runs, sequential uploads")
    print(f"{'path':<10} {'MiB/s':>8} {'chunks/s':>9} {'vs baseline':>12}")
    for name, samples in times.items():
        t = statistics.median(samples)
        print(f"{name:<10} {total_mib / t:8.1f} {count / t:9.1f} {base / t:11.2f}x")


if __name__ == "__main__":
    sys.exit(main())
