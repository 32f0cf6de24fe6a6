"""Fixtures of the search and export tests: one in-process server (gRPC + REST) per module
and backend (SQLite with FTS5, PostgreSQL with tsvector: every search test runs on both);
each test works in a project of its own (``project``), so tests cannot see each other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tapedeck.auth import Principal, create_project

from serverkit import (
    BACKENDS,
    RunningServer,
    database_url_for,
    drop_bucket,
    make_settings,
    start_server,
)


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request: pytest.FixtureRequest, weed: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if request.param == "postgresql":
        request.getfixturevalue("postgres")  # skips when PostgreSQL is not installed
    server = start_server(make_settings(weed, tmp_path_factory.mktemp("search") / "data",
                                        database_url=database_url_for(request.param)),
                          roles=("grpc", "http"))
    try:
        yield server
    finally:
        server.close()
        drop_bucket(weed, server.app.settings.s3_bucket)


@pytest.fixture
def project(srv: RunningServer) -> tuple[str, str, Principal]:
    """A fresh project of ``srv``: (project_id, secret key, its principal)."""
    project_id, key = create_project(srv.app.db, srv.app.clock)
    return project_id, key, srv.app.domain.auth.authenticate(f"Bearer {key}")
