"""Console actions that change state (each behind the session's CSRF token): re-run the
transcription of a recording (``Transcriptions.request``, the domain call behind
``POST /v1/recordings/{id}/transcribe``; refused with ``invalid_state`` while one is in
flight or the audio is not complete)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from tapedeck.errors import TapedeckError

if TYPE_CHECKING:
    from tapedeck.gateway.console import Console


def add_action_routes(app: FastAPI, c: Console) -> None:
    """Register ``POST /console/recordings/{id}/retranscribe``."""
    from tapedeck.gateway.console import _check_csrf, _to_login

    @app.post("/console/recordings/{recording_id}/retranscribe", include_in_schema=False)
    async def retranscribe(request: Request, recording_id: str) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _to_login()
        s, p = got
        refused = await _check_csrf(request, s)
        if refused:
            return refused
        try:
            await anyio.to_thread.run_sync(
                lambda: c.domain.transcriptions.request(p, recording_id))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=s, error=exc)
        return RedirectResponse(f"/console/recordings/{recording_id}", status_code=303)
