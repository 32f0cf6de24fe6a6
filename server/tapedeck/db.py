"""SQLite access: one connection per thread, WAL, ``synchronous=FULL``, writes under
``BEGIN IMMEDIATE``.

``Database.write()`` is the only way to change state: it takes SQLite's write lock up
front (so read-then-write logic inside it cannot race another writer) and commits or rolls
back as a whole. ``Database.read()`` gives the thread's connection for queries.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from tapedeck.logs import install_sql_function
from tapedeck.migrations import migrate
from tapedeck.private import private_database


class Database:
    """A SQLite file shared by every thread (and process) of a Tapedeck deployment."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self.write() as db:
            migrate(db)

    def _conn(self) -> sqlite_utils.Database:
        db: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if db is None:
            private_database(self.path)
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            install_sql_function(conn)  # request ids on jobs/events (migration m0007)
            db = sqlite_utils.Database(conn)
            self._local.db = db
            with self._lock:
                self._all.append(conn)
        return db

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite_utils.Database]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``; rollback on error).

        ``durable=False`` commits without an fsync (``synchronous=NORMAL`` for this one
        transaction): still atomic and ordered, and kept if the process dies, but an OS crash
        or power loss may drop it (and later non-durable commits). Only for rows that are a
        cache of a truth kept elsewhere (e.g. the chunk ledger, rebuilt from the store)."""
        db = self._conn()
        if db.conn.in_transaction:
            raise RuntimeError("nested Database.write() on one thread")
        if not durable:
            db.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.conn.rollback()
                raise
            db.conn.commit()
        finally:
            if not durable:
                db.conn.execute("PRAGMA synchronous=FULL")

    def read(self) -> sqlite_utils.Database:
        """The calling thread's connection, for queries outside a write transaction."""
        return self._conn()

    def close(self) -> None:
        """Close every connection this object opened (all threads)."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
