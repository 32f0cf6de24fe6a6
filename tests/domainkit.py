"""Test kit: the whole ``Domain`` in process, with no socket and no child process.

``open_world(dir)`` builds the real domain services (``Domain.build``) on a real SQLite file
in ``dir`` (or a PostgreSQL database: ``target``; the ``domain_world`` fixture runs every test
on both), a ``MemoryStore`` (the core store contract, tests/store runs the same suite on it
and on S3) and a ``ManualClock``, with one project and its secret key. It is the fast layer:
domain rules (tests/domain) and in-process servicers (tests/grpc_api) run against it in
milliseconds; the transports over real sockets and the real store keep their own tests.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapedeck.auth import Principal, create_project, issue_device_token
from tapedeck.clock import ManualClock
from tapedeck.domain import Domain
from tapedeck.domain.models import Recording
from tapedeck.domain.recordings import NewRecording
from tapedeck.infra.db import Database, open_database
from tapedeck.infra.store.memory import MemoryStore
from tapedeck.settings import Settings


def fast_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings of an in-process domain (no store endpoint is ever contacted): the limits
    that are on by default off, as in ``serverkit.make_settings``."""
    base = Settings(data_dir=data_dir, grpc_port=0, http_port=0, webhooks_allow_private=True,
                    rate_limit_per_s=0, max_streaming_per_device=0, storage_quota_bytes=0,
                    live_transcription=False, check_chunks=False)
    return base.replace(**overrides)


@dataclass
class World:
    """One deployment's domain in process: ``domain``, its ``db``, ``store`` and ``clock``,
    and a project with its secret key ``api_key``."""

    domain: Domain
    db: Database
    store: MemoryStore
    clock: ManualClock
    project_id: str
    api_key: str

    @property
    def settings(self) -> Settings:
        return self.domain.ctx.settings

    def principal(self, token: str | None = None) -> Principal:
        """The caller of ``token`` (default: the project's secret key)."""
        return self.domain.auth.authenticate(f"Bearer {token or self.api_key}")

    def device(self, device_id: str | None = None) -> tuple[str, Principal]:
        """A new device of the project: (device_id, its principal)."""
        dev, token = issue_device_token(self.db, self.clock, self.project_id, device_id)
        return dev, self.principal(token)

    def streaming(self, p: Principal | None = None, **fields: Any) -> Recording:
        """A new streaming recording created by ``p`` (default: the secret key)."""
        req = NewRecording(streaming=True, **fields)
        return self.domain.recordings.create(p or self.principal(), req).recording

    def put_chunks(self, p: Principal, recording_id: str, *parts: bytes) -> str:
        """Upload ``parts`` as parts 1..n; return the MD5 of their concatenation."""
        md5 = hashlib.md5()
        for number, data in enumerate(parts, start=1):
            self.domain.chunks.upload(p, recording_id, number, [data],
                                      md5=hashlib.md5(data).hexdigest())
            md5.update(data)
        return md5.hexdigest()

    def event_types(self, recording_id: str) -> list[str]:
        """The types of the recording's events in the outbox, oldest first."""
        return [r[0] for r in self.db.read().execute(
            "SELECT type FROM events WHERE recording_id = ? ORDER BY rowid", [recording_id])]


def migrated_template(path: Path) -> Path:
    """A migrated, empty SQLite database at ``path`` (copying it is ~50x faster than
    migrating a fresh file, which fsyncs once per migration)."""
    open_database(path).close()
    return path


@contextmanager
def open_world(data_dir: Path, template: Path | None = None, target: str | None = None,
               **overrides: Any) -> Iterator[World]:
    """A ``World`` in ``data_dir`` (settings ``overrides`` applied), its database a copy of
    ``template`` (``migrated_template``) if given, or the PostgreSQL database at ``target``
    (a URL); closed on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if template is not None and target is None:
        shutil.copyfile(template, data_dir / "tapedeck.db")
    clock = ManualClock()
    store = MemoryStore(clock.now)
    db = open_database(target if target is not None else data_dir / "tapedeck.db")
    try:
        domain = Domain.build(db, store, clock, fast_settings(data_dir, **overrides))
        project_id, api_key = create_project(db, clock)
        yield World(domain, db, store, clock, project_id, api_key)
    finally:
        db.close()
