"""``tapedeck admin migrate-to``: copy an embedded installation's SQLite rows into a
PostgreSQL database, verifiably and resumably (the objects move with ``admin copy-objects``).

Contract:
- The source is opened read-only and must not change meanwhile (stop the servers first).
- The target is migrated to the same schema first (``tapedeck.infra.db.open_database``); it must
  be empty, or a copy this command started (its progress table ``_tapedeck_migrate_to``).
- Tables are copied parents first (foreign keys), each in batches of ``batch`` rows in
  SQLite ``rowid`` order; a batch and its progress row commit in ONE PostgreSQL
  transaction, so a copy killed at any moment resumes after the last committed batch and no
  row is copied twice. Identity sequences are moved past the copied ids.
- Rows are copied as they are, with the target's user triggers off for the batch.
- The search index is not copied but rebuilt from the transcripts (PostgreSQL's own index).
- Verification: per table, the row count and an order-independent checksum (the sum of
  each row's MD5 over its values normalized by the target's column types) on both sides;
  ``ok`` only if every table agrees.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tapedeck.infra.db import open_database, redact_url

PROGRESS = "_tapedeck_migrate_to"
SKIPPED = frozenset({"_migrations", PROGRESS, "search_segments"})  # own, or rebuilt


class MigrateToError(RuntimeError):
    """The copy cannot start (e.g. the target holds other data); the message says why."""


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # information_schema data_type, e.g. "bigint", "text", "bytea"


@dataclass
class TableReport:
    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def ok(self) -> bool:
        return (self.source_rows, self.source_checksum) == (self.target_rows,
                                                             self.target_checksum)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "rows": [self.source_rows, self.target_rows],
                "checksum": [self.source_checksum, self.target_checksum], "ok": self.ok}


def migrate_to(source: Path, target_url: str, *, batch: int = 500,
               progress: Callable[[str, int], None] | None = None) -> list[TableReport]:
    """Copy ``source`` (a SQLite file) into ``target_url`` (see the module docstring); the
    per-table verification. ``progress(table, rows_so_far)`` after each committed batch."""
    if not source.exists():
        raise MigrateToError(f"no SQLite database at {source}")
    open_database(target_url).close()  # the same schema, migrated
    lite = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        with psycopg.connect(target_url) as pg:
            tables = _tables_in_order(pg)
            columns = {t: _shared_columns(lite, pg, t) for t in tables}
            _start(pg, tables)
            for table in tables:
                _copy_table(lite, pg, table, columns[table], batch, progress)
            _bump_identities(pg, tables)
        _rebuild_search(target_url)
        with psycopg.connect(target_url) as pg:
            return [_verify(lite, pg, t, columns[t]) for t in tables]
    finally:
        lite.close()


def _tables_in_order(pg: psycopg.Connection[Any]) -> list[str]:
    """The target's tables to copy, every table after the ones its foreign keys name."""
    names = [r[0] for r in pg.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        " AND table_type = 'BASE TABLE' ORDER BY table_name") if r[0] not in SKIPPED]
    parents: dict[str, set[str]] = {n: set() for n in names}
    for child, parent in pg.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f'"):
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    while parents:
        ready = sorted(n for n, ps in parents.items() if not ps - set(ordered))
        if not ready:  # a cycle: keep the remaining order (not in this schema)
            ready = sorted(parents)
        ordered += ready
        for n in ready:
            del parents[n]
    return ordered


def _shared_columns(lite: sqlite3.Connection, pg: psycopg.Connection[Any],
                    table: str) -> list[Column]:
    """The columns both sides have, except PostgreSQL's generated ones (``tsv``); the
    SQLite-only implicit ``rowid`` of ``events`` is copied into its PostgreSQL column."""
    have = {r[1] for r in lite.execute(f'SELECT * FROM pragma_table_info("{table}")')}
    if table == "events":
        have.add("rowid")
    return [Column(name, typ) for name, typ in pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema ="
        " 'public' AND table_name = %s AND is_generated = 'NEVER' ORDER BY ordinal_position",
        [table]) if name in have]


