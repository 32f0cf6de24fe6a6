"""Search: find spoken words across a project's transcripts (``GET /v1/search``,
``TranscriptionService.SearchTranscripts``).

A hit is one segment of a recording's current completed transcription: recording,
transcription, segment index, ``start_ms``/``end_ms``, speaker (or None), the segment text,
the matched character spans and a short ``snippet`` around the first match with matches in
``<mark>…</mark>`` (the rest HTML-escaped, ready for a page). Query syntax:
``tapedeck.domain.search_query``. Order: ``relevance`` (BM25, best first; the default) or
``newest`` (recordings newest first by start time, segments in time order). Pages: ``limit``
1..100 (default 25) and the opaque ``next_cursor`` of the previous page, which only continues
the same order.

Visibility as for reading transcripts: needs ``transcriptions:read`` (a device token:
``recordings:read``, and only its own device's recordings whatever ``device_id`` says);
never another project's. Filters: device, end user, speaker, recording start in
``[since, until)``, recording metadata pairs (all must match).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tapedeck.auth import Principal
from tapedeck.domain import cursors
from tapedeck.domain._base import Context
from tapedeck.domain.models import Page
from tapedeck.domain.search_index import (
    MARK_CLOSE,
    MARK_OPEN,
    ORDERS,
    IndexQuery,
    SearchFilters,
    SegmentHit,
    backend_for,
)
from tapedeck.domain.search_query import parse
from tapedeck.errors import TapedeckError, invalid

#: Characters of context kept on each side of the first match in ``snippet``.
SNIPPET_CONTEXT = 60
MAX_METADATA_FILTERS = 10


@dataclass(frozen=True)
class SearchRequest:
    """One search call (transport-neutral; empty strings are as good as None)."""

    q: str
    order: str | None = None
    limit: int = 25
    cursor: str | None = None
    device_id: str | None = None
    end_user_id: str | None = None
    speaker: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    """A matched span of the segment ``text``: ``[start, end)`` in characters."""

    start: int
    end: int


@dataclass(frozen=True)
class SearchHit:
    """One hit; ``to_json`` is its REST shape."""

    recording_id: str
    transcription_id: str
    segment_index: int
    start_ms: int
    end_ms: int
    speaker: str | None
    text: str
    matches: list[Match]
    snippet: str
    score: float
    recorded_at: str
    device_id: str | None
    end_user_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {"recording_id": self.recording_id, "transcription_id": self.transcription_id,
                "segment_index": self.segment_index, "start_ms": self.start_ms,
                "end_ms": self.end_ms, "speaker": self.speaker, "text": self.text,
                "matches": [{"start": m.start, "end": m.end} for m in self.matches],
                "snippet": self.snippet, "score": self.score,
                "recorded_at": self.recorded_at, "device_id": self.device_id,
                "end_user_id": self.end_user_id}


class Search:
    """The search rules (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def search(self, p: Principal, req: SearchRequest) -> Page:
        """One page of hits for ``req`` visible to ``p``."""
        _require_read(p)
        order = req.order or ORDERS[0]
        if order not in ORDERS:
            raise invalid("order", f"order must be one of {', '.join(ORDERS)}.")
        if not 1 <= req.limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        node = parse(req.q)
        filters = _filters(p, req)
        after = _decode_cursor(req.cursor, order) if req.cursor else None
        db = self._ctx.db.read()
        hits = backend_for(self._ctx.db).search(db, IndexQuery(
            node=node, filters=filters, order=order, limit=req.limit + 1, after=after))
        more = len(hits) > req.limit
        hits = hits[:req.limit]
        nxt = _encode_cursor(order, hits[-1].sort_key) if more else None
        return Page([to_search_hit(h) for h in hits], nxt)


def _require_read(p: Principal) -> None:
    if p.kind == "device" and "recordings:read" in p.scopes:
        return
    p.require("transcriptions:read")


def _filters(p: Principal, req: SearchRequest) -> SearchFilters:
    if req.since and req.until and req.until <= req.since:
        raise invalid("until", "until must be after since.")
    if len(req.metadata) > MAX_METADATA_FILTERS:
        raise invalid("metadata", f"At most {MAX_METADATA_FILTERS} metadata filters.")
    device_id = p.device_id if p.kind == "device" else (req.device_id or None)
    return SearchFilters(project_id=p.project_id, device_id=device_id,
                         end_user_id=req.end_user_id or None, speaker=req.speaker or None,
                         since=req.since, until=req.until, metadata=dict(req.metadata))


def _encode_cursor(order: str, key: tuple[Any, ...]) -> str:
    return cursors.encode({"o": order, "k": list(key)})


def _decode_cursor(cursor: str, order: str) -> tuple[Any, ...]:
    """The keyset position of a cursor from the same ``order`` (``invalid_request`` else)."""
    data = cursors.decode(cursor)
    key = data.get("k")
    if data.get("o") != order or not isinstance(key, list):
        raise _bad_cursor()
    if order == "newest":
        ok = (len(key) == 4 and isinstance(key[0], str) and isinstance(key[1], str)
              and all(isinstance(v, int) and not isinstance(v, bool) for v in key[2:]))
    else:
        ok = (len(key) == 2 and isinstance(key[0], (int, float)) and isinstance(key[1], int)
              and not isinstance(key[1], bool))
    if not ok:
        raise _bad_cursor()
    return tuple(key)


def _bad_cursor() -> TapedeckError:
    return invalid("cursor", "cursor is not a value returned by this API for this order.")


def to_search_hit(h: SegmentHit) -> SearchHit:
    """The client-facing hit of a backend hit: plain text, match spans and the snippet."""
    text, matches = _unmark(h.marked)
    return SearchHit(recording_id=h.recording_id, transcription_id=h.transcription_id,
                     segment_index=h.segment_index, start_ms=h.start_ms, end_ms=h.end_ms,
                     speaker=h.speaker, text=text, matches=matches,
                     snippet=snippet(text, matches), score=h.score, recorded_at=h.recorded_at,
                     device_id=h.device_id, end_user_id=h.end_user_id)


def _unmark(marked: str) -> tuple[str, list[Match]]:
    """Split backend-marked text into the plain text and its matched spans."""
    out: list[str] = []
    matches: list[Match] = []
    at, start = 0, -1
    for ch in marked:
        if ch == MARK_OPEN:
            start = at
        elif ch == MARK_CLOSE:
            if start >= 0:
                matches.append(Match(start, at))
            start = -1
        else:
            out.append(ch)
            at += 1
    return "".join(out), matches


def snippet(text: str, matches: list[Match], context: int = SNIPPET_CONTEXT) -> str:
    """Up to ``context`` characters either side of the first match (cut at word boundaries,
    ``…`` where cut), HTML-escaped, with every match inside in ``<mark>…</mark>``."""
    if not matches:
        lo, hi = 0, min(len(text), 2 * context)
    else:
        lo = max(0, matches[0].start - context)
        hi = min(len(text), matches[0].end + context)
    if lo > 0:
        space = text.find(" ", lo)
        lo = space + 1 if 0 <= space < matches[0].start else lo
    if hi < len(text):
        space = text.rfind(" ", 0, hi)
        hi = space if matches and space > matches[0].end else hi
    parts, at = [], lo
    for m in matches:
        if m.end <= lo or m.start >= hi:
            continue
        s, e = max(m.start, lo), min(m.end, hi)
        parts += [html.escape(text[at:s]), "<mark>", html.escape(text[s:e]), "</mark>"]
        at = e
    parts.append(html.escape(text[at:hi]))
    return ("…" if lo > 0 else "") + "".join(parts) + ("…" if hi < len(text) else "")
