"""Search over the transports: ``GET /v1/search`` (REST) and
``TranscriptionService.SearchTranscripts`` (gRPC) on a real server — same hits, errors as the
envelope / ErrorInfo says, device tokens and other projects isolated, pages via cursor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tapedeck.auth import Principal, issue_device_token
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import transcription_pb2 as tpb
from tapedeck.v1 import transcription_pb2_grpc

from searchkit import new_recording, segment, store_transcript
from serverkit import RunningServer, auth

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
    with httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {key}"}) as c:
        dup = c.get("/v1/search", params=[("q", "x"), ("metadata[room]", "a"),
                                          ("metadata[room]", "b")])
    assert dup.status_code == 400 and dup.json()["error"]["field"] == "metadata[room]"


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


# -- gRPC --------------------------------------------------------------------------------------

def stub(srv: RunningServer) -> transcription_pb2_grpc.TranscriptionServiceStub:
    return transcription_pb2_grpc.TranscriptionServiceStub(srv.channel())


def test_grpc_search_equals_rest(srv: RunningServer, project: Project) -> None:
    _, key, p = project
    rec = new_recording(srv, p, metadata={"team": "blue"},
                        started_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC))
    store_transcript(srv, rec, [segment(0, 1_000, "medlar tree", "Ana"),
                                segment(4_000, 6_500, "another medlar here")])
    rest = get(srv, key, q="medlar", order="newest").json()
    resp = stub(srv).SearchTranscripts(tpb.SearchTranscriptsRequest(
        query="medlar", order=tpb.SEARCH_ORDER_NEWEST, metadata={"team": "blue"}),
        metadata=auth(key))
    assert [(h.recording_id, h.segment_index, h.start_ms, h.end_ms, h.text, h.snippet)
            for h in resp.hits] == [
        (h["recording_id"], h["segment_index"], h["start_ms"], h["end_ms"], h["text"],
         h["snippet"]) for h in rest["data"]]
    assert resp.hits[0].HasField("speaker") and resp.hits[0].speaker == "Ana"
    assert not resp.hits[1].HasField("speaker")
    assert [(m.start, m.end) for m in resp.hits[1].matches] == [(8, 14)]
    assert resp.hits[0].record_time.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 9, 30,
                                                                        tzinfo=UTC)
    page = stub(srv).SearchTranscripts(tpb.SearchTranscriptsRequest(
        query="medlar", page_size=1), metadata=auth(key))
    rest_page = stub(srv).SearchTranscripts(tpb.SearchTranscriptsRequest(
        query="medlar", page_size=1, page_token=page.next_page_token), metadata=auth(key))
    assert page.next_page_token and not rest_page.next_page_token
    assert {page.hits[0].segment_index, rest_page.hits[0].segment_index} == {0, 1}
    since = Timestamp()
    since.FromDatetime(datetime(2026, 4, 1, tzinfo=UTC))
    assert not stub(srv).SearchTranscripts(tpb.SearchTranscriptsRequest(
        query="medlar", since=since), metadata=auth(key)).hits


def test_grpc_errors_and_isolation(srv: RunningServer, project: Project) -> None:
    _, key, p = project
    _, dtok = issue_device_token(srv.app.db, srv.app.clock, p.project_id)
    store_transcript(srv, new_recording(srv, p), [segment(0, 1_000, "loquat")])
    for req, fld in ((tpb.SearchTranscriptsRequest(query="NOT OR ()"), "q"),
                     (tpb.SearchTranscriptsRequest(query=".,;"), "q"),
                     (tpb.SearchTranscriptsRequest(query="x", page_size=-1), "page_size"),
                     (tpb.SearchTranscriptsRequest(query="x", order=7), "order"),  # type: ignore[arg-type]
                     (tpb.SearchTranscriptsRequest(query="x", page_token="!"), "cursor")):
        with pytest.raises(grpc.RpcError) as info:
            stub(srv).SearchTranscripts(req, metadata=auth(key))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = from_rpc_error(info.value)
        assert err.type == "invalid_request" and err.details.get("field") == fld, err
    assert len(stub(srv).SearchTranscripts(tpb.SearchTranscriptsRequest(query="loquat"),
                                           metadata=auth(key)).hits) == 1
    for other in (dtok, srv.api_key):  # another device; another project
        assert not stub(srv).SearchTranscripts(tpb.SearchTranscriptsRequest(query="loquat"),
                                               metadata=auth(other)).hits


def test_grpc_transcription_has_paragraphs(srv: RunningServer, project: Project) -> None:
    _, key, p = project
    txn = store_transcript(srv, new_recording(srv, p), [
        segment(0, 1_000, "one", "Ana"), segment(1_200, 2_000, "two", "Ana"),
        segment(2_100, 3_000, "three")])
    got = stub(srv).GetTranscription(tpb.GetTranscriptionRequest(id=txn), metadata=auth(key))
    paras = got.transcription.paragraphs
    assert [(x.text, x.first_segment, x.segment_count, x.HasField("speaker")) for x in paras] \
        == [("one two", 0, 2, True), ("three", 2, 1, False)]
    assert (paras[0].start_ms, paras[0].end_ms, paras[0].speaker) == (0, 2_000, "Ana")