def _start(pg: psycopg.Connection[Any], tables: Iterable[str]) -> None:
    """Create the progress table, or check a resumed copy; refuse a target with other data."""
    with pg.transaction():
        pg.execute(f"CREATE TABLE IF NOT EXISTS {PROGRESS} (tbl TEXT PRIMARY KEY,"
                   " last_rowid BIGINT NOT NULL, copied BIGINT NOT NULL)")
        started = {r[0] for r in pg.execute(f"SELECT tbl FROM {PROGRESS}")}
        for table in tables:
            if table in started:
                continue
            ident = sql.Identifier(table)
            if pg.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident)) \
                    .fetchone() == (True,):
                raise MigrateToError(f"the target's table {table} already has rows this copy"
                                     " did not write: migrate into an empty database")
            pg.execute(f"INSERT INTO {PROGRESS} VALUES (%s, 0, 0)", [table])


def _copy_table(lite: sqlite3.Connection, pg: psycopg.Connection[Any], table: str,
                cols: list[Column], batch: int,
                progress: Callable[[str, int], None] | None) -> None:
    names = [c.name for c in cols]
    select = ", ".join("rowid" if n == "rowid" else f'"{n}"' for n in names)
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names)))
    last, copied = pg.execute(f"SELECT last_rowid, copied FROM {PROGRESS} WHERE tbl = %s",
                              [table]).fetchone() or (0, 0)
    pg.commit()
    while True:
        rows = lite.execute(f'SELECT rowid, {select} FROM "{table}" WHERE rowid > ?'
                            " ORDER BY rowid LIMIT ?", [last, batch]).fetchall()
        if not rows:
            return
        with pg.transaction():
            # Rows are copied as they are: no trigger may derive more (e.g. the outbox row
            # each new event gets; the outbox is copied too). Transactional: a kill re-enables.
            pg.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table)))
            with pg.cursor().copy(copy) as cp:
                for row in rows:
                    cp.write_row([_to_pg(v, c) for v, c in zip(row[1:], cols, strict=True)])
            pg.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(sql.Identifier(table)))
            last, copied = rows[-1][0], copied + len(rows)
            pg.execute(f"UPDATE {PROGRESS} SET last_rowid = %s, copied = %s WHERE tbl = %s",
                       [last, copied, table])
        if progress is not None:
            progress(table, copied)


def _to_pg(value: Any, col: Column) -> Any:
    """A SQLite value as the target column takes it (SQLite's columns are loosely typed)."""
    if value is None:
        return None
    if col.pg_type == "bigint" and isinstance(value, str):
        return int(value)
    if col.pg_type == "text" and not isinstance(value, str):
        return value.decode() if isinstance(value, bytes) else str(value)
    return value


def _bump_identities(pg: psycopg.Connection[Any], tables: Iterable[str]) -> None:
    with pg.transaction():
        for table, col in pg.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE"
                " table_schema = 'public' AND is_identity = 'YES'").fetchall():
            if table in tables:
                pg.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s),"
                                   " max({c})) FROM {t} HAVING max({c}) IS NOT NULL").format(
                    c=sql.Identifier(col), t=sql.Identifier(table)), [table, col])


def _rebuild_search(target_url: str) -> None:
    from tapedeck.domain.search_index import backend_for

    db = open_database(target_url)
    try:
        backend_for(db).rebuild(db)
    finally:
        db.close()


def _canonical(value: Any, col: Column) -> str:
    value = _to_pg(value, col)
    if isinstance(value, bytes | memoryview):
        return "b:" + bytes(value).hex()
    if isinstance(value, float):
        return "f:" + repr(value)
    return json.dumps(value)


def _checksum(rows: Iterator[Any], cols: list[Column]) -> tuple[int, str]:
    count, total = 0, 0
    for row in rows:
        line = "\x1f".join(_canonical(v, c) for v, c in zip(row, cols, strict=True))
        total = (total + int(hashlib.md5(line.encode()).hexdigest(), 16)) % (1 << 128)
        count += 1
    return count, f"{total:032x}"


def _verify(lite: sqlite3.Connection, pg: psycopg.Connection[Any], table: str,
            cols: list[Column]) -> TableReport:
    names = [c.name for c in cols]
    lite_cols = ", ".join("rowid" if n == "rowid" else f'"{n}"' for n in names)
    a = _checksum(iter(lite.execute(f'SELECT {lite_cols} FROM "{table}"')), cols)
    with pg.cursor(name=f"verify_{table}") as cur:  # server-side: any table size
        cur.execute(sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(table)))
        b = _checksum(iter(cur), cols)
    pg.commit()
    return TableReport(table, a[0], b[0], a[1], b[1])


def describe(target_url: str) -> str:
    """The target for messages (password hidden)."""
    return redact_url(target_url)
