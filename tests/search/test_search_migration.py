"""Migration ``m_search_fts`` on a database that already holds transcripts: the current
completed transcript of each recording is searchable right after the upgrade; older or
unfinished transcriptions are not indexed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tapedeck.domain.search_index import IndexQuery, SearchFilters, backend_for
from tapedeck.domain.search_query import parse
from tapedeck.infra.logs import install_sql_function
from tapedeck.infra.migrations import MIGRATIONS, m_search_fts, migrate
from tapedeck.infra.sql import SqliteTx

from searchkit import segment


def test_upgrade_indexes_existing_transcripts(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("PRAGMA foreign_keys=ON")
    install_sql_function(conn)
    db = SqliteTx(conn)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for fn in MIGRATIONS[:MIGRATIONS.index(m_search_fts)]:  # the schema before this one
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, 'then')", [fn.__name__])
    now = "2026-01-01T00:00:00.000Z"
    db.execute("INSERT INTO projects VALUES ('prj_1', 'p', ?)", [now])
    db.execute("INSERT INTO recordings (id, project_id, status, codec, streaming, created_at,"
               " updated_at, transcription_id) VALUES ('rec_1', 'prj_1', 'completed', 'opus',"
               " 1, ?, ?, 'txn_new')", [now, now])
    for txn, status, text in (("txn_old", "completed", "an older elderberry take"),
                              ("txn_new", "completed", "the current elderberry take"),
                              ("txn_q", "queued", None)):
        segs = json.dumps([segment(1_500, 2_500, text)] if text else [])
        db.execute("INSERT INTO transcriptions (id, recording_id, project_id, status, provider,"
                   " segments, created_at) VALUES (?, 'rec_1', 'prj_1', ?, 'whisper', ?, ?)",
                   [txn, status, segs, now])
    conn.commit()
    assert m_search_fts.__name__ in migrate(db)
    conn.commit()
    hits = backend_for(db).search(db, IndexQuery(parse("elderberry"),
                                                 SearchFilters(project_id="prj_1")))
    assert [(h.transcription_id, h.start_ms, h.text) for h in hits] == [
        ("txn_new", 1_500, "the current elderberry take")]
    conn.close()
