"""Live transcription rules: pieces of a streaming recording, their merge, the live view.

While a streaming recording receives chunks (and ``settings.live_transcription`` is on),
every chunk whose ledger row changes (``on_chunk_recorded``, called by the chunk ledger's
one write, ``Chunks._record``: API uploads at once, presigned PUTs when a chunk listing
reconciles them) gets a ``live_transcribe`` job; the job stores a *piece* (``live_pieces`` row:
the chunk's segments relative to its start, made with the previous chunk as context). The
first such chunk creates the recording's transcription at once, ``live`` and
``processing`` (events ``transcription.queued`` then ``transcription.started``), so it can
be read and watched while the device records; finalize adopts it (``queue_processing``)
instead of queuing a new one, and after stitching the ``transcribe`` job assembles it from
the pieces (``tapedeck.background.transcribe.job``).

Validity: a piece counts for the assembly only if it was made from the chunk bytes the
recording was finalized with (``md5``) and, after part 1, with the finalized previous chunk
(``prev_md5``) — so a replaced chunk redoes its own piece and the next one. Pieces are merged
in part order (``merge``), whatever order they were made in.

Timeline: a piece's ``delta48`` is its chunk's start minus the previous chunk's start on the
stitched timeline (the stitcher's remux of the two chunks), so part k starts at the sum of
the deltas of parts 2..k: the stitched file's timeline, boundary drift included.

Boundary merge (deterministic): piece k also transcribed the last ``overlap_ms`` of chunk
k-1. The cut is the middle of the widest pause between piece k's words inside
``[B - overlap + LEFT_MS, B - RIGHT_MS]`` (B = chunk k's start), where both pieces heard the
audio with context; words (by midpoint) before the cut come from piece k-1, the rest from
piece k. A segment cut there keeps its side's words. Nothing is lost or doubled at a pause.

This module is pure Python (no engine, no numpy): API processes use it for the live view.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tapedeck.clock import iso
from tapedeck.domain._base import Context, emit
from tapedeck.ids import new_id
from tapedeck.infra.jobs import enqueue
from tapedeck.infra.sql import Tx

KIND = "live_transcribe"
#: Audio of the previous chunk each piece transcribes again (see ``tapedeck.background.transcribe.live``).
OVERLAP_MS = 4000
LEFT_MS = 1000  # the cut leaves piece k at least this much context before it
RIGHT_MS = 500  # … and piece k-1 at least this much audio after it

Seg = dict[str, Any]


@dataclass(frozen=True)
class PieceRow:
    """A ``live_pieces`` row (segments relative to the chunk start, ms)."""

    part: int
    md5: str
    prev_md5: str | None
    status: str
    delta48: int | None
    samples48: int
    overlap_ms: int
    language: str | None
    segments: list[Seg]
    speech_ms: int
    skipped_ms: int
    #: ``''``: the piece detected its language; a code: it was forced; None: not recorded.
    language_hint: str | None = None


def load_pieces(db: Any, recording_id: str) -> dict[int, PieceRow]:
    """The recording's pieces by part."""
    rows = db.execute(
        "SELECT part, md5, prev_md5, status, delta48, samples48, overlap_ms, language,"
        " segments, speech_ms, skipped_ms, language_hint FROM live_pieces"
        " WHERE recording_id = ? ORDER BY part", [recording_id]).fetchall()
    return {r[0]: PieceRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]),
                           r[9], r[10], r[11]) for r in rows}


# -- the hook at the chunk ledger ---------------------------------------------------------------

def on_chunk_recorded(tx: Tx, ctx: Context, recording_id: str,
                      part: int) -> bool:
    """(In the ledger's write transaction.) A chunk's bytes changed: queue its piece and the
    next part's (its context changed), creating the live transcription on the first chunk.
    True when jobs were queued (the caller notifies ``KIND`` after the commit)."""
    if not ctx.settings.live_transcription:
        return False
    row = tx.execute("SELECT project_id, status, transcription_id FROM recordings"
                     " WHERE id = ?", [recording_id]).fetchone()
    if row is None or row[1] != "streaming":
        return False
    if row[2] is None:
        _create_live(tx, ctx, recording_id, str(row[0]))
    queued = _queue_piece(tx, ctx, recording_id, part)
    has_next = tx.execute(
        "SELECT 1 FROM chunks WHERE recording_id = ? AND part = ? UNION"
        " SELECT 1 FROM live_pieces WHERE recording_id = ? AND part = ?",
        [recording_id, part + 1, recording_id, part + 1]).fetchone()
    if has_next is not None:
        queued = _queue_piece(tx, ctx, recording_id, part + 1) or queued
    return queued


