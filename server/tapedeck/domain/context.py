"""``Context``: what every domain service is built from, and the per-key locks it shares."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tapedeck.clock import Clock
from tapedeck.db import Database
from tapedeck.jobs import JobSignals
from tapedeck.settings import Settings
from tapedeck.store import ObjectStore


class KeyedLocks:
    """One in-process lock per key (e.g. per recording), created on demand."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock for the ``with`` block (other holders of the same key wait;
        the lock is dropped from the table once nobody holds or waits for it)."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass
class Context:
    """What every domain service is built from. ``job_signals``: call
    ``job_signals.notify(kind)`` after committing a transaction that enqueued a ``kind`` job,
    so this process's idle workers of that kind start it at once (``tapedeck.worker``
    subscribes; the domain never imports the worker)."""

    db: Database
    store: ObjectStore
    clock: Clock
    settings: Settings
    locks: KeyedLocks
    job_signals: JobSignals = field(default_factory=JobSignals)
