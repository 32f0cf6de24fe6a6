"""The PostgreSQL backend of the transcript search index (``SearchIndex``, see
``tapedeck.domain.search_index`` for the contract both backends keep).

How it matches what FTS5 does on SQLite:

- Tokens: PostgreSQL's default parser with the text search configuration ``tapedeck``
  (migration ``m_pgapi_search``): the ``english`` one whose word dictionaries are the
  Snowball English stemmer WITHOUT a stop-word list (FTS5's porter tokenizer drops no word,
  so ``the`` and ``and`` are searchable on both).
- Accents: ``search_segments.folded`` is the text with every character folded by ``fold``
  (one character in, one character out: "é" → "e"), and ``tsv`` is computed from it; the
  query's words are folded the same way. Because folding keeps positions, the match markers
  ``ts_headline`` puts into the folded text map back onto the original text.
- Query language: the same ``Node`` tree, compiled to a ``tsquery`` built by SQL functions
  from bound parameters (never from user text spliced into SQL or tsquery syntax): a word or
  phrase is ``phraseto_tsquery`` (``<->`` between its words), a prefix is its last word's
  stem or its unstemmed form with ``:*``, ``AND``/``OR``/``NOT`` are ``&&``/``||``/``&& !!``.
- Ranking: ``ts_rank`` with length normalization 1 (rank / (1 + log(length))), the part of
  BM25 that favours short segments with the word; higher is better. Keyset pagination on
  (-score, rowid), as FTS5's (rank, rowid).
"""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from typing import Any

from tapedeck.domain.search_index import (
    _RECORDED_AT,
    MARK_CLOSE,
    MARK_OPEN,
    Fts5Index,
    IndexQuery,
    SearchFilters,
    SegmentHit,
    _hit,
)
from tapedeck.domain.search_query import And, Node, Not, Or, Term, has_word
from tapedeck.infra.sql import Tx

CONFIG = "tapedeck"  # the text search configuration (migration m_pgapi_search)
_HEADLINE = f'StartSel="{MARK_OPEN}", StopSel="{MARK_CLOSE}", HighlightAll=true'


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if len(base) == 1 else ch


def fold(text: str) -> str:
    """``text`` with accents removed character by character ("Zürich" → "Zurich"); always
    the same length as ``text`` (a character that does not fold to exactly one stays)."""
    return "".join(_fold_char(ch) for ch in text)


def indexed_text(raw: str) -> str:
    """A segment's text as the index stores it (as the FTS5 backend's ``_INSERT``: trimmed of
    spaces, match markers removed)."""
    return raw.strip(" ").replace(MARK_OPEN, "").replace(MARK_CLOSE, "")


def compile_tsquery(node: Node) -> tuple[str, list[Any]]:
    """A SQL expression of type ``tsquery`` for ``node`` and its parameters."""
    if isinstance(node, Term):
        return _term(node)
    if isinstance(node, Not):
        keep, a = compile_tsquery(node.keep)
        drop, b = compile_tsquery(node.drop)
        return f"({keep} && !!{drop})", [*a, *b]
    assert isinstance(node, (And, Or))
    op = " && " if isinstance(node, And) else " || "
    parts = [compile_tsquery(p) for p in node.parts]
    return "(" + op.join(sql for sql, _ in parts) + ")", [a for _, args in parts for a in args]


def _term(term: Term) -> tuple[str, list[Any]]:
    words = fold(term.text).split()
    if not term.prefix or not has_word(words[-1]):
        return f"phraseto_tsquery('{CONFIG}', ?)", [" ".join(words)]
    # The last word's tokens as a phrase, its last token a prefix of the stem or the word.
    last = (f"(((phraseto_tsquery('{CONFIG}', ?)::text || ':*')::tsquery) ||"
            " ((phraseto_tsquery('simple', ?)::text || ':*')::tsquery))")
    if len(words) == 1:
        return last, [words[0], words[0]]
    return (f"tsquery_phrase(phraseto_tsquery('{CONFIG}', ?), {last})",
            [" ".join(words[:-1]), words[-1], words[-1]])