def _create_live(tx: Tx, ctx: Context, recording_id: str,
                 project_id: str) -> str:
    now = iso(ctx.clock.now())
    txn_id = new_id("txn_")
    tx.execute(
        "INSERT INTO transcriptions (id, recording_id, project_id, status, provider,"
        " created_at, live) VALUES (?, ?, ?, 'processing', 'whisper', ?, 1)",
        [txn_id, recording_id, project_id, now])
    tx.execute("UPDATE recordings SET transcription_id = ?, transcription_status = 'processing',"
               " updated_at = ? WHERE id = ?", [txn_id, now, recording_id])
    for status, event in (("queued", "transcription.queued"),
                          ("processing", "transcription.started")):
        emit(tx, ctx.clock, project_id, event,
             {"id": txn_id, "recording_id": recording_id, "status": status}, recording_id)
    return txn_id


def _queue_piece(tx: Tx, ctx: Context, recording_id: str,
                 part: int) -> bool:
    """One queued job per (recording, part) at a time (a running one reads the store
    afresh when it starts, so a change during its run queues a new one)."""
    queued = tx.execute(
        "SELECT payload FROM jobs WHERE kind = ? AND recording_id = ? AND status = 'queued'",
        [KIND, recording_id]).fetchall()
    if any(json.loads(payload).get("part") == part for (payload,) in queued):
        return False
    enqueue(tx, ctx.clock, KIND, recording_id=recording_id,
            payload={"recording_id": recording_id, "part": part})
    return True


def live_transcription_id(tx: Any, recording_id: str) -> str | None:
    """The recording's live transcription still in flight (finalize adopts it), or None."""
    row = tx.execute(
        "SELECT t.id FROM recordings r JOIN transcriptions t ON t.id = r.transcription_id"
        " WHERE r.id = ? AND t.live = 1 AND t.status = 'processing'", [recording_id]).fetchone()
    return None if row is None else str(row[0])


# -- placing and merging pieces -----------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    """A piece on the recording's timeline: its chunk starts at ``start_ms``."""

    part: int
    start_ms: int
    end_ms: int
    overlap_ms: int
    segments: list[Seg]


def _shifted(segments: Iterable[Seg], offset: int) -> list[Seg]:
    out = []
    for s in segments:
        words = [{**w, "start_ms": w["start_ms"] + offset, "end_ms": w["end_ms"] + offset}
                 for w in s.get("words", [])]
        out.append({**s, "start_ms": s["start_ms"] + offset, "end_ms": s["end_ms"] + offset,
                    "words": words})
    return out


def place(pieces: Sequence[PieceRow]) -> list[Placed]:
    """Pieces of parts 1..n (consecutive, each made with its predecessor) on the timeline."""
    placed: list[Placed] = []
    start48 = 0
    for i, pc in enumerate(pieces):
        if i:
            assert pc.delta48 is not None
            start48 += pc.delta48
        start = start48 // 48
        placed.append(Placed(pc.part, start, (start48 + pc.samples48) // 48,
                             pc.overlap_ms if i else 0, _shifted(pc.segments, start)))
    return placed


def _mid(item: Seg) -> float:
    return float(item["start_ms"] + item["end_ms"]) / 2


