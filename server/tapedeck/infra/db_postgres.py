"""The PostgreSQL backend (``TAPEDECK_DATABASE_URL=postgresql://…``): psycopg 3 with a
``psycopg_pool`` connection pool, the same API as ``tapedeck.infra.db.Database``.

Contracts, identical to SQLite's from the domain's point of view:
- ``write()``: one transaction (READ COMMITTED) that first takes the transaction-scoped
  advisory lock ``WRITE_LOCK`` — PostgreSQL's counterpart of SQLite's ``BEGIN IMMEDIATE``.
  Every read-then-write rule of the domain (idempotency keys, one stitching job, one terminal
  event, device token rotation, …) therefore holds across any number of processes and hosts:
  no rule depends on process memory. The lock is released by COMMIT/ROLLBACK, also when a
  process dies (its session ends). Two narrower modes (``write(lock=…)``):
  ``"shared"`` takes ``WRITE_LOCK`` in shared mode: such transactions run in parallel with
  each other but never beside a global one (an exclusive waiter is queued ahead of later
  shared requests, so a global transaction always sees a quiescent database, exactly as
  before). Only for a transaction whose caller holds ``hold(<recording id>)`` and whose rules
  are all that recording's (the chunk ledger upsert of chunk ingest); ``"rows"`` takes no
  advisory lock: the job queue's claim (``FOR UPDATE SKIP LOCKED``) and its single-row
  conditional UPDATEs (heartbeat, retry, release), which PostgreSQL re-checks after any
  row-lock wait.
- ``read()``: a ``Tx`` whose every statement runs on a pooled connection in autocommit and
  is fetched whole (like a SQLite read outside a transaction); inside ``write()`` on the same
  thread it is the write transaction itself, so a thread reads its own uncommitted writes.
- ``hold(key)``: a session advisory lock on ``hashtextextended(key)``, on a connection of a
  separate small pool, held for the ``with`` block (across store I/O).
- ``notify(channel)`` / ``listen(channels, timeout)``: ``NOTIFY`` inside the caller's
  transaction (delivered at commit) and a blocking wait on ``LISTEN``, which idle workers and
  dispatchers use instead of polling.
- The request id of the running request goes into ``tapedeck.request_id`` (``set_config``,
  transaction-local); the ``request_id`` columns default to it (migration ``m0007``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg_pool import ConnectionPool

from tapedeck.infra.db import Database
from tapedeck.infra.logs import current_request_id
from tapedeck.infra.migrations import migrate
from tapedeck.infra.sql import Cursor, Dialect, Params, Tx, WriteLock

WRITE_LOCK = 0x7461706564  # "taped": the advisory lock every write transaction takes first
_LOCK_SQL: dict[WriteLock, str] = {
    "global": f"pg_advisory_xact_lock({WRITE_LOCK}),",
    "shared": f"pg_advisory_xact_lock_shared({WRITE_LOCK}),",
    "rows": "",
}

_IS_PARAM = re.compile(r"\bIS\s+(NOT\s+)?\?", re.IGNORECASE)
_EMPTY_IN = re.compile(r"\bIN\s*\(\s*\)", re.IGNORECASE)


@lru_cache(maxsize=2048)
def translate(sql: str, has_params: bool) -> str:
    """``sql`` in psycopg's placeholder syntax: ``?`` → ``%s`` and ``%`` → ``%%`` outside
    quoted literals and identifiers (only when there are parameters), ``IS [NOT] ?`` →
    ``IS [NOT] DISTINCT FROM`` (SQLite's ``IS`` compares any two values), ``IN ()`` → an
    empty subquery (SQLite accepts an empty list: ``IN`` false, ``NOT IN`` true)."""
    sql = _EMPTY_IN.sub("IN (SELECT NULL WHERE FALSE)", sql)
    if not has_params:
        return sql
    out: list[str] = []
    quote: str | None = None
    for ch in _IS_PARAM.sub(lambda m: "IS DISTINCT FROM ?" if m.group(1)
                            else "IS NOT DISTINCT FROM ?", sql):
        if quote is not None:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class _BoolAsInt(Dumper):
    """Python ``bool`` as ``int8`` 0/1: flags are INTEGER columns in both dialects."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """``numeric`` (e.g. ``SUM`` of bigints) as ``int`` when integral, else ``float``, as
    SQLite returns them."""

    def load(self, data: Any) -> Any:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("numeric", _NumericAsNumber)


class _Fetched:
    """A cursor's whole result, kept after its connection went back to the pool."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.rowcount = cur.rowcount
        self.description = cur.description
        self._rows = cur.fetchall() if cur.description is not None else []
        self._next = 0

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PgTx:
    """``Tx`` over one psycopg connection (inside a transaction or autocommit)."""

    dialect: Dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement written with ``?`` placeholders."""
        has = bool(params)
        return self.conn.execute(translate(sql, has), params if has else None)


class _PooledReads:
    """``Tx`` for reads: each statement on a pooled autocommit connection, fetched whole."""

    dialect: Dialect = "postgresql"

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        has = bool(params)
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                return _Fetched(conn.execute(translate(sql, has), params if has else None))
            finally:
                conn.autocommit = False


class PostgresDatabase(Database):
    """A PostgreSQL database shared by every process and host of one deployment."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, max_size: int = 16) -> None:
        self.url = url
        self._local = threading.local()
        self._pool = ConnectionPool(url, min_size=1, max_size=max_size, configure=_configure,
                                    open=False, name="tapedeck")
        self._locks = ConnectionPool(url, min_size=0, max_size=max_size, configure=_configure,
                                     open=False, name="tapedeck-locks")
        self._pool.open(wait=True, timeout=30.0)
        self._locks.open()
        self._reads = _PooledReads(self._pool)
        try:
            with self.write() as tx:
                self.applied_migrations = migrate(tx)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def write(self, *, durable: bool = True, lock: WriteLock = "global") -> Iterator[Tx]:
        """A write transaction; ``durable=False`` commits with ``synchronous_commit = off``.
        ``lock`` (see the module docstring): ``"global"`` takes ``WRITE_LOCK`` exclusively,
        ``"shared"`` takes it shared (the caller holds ``hold(<recording id>)`` and touches
        only that recording's rows), ``"rows"`` takes none (every rule of the transaction is
        a conditional UPDATE or ``FOR UPDATE SKIP LOCKED`` on rows: the job queue)."""
        if getattr(self._local, "tx", None) is not None:
            raise RuntimeError("nested Database.write() on one thread")
        with self._pool.connection() as conn, conn.transaction():
            tx = PgTx(conn)
            take = _LOCK_SQL[lock]
            conn.execute(f"SELECT {take} set_config('tapedeck.request_id', %s, true)",
                         [current_request_id() or ""])
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            self._local.tx = tx
            try:
                yield tx
            finally:
                self._local.tx = None

    def read(self) -> Tx:
        """Queries (see the module docstring)."""
        tx: PgTx | None = getattr(self._local, "tx", None)
        return tx if tx is not None else self._reads

    def hold(self, key: str) -> AbstractContextManager[None]:
        """A session advisory lock named ``key``, for the ``with`` block."""
        return self._hold(key)

    @contextmanager
    def _hold(self, key: str) -> Iterator[None]:
        with self._locks.connection() as conn:
            conn.autocommit = True
            try:
                conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
                try:
                    yield
                finally:
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
            finally:
                conn.autocommit = False

    def listen(self, channels: Iterable[str], timeout: float) -> list[str]:
        """Block up to ``timeout`` s for a ``NOTIFY`` on any of ``channels`` (listening
        starts with this call); the channels notified, empty on timeout."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for channel in channels:
                conn.execute(f"LISTEN {psycopg.sql.Identifier(channel).as_string(conn)}")
            return [n.channel for n in conn.notifies(timeout=timeout, stop_after=1)]

    def close(self) -> None:
        """Close both pools."""
        self._pool.close()
        self._locks.close()


def notify(tx: Tx, channel: str, payload: str = "") -> None:
    """``NOTIFY channel, payload`` inside ``tx`` (delivered when it commits); nothing on
    SQLite."""
    if tx.dialect == "postgresql":
        tx.execute("SELECT pg_notify(?, ?)", [channel, payload])
