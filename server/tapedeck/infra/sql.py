"""The SQL layer both database backends implement (SQLite: ``tapedeck.db``; PostgreSQL:
``tapedeck.infra.db_postgres``).

Domain code receives a ``Tx`` (from ``Database.write()`` or ``Database.read()``) and calls
``tx.execute(sql, params)``, ``sql`` written with ``?`` placeholders in the dialect both
databases accept (``RETURNING``, ``ON CONFLICT … DO NOTHING/UPDATE``, ``COALESCE``, no
``INSERT OR …``, no SQLite-only functions). The PostgreSQL backend translates placeholders
(and ``IS ?`` into ``IS NOT DISTINCT FROM``); ``tx.dialect`` names the backend for the few
places that must differ (DDL, full-text search).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]
WriteLock = Literal["global", "shared", "rows"]  # Database.write(lock=…), see db_postgres
Params = Sequence[Any] | Mapping[str, Any]


class Cursor(Protocol):
    """The DB-API cursor subset Tapedeck uses (rows are tuples)."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """A connection inside a transaction (write) or a connection for queries (read)."""

    dialect: Dialect

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...


class SqliteTx:
    """``Tx`` over one ``sqlite3.Connection`` (``conn`` stays reachable for PRAGMAs)."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""
        return self.conn.execute(sql, params)


def rows_as_dicts(cur: Cursor) -> list[dict[str, Any]]:
    """Every remaining row of ``cur`` as a ``{column: value}`` dict."""
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


# Errors a caller may treat as "the database is unavailable / busy right now" (transient).
def operational_errors() -> tuple[type[Exception], ...]:
    """``sqlite3.OperationalError`` and, if installed, psycopg's ``OperationalError``."""
    errors: list[type[Exception]] = [sqlite3.OperationalError]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a server dependency
        return tuple(errors)
    errors.append(psycopg.OperationalError)
    return tuple(errors)


def database_errors() -> tuple[type[Exception], ...]:
    """The base error class of each backend (``sqlite3.Error``, ``psycopg.Error``)."""
    errors: list[type[Exception]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return tuple(errors)
    errors.append(psycopg.Error)
    return tuple(errors)
