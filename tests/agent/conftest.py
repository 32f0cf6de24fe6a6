"""Fixtures of the device agent tests (helpers live in agentkit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentkit import Agents, RestartableServer
from serverkit import drop_bucket


@pytest.fixture
def restartable(weed: Any, tmp_path: Path) -> Iterator[RestartableServer]:
    """A server the test can stop and start again (same data dir, bucket and port)."""
    srv = RestartableServer(weed, tmp_path / "data")
    try:
        yield srv
    finally:
        srv.stop()
        drop_bucket(weed, srv.settings.s3_bucket)


@pytest.fixture
def agents() -> Iterator[Agents]:
    """``agents.spawn(env, *args, log=...)``: background agents killed after the test."""
    made = Agents()
    try:
        yield made
    finally:
        made.kill_all()
