"""The console's recordings pages, live and downloadable parts (all behind the session):

- ``GET /console/live/recordings?id=…&id=…``: the list's rows that ``console.js`` polls
  while one of them is still in flight (status, duration, chunk count, transcript state).
- ``GET /console/live/recordings/{id}``: the recording page's poll: status, chunk count and
  the transcript's words so far (the live partial transcript while it records).
- ``GET /console/recordings/{id}/transcript.{json|srt|vtt|txt}``: the transcript as a file
  (``exports.render``, the renderer of ``GET /v1/transcriptions/{id}?format=``).
- ``POST /console/recordings/{id}/restitch`` (CSRF): re-run stitching of a failed
  recording (``tapedeck.domain.restitch``).

JSON answers carry only data; the page inserts every value as text (``textContent``).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from tapedeck.auth import Principal
from tapedeck.domain import Domain, exports
from tapedeck.domain.models import Recording
from tapedeck.domain.restitch import restitch
from tapedeck.errors import TapedeckError, error, invalid

if TYPE_CHECKING:
    from tapedeck.gateway.console import Console

#: Distinct speaker colours (``.spk-0`` … in console.css); speakers beyond reuse them.
SPEAKER_COLOURS = 8
MAX_LIVE_ROWS = 100


def day_window(created_from: str, created_to: str) -> tuple[datetime | None, datetime | None]:
    """The list's date filter: ``YYYY-MM-DD`` days (UTC), both inclusive, as the domain's
    [from, to) window; ``invalid_request`` naming the field for a malformed day."""
    def day(field: str, text: str) -> date | None:
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise invalid(field, f"{field} must be a date (YYYY-MM-DD).") from None
    first, last = day("created_from", created_from), day("created_to", created_to)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC) if first else None
    end = (datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
           if last else None)
    if start and end and end <= start:
        raise invalid("created_to", "created_to is before created_from.")
    return start, end


def speaker_classes(txn: dict[str, Any] | None) -> dict[str, str]:
    """Speaker label → CSS class (``spk-0`` …): the transcript's ``speakers`` in order, then
    any other label in order of first appearance."""
    labels = [s.get("label") for s in (txn or {}).get("speakers") or []]
    labels += [seg.get("speaker") for seg in (txn or {}).get("segments") or []]
    out: dict[str, str] = {}
    for label in labels:
        if label and label not in out:
            out[label] = f"spk-{len(out) % SPEAKER_COLOURS}"
    return out


def transcript_words(txn: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The transcript's words (a segment without words counts as one): text, start (s),
    speaker label and its CSS class."""
    classes = speaker_classes(txn)
    words: list[dict[str, Any]] = []
    for seg in (txn or {}).get("segments") or []:
        for w in seg.get("words") or [{"word": seg.get("text", ""), **seg}]:
            start = w.get("start_ms", w.get("start", 0))
            start_s = start / 1000 if "start_ms" in w else float(start or 0)
            speaker = seg.get("speaker") or w.get("speaker") or ""
            words.append({"text": w.get("word") or w.get("text") or "", "start": start_s,
                          "speaker": speaker, "cls": classes.get(speaker, "")})
    return words


def row_json(rec: Recording) -> dict[str, Any]:
    """One list row as the poll sends it."""
    return {"id": rec.id, "status": rec.status, "chunks_received": rec.chunks_received,
            "duration": None if rec.duration_ms is None else f"{rec.duration_ms / 1000:.1f} s",
            "transcription_status": rec.transcription_status}


def live_view(d: Domain, p: Principal, recording_id: str) -> dict[str, Any]:
    """The recording page's poll: status, chunk count, transcript status and words."""
    rec = d.recordings.get(p, recording_id)
    txn = None
    if rec.transcription_id and "transcriptions:read" in p.scopes:
        txn = d.transcriptions.get(p, rec.transcription_id).to_json()
    return {**row_json(rec), "transcript_status": (txn or {}).get("status"),
            "words": transcript_words(txn)}


def transcript_file(d: Domain, p: Principal, recording_id: str, fmt: str) -> Response:
    """The recording's current transcript as a download (``invalid_state`` before one is
    completed; ``exports.check_format`` for ``fmt``)."""
    fmt = exports.check_format(fmt)
    rec = d.recordings.get(p, recording_id)
    if not rec.transcription_id:
        raise error("invalid_state", "The recording has no transcript.", status=rec.status)
    txn = d.transcriptions.get(p, rec.transcription_id)
    if fmt == "json":
        body = json.dumps(txn.to_json(), ensure_ascii=False, indent=2)
        return Response(body, media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="{txn.id}.json"'})
    out = exports.render(txn.id, txn.status, txn.segments, fmt)
    return Response(out.body, media_type=out.content_type, headers={
        "Content-Disposition": f'attachment; filename="{out.filename}"'})


def _json_error(exc: TapedeckError) -> JSONResponse:
    return JSONResponse({"error": {"type": exc.type, "message": exc.message}},
                        status_code=exc.kind.http_status)


def add_recording_extras(app: FastAPI, c: Console) -> None:
    """Register the routes of the module docstring."""
    from tapedeck.gateway.console import _check_csrf, _to_login
    d = c.domain

    @app.get("/console/live/recordings", include_in_schema=False)
    async def live_rows(request: Request,
                        id: Annotated[list[str] | None, Query()] = None) -> Response:
        ids = id or []
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return Response(status_code=401)

        def rows() -> list[dict[str, Any]]:
            out = []
            for rec_id in ids[:MAX_LIVE_ROWS]:
                try:
                    out.append(row_json(d.recordings.get(got[1], rec_id)))
                except TapedeckError as exc:
                    if exc.type != "recording_not_found":  # deleted meanwhile: drop the row
                        raise
            return out
        try:
            return JSONResponse({"data": await anyio.to_thread.run_sync(rows)})
        except TapedeckError as exc:
            return _json_error(exc)

    @app.get("/console/live/recordings/{recording_id}", include_in_schema=False)
    async def live_recording(request: Request, recording_id: str) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return Response(status_code=401)
        try:
            return JSONResponse(await anyio.to_thread.run_sync(
                lambda: live_view(d, got[1], recording_id)))
        except TapedeckError as exc:
            return _json_error(exc)

    @app.get("/console/recordings/{recording_id}/transcript.{fmt}", include_in_schema=False)
    async def transcript(request: Request, recording_id: str, fmt: str) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _to_login()
        try:
            return await anyio.to_thread.run_sync(
                lambda: transcript_file(d, got[1], recording_id, fmt))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=got[0], error=exc)

    @app.post("/console/recordings/{recording_id}/restitch", include_in_schema=False)
    async def restitch_action(request: Request, recording_id: str) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _to_login()
        s, p = got
        refused = await _check_csrf(request, s)
        if refused:
            return refused
        try:
            await anyio.to_thread.run_sync(lambda: restitch(d.ctx, p, recording_id))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=s, error=exc)
        return RedirectResponse(f"/console/recordings/{recording_id}", status_code=303)
