"""Benchmark: what observability costs, against same-run baselines.

Run: ``.venv/bin/python bench/ops.py [--requests N] [--rounds R] [--jobs J]``

* Per-request overhead: the same domain served twice in one process, bare and wrapped in the
  observing layer (request id, metrics, one JSON access-log line to /dev/null): REST
  ``GET /v1/recordings/{id}`` through two gateways and gRPC ``GetRecording`` through two
  servers (with and without ``ObservingInterceptor``). Sequential keep-alive requests,
  rounds interleaved; the median µs per request of each and the ratio observed/bare.
* Scrape cost: ``Metrics.render()`` with the SQLite queue collector over a database holding
  J finished jobs, J/100 queued ones and J/2 completed recordings, against the process
  counters alone (baseline), medians over 20 scrapes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from tapedeck.app import App
from tapedeck.auth import create_project
from tapedeck.clock import iso
from tapedeck.domain.recordings import NewRecording
from tapedeck.gateway import build_app
from tapedeck.gateway.observe import ObservingMiddleware
from tapedeck.gateway.server import GatewayServer, bind
from tapedeck.grpc_api.observe import ObservingInterceptor
from tapedeck.grpc_api.server import build_grpc_server
from tapedeck.infra.logs import configure
from tapedeck.infra.metrics import Metrics
from tapedeck.infra.weed import ManagedWeed
from tapedeck.settings import Settings
from tapedeck.v1 import recording_pb2, recording_pb2_grpc


def timed_each(call: Callable[[], object], n: int) -> float:
    """Mean µs per call over ``n`` sequential calls."""
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e6


def compare(name: str, bare: Callable[[], object], observed: Callable[[], object],
            requests: int, rounds: int) -> None:
    per_round = max(1, requests // rounds)
    for call in (bare, observed):  # warm-up
        timed_each(call, 50)
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        order = [(bare, a), (observed, b)] if i % 2 == 0 else [(observed, b), (bare, a)]
        for call, out in order:
            out.append(timed_each(call, per_round))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name:<28} bare {ma:8.0f} µs   observed {mb:8.0f} µs   ratio {mb / ma:5.2f}")


def fill(app: App, jobs: int) -> None:
    """Finished and queued jobs, completed recordings, as a long-running deployment has."""
    now = iso(app.clock.now())
    project_id, _ = create_project(app.db, app.clock)
    with app.db.write() as tx:
        tx.conn.executemany(
            "INSERT INTO jobs (id, kind, status, run_after, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(f"job_b{i}", "stitch" if i % 2 else "transcribe",
              "queued" if i % 100 == 0 else "succeeded", now, now, now) for i in range(jobs)])
        tx.conn.executemany(
            "INSERT INTO recordings (id, project_id, status, codec, streaming, created_at,"
            " updated_at) VALUES (?, ?, 'completed', 'opus', 1, ?, ?)",
            [(f"rec_b{i}", project_id, now, now) for i in range(jobs // 2)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=200_000)
    args = parser.parse_args()
    configure("json", "info", open(os.devnull, "w"))  # noqa: SIM115  # lives for the run
    with tempfile.TemporaryDirectory() as tmp, ManagedWeed(Path(tmp) / "weed") as weed:
        settings = Settings(data_dir=Path(tmp) / "data", s3_endpoint=weed.endpoint,
                            s3_access_key=weed.access_key, s3_secret_key=weed.secret_key)
        app = App.open(settings)
        try:
            run(app, args)
        finally:
            app.close(grace=1.0)


def run(app: App, args: argparse.Namespace) -> None:
    _, key = create_project(app.db, app.clock)
    p = app.domain.auth.authenticate(f"Bearer {key}")
    rec_id = app.domain.recordings.create(p, NewRecording(streaming=True)).recording.id
    api = build_app(app.domain)
    bare_http = GatewayServer(build_app(app.domain), bind("127.0.0.1", 0))
    seen_http = GatewayServer(ObservingMiddleware(api, app.metrics, api.routes),
                              bind("127.0.0.1", 0))
    bare_grpc, bare_port = build_grpc_server(app.domain, "127.0.0.1", 0)
    seen_grpc, seen_port = build_grpc_server(app.domain, "127.0.0.1", 0,
                                             interceptors=[ObservingInterceptor(app.metrics)])
    for server in (bare_http, seen_http):
        server.start()
    headers = {"Authorization": f"Bearer {key}"}
    md: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {key}"),)
    try:
        with httpx.Client(headers=headers) as c1, httpx.Client(headers=headers) as c2, \
                grpc.insecure_channel(f"127.0.0.1:{bare_port}") as ch1, \
                grpc.insecure_channel(f"127.0.0.1:{seen_port}") as ch2:
            compare("REST GET /v1/recordings/{id}",
                    lambda: c1.get(f"http://127.0.0.1:{bare_http.port}/v1/recordings/{rec_id}"),
                    lambda: c2.get(f"http://127.0.0.1:{seen_http.port}/v1/recordings/{rec_id}"),
                    args.requests, args.rounds)
            s1 = recording_pb2_grpc.RecordingServiceStub(ch1)
            s2 = recording_pb2_grpc.RecordingServiceStub(ch2)
            req = recording_pb2.GetRecordingRequest(id=rec_id)
            compare("gRPC GetRecording", lambda: s1.GetRecording(req, metadata=md),
                    lambda: s2.GetRecording(req, metadata=md), args.requests, args.rounds)
    finally:
        for server in (bare_http, seen_http):
            server.stop(1.0)
        bare_grpc.stop(0)
        seen_grpc.stop(0)
    fill(app, args.jobs)
    counters_only = Metrics()
    size = len(app.metrics.render())
    base = statistics.median(timed_each(counters_only.render, 1) for _ in range(20))
    full = statistics.median(timed_each(app.metrics.render, 1) for _ in range(20))
    print(f"/metrics render ({args.jobs} jobs)  counters {base / 1000:6.2f} ms   with SQLite"
          f" gauges {full / 1000:6.2f} ms   ratio {full / base:5.1f}   ({size} bytes)")


if __name__ == "__main__":
    main()
