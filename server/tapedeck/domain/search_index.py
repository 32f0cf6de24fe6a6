"""The transcript search index: a small backend interface and its SQLite FTS5 backend.

What is indexed: every segment of each recording's CURRENT completed transcription, one row
per segment (``search_segments``, schema in migration ``m_search_fts``) naming its project,
recording, transcription, segment index, ``start_ms``/``end_ms``, speaker and text.

When it is written (the contract every backend keeps):

- ``replace(tx, transcription_id)`` inside the transaction that completes a transcript
  (``tapedeck.background.transcribe.job``): the recording's previous rows (an earlier transcription)
  go, the new transcript's segments come, atomically with the completion itself. A
  transcription that is not (or no longer) its recording's current one indexes nothing.
- ``remove_recording(tx, recording_id)`` inside the transaction that deletes a recording
  (``Recordings.delete``). In SQLite the foreign keys also cascade, so a row can never
  outlive its recording or transcription, whatever deletes them (retention, an end user's
  deletion). ``remove_end_user(tx, project_id, end_user_id)`` is the one call for an
  end-user deletion that keeps the recordings' rows (``EndUsers.delete``).
- ``rebuild(db)`` (``tapedeck admin reindex``) recreates the index from the transcripts.

Search: ``search(db, query)`` runs a parsed query (``tapedeck.domain.search_query``) with
filters and a keyset position; the caller (``tapedeck.domain.search``) decides visibility.

Backends: ``Fts5Index`` (SQLite) and ``tapedeck.domain.search_pg.PgIndex`` (PostgreSQL,
``tsvector``/``tsquery``); ``backend_for`` picks by the database's dialect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tapedeck.clock import iso
from tapedeck.domain.search_query import And, Node, Not, Or, Term
from tapedeck.infra.db import Database
from tapedeck.infra.sql import Tx

#: Match markers the backend puts around matched words in ``SegmentHit.marked`` (Unicode
#: private-use characters; removed from the indexed text, so they cannot occur in it).
MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"
ORDERS = ("relevance", "newest")


@dataclass(frozen=True)
class SearchFilters:
    """What a search is restricted to. ``project_id`` always; the rest when not None.
    ``since``/``until``: the recording's start (``started_at``, else ``created_at``) is in
    ``[since, until)``. ``metadata``: the recording's metadata has every pair."""

    project_id: str
    device_id: str | None = None
    end_user_id: str | None = None
    speaker: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexQuery:
    """One page request to a backend: ``after`` is the sort key of the last hit of the
    previous page (``SegmentHit.sort_key``) or None for the first page."""

    node: Node
    filters: SearchFilters
    order: str = "relevance"
    limit: int = 25
    after: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class SegmentHit:
    """One matching segment. ``score``: relevance, higher is better (BM25 in FTS5).
    ``marked``: the segment text with ``MARK_OPEN``/``MARK_CLOSE`` around matched words.
    ``recorded_at``: the recording's start (ISO-8601). ``sort_key``: keyset position."""

    rowid: int
    recording_id: str
    transcription_id: str
    segment_index: int
    start_ms: int
    end_ms: int
    speaker: str | None
    text: str
    marked: str
    score: float
    recorded_at: str
    device_id: str | None
    end_user_id: str | None
    sort_key: tuple[Any, ...]


class SearchIndex(Protocol):
    """A transcript search backend (see the module docstring for the contract)."""

    def replace(self, tx: Tx, transcription_id: str) -> int:
        """Index a just-completed transcription in its recording's place; segment count."""
        ...

    def remove_recording(self, tx: Tx, recording_id: str) -> int:
        """Drop a recording's rows; how many."""
        ...

    def remove_end_user(self, tx: Tx, project_id: str,
                        end_user_id: str) -> int:
        """Drop the rows of every recording of an end user; how many."""
        ...

    def search(self, db: Tx, query: IndexQuery) -> list[SegmentHit]:
        """Up to ``query.limit`` hits after ``query.after``, in ``query.order``."""
        ...

    def rebuild(self, db: Database, batch: int = 200) -> int:
        """Recreate the index from the transcripts; segments indexed."""
        ...


