"""REST route of transcript search: ``GET /v1/search``. It only translates; the rules live
in ``tapedeck.domain.search`` (query syntax in ``tapedeck.domain.search_query``).

Metadata filters are query parameters ``metadata[KEY]=VALUE`` (repeatable for several keys;
every pair must match the recording's metadata).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime

from tapedeck.domain.search import SearchRequest
from tapedeck.domain.search_index import ORDERS
from tapedeck.errors import invalid
from tapedeck.gateway.docs import errors_doc
from tapedeck.gateway.routes import Gateway
from tapedeck.gateway.schemas import ResponseModel

Order = Literal["relevance", "newest"]
assert get_args(Order) == ORDERS, "gateway/search.py is out of date"
_METADATA = re.compile(r"^metadata\[(.+)\]$")


class MatchOut(ResponseModel):
    """A matched span ``[start, end)`` of the hit's ``text``, in characters."""

    start: int
    end: int


class SearchHitOut(ResponseModel):
    """One segment that matches: where it was said (``start_ms``/``end_ms`` from the start of
    the recording), by whom (``speaker``, null when unknown), its text, the matched spans
    and a ``snippet`` (HTML-escaped, matches in ``<mark>…</mark>``). ``score``: relevance
    (higher is better). ``recorded_at``: the recording's start."""

    recording_id: str
    transcription_id: str
    segment_index: int
    start_ms: int
    end_ms: int
    speaker: str | None
    text: str
    matches: list[MatchOut]
    snippet: str
    score: float
    recorded_at: AwareDatetime
    device_id: str | None
    end_user_id: str | None


class SearchPageOut(ResponseModel):
    """One page of hits; ``next_cursor`` continues the same query and order."""

    data: list[SearchHitOut]
    has_more: bool
    next_cursor: str | None


def metadata_filters(request: Request) -> dict[str, str]:
    """The ``metadata[KEY]=VALUE`` query parameters (one value per key)."""
    out: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        m = _METADATA.match(name)
        if m is None:
            continue
        if m.group(1) in out:
            raise invalid(name, f"{name} is given more than once.")
        out[m.group(1)] = value
    return out


def add_search_routes(router: APIRouter, gw: Gateway) -> None:
    """Register ``GET /v1/search`` on ``router`` (the app's router, whose ``route_class``
    ``routes.add_routes`` has already set)."""
    d = gw.domain

    @router.get("/v1/search", response_model=SearchPageOut, summary="Search transcripts",
                responses=errors_doc())
    async def search_transcripts(
            request: Request,
            q: Annotated[str, Query(description='Words, "exact phrases", prefix*, AND/OR/NOT '
                                                "and parentheses; English stemming, accents "
                                                "and case ignored.")],
            order: Annotated[Order, Query(description="relevance (BM25) or newest "
                                                      "recordings first")] = "relevance",
            limit: Annotated[int, Query(ge=1, le=100)] = 25,
            cursor: Annotated[str | None, Query(description="next_cursor of a previous page")]
            = None,
            device_id: str | None = None, end_user_id: str | None = None,
            speaker: str | None = None,
            since: Annotated[AwareDatetime | None, Query(
                description="recordings started at or after")] = None,
            until: Annotated[AwareDatetime | None, Query(
                description="recordings started before")] = None) -> Response:
        """Segments of the project's transcripts that match ``q`` (``transcriptions:read``;
        a device token: its own device's recordings). Filter by device, end user, speaker,
        recording start (``since``/``until``) and ``metadata[KEY]=VALUE``."""
        p = await gw.caller(request)
        req = SearchRequest(q=q, order=order, limit=limit, cursor=cursor, device_id=device_id,
                            end_user_id=end_user_id, speaker=speaker, since=since,
                            until=until, metadata=metadata_filters(request))
        page = await anyio.to_thread.run_sync(lambda: d.search.search(p, req))
        return JSONResponse(page.to_json())
