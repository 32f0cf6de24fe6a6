"""The web console under ``/console`` (setting ``console``): Jinja2 pages over the same
domain layer as the REST routes, sessions from ``session``, no external requests."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tapedeck.auth import Principal
from tapedeck.domain import Domain
from tapedeck.domain.timeline import timeline
from tapedeck.errors import TapedeckError
from tapedeck.gateway.audio import audio_response
from tapedeck.gateway.console.actions import add_action_routes
from tapedeck.gateway.console.fleet import add_fleet_routes
from tapedeck.gateway.console.recording_extras import (
    add_recording_extras,
    day_window,
    speaker_classes,
    transcript_words,
)
from tapedeck.gateway.console.session import COOKIE, TTL_S, Session, SessionSealer

HERE = Path(__file__).parent
STATUSES = ("", "pending", "streaming", "uploaded", "stitching", "completed", "failed",
            "expired")
LIVE_STATUSES = ("streaming", "uploaded", "stitching")
CSP = "default-src 'self'; media-src 'self'; img-src 'self' data:; object-src 'none'"


class Console:
    """Session checks and rendering bound to one ``Domain``."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.sealer = SessionSealer.from_data_dir(domain.ctx.settings.data_dir)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def session(self, request: Request) -> tuple[Session, Principal] | None:
        s = self.sealer.open(request.cookies.get(COOKIE), self.domain.ctx.clock.now())
        if s is None:
            return None
        try:
            return s, self.domain.authenticate(s.api_key)
        except TapedeckError:
            return None

    def page(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        resp = self.templates.TemplateResponse(request, name, ctx, status_code=status)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp


def _to_login() -> Response:
    return RedirectResponse("/console", status_code=303)


def mount_console(app: FastAPI, domain: Domain) -> None:
    """Add the ``/console`` pages and ``/console/static`` to ``app``."""
    c = Console(domain)
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")),
              name="console-static")

    @app.get("/console", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        if await anyio.to_thread.run_sync(lambda: c.session(request)):
            return RedirectResponse("/console/recordings", status_code=303)
        return c.page(request, "login.html")

    @app.post("/console/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        key = str(form.get("api_key") or "").strip()
        try:
            await anyio.to_thread.run_sync(lambda: domain.authenticate(key))
        except TapedeckError as exc:
            return c.page(request, "login.html", 401, error=exc.message)
        cookie, _ = c.sealer.seal(key, domain.ctx.clock.now())
        resp = RedirectResponse("/console/recordings", status_code=303)
        resp.set_cookie(COOKIE, cookie, max_age=TTL_S, httponly=True, samesite="strict",
                        path="/console", secure=request.url.scheme == "https")
        return resp

    @app.post("/console/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _to_login()
        refused = await _check_csrf(request, got[0])
        if refused:
            return refused
        resp = _to_login()
        resp.delete_cookie(COOKIE, path="/console")
        return resp

    _recording_pages(app, c)
    add_action_routes(app, c)  # re-run (actions.py)
    add_fleet_routes(app, c)  # devices, end users, webhooks, API keys (fleet.py)
    add_recording_extras(app, c)  # live JSON, downloads, re-run stitching


async def _check_csrf(request: Request, s: Session) -> Response | None:
    """403 unless the form's ``csrf`` field equals the session's token."""
    form = await request.form()
    if hmac.compare_digest(str(form.get("csrf") or ""), s.csrf):
        return None
    return HTMLResponse("CSRF token missing or wrong.", status_code=403)


def _recording_pages(app: FastAPI, c: Console) -> None:
    d = c.domain

    @app.get("/console/recordings", include_in_schema=False)
    async def recordings(request: Request, status: str = "", device_id: str = "",
                         end_user_id: str = "", cursor: str = "", created_from: str = "",
                         created_to: str = "") -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _to_login()
        s, p = got
        try:
            window = day_window(created_from, created_to)
            page = await anyio.to_thread.run_sync(lambda: d.recordings.list(
                p, limit=25, cursor=cursor or None, status=status or None,
                device_id=device_id or None, end_user_id=end_user_id or None,
                created_from=window[0], created_to=window[1]))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=s, error=exc)
        return c.page(request, "recordings.html", s=s, page=page, statuses=STATUSES,
                      f={"status": status, "device_id": device_id, "end_user_id": end_user_id,
                         "created_from": created_from, "created_to": created_to})

    @app.get("/console/recordings/{recording_id}", include_in_schema=False)
    async def recording(request: Request, recording_id: str) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _to_login()
        s, p = got
        try:
            view = await anyio.to_thread.run_sync(lambda: _recording_view(d, p, recording_id))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=s, error=exc)
        return c.page(request, "recording.html", s=s, **view)

    @app.get("/console/recordings/{recording_id}/audio", include_in_schema=False)
    async def audio(request: Request, recording_id: str) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return Response(status_code=401)
        rng = request.headers.get("range")
        return await anyio.to_thread.run_sync(
            lambda: audio_response(d, got[1], recording_id, rng))


def _recording_view(d: Domain, p: Principal, recording_id: str) -> dict[str, Any]:
    """What the recording page shows: the recording, its chunks, its transcript's words."""
    rec = d.recordings.get(p, recording_id)
    chunks = d.chunks.list(p, recording_id).to_json() if rec.streaming else None
    txn = None
    if rec.transcription_id and "transcriptions:read" in p.scopes:
        try:
            txn = d.transcriptions.get(p, rec.transcription_id).to_json()
        except TapedeckError:
            txn = None
    words = transcript_words(txn)
    ready = any(m.status in ("ready", "uploaded") for m in rec.media)
    live = rec.status in LIVE_STATUSES or (txn or {}).get("status") in ("queued", "processing")
    return {"rec": rec, "chunks": chunks, "txn": txn, "words": words, "audio_ready": ready,
            "timeline": timeline(d.ctx, p, recording_id), "live": live,
            "speakers": speaker_classes(txn)}
