"""Test kit: a scaled-out deployment as real child processes — any number of ``tapedeck api``,
``worker`` and ``dispatcher`` processes sharing ONE PostgreSQL database (``pgkit``), ONE S3
bucket (the session ``weed mini`` or the ``scripts/cluster`` SeaweedFS cluster) and ONE
``TAPEDECK_SECRET_KEY`` — each with its own data dir, as separate hosts would be.

``Fleet(settings).spawn("api")`` starts a process (``opskit.spawn``: stderr to a log file,
returns once it listens); ``kill(child)`` is SIGKILL; ``respawn(child)`` starts the same role
again. ``project()`` bootstraps a project through the database, like
``tapedeck admin bootstrap``. Also used by ``bench/scaleout.py``."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "ops"))  # opskit (child processes)

from tapedeck.auth import create_project, issue_device_token
from tapedeck.clock import SystemClock
from tapedeck.infra.db import open_database
from tapedeck.settings import Settings

from opskit import Child, spawn

SECRET_KEY = "fleet-test-secret-key-shared-by-every-node"


def fleet_settings(base: Settings, database_url: str, **overrides: Any) -> Settings:
    """``base`` (``serverkit.make_settings``: store and bucket) on PostgreSQL with the shared
    secret key, tuned for tests (fast polls, short leases so killed workers' jobs return)."""
    return base.replace(database_url=database_url, secret_key=SECRET_KEY, job_kinds="stitch",
                        job_poll_ms=500, shutdown_grace_s=1, **overrides)


@dataclass
class Fleet:
    """The processes of one deployment (see the module docstring)."""

    settings: Settings
    root: Path
    children: list[Child] = field(default_factory=list)
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, role: str, name: str | None = None, **overrides: Any) -> Child:
        """Start ``tapedeck ROLE`` with its own data dir (and ports picked freely)."""
        with self._lock:
            self._count += 1
            name = name or f"{role}-{self._count}"
        s = self.settings.replace(data_dir=self.root / name, **overrides)
        # A generous bound: on a loaded 2-core machine a cold start takes tens of seconds.
        child = spawn(s, role, self.root / "logs", name, timeout=300.0)
        self.children.append(child)
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL (no grace, no cleanup) and reap."""
        child.kill()

    def respawn(self, child: Child) -> Child:
        """The same role again (a new process, as a supervisor would restart it)."""
        return self.spawn(child.command)

    def alive(self, role: str) -> list[Child]:
        return [c for c in self.children if c.command == role and c.proc.poll() is None]

    def project(self, devices: int = 0) -> tuple[str, str, list[str]]:
        """(project id, secret API key, ``devices`` device tokens)."""
        db = open_database(self.settings.database_url)
        try:
            clock = SystemClock()
            project_id, api_key = create_project(db, clock)
            tokens = [issue_device_token(db, clock, project_id)[1] for _ in range(devices)]
        finally:
            db.close()
        return project_id, api_key, tokens

    def stop(self) -> None:
        """Kill whatever still runs."""
        for child in self.children:
            if child.proc.poll() is None:
                child.kill()


def fleet_store(fleet: Fleet) -> Any:
    """An ``S3Store`` on the fleet's bucket, for checking what the processes stored."""
    from tapedeck.infra.store.s3 import S3Store

    s = fleet.settings
    return S3Store(endpoint=s.s3_endpoint, access_key=s.s3_access_key,
                   secret_key=s.s3_secret_key, bucket=s.s3_bucket, secure=False,
                   region="us-east-1")


def read_all(store: Any, key: str) -> bytes:
    stream = store.open(key)
    try:
        return bytes(stream.read())
    finally:
        stream.close()
