"""``GET /v1/recordings/{id}/audio``: the stored audio through the gateway, with HTTP Range
(RFC 9110: one ``bytes=a-b`` / ``a-`` / ``-n`` range → 206; unsatisfiable → 416)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from tapedeck.auth import Principal
from tapedeck.domain import Domain
from tapedeck.domain.recordings import audio_file
from tapedeck.gateway.docs import errors_doc
from tapedeck.gateway.routes import Gateway, RecordingId

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
BLOCK = 256 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single satisfiable range, None for no/ignored header;
    ``ValueError`` if unsatisfiable."""
    m = _RANGE.match((header or "").strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None
    if m.group(1) == "":
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise ValueError("empty suffix")
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if first >= size or last < first:
        raise ValueError("outside the object")
    return first, last


def _bytes(domain: Domain, key: str, first: int, last: int) -> Iterator[bytes]:
    """Bytes ``first..last`` of ``key``: one ranged read from the store (no prefix read)."""
    stream = domain.ctx.store.open(key, first, last - first + 1)
    try:
        while block := stream.read(BLOCK):
            yield block
    finally:
        stream.close()


def audio_response(domain: Domain, p: Principal, recording_id: str,
                   range_header: str | None) -> Response:
    """The audio of ``recording_id`` for ``p``: 200 whole, 206 one range, 416 unsatisfiable."""
    f = audio_file(domain.ctx, p, recording_id)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store"}
    try:
        rng = parse_range(range_header, f.size)
    except ValueError:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{f.size}"})
    first, last = rng if rng else (0, f.size - 1)
    headers["Content-Length"] = str(max(0, last - first + 1))
    if rng:
        headers["Content-Range"] = f"bytes {first}-{last}/{f.size}"
    body = _bytes(domain, f.key, first, last) if f.size else iter(())
    return StreamingResponse(body, status_code=206 if rng else 200, media_type=f.mime_type,
                             headers=headers)


def add_audio_route(r: APIRouter, gw: Gateway) -> None:
    """Register ``GET /v1/recordings/{id}/audio``."""

    @r.get("/v1/recordings/{recording_id}/audio", summary="Stream the recording's audio",
           responses={206: {"description": "One byte range (Content-Range)."},
                      **errors_doc("recording_not_found", "invalid_state")})
    async def get_audio(request: Request, recording_id: RecordingId) -> Response:
        """The stitched (or uploaded) audio, ``audio/ogg`` for Opus, with ``Range`` support
        (``Accept-Ranges: bytes``); same authorization as the download URL."""
        p = await gw.caller(request)
        rng = request.headers.get("range")
        return await anyio.to_thread.run_sync(
            lambda: audio_response(gw.domain, p, recording_id, rng))