def choose_cut(segments: Sequence[Seg], boundary_ms: int, overlap_ms: int) -> int:
    """The cut between a piece and the previous one (module docstring)."""
    lo = boundary_ms - overlap_ms + min(LEFT_MS, overlap_ms // 3)
    hi = boundary_ms - min(RIGHT_MS, overlap_ms // 4)
    words = [w for s in segments for w in (s.get("words") or [s])]
    edges = [lo] + [e for w in words for e in (w["start_ms"], w["end_ms"])] + [hi]
    best: tuple[int, int] | None = None  # (width, cut)
    # gaps: (lo or a word's end) .. (the next word's start or hi), clipped into [lo, hi]
    for a, b in zip(edges[0::2], edges[1::2], strict=True):
        a, b = max(a, lo), min(b, hi)
        if b >= a and (best is None or b - a > best[0]):
            best = (b - a, (a + b) // 2)
    return best[1] if best is not None else (lo + hi) // 2


def _keep(segments: Sequence[Seg], cut: int, before: bool) -> list[Seg]:
    """The words (by midpoint) on one side of ``cut``; a cut segment keeps its side's."""
    out = []
    for s in segments:
        words = s.get("words") or []
        if not words:
            if (_mid(s) < cut) == before:
                out.append(s)
            continue
        kept = [w for w in words if (_mid(w) < cut) == before]
        if len(kept) == len(words):
            out.append(s)
        elif kept:
            out.append({**s, "start_ms": kept[0]["start_ms"], "end_ms": kept[-1]["end_ms"],
                        "text": " ".join(w["word"] for w in kept), "words": kept,
                        "confidence": round(sum(w["confidence"] for w in kept) / len(kept), 4)})
    return out


def merge(placed: Sequence[Placed]) -> list[Seg]:
    """The segments of consecutive placed pieces, boundaries merged (module docstring)."""
    out: list[Seg] = []
    for i, pc in enumerate(placed):
        segs = pc.segments
        if i and pc.overlap_ms > 0:
            cut = choose_cut(segs, pc.start_ms, pc.overlap_ms)
            out = _keep(out, cut, before=True)
            segs = _keep(segs, cut, before=False)
        out.extend(segs)
    return out


# -- the live view ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LiveView:
    """What a live transcription shows so far: stable segments and the audio they cover."""

    segments: list[Seg]
    covered_ms: int
    skipped_ms: int


def contiguous(pieces: dict[int, PieceRow]) -> list[PieceRow]:
    """Parts 1..m that chain (each made with the current previous piece's chunk)."""
    out: list[PieceRow] = []
    for part in range(1, len(pieces) + 1):
        pc = pieces.get(part)
        if pc is None or pc.status != "done":
            break
        if out and (pc.delta48 is None or pc.prev_md5 != out[-1].md5):
            break
        out.append(pc)
    return out


def live_view(db: Any, recording_id: str) -> LiveView:
    """Segments that no later chunk can change (those ending before the last chunk's
    overlap window), and the ms of audio transcribed from the start."""
    return view_of(contiguous(load_pieces(db, recording_id)))


def view_of(chain: Sequence[PieceRow]) -> LiveView:
    """The live view of a chain of pieces (``contiguous``)."""
    if not chain:
        return LiveView([], 0, 0)
    placed = place(chain)
    last = placed[-1]
    window = min(OVERLAP_MS, last.end_ms - last.start_ms)
    stable = last.end_ms - window + min(LEFT_MS, window // 3)
    segments = [s for s in merge(placed)
                if all(_mid(w) < stable for w in (s.get("words") or [s]))]
    return LiveView(segments, last.end_ms, sum(p.skipped_ms for p in chain))


_HEAD = "part, md5, prev_md5, status, delta48, updated_at"


class LiveFollower:
    """The live view of one recording, kept up to date incrementally (for watchers that
    poll). ``poll(db)`` reads only each piece's version (part, MD5s, status, delta,
    ``updated_at``: every upsert of a piece changes it); when nothing changed it returns the
    previous view without reading or merging anything, else it reads the segments of the
    new or changed pieces only and merges again."""

    def __init__(self, recording_id: str) -> None:
        self._recording_id = recording_id
        self._heads: list[tuple[Any, ...]] | None = None
        self._pieces: dict[int, tuple[tuple[Any, ...], PieceRow]] = {}
        self._view = LiveView([], 0, 0)

    def poll(self, db: Any) -> tuple[LiveView, bool]:
        """The current view and whether it may differ from the previous poll's."""
        heads = [tuple(r) for r in db.execute(
            f"SELECT {_HEAD} FROM live_pieces WHERE recording_id = ? ORDER BY part",
            [self._recording_id]).fetchall()]
        if heads == self._heads:
            return self._view, False
        stale = [h[0] for h in heads if self._pieces.get(h[0], ((),))[0] != h]
        if stale:
            marks = ", ".join("?" * len(stale))
            fresh = _load_parts(db, self._recording_id, stale, marks)
            for h in heads:
                if h[0] in fresh:
                    self._pieces[h[0]] = (h, fresh[h[0]])
        current = {h[0] for h in heads}
        self._pieces = {k: v for k, v in self._pieces.items() if k in current}
        self._heads = heads
        self._view = view_of(contiguous({k: v[1] for k, v in self._pieces.items()}))
        return self._view, True


def _load_parts(db: Any, recording_id: str, parts: list[int], marks: str
                ) -> dict[int, PieceRow]:
    rows = db.execute(
        "SELECT part, md5, prev_md5, status, delta48, samples48, overlap_ms, language,"
        f" segments, speech_ms, skipped_ms FROM live_pieces WHERE recording_id = ?"
        f" AND part IN ({marks})", [recording_id, *parts]).fetchall()
    return {r[0]: PieceRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]),
                           r[9], r[10]) for r in rows}


def keep_live_status(tx: Any, recording_id: str, txn_id: str) -> bool:
    """After finalize set ``transcription_status = 'queued'``: a live transcription stays
    ``processing`` (the recording mirrors it). True for a live one."""
    if live_transcription_id(tx, recording_id) != txn_id:
        return False
    tx.execute("UPDATE recordings SET transcription_status = 'processing' WHERE id = ?",
               [recording_id])
    return True


def fail_live(tx: Any, ctx: Context, recording_id: str, project_id: str, type: str,
              message: str) -> None:
    """The one terminal outcome of a live transcription whose recording will never be
    stitched (expired without auto-finalize): ``failed`` with ``type``, event emitted."""
    txn_id = live_transcription_id(tx, recording_id)
    if txn_id is None:
        return
    now = iso(ctx.clock.now())
    tx.execute("UPDATE transcriptions SET status = 'failed', error_type = ?, error_message = ?,"
               " completed_at = ? WHERE id = ?", [type, message, now, txn_id])
    tx.execute("UPDATE recordings SET transcription_status = 'failed' WHERE id = ?",
               [recording_id])
    emit(tx, ctx.clock, project_id, "transcription.failed",
         {"id": txn_id, "recording_id": recording_id, "status": "failed",
          "error": {"type": type, "message": message}}, recording_id)
