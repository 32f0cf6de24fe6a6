"""Shared fixtures: one real ``weed mini`` per test session, a fresh bucket per test.

Add small fixtures here; put bigger test kits in their own modules (e.g. tests/serverkit.py).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapedeck.infra.db import Database, open_database
from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.weed import ManagedWeed
from tapedeck.infra.weed import free_port as _free_port

import serverkit
from domainkit import World, migrated_template, open_world
from serverkit import RunningServer, drop_bucket, make_settings, start_server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


def unique_bucket() -> str:
    """A fresh, valid bucket name."""
    return "t-" + uuid.uuid4().hex[:20]


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedWeed]:
    """The session's real SeaweedFS: ``.endpoint`` (host:port), ``.access_key``,
    ``.secret_key``, ``.url``. Tests must use their own buckets (see ``store``)."""
    # Many small volumes: every test bucket takes at least one, whatever the free disk.
    with ManagedWeed(tmp_path_factory.mktemp("weed"), memory_limit="384MiB",
                     volume_size_limit_mb=64, max_volumes=1000) as w:
        yield w


@pytest.fixture
def fresh_bucket(weed: ManagedWeed) -> Iterator[str]:
    """A unique bucket name (not created); the bucket is removed after the test if made."""
    name = unique_bucket()
    try:
        yield name
    finally:
        drop_bucket(weed, name)


@pytest.fixture
def store(weed: ManagedWeed) -> Iterator[S3Store]:
    """An ``S3Store`` on a fresh bucket of the session's weed, removed after the test."""
    s = S3Store(weed.endpoint, weed.access_key, weed.secret_key, unique_bucket(),
                secure=False, region="us-east-1")
    s.ensure_bucket()
    try:
        yield s
    finally:
        s.close()
        drop_bucket(weed, s.bucket)


@pytest.fixture
def server(weed: ManagedWeed, tmp_path: Path, db_backend: str) -> Iterator[RunningServer]:
    """An in-process Tapedeck (gRPC, plus REST once the gateway exists) with a project and
    its secret key, on a fresh bucket and SQLite file; torn down after the test."""
    roles = ["grpc"]
    if importlib.util.find_spec("tapedeck.gateway") is not None:
        roles.append("http")
    srv = start_server(make_settings(weed, tmp_path / "data"), roles=roles)
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


# -- databases: one contract, two backends (issue 19) ------------------------------------------

@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """The session's real PostgreSQL (``tests/pgkit.py``), started on first use; skips the
    test when Debian's postgresql is not installed."""
    from pgkit import PostgresUnavailable, shared_postgres

    try:
        pg = shared_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    """Where a test's database lives: a fresh SQLite file, then a fresh PostgreSQL database
    (``tapedeck.infra.db.open_database`` opens either). Tests using it run on both backends."""
    if request.param == "sqlite":
        yield tmp_path / "tapedeck.db"
        return
    pg = request.getfixturevalue("postgres")
    url = pg.fresh_database()
    try:
        yield url
    finally:
        pg.drop_database(url)


@pytest.fixture
def database(db_target: str | Path) -> Iterator[Database]:
    """An open, migrated ``Database`` on ``db_target`` (both backends), closed after."""
    db = open_database(db_target)
    try:
        yield db
    finally:
        db.close()
@pytest.fixture(autouse=True)
def db_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The database backend of this test's servers (``serverkit.make_settings``): each of
    ``serverkit.BACKENDS`` for tests marked ``both_backends`` (parametrized below), else the
    ``TAPEDECK_TEST_BACKEND`` environment variable's (SQLite by default)."""
    name = getattr(request, "param", None) or serverkit.current_backend()
    if name == "postgresql":
        request.getfixturevalue("postgres")  # skips when PostgreSQL is not installed
    serverkit.set_backend(name)
    try:
        yield name
    finally:
        serverkit.set_backend(None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_backends") is not None:
        metafunc.parametrize("db_backend", serverkit.BACKENDS, indirect=True)


# -- the fast layer: the domain in process (tests/domainkit.py) ------------------------------

@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated SQLite database, made once per session (copy it, don't open it)."""
    return migrated_template(tmp_path_factory.mktemp("migrated") / "tapedeck.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def domain_world(request: pytest.FixtureRequest, tmp_path: Path,
                 migrated_sqlite: Path) -> Iterator[World]:
    """The real domain on a ``MemoryStore`` and a ``ManualClock``, with a project (no weed,
    no socket: see tests/domainkit.py), on each backend: a SQLite file, then a fresh
    PostgreSQL database (from the migrated template; the ``--quick`` layer keeps SQLite)."""
    if request.param == "sqlite":
        with open_world(tmp_path / "data", migrated_sqlite) as world:
            yield world
        return
    pg = request.getfixturevalue("postgres")
    url = pg.fresh_database()
    try:
        with open_world(tmp_path / "data", target=url) as world:
            yield world
    finally:
        pg.drop_database(url)


# Fixtures whose tests are slow by nature (the whisper model loads for seconds, the speaker
# encoder runs for tens of seconds); their tests get the ``slow`` marker (pyproject.toml).
SLOW_FIXTURES = frozenset({"whisper_dir", "encoder"})

# The fast layer (``scripts/test --quick`` = ``-m "not integration and not slow"``): the domain
# on MemoryStore, in-process servicers, pure code. Every other test gets the ``integration``
# marker here, from what it needs:
# - a fixture whose closure reaches a real service (weed, PostgreSQL, a cluster);
INTEGRATION_FIXTURES = frozenset({"weed", "postgres", "whisper_dir", "cluster"})
# - a parametrized backend that is a real service (``db_target``, the store contract);
INTEGRATION_PARAMS = frozenset({"postgresql", "s3"})
# - or processes the test starts itself (weed, ``tapedeck``/agent CLIs, scripts): these
#   files (or ``file::test`` ids) are integration as a whole.
INTEGRATION_FILES = (
    "tests/test_weed.py", "tests/ops/test_store_supervision.py",
    "tests/ops/test_startup_errors.py", "tests/ops/test_cli_use.py",
    "tests/security/test_file_modes.py", "tests/security/test_tls.py",
    "tests/agent/test_agent_spool.py::test_the_agent_imports_no_server_dependency",
    "tests/agent/test_agent_spool.py::test_owner_lock_is_seen_from_another_process",
    "tests/agent/test_agent_health.py::test_status_shows_health_and_settings",
    "tests/transcribe/test_transcribe_models.py",
    "tests/transcribe/test_transcribe_decode.py::test_decode_and_windowing_memory",
    "tests/test_oggopus.py::test_remux_memory_is_flat",
    "tests/test_keyfile.py::test_processes_starting_together",
    "tests/cluster/test_server_keys.py::test_a_short_key_stops_the_server",
    "tests/test_stitch.py::test_store_down_is_retried_with_backoff",
)


def _is_integration(item: pytest.Item, names: set[str]) -> bool:
    if INTEGRATION_FIXTURES & names:
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and INTEGRATION_PARAMS & {
            v for v in callspec.params.values() if isinstance(v, str)}:
        return True
    return item.nodeid.startswith(INTEGRATION_FILES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
        if _is_integration(item, names):
            item.add_marker(pytest.mark.integration)
