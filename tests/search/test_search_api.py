"""Search over the transports: ``GET /v1/search`` (REST) and
``TranscriptionService.SearchTranscripts`` (gRPC) on a real server — same hits, errors as the
envelope / ErrorInfo says, device tokens and other projects isolated, pages via cursor."""

from __future__ import annotations

from typing import Any

import httpx

from tapedeck.auth import Principal, issue_device_token

from searchkit import new_recording, segment, store_transcript
from serverkit import RunningServer

Project = tuple[str, str, Principal]


def get(srv: RunningServer, token: str, **params: Any) -> httpx.Response:
    with httpx.Client(base_url=srv.http_url,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        return c.get("/v1/search", params=params)


def test_rest_search_hits_filters_and_pages(srv: RunningServer, project: Project) -> None:
    _, key, p = project
    rec = new_recording(srv, p, metadata={"room": "kitchen"})
    txn = store_transcript(srv, rec, [segment(0, 2_000, "intro"),
                                      segment(12_345, 15_000, "the lease & the <deposit>",
                                              "Ana")])
    r = get(srv, key, q="lease")
    assert r.status_code == 200, r.text
    [hit] = r.json()["data"]
    assert hit["recording_id"] == rec and hit["transcription_id"] == txn
    assert (hit["segment_index"], hit["start_ms"], hit["end_ms"]) == (1, 12_345, 15_000)
    assert hit["snippet"] == "the <mark>lease</mark> &amp; the &lt;deposit&gt;"
    assert r.json()["has_more"] is False and r.json()["next_cursor"] is None
    assert get(srv, key, q="lease", **{"metadata[room]": "kitchen"}).json()["data"]
    assert get(srv, key, q="lease", **{"metadata[room]": "hall"}).json()["data"] == []
    assert get(srv, key, q="lease", speaker="Ben").json()["data"] == []
    assert get(srv, key, q="lease", since="2000-01-01T00:00:00Z",
               order="newest").json()["data"]
    rec2 = new_recording(srv, p)
    store_transcript(srv, rec2, [segment(0, 1_000, "lease again")])
    first = get(srv, key, q="lease", limit=1).json()
    assert first["has_more"] is True
    second = get(srv, key, q="lease", limit=1, cursor=first["next_cursor"]).json()
    assert second["has_more"] is False
    assert {first["data"][0]["recording_id"], second["data"][0]["recording_id"]} == {rec, rec2}


def test_rest_errors_are_envelopes_never_500(srv: RunningServer, project: Project) -> None:
    _, key, _ = project
    for params, fld in (({"q": "AND OR"}, "q"), ({"q": "!!! ???"}, "q"), ({}, "q"),
                        ({"q": '"'}, "q"), ({"q": "x", "order": "oldest"}, "order"),
                        ({"q": "x", "limit": 0}, "limit"), ({"q": "x", "cursor": "zz"}, "cursor"),
                        ({"q": "x", "since": "yesterday"}, "since")):
        r = get(srv, key, **params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["type"] == "invalid_request"
        assert r.json()["error"]["field"] == fld, r.json()
    assert get(srv, "sk_test_nope", q="x").status_code == 401


def test_rest_device_token_sees_only_its_device(srv: RunningServer, project: Project) -> None:
    _, key, p = project
    auth = srv.app.domain.auth
    _, tok_a = issue_device_token(srv.app.db, srv.app.clock, p.project_id)
    _, tok_b = issue_device_token(srv.app.db, srv.app.clock, p.project_id)
    rec_a = new_recording(srv, auth.authenticate(f"Bearer {tok_a}"))
    rec_b = new_recording(srv, auth.authenticate(f"Bearer {tok_b}"))
    store_transcript(srv, rec_a, [segment(0, 1_000, "quince jam")])
    store_transcript(srv, rec_b, [segment(0, 1_000, "quince pie")])
    assert [h["recording_id"] for h in get(srv, tok_a, q="quince").json()["data"]] == [rec_a]
    assert [h["recording_id"] for h in get(srv, tok_b, q="quince").json()["data"]] == [rec_b]
    assert len(get(srv, key, q="quince").json()["data"]) == 2
    assert get(srv, srv.api_key, q="quince").json()["data"] == []  # another project
