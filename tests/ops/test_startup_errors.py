"""Startup checks fail in one line with a distinct exit code (issue 16, items 2 and 4)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapedeck import startup
from tapedeck.settings import Settings

from opskit import Child, settings_env, spawn, stop_all
from serverkit import drop_bucket, make_settings


def run_serve(settings: Settings, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``tapedeck serve`` expected to fail at startup: its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "tapedeck", "serve"], env=settings_env(settings),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with ``code`` and said why in one line naming ``words``."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    stop_all(started)


@pytest.fixture
def settings(weed: Any, tmp_path: Path) -> Iterator[Settings]:
    s = make_settings(weed, tmp_path / "data", log_format="json")
    yield s
    drop_bucket(weed, s.s3_bucket)


def test_http_port_taken(settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_serve(settings.replace(http_port=port))
    line = assert_one_line(result, startup.EXIT_HTTP_PORT, str(port), "--http-port")
    assert line.startswith("tapedeck: ")


def test_grpc_port_taken_by_another_tapedeck(settings: Settings, tmp_path: Path,
                                             children: list[Child]) -> None:
    """grpcio binds with SO_REUSEPORT by default: a second server on the same gRPC port
    used to start and steal half of the connections."""
    first = spawn(settings, "serve", tmp_path / "logs", "first")
    children.append(first)
    grpc_port = int(first.listening["grpc"].rsplit(":", 1)[1])
    second = settings.replace(data_dir=tmp_path / "other", grpc_port=grpc_port)
    result = run_serve(second)
    assert_one_line(result, startup.EXIT_GRPC_PORT, str(grpc_port), "--grpc-port")
    assert first.proc.poll() is None


def test_grpc_port_taken_by_any_listener(settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_serve(settings.replace(grpc_port=port))
    assert_one_line(result, startup.EXIT_GRPC_PORT, str(port))


def test_data_dir_held_by_a_running_instance(tmp_path: Path, children: list[Child]) -> None:
    """Two managed-store servers on one data dir: the second says who holds it."""
    managed = Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0, log_format="json")
    first = spawn(managed, "serve", tmp_path / "logs", "first")
    children.append(first)
    result = run_serve(managed)
    assert_one_line(result, startup.EXIT_DATA_DIR_IN_USE, "in use", str(first.proc.pid))
    assert first.proc.poll() is None


def test_data_dir_not_writable(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_serve(settings.replace(data_dir=blocker / "data"))
    assert_one_line(result, startup.EXIT_DATA_DIR, "data dir", "--data-dir")


def test_store_unreachable(settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = s.getsockname()[1]  # closed again below: nothing listens there
    result = run_serve(settings.replace(s3_endpoint=f"127.0.0.1:{dead}"))
    assert_one_line(result, startup.EXIT_STORE, f"127.0.0.1:{dead}", "TAPEDECK_S3_ENDPOINT")


def test_database_unusable(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    settings.db_path.write_bytes(b"this is not a SQLite database" * 100)
    result = run_serve(settings)
    assert_one_line(result, startup.EXIT_DATABASE, str(settings.db_path))


def test_exit_codes_are_distinct() -> None:
    codes = [v for k, v in vars(startup).items() if k.startswith("EXIT_")]
    assert len(codes) == len(set(codes)) and 0 not in codes and 1 not in codes
