"""The database: SQLite by default (one file in the data dir), PostgreSQL when
``TAPEDECK_DATABASE_URL=postgresql://…`` (``tapedeck.infra.db_postgres``). Both give the same API:

``Database.write()`` is the only way to change state: a transaction in which read-then-write
logic cannot race another writer (SQLite: ``BEGIN IMMEDIATE``, the database's write lock;
PostgreSQL: a transaction-scoped advisory lock, see ``db_postgres``), committed or rolled
back as a whole. ``Database.read()`` gives a ``Tx`` for queries. ``Database.hold(key)`` is
a lock on a name (e.g. a recording id) held across store I/O outside any transaction: in
process memory on SQLite (one node), a session advisory lock on PostgreSQL (any number of
nodes). SQL is written once, in the dialect both accept (``tapedeck.infra.sql``).

SQLite: one connection per thread, WAL, ``synchronous=FULL``.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from tapedeck.infra.logs import install_sql_function
from tapedeck.infra.migrations import migrate
from tapedeck.infra.private import private_database
from tapedeck.infra.sql import Dialect, SqliteTx, Tx, WriteLock


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


class Database:
    """A SQLite file shared by every thread (and process) of a Tapedeck deployment."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._keyed = KeyedLocks()
        with self.write() as db:
            #: The migrations this open applied (``tapedeck admin migrate`` prints them).
            self.applied_migrations = migrate(db)

    def _conn(self) -> SqliteTx:
        db: SqliteTx | None = getattr(self._local, "db", None)
        if db is None:
            private_database(self.path)
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            install_sql_function(conn)  # request ids on jobs/events (migration m0007)
            db = SqliteTx(conn)
            self._local.db = db
            with self._lock:
                self._all.append(conn)
        return db

    @contextmanager
    def write(self, *, durable: bool = True, lock: WriteLock = "global") -> Iterator[Tx]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``; rollback on error).
        ``lock`` matters on PostgreSQL only (``db_postgres``): SQLite always takes its one
        write lock.

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

    def read(self) -> Tx:
        """The calling thread's connection, for queries outside a write transaction."""
        return self._conn()

    def hold(self, key: str) -> AbstractContextManager[None]:
        """Hold the lock named ``key`` for a ``with`` block (in process memory: SQLite
        deployments are one node)."""
        return self._keyed.hold(key)

    def close(self) -> None:
        """Close every connection this object opened (all threads)."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact_url(target: str) -> str:
    """``target`` with the password of a database URL replaced by ``***`` (for messages)."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]*:)[^@]*@", r"\1***@", target)


def open_database(target: str | Path) -> Database:
    """The database at ``target``: a PostgreSQL URL, else a SQLite file path (migrated)."""
    if is_postgres_url(target):
        from tapedeck.infra.db_postgres import PostgresDatabase

        return PostgresDatabase(str(target))
    return Database(target)
