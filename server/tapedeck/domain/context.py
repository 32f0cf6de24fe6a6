"""``Context``: what every domain service is built from, and the named locks it shares."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from tapedeck.clock import Clock
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import JobSignals
from tapedeck.infra.store import ObjectStore
from tapedeck.runtime import Runtime
from tapedeck.settings import Settings


class NamedLocks(Protocol):
    """Locks by name held across store I/O: ``Database.hold`` (in process on SQLite, an
    advisory lock on PostgreSQL, so every api process of a deployment shares them)."""

    def hold(self, key: str) -> AbstractContextManager[None]: ...


@dataclass
class Context:
    """What every domain service is built from. ``job_signals``: call
    ``job_signals.notify(kind)`` after committing a transaction that enqueued a ``kind`` job,
    so this process's idle workers of that kind start it at once (``tapedeck.background.worker``
    subscribes; the domain never imports the worker)."""

    db: Database
    store: ObjectStore
    clock: Clock
    settings: Settings
    locks: NamedLocks
    job_signals: JobSignals = field(default_factory=JobSignals)

    @classmethod
    def of(cls, runtime: Runtime) -> Context:
        """The context of a process's ``Runtime``: its clients and job signals, its
        database as the named locks (what ``Domain.build`` wires for the same runtime)."""
        return cls(db=runtime.db, store=runtime.store, clock=runtime.clock,
                   settings=runtime.settings, locks=runtime.db, job_signals=runtime.job_signals)