def unfold_marks(original: str, marked_folded: str) -> str:
    """The markers of ``marked_folded`` (``fold(original)`` with markers) put into
    ``original``."""
    out, i = [], 0
    for ch in marked_folded:
        if ch in (MARK_OPEN, MARK_CLOSE):
            out.append(ch)
        else:
            out.append(original[i] if i < len(original) else ch)
            i += 1
    return "".join(out)


_INSERT = """INSERT INTO search_segments (recording_id, transcription_id, project_id,
        segment_index, start_ms, end_ms, speaker, text, folded)
    SELECT ?, ?, ?, u.* FROM unnest(?::bigint[], ?::bigint[], ?::bigint[], ?::text[],
        ?::text[], ?::text[]) AS u"""

_RANK = "ts_rank(s.tsv, q.q, 1)::float8"

_SELECT = f"""SELECT s.rowid, s.recording_id, s.transcription_id, s.segment_index, s.start_ms,
        s.end_ms, s.speaker, s.text, ts_headline('{CONFIG}', s.folded, q.q, '{_HEADLINE}'),
        -{_RANK}, {_RECORDED_AT}, r.device_id, r.end_user_id
    FROM (SELECT {{query}} AS q) q, search_segments s JOIN recordings r ON r.id = s.recording_id"""


class PgIndex(Fts5Index):
    """``SearchIndex`` over ``search_segments.tsv`` (see the module docstring); deletions
    are the FTS5 backend's (plain rows, also removed by the foreign keys' cascades)."""

    def replace(self, tx: Tx, transcription_id: str) -> int:
        row = tx.execute(
            "SELECT t.recording_id, t.project_id, t.segments FROM transcriptions t JOIN"
            " recordings r ON r.id = t.recording_id AND r.transcription_id = t.id"
            " WHERE t.id = ? AND t.status = 'completed'", [transcription_id]).fetchone()
        if row is None:  # gone, unfinished, or superseded: the index keeps what it has
            return 0
        recording_id, project_id, segments = row
        self.remove_recording(tx, str(recording_id))
        segs = json.loads(segments) if segments else []
        if not segs:
            return 0
        texts = [indexed_text(str(s.get("text") or "")) for s in segs]
        tx.execute(_INSERT, [
            recording_id, transcription_id, project_id, list(range(len(segs))),
            [int(s["start_ms"]) for s in segs], [int(s["end_ms"]) for s in segs],
            [s.get("speaker") for s in segs], texts, [fold(t) for t in texts]])
        return len(segs)

    def search(self, db: Tx, query: IndexQuery) -> list[SegmentHit]:
        tsquery, args = compile_tsquery(query.node)
        where = ["s.tsv @@ q.q"]
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
            order = f"-{_RANK}, s.rowid"
            if query.after is not None:
                where.append(f"(-{_RANK}, s.rowid) > (?::float8, ?)")
                args += list(query.after)
        sql = f"{_SELECT.format(query=tsquery)} WHERE {' AND '.join(where)} ORDER BY {order}"
        rows = db.execute(sql + " LIMIT ?", [*args, query.limit]).fetchall()
        return [_hit((*r[:8], unfold_marks(r[7], r[8]), *r[9:]), query.order) for r in rows]

    def _optimize(self, tx: Tx) -> None:
        """Nothing: PostgreSQL's GIN index needs no merge step (autovacuum cleans up)."""


def _filter_sql(f: SearchFilters, where: list[str], args: list[Any]) -> None:
    """The FTS5 backend's filters, with the metadata pairs as one ``jsonb`` containment."""
    from tapedeck.domain.search_index import _filter_sql as base

    base(SearchFilters(f.project_id, f.device_id, f.end_user_id, f.speaker, f.since, f.until),
         where, args)
    if f.metadata:
        where.append("COALESCE(r.metadata, '{}')::jsonb @> ?::jsonb")
        args.append(json.dumps(f.metadata))
