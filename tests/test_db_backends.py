"""The two database backends agree: the same migrations, tables and columns, the same
``admin migrate`` behaviour, and PostgreSQL's write lock and named locks hold across
connections (as separate processes would use them)."""

from __future__ import annotations

import threading
from pathlib import Path

from tapedeck.infra.db import Database, open_database
from tapedeck.infra.db_postgres import translate
from tapedeck.infra.migrations import MIGRATIONS


def _columns(db: Database) -> dict[str, list[str]]:
    if db.dialect == "postgresql":
        rows = db.read().execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position").fetchall()
    else:
        rows = db.read().execute(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p"
            " WHERE m.type = 'table' AND m.name NOT LIKE 'search_fts%'"
            " AND m.name <> 'sqlite_sequence' ORDER BY m.name, p.cid").fetchall()
    out: dict[str, list[str]] = {}
    for table, col in rows:
        out.setdefault(table, []).append(col)
    return out


def test_both_backends_apply_every_migration_and_have_the_same_columns(
        tmp_path: Path, postgres: object) -> None:
    lite = open_database(tmp_path / "a.db")
    pg = open_database(postgres.fresh_database(migrated=False))  # type: ignore[attr-defined]
    try:
        names = [fn.__name__ for fn in MIGRATIONS]
        assert lite.applied_migrations == names
        assert pg.applied_migrations == names
        a, b = _columns(lite), _columns(pg)
        assert sorted(a) == sorted(b)
        for table, cols in a.items():
            extra = {"rowid"} if table == "events" else {"tsv", "folded"} if table == "search_segments" \
                else set()
            assert set(b[table]) - extra == set(cols), table
    finally:
        lite.close()
        pg.close()


def test_reopening_applies_nothing(database: Database) -> None:
    again = open_database(database.url if database.dialect == "postgresql" else database.path)
    try:
        assert again.applied_migrations == []
    finally:
        again.close()


def test_placeholders_are_translated_outside_literals() -> None:
    assert translate("SELECT * FROM t WHERE a = ? AND b LIKE 'x%?' AND c IS ?", True) == \
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%?' AND c IS NOT DISTINCT FROM %s"
    assert translate("SELECT 1 WHERE x NOT IN ()", False) == \
        "SELECT 1 WHERE x NOT IN (SELECT NULL WHERE FALSE)"


def test_write_transactions_exclude_each_other_across_connections(database: Database) -> None:
    """Read-then-write under ``write()`` never loses an update, on either backend, even
    with one Database object (its own pool or connections) per thread."""
    target = database.url if database.dialect == "postgresql" else database.path
    with database.write() as tx:
        tx.execute("INSERT INTO projects VALUES ('prj_c', '0', 'now')")

    def bump() -> None:
        own = open_database(target)
        try:
            for _ in range(25):
                with own.write() as tx:
                    n = int(tx.execute("SELECT name FROM projects WHERE id = 'prj_c'")
                            .fetchone()[0])
                    tx.execute("UPDATE projects SET name = ? WHERE id = 'prj_c'", [str(n + 1)])
        finally:
            own.close()

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = database.read().execute("SELECT name FROM projects WHERE id = 'prj_c'").fetchone()
    assert row[0] == "100"


def test_named_locks_exclude_each_other_across_databases(db_target: str | Path) -> None:
    """``hold(key)`` on two Database objects of one PostgreSQL excludes (advisory lock);
    on SQLite it is in process, so the check uses one object."""
    first = open_database(db_target)
    second = first if first.dialect == "sqlite" else open_database(db_target)
    inside: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with first.hold("rec_x"):
            inside.append("first")
            entered.set()
            release.wait(10)
            inside.append("first-out")

    def taker() -> None:
        with second.hold("rec_x"):
            inside.append("second")

    t = threading.Thread(target=holder)
    t.start()
    assert entered.wait(10)
    with second.hold("other"):  # another name is free meanwhile
        pass
    w = threading.Thread(target=taker)
    w.start()
    w.join(0.5)  # the taker must still be waiting for rec_x
    assert inside == ["first"]
    release.set()
    t.join()
    w.join(10)
    assert inside == ["first", "first-out", "second"]
    first.close()
    if second is not first:
        second.close()
