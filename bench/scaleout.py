"""Benchmark: chunk ingest + finalize throughput of scaled-out api processes.

Run: ``.venv/bin/python bench/scaleout.py [--devices 24] [--chunks 20] [--rounds 2]``

Everything runs on this machine in temporary directories: a real PostgreSQL (``tests/pgkit``,
Debian's postgresql 15), an embedded ``weed mini`` (one bucket per configuration) and real
``tapedeck api`` child processes (``tests/fleetkit``). ``--devices`` client threads each
create a streaming recording, PUT ``--chunks`` real ~3 KB Ogg Opus chunks (REST, Content-MD5)
and finalize it with its checksum, every request to the next api process in turn. Three
configurations, measured in the same run, best of ``--rounds``:

- ``sqlite x1``: the embedded default (one api process, SQLite);
- ``pg x1``: one api process on PostgreSQL;
- ``pg x3``: three api processes on the same PostgreSQL and bucket.

Prints chunks/s and finalizes/s of each and the ratios ``pg x3 / pg x1`` (scale-out) and
``sqlite x1 / pg x1`` (the single-node cost of PostgreSQL). The clients run in this process,
on the same cores as the servers: on a 2-core machine three api processes compete with each
other and with the clients, so the x3 ratio measures contention here, not a multi-host fleet.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test kits: PostgreSQL, child processes, Opus

from tapedeck.auth import create_project  # noqa: E402
from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.infra.db import open_database  # noqa: E402
from tapedeck.infra.weed import ManagedWeed  # noqa: E402
from tapedeck.settings import Settings  # noqa: E402

from fleetkit import SECRET_KEY, Fleet  # noqa: E402
from opskit import md5_b64  # noqa: E402
from pgkit import TempPostgres  # noqa: E402
from stitchkit import continuous_chunks  # noqa: E402


class Load:
    """The device load against a list of api base URLs (round robin per request)."""

    def __init__(self, urls: list[str], api_key: str, chunks: list[bytes]) -> None:
        self._next = itertools.cycle(urls)
        self._lock = threading.Lock()
        self.api_key, self.chunks = api_key, chunks

    def url(self) -> str:
        with self._lock:
            return next(self._next)

    def device(self, _: int) -> None:
        auth = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(timeout=60.0) as c:
            rec = c.post(f"{self.url()}/v1/recordings", headers=auth,
                         json={"streaming": True, "chunk_duration_ms": 1000}).json()
            path = rec["chunk_upload_url_template"].split("/v1/", 1)[1]
            for part, data in enumerate(self.chunks, start=1):
                r = c.put(f"{self.url()}/v1/{path}".replace("{part}", str(part)), content=data,
                          headers={"Content-MD5": md5_b64(data)})
                assert r.status_code == 201, r.text
            r = c.post(f"{self.url()}/v1/recordings/{rec['id']}/finalize", headers=auth, json={
                "total_chunks": len(self.chunks), "final_duration_ms": len(self.chunks) * 1000,
                "checksum_md5": hashlib.md5(b"".join(self.chunks)).hexdigest()})
            assert r.status_code == 200, r.text


def measure(settings: Settings, processes: int, root: Path, devices: int,
            chunks: list[bytes]) -> float:
    """Seconds for ``devices`` recordings through ``processes`` api processes."""
    fleet = Fleet(settings, root)
    try:
        children = [fleet.spawn("api") for _ in range(processes)]
        urls = [c.listening["http"] for c in children]
        # PostgreSQL: the shared database; SQLite: the one process's data dir.
        where = settings.replace(data_dir=Path(children[0].listening["data_dir"]))
        db = open_database(where.database_target)
        try:
            _, api_key = create_project(db, SystemClock())
        finally:
            db.close()
        load = Load(urls, api_key, chunks)
        load.device(0)  # warm-up (connections, imports, first bucket writes)
        started = time.perf_counter()
        with ThreadPoolExecutor(devices) as pool:
            list(pool.map(load.device, range(devices)))
        return time.perf_counter() - started
    finally:
        fleet.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=24)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    chunks = [c.data for c in continuous_chunks(float(args.chunks), 1000)]
    with tempfile.TemporaryDirectory(prefix="tapedeck-scaleout-") as tmp:
        root = Path(tmp)
        # PostgreSQL runs as the ``postgres`` user: its directory must not sit in a private one.
        pg_root = Path(tempfile.mkdtemp(prefix="tapedeck-scaleout-pg-"))
        with ManagedWeed(root / "weed") as weed, TempPostgres(pg_root) as pg:
            def base(name: str) -> Settings:
                return Settings(data_dir=root / name, s3_endpoint=weed.endpoint,
                                s3_access_key=weed.access_key, s3_secret_key=weed.secret_key,
                                s3_bucket="b-" + uuid.uuid4().hex[:16], grpc_port=0,
                                http_port=0, rate_limit_per_s=0, max_streaming_per_device=0,
                                storage_quota_bytes=0, live_transcription=False,
                                secret_key=SECRET_KEY, log_level="warning")
            configs = {"sqlite x1": (lambda: base("sq"), 1),
                       "pg x1": (lambda: base("p1").replace(database_url=pg.fresh_database()), 1),
                       "pg x3": (lambda: base("p3").replace(database_url=pg.fresh_database()), 3)}
            best: dict[str, float] = {}
            for r in range(args.rounds):
                for name, (make, n) in configs.items():
                    s = make()
                    wall = measure(s, n, root / f"{name.replace(' ', '')}-{r}", args.devices,
                                   chunks)
                    best[name] = min(best.get(name, wall), wall)
    total = args.devices * args.chunks
    print(f"{args.devices} devices x {args.chunks} chunks ({len(chunks[0])} B each), "
          f"then finalize; best of {args.rounds}")
    print(f"{'config':<10} {'chunks/s':>9} {'finalize/s':>11}")
    for name, wall in best.items():
        print(f"{name:<10} {total / wall:>9.0f} {args.devices / wall:>11.1f}")
    print(f"ratio pg x3 / pg x1 (scale-out):       {best['pg x1'] / best['pg x3']:.2f}")
    print(f"ratio sqlite x1 / pg x1 (one node):    {best['pg x1'] / best['sqlite x1']:.2f}")


if __name__ == "__main__":
    main()
