"""Test kit: the real loopback SeaweedFS cluster of ``scripts/cluster`` (``WeedCluster``: a
master, three volume servers with replication 001, a filer and the S3 gateway), started once
per test module that asks for it and stopped, with its directory removed, afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapedeck.infra.weed_cluster import WeedCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[WeedCluster]:
    """A running cluster: ``.endpoint``, ``.access_key``, ``.secret_key`` (like the ``weed``
    fixture, so ``serverkit.make_settings`` takes it), ``.kill(name)``, ``.restart(name)``."""
    root = Path(tempfile.mkdtemp(prefix="tapedeck-cluster-"))
    c = WeedCluster(root / "weed")
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