# -- SQLite FTS5 ---------------------------------------------------------------------------

_INSERT = """INSERT INTO search_segments (recording_id, transcription_id, project_id,
        segment_index, start_ms, end_ms, speaker, text)
    SELECT t.recording_id, t.id, t.project_id, CAST(j.key AS INTEGER),
        json_extract(j.value, '$.start_ms'), json_extract(j.value, '$.end_ms'),
        json_extract(j.value, '$.speaker'),
        replace(replace(trim(json_extract(j.value, '$.text')), char(57344), ''), char(57345), '')
    FROM transcriptions t, json_each(t.segments) j
    WHERE t.id = ? AND t.status = 'completed' AND EXISTS (SELECT 1 FROM recordings r
        WHERE r.id = t.recording_id AND r.transcription_id = t.id)
    ORDER BY CAST(j.key AS INTEGER)"""

_RECORDED_AT = "coalesce(r.started_at, r.created_at)"

_SELECT = f"""SELECT s.rowid, s.recording_id, s.transcription_id, s.segment_index, s.start_ms,
        s.end_ms, s.speaker, s.text, highlight(search_fts, 0, char(57344), char(57345)),
        search_fts.rank, {_RECORDED_AT}, r.device_id, r.end_user_id
    FROM search_fts JOIN search_segments s ON s.rowid = search_fts.rowid
        JOIN recordings r ON r.id = s.recording_id"""


class Fts5Index:
    """``SearchIndex`` over the FTS5 table ``search_fts`` (porter + unicode61 with
    ``remove_diacritics 2``), external content ``search_segments`` kept in step by
    triggers. BM25 ranks (FTS5's ``rank``: lower is better; reported negated)."""

    def replace(self, tx: Tx, transcription_id: str) -> int:
        row = tx.execute(
            "SELECT t.recording_id FROM transcriptions t JOIN recordings r ON r.id ="
            " t.recording_id AND r.transcription_id = t.id WHERE t.id = ? AND t.status ="
            " 'completed'", [transcription_id]).fetchone()
        if row is None:  # gone, unfinished, or superseded: the index keeps what it has
            return 0
        self.remove_recording(tx, str(row[0]))
        return int(tx.execute(_INSERT, [transcription_id]).rowcount)

    def remove_recording(self, tx: Tx, recording_id: str) -> int:
        cur = tx.execute("DELETE FROM search_segments WHERE recording_id = ?", [recording_id])
        return int(cur.rowcount)

    def remove_end_user(self, tx: Tx, project_id: str,
                        end_user_id: str) -> int:
        cur = tx.execute("DELETE FROM search_segments WHERE recording_id IN (SELECT id FROM"
                         " recordings WHERE project_id = ? AND end_user_id = ?)",
                         [project_id, end_user_id])
        return int(cur.rowcount)

    def search(self, db: Tx, query: IndexQuery) -> list[SegmentHit]:
        where, args = ["search_fts MATCH ?"], [compile_fts5(query.node)]
        _filter_sql(query.filters, where, args)
        if query.order == "newest":
            order = f"{_RECORDED_AT} DESC, s.recording_id DESC, s.start_ms, s.rowid"
            if query.after is not None:
                where.append(f"({_RECORDED_AT} < ? OR ({_RECORDED_AT} = ? AND"
                             " (s.recording_id < ? OR (s.recording_id = ? AND"
                             " (s.start_ms, s.rowid) > (?, ?)))))")
                t, rec, ms, rowid = query.after
                args += [t, t, rec, rec, ms, rowid]
        else:
            order = "search_fts.rank, s.rowid"
            if query.after is not None:
                where.append("(search_fts.rank, s.rowid) > (?, ?)")
                args += list(query.after)
        cur = db.execute(f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",
                         [*args, query.limit])
        return [_hit(r, query.order) for r in cur.fetchall()]

    def rebuild(self, db: Database, batch: int = 200) -> int:
        """Recording by recording (``batch`` per transaction, so writers are not blocked for
        long and search stays complete meanwhile): replace each recording's rows from its
        current completed transcription, drop rows of any other, then ``optimize``."""
        ids = [r[0] for r in db.read().execute(
            "SELECT t.id FROM transcriptions t JOIN recordings r ON r.transcription_id = t.id"
            " WHERE t.status = 'completed' ORDER BY t.id").fetchall()]
        total = 0
        for start in range(0, len(ids), batch):
            with db.write() as tx:
                total += sum(self.replace(tx, txn_id) for txn_id in ids[start:start + batch])
        with db.write() as tx:
            tx.execute("""DELETE FROM search_segments WHERE transcription_id NOT IN (
                SELECT t.id FROM transcriptions t JOIN recordings r ON r.transcription_id = t.id
                WHERE t.status = 'completed')""")
            self._optimize(tx)
        return total

    def _optimize(self, tx: Tx) -> None:
        """Merge the FTS5 index's segments (after a rebuild)."""
        tx.execute("INSERT INTO search_fts(search_fts) VALUES ('optimize')")


