"""``tapedeck admin copy-objects``: the embedded store's objects copied into the SeaweedFS
cluster, verified (counts, MD5s, one digest each side) and resumable after an interruption."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapedeck.admin.copy_objects import copy_objects, md5_of
from tapedeck.cli import main
from tapedeck.infra.db import Database
from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.weed import ManagedWeed
from tapedeck.infra.weed_cluster import WeedCluster

MiB = 1 << 20


@pytest.fixture
def target(cluster: WeedCluster) -> Iterator[S3Store]:
    s = S3Store(cluster.endpoint, cluster.access_key, cluster.secret_key,
                "c-" + uuid.uuid4().hex[:20], secure=False, region="us-east-1")
    s.ensure_bucket()
    try:
        yield s
    finally:
        for info in list(s.list("")):
            s.delete(info.key)
        s.close()


def fill(store: S3Store) -> dict[str, str]:
    """Small single-PUT objects and one multipart object (ETag not an MD5); key -> md5."""
    objects = {f"recordings/rec_{i}/chunks/chunk_1.0.opus": os.urandom(1000 + i)
               for i in range(3)}
    for key, data in objects.items():
        store.put(key, io.BytesIO(data), len(data))
    big = os.urandom(6 * MiB)
    store.put("recordings/rec_0/audio.opus", io.BytesIO(big), -1)  # multipart
    objects["recordings/rec_0/audio.opus"] = big
    return {k: hashlib.md5(v).hexdigest() for k, v in objects.items()}


def test_copies_verifiably_and_resumes(store: S3Store, target: S3Store) -> None:
    md5s = fill(store)
    assert "-" in (store.stat("recordings/rec_0/audio.opus") or pytest.fail()).etag
    first = copy_objects(store, target)
    assert (first.objects, first.copied, first.skipped) == (4, 4, 0)
    assert first.bytes == sum(i.size for i in store.list(""))
    assert first.source_digest == first.target_digest
    assert {i.key: md5_of(target, i.key) for i in target.list("")} == md5s
    # An interrupted or damaged copy: one object missing, one with other bytes of the same size.
    lost, damaged = sorted(md5s)[0], sorted(md5s)[1]
    target.delete(lost)
    size = (target.stat(damaged) or pytest.fail()).size
    target.put(damaged, io.BytesIO(bytes(size)), size)
    again = copy_objects(store, target)
    assert (again.objects, again.copied, again.skipped) == (4, 2, 2)
    assert again.source_digest == again.target_digest == first.source_digest
    assert {i.key: md5_of(target, i.key) for i in target.list("")} == md5s


def test_admin_command_prints_the_counts(weed: ManagedWeed, store: S3Store, target: S3Store,
                                         cluster: WeedCluster, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fill(store)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    Database(data_dir / "tapedeck.db").close()
    for name, value in {"S3_ENDPOINT": weed.endpoint, "S3_ACCESS_KEY": weed.access_key,
                        "S3_SECRET_KEY": weed.secret_key, "S3_BUCKET": store.bucket,
                        "TARGET_S3_ACCESS_KEY": cluster.access_key,
                        "TARGET_S3_SECRET_KEY": cluster.secret_key}.items():
        monkeypatch.setenv("TAPEDECK_" + name, value)
    assert main(["admin", "copy-objects", "--data-dir", str(data_dir), "--to-endpoint",
                 cluster.endpoint, "--to-bucket", target.bucket]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["objects"] == 4 and out["copied"] == 4  # not the health probe's object
    assert out["source_digest"] == out["target_digest"]
