"""Benchmark: the object store Tapedeck writes chunks to, embedded ``weed mini`` vs the
``scripts/cluster`` SeaweedFS cluster (3 volume servers, replication 001 = every byte written
twice), and ``admin copy-objects`` from the one into the other.

Run: ``.venv/bin/python bench/cluster_store.py [--chunks 200] [--size-kib 256] [--threads 8]``

Both stores run on this machine, started in temporary directories and stopped afterwards.
Prints chunk PUTs per second (``S3Store.put`` with Content-MD5, as chunk ingest does) on each
store with one and with ``--threads`` concurrent writers, the cluster/embedded ratios, and the
copy-objects rate next to its baseline: plain GET+PUT of the same objects in the same run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from tapedeck.admin.copy_objects import copy_objects
from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.weed import ManagedWeed
from tapedeck.infra.weed_cluster import WeedCluster


def store_on(s: ManagedWeed | WeedCluster) -> S3Store:
    st = S3Store(s.endpoint, s.access_key, s.secret_key, "b-" + uuid.uuid4().hex[:16],
                 secure=False, region="us-east-1")
    st.ensure_bucket()
    return st


def put_rate(store: S3Store, blobs: list[bytes], threads: int) -> float:
    """Chunk PUTs per second."""
    def one(i: int) -> None:
        data = blobs[i]
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        store.put(f"recordings/r{i % 7}/chunks/chunk_{i}.0.opus", io.BytesIO(data), len(data),
                  content_md5_b64=md5)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(blobs))))
    return len(blobs) / (time.perf_counter() - start)


def plain_copy_rate(source: S3Store, target: S3Store) -> float:
    keys = [i.key for i in source.list("")]
    start = time.perf_counter()
    for key in keys:
        stream = source.open(key)
        data = stream.read()
        stream.close()
        target.put(key, io.BytesIO(data), len(data))
    return len(keys) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--size-kib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    blobs = [os.urandom(a.size_kib * 1024) for _ in range(a.chunks)]
    with tempfile.TemporaryDirectory() as tmp, ManagedWeed(Path(tmp) / "mini") as mini, \
            WeedCluster(Path(tmp) / "cluster") as cl:
        rates = {}
        for name, s in (("embedded", mini), ("cluster", cl)):
            for threads in (1, a.threads):
                rates[(name, threads)] = put_rate(store_on(s), blobs, threads)
        source, target, plain = store_on(mini), store_on(cl), store_on(cl)
        put_rate(source, blobs, a.threads)
        base = plain_copy_rate(source, plain)
        start = time.perf_counter()
        result = copy_objects(source, target)
        verified = result.objects / (time.perf_counter() - start)
    print(f"chunk PUTs/s ({a.chunks} x {a.size_kib} KiB)    embedded   cluster   cluster/embedded")
    for threads in (1, a.threads):
        e, c = rates[("embedded", threads)], rates[("cluster", threads)]
        print(f"  {threads:2d} writer(s)                        {e:8.0f}  {c:8.0f}   {c / e:6.2f}")
    print(f"copy-objects embedded -> cluster: {verified:.0f} objects/s verified "
          f"(plain GET+PUT baseline {base:.0f}/s, ratio {verified / base:.2f}); "
          f"digests equal: {result.source_digest == result.target_digest}")


if __name__ == "__main__":
    main()