def _filter_sql(f: SearchFilters, where: list[str], args: list[Any]) -> None:
    where.append("s.project_id = ?")
    args.append(f.project_id)
    for col, value in (("r.device_id", f.device_id), ("r.end_user_id", f.end_user_id),
                       ("s.speaker", f.speaker)):
        if value is not None:
            where.append(f"{col} = ?")
            args.append(value)
    if f.since is not None:
        where.append(f"{_RECORDED_AT} >= ?")
        args.append(iso(f.since))
    if f.until is not None:
        where.append(f"{_RECORDED_AT} < ?")
        args.append(iso(f.until))
    for key, value in sorted(f.metadata.items()):
        where.append("EXISTS (SELECT 1 FROM json_each(r.metadata) m"
                     " WHERE m.key = ? AND m.value = ?)")
        args += [key, value]


def _hit(r: tuple[Any, ...], order: str) -> SegmentHit:
    rowid, rank, recorded_at = r[0], float(r[9]), str(r[10])
    key: tuple[Any, ...] = ((recorded_at, r[1], r[4], rowid) if order == "newest"
                            else (rank, rowid))
    return SegmentHit(rowid=rowid, recording_id=r[1], transcription_id=r[2],
                      segment_index=r[3], start_ms=r[4], end_ms=r[5], speaker=r[6], text=r[7],
                      marked=r[8], score=-rank, recorded_at=recorded_at, device_id=r[11],
                      end_user_id=r[12], sort_key=key)


def compile_fts5(node: Node) -> str:
    """The FTS5 MATCH expression of a parsed query: every word or phrase is a double-quoted
    FTS5 string (quotes doubled), so no user text is ever read as FTS5 syntax."""
    if isinstance(node, Term):
        quoted = '"' + node.text.replace('"', '""') + '"'
        return quoted + " *" if node.prefix else quoted
    if isinstance(node, Not):
        return f"({compile_fts5(node.keep)} NOT {compile_fts5(node.drop)})"
    op = " AND " if isinstance(node, And) else " OR "
    assert isinstance(node, (And, Or))
    return "(" + op.join(compile_fts5(p) for p in node.parts) + ")"


def backend_for(db: Database | Tx) -> SearchIndex:
    """The index backend of a state store: FTS5 on SQLite, ``tsvector`` on PostgreSQL."""
    if db.dialect == "postgresql":
        from tapedeck.domain.search_pg import PgIndex

        return PgIndex()
    return Fts5Index()
