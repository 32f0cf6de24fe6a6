"""Test kit: real Tapedeck servers (in-process or as a child process) on free ports, backed
by the session's real SeaweedFS and a real SQLite file in a temporary directory, or a fresh
database of the test PostgreSQL (``tests/pgkit.py``) when the test runs on that backend.

Which backend ``make_settings`` picks: the running test's ``db_backend`` (tests marked
``both_backends`` run once per backend, see tests/conftest.py), else the environment variable
``TAPEDECK_TEST_BACKEND`` (``sqlite``, the default, or ``postgresql``: run any module on
PostgreSQL by hand, e.g. ``TAPEDECK_TEST_BACKEND=postgresql pytest tests/gateway``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from minio import Minio

from tapedeck.app import App
from tapedeck.auth import create_project, issue_device_token
from tapedeck.clock import Clock, SystemClock
from tapedeck.settings import Settings
from tapedeck.v1 import chunk_pb2, chunk_pb2_grpc, recording_pb2_grpc


def drop_bucket(weed: Any, bucket: str) -> None:
    """Remove ``bucket`` and everything in it (SeaweedFS gives each bucket its own volume,
    and the number of volumes is bounded, so tests must not leave buckets behind)."""
    client = Minio(weed.endpoint, weed.access_key, weed.secret_key, secure=False,
                   region="us-east-1")
    if client.bucket_exists(bucket):
        client.remove_bucket(bucket)  # weed mini allows removing a non-empty bucket


BACKENDS = ("sqlite", "postgresql")
_backend: str | None = None  # the running test's, set by the ``db_backend`` fixture
_created: set[str] = set()  # PostgreSQL databases made here, dropped by ``drop_database``


def set_backend(name: str | None) -> None:
    """Make ``make_settings`` use ``name`` (None: back to the environment's choice)."""
    global _backend
    assert name is None or name in BACKENDS, name
    _backend = name


def current_backend() -> str:
    """The backend ``make_settings`` gives a server (see the module docstring)."""
    return _backend or os.environ.get("TAPEDECK_TEST_BACKEND", "sqlite")


def database_url_for(backend: str) -> str:
    """``Settings.database_url`` for a new test server: "" (SQLite in the data dir) or a
    fresh, migrated PostgreSQL database."""
    if backend != "postgresql":
        return ""
    from pgkit import shared_postgres

    url = shared_postgres().fresh_database()
    _created.add(url)
    return url


def drop_database(url: str) -> None:
    """Drop a PostgreSQL database ``database_url_for`` made (anything else: nothing)."""
    if url in _created:
        from pgkit import shared_postgres

        _created.discard(url)
        shared_postgres().drop_database(url)


def make_settings(weed: Any, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: the shared weed, a fresh bucket, any free ports, and the
    current backend's database (unless ``database_url`` is given)."""
    if "database_url" not in overrides:
        overrides["database_url"] = database_url_for(current_backend())
    base = Settings(
        data_dir=data_dir, grpc_port=0, http_port=0, s3_endpoint=weed.endpoint,
        s3_access_key=weed.access_key, s3_secret_key=weed.secret_key,
        s3_bucket="t-" + uuid.uuid4().hex[:20], webhooks_allow_private=True,
        # The limits that are on by default would throttle load and crash tests; tests of
        # the limits set them explicitly (tests/security/test_limits.py).
        rate_limit_per_s=0, max_streaming_per_device=0, storage_quota_bytes=0,
        live_transcription=False,  # the whole-file path; live tests turn it on
        # Protocol tests send placeholder bytes as chunks; audio checks are tested with real
        # Opus in tests/ops/test_chunk_check.py (pass check_chunks=True to turn them on).
        check_chunks=False,
    )
    return base.replace(**overrides)



@dataclass
class RunningServer:
    """An in-process server with a project, its secret key, and gRPC stubs."""

    app: App
    project_id: str
    api_key: str
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.grpc_target)
        self.channels.append(ch)
        return ch

    def recordings(self) -> recording_pb2_grpc.RecordingServiceStub:
        return recording_pb2_grpc.RecordingServiceStub(self.channel())

    def chunks(self) -> chunk_pb2_grpc.ChunkServiceStub:
        return chunk_pb2_grpc.ChunkServiceStub(self.channel())

    def device_token(self, device_id: str | None = None) -> tuple[str, str]:
        """Register a device of this project and return (device_id, dtok_ token)."""
        return issue_device_token(self.app.db, self.app.clock, self.project_id, device_id)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        self.app.close(grace=1.0)
        drop_database(self.app.settings.database_url)


def start_server(settings: Settings, roles: Iterable[str] = ("grpc",),
                 clock: Clock | None = None) -> RunningServer:
    """Open and start an in-process server, with a bootstrapped project."""
    roles = list(roles)
    app = App.open(settings, clock=clock or SystemClock(), roles=roles)
    app.start(roles)
    project_id, key = create_project(app.db, app.clock)
    return RunningServer(app=app, project_id=project_id, api_key=key)


def auth(token: str) -> list[tuple[str, str]]:
    """gRPC call metadata for a bearer token."""
    return [("authorization", f"Bearer {token}")]


def chunk_messages(recording_id: str, part: int, data: bytes, md5: str | None = None,
                   sha256: str | None = None, piece: int = 64 * 1024,
                   size: int | None = -1) -> Iterator[chunk_pb2.UploadChunkRequest]:
    """The UploadChunk stream for ``data``: header, then 64 KiB slices. The header announces
    ``size_bytes`` = ``len(data)`` as the device agent does (the chunk streams to the store),
    or ``size`` if given; ``size=None`` announces none (the server receives, then stores)."""
    import hashlib

    if md5 is None and sha256 is None:
        md5 = hashlib.md5(data).hexdigest()
    announced = len(data) if size == -1 else size
    yield chunk_pb2.UploadChunkRequest(header=chunk_pb2.ChunkHeader(
        recording_id=recording_id, part=part, md5=md5 or "", sha256=sha256 or "",
        size_bytes=announced))
    for i in range(0, len(data), piece):
        yield chunk_pb2.UploadChunkRequest(data=data[i:i + piece])


@dataclass
class ChildServer:
    """``tapedeck <role>`` as a child process (for kill -9 and multi-process tests)."""

    proc: subprocess.Popen[str]
    listening: dict[str, Any]

    @property
    def grpc_target(self) -> str:
        return str(self.listening["grpc"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


def spawn_server(settings: Settings, command: str = "serve") -> ChildServer:
    """Start ``python -m tapedeck COMMAND`` with ``settings`` in its environment; wait until
    it prints its listening line."""
    env = dict(os.environ)
    for key, value in vars(settings).items():
        env["TAPEDECK_" + key.upper()] = str(int(value) if isinstance(value, bool) else value)
    proc = subprocess.Popen([sys.executable, "-m", "tapedeck", command], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith('{"listening"'):
            return ChildServer(proc, json.loads(line)["listening"])
    proc.wait(timeout=30)
    raise RuntimeError(f"tapedeck {command} exited with {proc.returncode} before listening")
